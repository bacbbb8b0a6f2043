//! `kb-qa`: questions about a generated knowledge base of fictional people, cities and
//! countries, with a corpus of passages that states every fact.
//!
//! Facts: each person is born in a city and has an occupation; each city lies in a country.
//! Questions: "Where was X born?", "What does X do?", "Which country is C in?" (1-hop) and "In
//! which country was X born?" (2-hop).
//!
//! A share of people and cities (`memorised_fraction`) are **memorised**: the demonstrations
//! answer questions about them directly, so a model can learn their facts in the warm start.
//! The others are only in the corpus: answering needs `search`, one call per fact not
//! memorised. A question's category says how many searches it needs at least:
//! `1hop-0search`, `1hop-1search`, `2hop-0search`, `2hop-1search`, `2hop-2search`.
//!
//! So that the model learns to search without learning the answers it should search for, the
//! demonstrations that search are about **demo-only** people, who are never asked in
//! [`TaskData::examples`]. One leak remains by design: a demo-only person's 2-hop demonstration
//! may search a city that is not memorised, and so shows that city's country.
//!
//! Passage titles are entity names, and every surname and place name is a distinct word, so a
//! search for an entity's name ranks its own passage first (the tool-server's tests check
//! this for the demonstrations' every call).

use std::collections::HashSet;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Demonstration, SettingsError, TaskData, call_prefix_suffix, check_fraction, tool_call,
};
use crate::datasets::{AnswerKind, Example, Passage};
use crate::format::format_passage;

/// The task's name.
pub const NAME: &str = "kb-qa";

/// Occupations: one word each, so passages about people have equal lengths.
const OCCUPATIONS: [&str; 12] = [
    "potter", "baker", "weaver", "sailor", "miner", "scribe", "healer", "smith", "farmer",
    "hunter", "mason", "tailor",
];

const ONSETS: [&str; 20] = [
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr",
    "st", "sh",
];
const VOWELS: [&str; 7] = ["a", "e", "i", "o", "u", "ai", "ou"];
const CODAS: [&str; 7] = ["", "n", "r", "l", "s", "th", "m"];

/// Passages a demonstration's search asks for: one, the entity's own.
const SEARCH_K: u64 = 1;

/// `kb-qa`'s settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KbQaSettings {
    /// People in the knowledge base.
    pub people: u32,
    /// Cities.
    pub cities: u32,
    /// Countries.
    pub countries: u32,
    /// Share of people, and of cities, whose facts the demonstrations teach.
    pub memorised_fraction: f64,
    /// Share of the other people used only in demonstrations that search.
    pub demo_people_fraction: f64,
    /// Share of demonstrations about memorised facts that search anyway.
    pub demo_search_when_memorised: f64,
}

impl Default for KbQaSettings {
    fn default() -> Self {
        KbQaSettings {
            people: 120,
            cities: 20,
            countries: 6,
            memorised_fraction: 0.5,
            demo_people_fraction: 0.25,
            demo_search_when_memorised: 0.1,
        }
    }
}

impl KbQaSettings {
    fn check(&self) -> Result<(), SettingsError> {
        check_fraction(NAME, "memorised_fraction", self.memorised_fraction)?;
        check_fraction(NAME, "demo_people_fraction", self.demo_people_fraction)?;
        check_fraction(NAME, "demo_search_when_memorised", self.demo_search_when_memorised)?;
        for (key, value, max) in [
            ("people", self.people, 5000),
            ("cities", self.cities, 1000),
            ("countries", self.countries, 200),
        ] {
            if !(1..=max).contains(&value) {
                return Err(SettingsError {
                    task: NAME,
                    key,
                    message: format!("must be within 1..={max}, got {value}"),
                });
            }
        }
        Ok(())
    }
}

/// A person of the knowledge base.
#[derive(Debug, Clone)]
struct Person {
    name: String,
    city: usize,
    occupation: &'static str,
    memorised: bool,
    demo_only: bool,
}

/// A city.
#[derive(Debug, Clone)]
struct City {
    name: String,
    country: usize,
    memorised: bool,
}

/// Draws capitalised words of `syllables` syllables, each distinct from every word in `taken`.
fn fresh_word(rng: &mut ChaCha8Rng, syllables: usize, taken: &mut HashSet<String>) -> String {
    loop {
        let mut word = String::new();
        for _ in 0..syllables {
            for part in [&ONSETS[..], &VOWELS[..], &CODAS[..]] {
                word.push_str(part.choose(rng).copied().unwrap_or_default());
            }
        }
        if taken.insert(word.clone()) {
            let mut chars = word.chars();
            return chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default();
        }
    }
}

/// The knowledge base.
struct World {
    people: Vec<Person>,
    cities: Vec<City>,
    countries: Vec<String>,
}

fn world(settings: &KbQaSettings, rng: &mut ChaCha8Rng) -> World {
    let mut taken = HashSet::new();
    let countries: Vec<String> =
        (0..settings.countries).map(|_| fresh_word(rng, 3, &mut taken)).collect();
    let cities: Vec<City> = (0..settings.cities)
        .map(|_| City {
            name: fresh_word(rng, 2, &mut taken),
            country: rng.random_range(0..countries.len()),
            memorised: rng.random_bool(settings.memorised_fraction),
        })
        .collect();
    // First names may repeat among people; surnames are unique and unlike any other word.
    let mut first_names = HashSet::new();
    let firsts: Vec<String> =
        (0..(settings.people / 3).max(4)).map(|_| fresh_word(rng, 2, &mut first_names)).collect();
    let firsts: Vec<String> =
        firsts.into_iter().filter(|f| !taken.contains(&f.to_lowercase())).collect();
    taken.extend(firsts.iter().map(|f| f.to_lowercase()));
    let people = (0..settings.people)
        .map(|_| {
            let first = firsts.choose(rng).cloned().unwrap_or_else(|| "Ana".into());
            let surname = fresh_word(rng, 2, &mut taken);
            let memorised = rng.random_bool(settings.memorised_fraction);
            Person {
                name: format!("{first} {surname}"),
                city: rng.random_range(0..cities.len()),
                occupation: OCCUPATIONS.choose(rng).copied().unwrap_or("potter"),
                memorised,
                demo_only: !memorised && rng.random_bool(settings.demo_people_fraction),
            }
        })
        .collect();
    World { people, cities, countries }
}

impl World {
    fn person_passage(&self, i: usize) -> Passage {
        let p = &self.people[i];
        Passage {
            id: format!("person-{i}"),
            title: p.name.clone(),
            text: format!(
                "{} was born in {} and works as a {}.",
                p.name, self.cities[p.city].name, p.occupation
            ),
        }
    }

    fn city_passage(&self, j: usize) -> Passage {
        let c = &self.cities[j];
        Passage {
            id: format!("city-{j}"),
            title: c.name.clone(),
            text: format!("{} is a city in {}.", c.name, self.countries[c.country]),
        }
    }
}

/// A question with the facts it needs: each a passage, and whether it is memorised.
struct Question {
    example: Example,
    facts: Vec<(Passage, bool)>,
    /// About a demo-only person: demonstrated, never asked.
    demo_only: bool,
}

fn questions(world: &World) -> Vec<Question> {
    let mut out = Vec::new();
    let category = |facts: &[(Passage, bool)]| {
        let searches = facts.iter().filter(|(_, memorised)| !memorised).count();
        format!("{}hop-{searches}search", facts.len())
    };
    let mut push =
        |id: String, question: String, answer: &str, facts: Vec<(Passage, bool)>, demo_only| {
            let example = Example {
                id,
                question,
                answer: answer.to_owned(),
                kind: AnswerKind::Text,
                context: Vec::new(),
                category: category(&facts),
            };
            out.push(Question { example, facts, demo_only });
        };
    for (i, p) in world.people.iter().enumerate() {
        let city = &world.cities[p.city];
        let person_fact = (world.person_passage(i), p.memorised);
        let city_fact = (world.city_passage(p.city), city.memorised);
        push(
            format!("{NAME}-p{i}-born"),
            format!("Where was {} born?", p.name),
            &city.name,
            vec![person_fact.clone()],
            p.demo_only,
        );
        push(
            format!("{NAME}-p{i}-job"),
            format!("What does {} do?", p.name),
            p.occupation,
            vec![person_fact.clone()],
            p.demo_only,
        );
        push(
            format!("{NAME}-p{i}-country"),
            format!("In which country was {} born?", p.name),
            &world.countries[city.country],
            vec![person_fact, city_fact],
            p.demo_only,
        );
    }
    for (j, c) in world.cities.iter().enumerate() {
        push(
            format!("{NAME}-c{j}-country"),
            format!("Which country is {} in?", c.name),
            &world.countries[c.country],
            vec![(world.city_passage(j), c.memorised)],
            false,
        );
    }
    out
}

/// Generates the knowledge base, its corpus, questions and demonstrations for `seed`.
pub fn generate(settings: &KbQaSettings, seed: u64) -> Result<TaskData, SettingsError> {
    settings.check()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let world = world(settings, &mut rng);
    let corpus: Vec<Passage> = (0..world.people.len())
        .map(|i| world.person_passage(i))
        .chain((0..world.cities.len()).map(|j| world.city_passage(j)))
        .collect();
    let fixed = [("k", Value::from(SEARCH_K))];
    let mut examples = Vec::new();
    let mut demonstrations = Vec::new();
    for question in questions(&world) {
        let all_memorised = question.facts.iter().all(|(_, memorised)| *memorised);
        // Demonstrations: direct answers teach memorised facts; demo-only people teach searching.
        if all_memorised || question.demo_only {
            let mut demo = Demonstration::new(&question.example);
            let search_anyway = rng.random_bool(settings.demo_search_when_memorised);
            for (passage, memorised) in &question.facts {
                if !memorised || search_anyway {
                    let call = tool_call("search", "query", &passage.title, &fixed);
                    demo.call(&call, &format_passage(&passage.title, &passage.text));
                }
            }
            demo.answer(&question.example.answer);
            demonstrations.push(demo);
        }
        if !question.demo_only {
            examples.push(question.example);
        }
    }
    let (prefix, suffix) = call_prefix_suffix("search", "query", &fixed);
    let phrases = [
        "Where was ",
        " born?",
        "What does ",
        " do?",
        "In which country was ",
        "Which country is ",
        " in?",
        " was born in ",
        " and works as a ",
        " is a city in ",
    ];
    let extra_tokens = phrases.iter().map(|s| (*s).to_owned()).chain([prefix, suffix]).collect();
    Ok(TaskData { examples, demonstrations, corpus, extra_tokens })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn answers_follow_from_the_corpus_alone() {
        let task = generate(&KbQaSettings::default(), 11).expect("valid");
        // Read the facts back from the passages' text, independently of the generator.
        let mut born = HashMap::new();
        let mut job = HashMap::new();
        let mut country = HashMap::new();
        for p in &task.corpus {
            if let Some((name, rest)) = p.text.split_once(" was born in ") {
                let (city, occupation) = rest.split_once(" and works as a ").expect("person");
                born.insert(name.to_owned(), city.to_owned());
                job.insert(name.to_owned(), occupation.trim_end_matches('.').to_owned());
            } else {
                let (city, c) = p.text.split_once(" is a city in ").expect("city");
                country.insert(city.to_owned(), c.trim_end_matches('.').to_owned());
            }
        }
        assert_eq!(born.len() + country.len(), task.corpus.len(), "names are unique");
        for e in &task.examples {
            let q = e.question.as_str();
            let want = if let Some(name) =
                q.strip_prefix("Where was ").and_then(|r| r.strip_suffix(" born?"))
            {
                born[name].clone()
            } else if let Some(name) =
                q.strip_prefix("What does ").and_then(|r| r.strip_suffix(" do?"))
            {
                job[name].clone()
            } else if let Some(name) =
                q.strip_prefix("In which country was ").and_then(|r| r.strip_suffix(" born?"))
            {
                country[&born[name]].clone()
            } else {
                let city = q.strip_prefix("Which country is ").and_then(|r| r.strip_suffix(" in?"));
                country[city.expect("question form")].clone()
            };
            assert_eq!(e.answer, want, "{q}");
        }
    }

    #[test]
    fn memorised_facts_are_taught_and_the_rest_are_not() {
        let task = generate(&KbQaSettings::default(), 12).expect("valid");
        let asked: HashSet<&str> = task.examples.iter().map(|e| e.id.as_str()).collect();
        let by_id: HashMap<&str, &Example> =
            task.examples.iter().map(|e| (e.id.as_str(), e)).collect();
        let mut direct = 0;
        for demo in &task.demonstrations {
            if let Some(example) = by_id.get(demo.example_id.as_str()) {
                // A demonstration about an asked question needs no search: all memorised.
                assert!(example.category.ends_with("-0search"), "{example:?}");
                direct += usize::from(demo.tool_calls() == 0);
            } else {
                // Demo-only people are never asked, and their demonstrations search.
                assert!(!asked.contains(demo.example_id.as_str()));
                assert!(demo.tool_calls() >= 1, "{}", demo.text());
            }
        }
        let recall = task.examples.iter().filter(|e| e.category.ends_with("-0search")).count();
        assert!(direct as f64 > 0.8 * recall as f64, "{direct} of {recall}");
        let categories: HashSet<&str> = task.examples.iter().map(|e| e.category.as_str()).collect();
        for c in ["1hop-0search", "1hop-1search", "2hop-0search", "2hop-1search", "2hop-2search"] {
            assert!(categories.contains(c), "{categories:?}");
        }
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let settings = KbQaSettings { cities: 0, ..Default::default() };
        assert_eq!(generate(&settings, 0).expect_err("cities").key, "cities");
        let settings = KbQaSettings { memorised_fraction: -0.1, ..Default::default() };
        assert_eq!(generate(&settings, 0).expect_err("fraction").key, "memorised_fraction");
    }
}
