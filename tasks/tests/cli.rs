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
