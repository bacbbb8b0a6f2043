//! Datasets in their public formats: GSM8K-style JSONL, HotpotQA-style JSON, and a generic
//! JSONL of `prompt`/`answer`; deterministic train/eval splits and shards.
//!
//! A bad record never stops a load: it is reported with its line (JSONL) or its index in the
//! array (HotpotQA, DESIGN.md §10) and skipped, and the caller sees how many were skipped. What
//! this module does not do: read files (callers pass the text) or build prompts.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

/// How an example's answer is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// Numeric equivalence ([`crate::checking::numbers_equal`]).
    Numeric,
    /// Exact match / token F1 ([`crate::checking`]).
    Text,
}

/// The form of a reference answer, as `tasks check` reports it: `integer`, `decimal`,
/// `fraction` (numeric answers, by how they are written) or `text` (anything checked as text,
/// and a "numeric" answer that does not parse as a number).
pub fn answer_form(example: &Example) -> &'static str {
    let answer = example.answer.trim();
    if example.kind == AnswerKind::Text || crate::checking::parse_number(answer).is_none() {
        return "text";
    }
    if answer.contains('/') {
        "fraction"
    } else if answer.contains('.') || answer.contains(['e', 'E']) {
        "decimal"
    } else {
        "integer"
    }
}

/// A passage of a search corpus; one line of a corpus JSONL file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Passage {
    /// Unique within the corpus.
    pub id: String,
    /// The title (for HotpotQA, the Wikipedia article).
    pub title: String,
    /// The text.
    pub text: String,
}

/// One question.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Stable id: the record's own, or its position.
    pub id: String,
    /// The question.
    pub question: String,
    /// The reference answer (for GSM8K, the part after `####`).
    pub answer: String,
    /// How to check it.
    pub kind: AnswerKind,
    /// Passages that belong to the question (HotpotQA's context); they go to the search corpus.
    pub context: Vec<Passage>,
    /// The group it is reported under: the dataset (`gsm8k`, `hotpotqa`, `jsonl`), or a built-in
    /// task's band (`arith`: `easy`, `medium`, `hard`; `kb-qa`: see [`crate::synthetic`]).
    pub category: String,
}

/// A record that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// 1-based line (JSONL) or 0-based index in the array (HotpotQA).
    pub position: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// What a load produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Loaded {
    /// The good records, in file order.
    pub examples: Vec<Example>,
    /// The bad ones.
    pub skipped: Vec<BadRecord>,
}

/// The file as a whole cannot be read (HotpotQA: not a JSON array).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DatasetError(String);

#[derive(Deserialize)]
struct Gsm8kRecord {
    question: String,
    answer: String,
}

/// GSM8K JSONL: `{"question": ..., "answer": "...reasoning...\n#### 72"}` per line.
pub fn load_gsm8k(text: &str) -> Loaded {
    load_jsonl(text, "gsm8k", |line| {
        let record: Gsm8kRecord = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let (_, final_answer) =
            record.answer.rsplit_once("####").ok_or("the answer has no `#### final answer`")?;
        let final_answer = final_answer.trim();
        if final_answer.is_empty() {
            return Err("the final answer after `####` is empty".into());
        }
        Ok((record.question, final_answer.to_string(), AnswerKind::Numeric, None))
    })
}

#[derive(Deserialize)]
struct GenericRecord {
    prompt: String,
    answer: Value,
    #[serde(default)]
    id: Option<String>,
}

/// Generic JSONL: `{"prompt": ..., "answer": ...}` (optional `id`); a numeric answer (a JSON
/// number, or a string that parses as one) is checked numerically, anything else as text.
pub fn load_generic_jsonl(text: &str) -> Loaded {
    load_jsonl(text, "jsonl", |line| {
        let record: GenericRecord = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let answer = match record.answer {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            other => return Err(format!("`answer` must be a string or a number, got {other}")),
        };
        let kind = if crate::checking::parse_number(&answer).is_some() {
            AnswerKind::Numeric
        } else {
            AnswerKind::Text
        };
        Ok((record.prompt, answer, kind, record.id))
    })
}

type Parsed = (String, String, AnswerKind, Option<String>);

fn load_jsonl(
    text: &str,
    category: &str,
    parse: impl Fn(&str) -> Result<Parsed, String>,
) -> Loaded {
    let mut loaded = Loaded::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse(line) {
            Ok((question, answer, kind, id)) => loaded.examples.push(Example {
                id: id.unwrap_or_else(|| format!("line-{}", i + 1)),
                question,
                answer,
                kind,
                context: Vec::new(),
                category: category.to_owned(),
            }),
            Err(reason) => loaded.skipped.push(BadRecord { position: i + 1, reason }),
        }
    }
    loaded
}

#[derive(Deserialize)]
struct HotpotRecord {
    #[serde(rename = "_id")]
    id: String,
    question: String,
    answer: String,
    context: Vec<(String, Vec<String>)>,
    #[serde(default)]
    supporting_facts: Vec<(String, u32)>,
}

/// HotpotQA JSON: one array of `{"_id", "question", "answer", "context": [[title,
/// [sentences]]], "supporting_facts": [[title, sentence index]]}`. Each context paragraph
/// becomes a passage; a supporting fact naming a title outside the context is a bad record.
pub fn load_hotpotqa(text: &str) -> Result<Loaded, DatasetError> {
    let records: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| DatasetError(format!("HotpotQA file is not a JSON array: {e}")))?;
    let mut loaded = Loaded::default();
    for (index, value) in records.into_iter().enumerate() {
        let parsed = serde_json::from_value::<HotpotRecord>(value)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if let Some((title, _)) =
                    r.supporting_facts.iter().find(|(t, _)| !r.context.iter().any(|(c, _)| c == t))
                {
                    return Err(format!("supporting fact {title:?} is not in the context"));
                }
                Ok(r)
            });
        match parsed {
            Ok(r) => {
                let context = r
                    .context
                    .iter()
                    .enumerate()
                    .map(|(j, (title, sentences))| Passage {
                        id: format!("{}-{j}", r.id),
                        title: title.clone(),
                        text: sentences.concat().trim().to_string(),
                    })
                    .collect();
                loaded.examples.push(Example {
                    id: r.id,
                    question: r.question,
                    answer: r.answer,
                    kind: AnswerKind::Text,
                    context,
                    category: "hotpotqa".into(),
                });
            }
            Err(reason) => loaded.skipped.push(BadRecord { position: index, reason }),
        }
    }
    Ok(loaded)
}

/// What a corpus load produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadedCorpus {
    /// The good passages, in file order.
    pub passages: Vec<Passage>,
    /// The bad lines (1-based), including repeated ids after the first.
    pub skipped: Vec<BadRecord>,
}

/// A search corpus as JSONL: `{"id": ..., "title": ..., "text": ...}` per line.
pub fn load_corpus(text: &str) -> LoadedCorpus {
    let mut loaded = LoadedCorpus::default();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed =
            serde_json::from_str::<Passage>(line).map_err(|e| e.to_string()).and_then(|p| {
                if ids.contains(&p.id) {
                    Err(format!("id {:?} appeared on an earlier line", p.id))
                } else {
                    Ok(p)
                }
            });
        match parsed {
            Ok(p) => {
                ids.insert(p.id.clone());
                loaded.passages.push(p);
            }
            Err(reason) => loaded.skipped.push(BadRecord { position: i + 1, reason }),
        }
    }
    loaded
}

/// The search corpus made of the examples' context passages (HotpotQA), each article once: a
/// title seen again is the same paragraph, as HotpotQA questions share Wikipedia articles. The
/// passage takes its title as id.
pub fn corpus_of(examples: &[Example]) -> Vec<Passage> {
    let mut titles = HashSet::new();
    examples
        .iter()
        .flat_map(|e| &e.context)
        .filter(|p| titles.insert(p.title.clone()))
        .map(|p| Passage { id: p.title.clone(), ..p.clone() })
        .collect()
}

/// A 64-bit mix of `seed` and `id` (SplitMix64 over FNV-1a), so an example's split and shard
/// depend only on the seed and its own id, not on file order.
fn stable_hash(seed: u64, id: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Splits into (train, eval): each example goes to eval with probability `eval_fraction`,
/// decided by the seed and its id alone.
pub fn split(
    examples: Vec<Example>,
    eval_fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let threshold = (eval_fraction.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    examples
        .into_iter()
        // A fraction of 0 gives threshold 0, which every hash meets: all train.
        .partition(|e| stable_hash(seed, &e.id) >= threshold)
}

/// Makes shard assignment independent of the train/eval split drawn with the same seed.
const SHARD_SALT: u64 = 0x0053_4841_5244;

/// The examples of shard `index` of `count` (one per actor); every example is in exactly one.
pub fn shard(examples: &[Example], index: usize, count: usize, seed: u64) -> Vec<Example> {
    let count = count.max(1) as u64;
    examples
        .iter()
        .filter(|e| stable_hash(seed ^ SHARD_SALT, &e.id) % count == index as u64)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two records in GSM8K's published format (train.jsonl), written by hand, and two bad ones.
    const GSM8K: &str = r#"{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"}
{"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?", "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"}
{"question": "no final answer", "answer": "it is 3"}

not json
"#;

    /// One record in HotpotQA's published format (distractor dev set), by hand, and a bad one.
    const HOTPOT: &str = r#"[
 {"_id": "5a8b57f25542995d1e6f1371", "answer": "yes", "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
  "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]],
  "context": [["Ed Wood", ["Edward Davis Wood Jr. (October 10, 1924 – December 10, 1978) was an American filmmaker, actor, writer, producer, and director."]],
              ["Scott Derrickson", ["Scott Derrickson (born July 16, 1966) is an American director, screenwriter and producer.", " He lives in Los Angeles, California."]]],
  "type": "comparison", "level": "hard"},
 {"_id": "bad", "answer": "x", "question": "q", "supporting_facts": [["Nowhere", 0]], "context": [["Somewhere", ["s"]]]}
]"#;

    #[test]
    fn gsm8k_records_load_and_bad_lines_are_reported() {
        let loaded = load_gsm8k(GSM8K);
        assert_eq!(loaded.examples.len(), 2);
        assert_eq!(loaded.examples[0].answer, "72");
        assert_eq!(loaded.examples[1].answer, "10");
        assert_eq!(loaded.examples[0].kind, AnswerKind::Numeric);
        let lines: Vec<usize> = loaded.skipped.iter().map(|b| b.position).collect();
        assert_eq!(lines, vec![3, 5], "{:?}", loaded.skipped);
    }

    #[test]
    fn hotpotqa_records_load_with_their_passages() {
        let loaded = load_hotpotqa(HOTPOT).expect("array");
        assert_eq!(loaded.examples.len(), 1);
        let e = &loaded.examples[0];
        assert_eq!((e.answer.as_str(), e.kind), ("yes", AnswerKind::Text));
        assert_eq!(e.context.len(), 2);
        assert_eq!(e.context[1].title, "Scott Derrickson");
        assert!(e.context[1].text.ends_with("Los Angeles, California."), "{}", e.context[1].text);
        assert_eq!(
            loaded.skipped,
            vec![BadRecord {
                position: 1,
                reason: "supporting fact \"Nowhere\" is not in the context".into()
            }]
        );
        assert!(load_hotpotqa("{}").is_err());
    }

    #[test]
    fn corpus_jsonl_loads_and_reports_bad_and_repeated_lines() {
        let text = "{\"id\": \"a\", \"title\": \"A\", \"text\": \"alpha\"}\n\n{\"id\": \"b\", \"title\": \"B\"}\n{\"id\": \"a\", \"title\": \"A2\", \"text\": \"again\"}\n{\"id\": \"c\", \"title\": \"C\", \"text\": \"gamma\", \"extra\": 1}\n{\"id\": \"d\", \"title\": \"D\", \"text\": \"delta\"}\n";
        let loaded = load_corpus(text);
        let ids: Vec<&str> = loaded.passages.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "d"]);
        let lines: Vec<usize> = loaded.skipped.iter().map(|b| b.position).collect();
        assert_eq!(lines, vec![3, 4, 5], "{:?}", loaded.skipped);
        assert!(loaded.skipped[1].reason.contains("earlier line"), "{:?}", loaded.skipped[1]);
    }

    #[test]
    fn hotpotqa_contexts_become_a_corpus_with_each_article_once() {
        let mut examples = load_hotpotqa(HOTPOT).expect("array").examples;
        let mut second = examples[0].clone();
        second.id = "second".into();
        examples.push(second);
        let corpus = corpus_of(&examples);
        let titles: Vec<&str> = corpus.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(titles, vec!["Ed Wood", "Scott Derrickson"]);
        assert!(corpus[0].text.starts_with("Edward Davis Wood Jr."));
    }

    #[test]
    fn generic_jsonl_picks_the_checker_from_the_answer() {
        let loaded = load_generic_jsonl(
            "{\"prompt\": \"2+2?\", \"answer\": 4}\n{\"prompt\": \"capital of France?\", \"answer\": \"Paris\", \"id\": \"fr\"}\n{\"prompt\": \"x\"}\n",
        );
        assert_eq!(loaded.examples[0].kind, AnswerKind::Numeric);
        assert_eq!(
            (loaded.examples[1].kind, loaded.examples[1].id.as_str()),
            (AnswerKind::Text, "fr")
        );
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].position, 3);
    }

    #[test]
    fn splits_and_shards_are_deterministic_and_partition() {
        let examples: Vec<Example> = (0..1000)
            .map(|i| Example {
                id: format!("q{i}"),
                question: String::new(),
                answer: String::new(),
                kind: AnswerKind::Text,
                context: vec![],
                category: String::new(),
            })
            .collect();
        let (train, eval) = split(examples.clone(), 0.2, 7);
        assert_eq!(train.len() + eval.len(), 1000);
        assert!((150..250).contains(&eval.len()), "{}", eval.len());
        // The same seed gives the same split whatever the order; another seed another split.
        let mut reversed = examples.clone();
        reversed.reverse();
        let (_, eval_rev) = split(reversed, 0.2, 7);
        let ids = |v: &[Example]| {
            let mut ids: Vec<String> = v.iter().map(|e| e.id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&eval), ids(&eval_rev));
        assert_ne!(ids(&eval), ids(&split(examples.clone(), 0.2, 8).1));
        // Shards cover every example exactly once.
        let shards: Vec<Vec<Example>> = (0..3).map(|i| shard(&examples, i, 3, 1)).collect();
        let mut all: Vec<String> = shards.iter().flat_map(|s| ids(s)).collect();
        all.sort();
        assert_eq!(all, ids(&examples));
        assert!(shards.iter().all(|s| (250..420).contains(&s.len())));
    }
}
