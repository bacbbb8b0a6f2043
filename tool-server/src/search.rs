//! The `search` tool: BM25 ranking over a passage corpus, held in a tantivy index in memory.
//!
//! A query is free text, not a query language: it is cut into terms by the same tokenizer that
//! indexed the corpus (lower-cased words), and a passage scores the BM25 sum of the terms it
//! shares with the query, over its title and its text. So `title:x`, `AND` or a stray quote in a
//! model's query are words like any other, and no query can fail to parse.
//!
//! What this module does not do: read files (the caller passes the passages) or know about gRPC.

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{FAST, Field, IndexRecordOption, Schema, TEXT};
use tantivy::{Index, IndexReader, TantivyDocument, Term, doc};
use tasks::datasets::Passage;

/// The longest query read, in bytes; longer queries are cut at a character boundary.
pub const MAX_QUERY_BYTES: usize = 1024;

/// The most distinct terms of a query that are scored; the rest are ignored. Bounds the work of
/// one query whatever the model writes.
pub const MAX_QUERY_TERMS: usize = 32;

/// The fast field holding a document's position in the passages.
const ORD: &str = "ord";

/// Why the index could not be built or searched.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Two passages share an id.
    #[error("passage id {0:?} appears more than once")]
    DuplicateId(String),
    /// A hit has no passage: the index and the passages disagree (a bug).
    #[error("search index: document {0} has no passage")]
    Corrupt(u32),
    /// tantivy failed (out of memory, an internal error).
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
}

/// One ranked passage.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The passage's id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its text.
    pub text: String,
    /// Its BM25 score (higher is better).
    pub score: f32,
}

/// A searchable corpus. The index holds only postings and each passage's position in
/// `passages` (a fast field); hits are read from `passages`, so no document store is decoded
/// per query.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    title: Field,
    text: Field,
    passages: Vec<Passage>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("documents", &self.passages.len())
            .finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Indexes `passages` (ids must be unique).
    pub fn build(passages: &[Passage]) -> Result<Self, SearchError> {
        let mut seen = std::collections::HashSet::with_capacity(passages.len());
        if let Some(p) = passages.iter().find(|p| !seen.insert(p.id.as_str())) {
            return Err(SearchError::DuplicateId(p.id.clone()));
        }
        let mut schema = Schema::builder();
        let title = schema.add_text_field("title", TEXT);
        let text = schema.add_text_field("text", TEXT);
        let ord = schema.add_u64_field(ORD, FAST);
        let index = Index::create_in_ram(schema.build());
        // One indexing thread: the tool-server starts while actors and learners share the cores.
        let mut writer = index.writer_with_num_threads::<TantivyDocument>(1, 64 << 20)?;
        for (i, p) in passages.iter().enumerate() {
            writer.add_document(
                doc!(title => p.title.as_str(), text => p.text.as_str(), ord => i as u64),
            )?;
        }
        writer.commit()?;
        let reader = index.reader()?;
        Ok(SearchIndex { index, reader, title, text, passages: passages.to_vec() })
    }

    /// The number of passages.
    pub fn documents(&self) -> u64 {
        self.passages.len() as u64
    }

    /// The `k` best passages for `query`, best first; ties keep corpus order. A query with no
    /// indexed word finds nothing.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        let query = truncate(query, MAX_QUERY_BYTES);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        // Title and text are both `TEXT` fields, indexed by the same tokenizer: cut the query
        // once and look its words up in both.
        let words = self.terms(self.text, query)?;
        for field in [self.title, self.text] {
            for word in &words {
                let term = Term::from_field_text(field, word);
                clauses.push((
                    Occur::Should,
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                ));
            }
        }
        if clauses.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&BooleanQuery::new(clauses), &TopDocs::with_limit(k).order_by_score())?;
        top.into_iter()
            .map(|(score, address)| {
                let ords = searcher.segment_reader(address.segment_ord).fast_fields().u64(ORD)?;
                let passage = ords
                    .first(address.doc_id)
                    .and_then(|i| self.passages.get(i as usize))
                    .ok_or(SearchError::Corrupt(address.doc_id))?;
                Ok(Hit {
                    id: passage.id.clone(),
                    title: passage.title.clone(),
                    text: passage.text.clone(),
                    score,
                })
            })
            .collect()
    }

    /// The distinct terms of `query` under `field`'s tokenizer, at most [`MAX_QUERY_TERMS`].
    fn terms(&self, field: Field, query: &str) -> Result<Vec<String>, SearchError> {
        let mut analyzer = self.index.tokenizer_for_field(field)?;
        let mut stream = analyzer.token_stream(query);
        let mut terms = Vec::new();
        while let Some(token) = stream.next() {
            if terms.len() == MAX_QUERY_TERMS {
                break;
            }
            if !terms.contains(&token.text) {
                terms.push(token.text.clone());
            }
        }
        Ok(terms)
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The text the policy reads: one line per hit, `Title: text`, best first.
pub fn format_hits(hits: &[Hit]) -> String {
    if hits.is_empty() {
        return "no results".into();
    }
    hits.iter()
        .map(|h| tasks::format::format_passage(&h.title, &h.text))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: &str, title: &str, text: &str) -> Passage {
        Passage { id: id.into(), title: title.into(), text: text.into() }
    }

    fn corpus() -> Vec<Passage> {
        vec![
            passage("0", "Vorn", "Vorn is a river in Osterland. It flows into the Grey Sea."),
            passage("1", "Osterland", "Osterland is a kingdom. Its capital is Malbrook."),
            passage(
                "2",
                "Malbrook",
                "Malbrook lies on the river Vorn and was founded by Edda Quill.",
            ),
            passage("3", "Edda Quill", "Edda Quill was a mapmaker born in Tessel."),
        ]
    }

    /// BM25 with tantivy's parameters (k1 = 1.2, b = 0.75, idf = ln(1 + (N - n + 0.5) / (n +
    /// 0.5))), summed over fields, computed here from the corpus by brute force.
    fn brute_force_bm25(corpus: &[Passage], query: &str) -> Vec<f32> {
        let words = |s: &str| -> Vec<String> {
            s.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect()
        };
        let mut query_terms = words(query);
        query_terms.dedup();
        let fields: Vec<Vec<Vec<String>>> = vec![
            corpus.iter().map(|p| words(&p.title)).collect(),
            corpus.iter().map(|p| words(&p.text)).collect(),
        ];
        let n = corpus.len() as f32;
        let mut scores = vec![0f32; corpus.len()];
        for docs in &fields {
            let average = docs.iter().map(Vec::len).sum::<usize>() as f32 / n;
            for term in &query_terms {
                let containing = docs.iter().filter(|d| d.contains(term)).count() as f32;
                if containing == 0.0 {
                    continue;
                }
                let idf = (1.0 + (n - containing + 0.5) / (containing + 0.5)).ln();
                for (score, doc) in scores.iter_mut().zip(docs) {
                    let tf = doc.iter().filter(|w| *w == term).count() as f32;
                    let norm = 1.2 * (1.0 - 0.75 + 0.75 * doc.len() as f32 / average);
                    *score += idf * tf * 2.2 / (tf + norm);
                }
            }
        }
        scores
    }

    #[test]
    fn ranking_matches_brute_force_bm25() {
        let corpus = corpus();
        let index = SearchIndex::build(&corpus).expect("index");
        assert_eq!(index.documents(), 4);
        for query in
            ["river Vorn", "who founded Malbrook", "capital of Osterland", "Tessel mapmaker"]
        {
            let expected = brute_force_bm25(&corpus, query);
            let hits = index.search(query, 4).expect("search");
            let mut want: Vec<(usize, f32)> =
                expected.iter().copied().enumerate().filter(|(_, s)| *s > 0.0).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let got: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
            let want_ids: Vec<String> = want.iter().map(|(i, _)| i.to_string()).collect();
            assert_eq!(got, want_ids, "query {query:?}");
            for (hit, (_, score)) in hits.iter().zip(&want) {
                // tantivy stores field lengths in one byte (a lossy code), so scores agree
                // closely, not exactly.
                assert!((hit.score - score).abs() < 0.05 * score, "{query:?}: {hit:?} vs {score}");
            }
        }
    }

    #[test]
    fn queries_are_words_not_syntax() {
        let index = SearchIndex::build(&corpus()).expect("index");
        let hits = index.search("title:Tessel AND \"(mapmaker", 1).expect("search");
        assert_eq!(hits[0].id, "3");
        assert!(index.search("", 3).expect("search").is_empty());
        assert!(index.search("!!! ???", 3).expect("search").is_empty());
        assert!(index.search("zebra", 3).expect("search").is_empty());
        assert!(index.search("river", 0).expect("search").is_empty());
        let huge = "Vorn ".repeat(100_000);
        assert_eq!(index.search(&huge, 1).expect("search")[0].id, "0");
        let many: String = (0..1000).map(|i| format!("w{i} ")).collect();
        assert!(index.search(&many, 1).expect("search").is_empty());
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let mut corpus = corpus();
        corpus.push(passage("2", "Again", "text"));
        let err = SearchIndex::build(&corpus).expect_err("duplicate");
        assert_eq!(err.to_string(), "passage id \"2\" appears more than once");
    }

    #[test]
    fn hits_are_formatted_one_per_line() {
        let index = SearchIndex::build(&corpus()).expect("index");
        let hits = index.search("Edda Quill", 2).expect("search");
        let text = format_hits(&hits);
        assert!(
            text.starts_with("Edda Quill: Edda Quill was a mapmaker born in Tessel.\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2);
        assert_eq!(format_hits(&[]), "no results");
    }
}
