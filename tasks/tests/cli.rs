//! The `tasks` binary: generated corpora load back, and dataset files are reported line by line.

use std::io::Write;
use std::process::{Command, Output};

fn tasks(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tasks")).args(args).output().expect("run tasks")
}

#[test]
fn a_generated_corpus_is_a_valid_corpus_file() {
    let output = tasks(&["generate", "--task", "kb-qa", "--seed", "4", "--what", "corpus"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let loaded = tasks::datasets::load_corpus(&text);
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    let generated = tasks::synthetic::generate("kb-qa", 4).expect("task");
    assert_eq!(loaded.passages, generated.corpus);
}

#[test]
fn loading_reports_bad_lines_and_counts() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(
        b"{\"question\": \"2+2?\", \"answer\": \"so 4\\n#### 4\"}\n{\"question\": \"q\"}\n{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n",
    )
    .expect("write");
    let path = file.path().to_str().expect("path");
    let output = tasks(&["load", "--format", "gsm8k", path]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2: skipped"), "{stderr}");
    assert!(stderr.contains("2 examples loaded, 1 skipped"), "{stderr}");
    let answers: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["answer"].to_string())
        .collect();
    assert_eq!(answers, vec!["\"4\"", "\"2\""]);

    let missing = tasks(&["load", "--format", "gsm8k", "/nonexistent.jsonl"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.jsonl: cannot read"));
    let unknown = tasks(&["generate", "--task", "chess"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown built-in task \"chess\""));
}

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

#[test]
fn check_reports_loaded_and_skipped_records_and_the_answers_kinds() {
    let file = file_with(concat!(
        "{\"question\": \"a\", \"answer\": \"so\\n#### 1,234\"}\n",
        "{\"question\": \"b\"}\n",
        "{\"question\": \"c\", \"answer\": \"#### 2.5\"}\n",
        "\n",
        "{\"question\": \"d\", \"answer\": \"#### 3/4\"}\n",
        "not json\n",
        "{\"question\": \"e\", \"answer\": \"#### seven\"}\n",
    ));
    let path = file.path().to_str().expect("path");
    let out = tasks(&["check", "--format", "gsm8k", path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("4 records loaded, 2 skipped"), "{stdout}");
    assert!(stdout.contains("line 2: skipped: missing field `answer`"), "{stdout}");
    assert!(stdout.contains("line 6: skipped:"), "{stdout}");
    assert!(stdout.contains("final answers: 1 integer, 1 decimal, 1 fraction, 1 text"), "{stdout}");

    let out = tasks(&["check", "--format", "gsm8k", path, "--answers"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1,234\n2.5\n3/4\nseven\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 records loaded"));
}

#[test]
fn check_names_a_hotpotqa_record_by_its_index() {
    let file = file_with(
        r#"[{"_id": "a", "question": "q?", "answer": "Paris", "context": [["T", ["x."]]],
             "supporting_facts": [["T", 0]]},
            {"_id": "b", "question": "q?", "answer": "y", "context": [],
             "supporting_facts": [["Missing", 0]]}]"#,
    );
    let out = tasks(&["check", "--format", "hotpotqa", file.path().to_str().expect("path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 records loaded, 1 skipped"), "{stdout}");
    assert!(stdout.contains("record 1: skipped: supporting fact \"Missing\""), "{stdout}");
    assert!(stdout.contains("0 integer, 0 decimal, 0 fraction, 1 text"), "{stdout}");
}

#[test]
fn check_exits_2_for_an_unreadable_empty_or_unusable_file() {
    let empty = file_with("");
    let bad = file_with("{\"question\": \"q\"}\n");
    let not_array = file_with("{\"_id\": 1}");
    let cases = [
        (vec!["check", "--format", "gsm8k", "/nonexistent.jsonl"], "cannot read"),
        (vec!["check", "--format", "jsonl", empty.path().to_str().expect("p")], "is empty"),
        (vec!["check", "--format", "gsm8k", bad.path().to_str().expect("p")], "no usable record"),
        (
            vec!["check", "--format", "hotpotqa", not_array.path().to_str().expect("p")],
            "not a JSON array",
        ),
    ];
    for (args, want) in cases {
        let out = tasks(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
