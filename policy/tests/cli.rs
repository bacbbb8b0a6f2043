//! The `policy` binary, run as users run it.

use std::process::{Command, Output};

use policy::checkpoint;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn policy(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_policy")).args(args).output().expect("run policy");
    eprintln!(
        "policy {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(args: &[&str]) -> String {
    let out = policy(args);
    assert!(out.status.success(), "policy {args:?} failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn init_then_logits_and_generate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("tiny");
    let model = model_dir.to_str().expect("utf-8");
    ok(&["init", "--config", "tiny", "--seed", "3", "--out", model]);
    for file in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        assert!(model_dir.join(file).exists(), "{file} written");
    }

    // `logits` prints [[...] per position], equal to the library's forward on the same checkpoint.
    let rows: Vec<Vec<f32>> =
        serde_json::from_str(&ok(&["logits", "--model", model, "--input-ids", "5,6,7"]))
            .expect("json");
    let ckpt = checkpoint::load(&model_dir, Device::Cpu, Some(Kind::Float)).expect("load");
    let want =
        tch::no_grad(|| ckpt.model.forward(&Tensor::from_slice(&[5i64, 6, 7]).unsqueeze(0))).get(0);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].len() as i64, ckpt.model.config().vocab_size);
    let got = Tensor::from_slice(&rows.concat()).view([3, -1]);
    assert!((got - want).abs().max().double_value(&[]) < 1e-6);

    // Greedy generation is deterministic and stops within its budget.
    let args = [
        "generate",
        "--model",
        model,
        "--prompt",
        "What is 2+3?",
        "--max-new-tokens",
        "7",
        "--temperature",
        "0",
        "--json",
    ];
    let first: Value = serde_json::from_str(&ok(&args)).expect("json");
    let second: Value = serde_json::from_str(&ok(&args)).expect("json");
    assert_eq!(first, second);
    assert!(first["tokens"].as_array().expect("tokens").len() <= 7);
    assert_eq!(
        first["tokens"].as_array().expect("tokens").len(),
        first["logprobs"].as_array().expect("logprobs").len()
    );

    // Same seed, same sample; the seed matters.
    let sample = |seed: &str| -> Value {
        serde_json::from_str(&ok(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "1+1=",
            "--max-new-tokens",
            "12",
            "--seed",
            seed,
            "--json",
        ]))
        .expect("json")
    };
    assert_eq!(sample("1")["tokens"], sample("1")["tokens"]);
    assert_ne!(sample("1")["tokens"], sample("2")["tokens"]);
}

#[test]
fn bench_reports_positive_rates() {
    let line = ok(&[
        "bench",
        "--config",
        "tiny",
        "--batch",
        "2",
        "--prompt-len",
        "4",
        "--new-tokens",
        "3",
        "--repeats",
        "1",
        "--json",
    ]);
    let report: Value = serde_json::from_str(&line).expect("json");
    assert!(report["generate_tokens_per_s"].as_f64().expect("rate") > 0.0);
    assert!(report["train_tokens_per_s"].as_f64().expect("rate") > 0.0);
    assert_eq!(report["batch"], 2);
}

#[test]
fn bad_input_fails_with_a_message_that_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    let out = policy(&["logits", "--model", missing.to_str().expect("utf-8"), "--input-ids", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));

    let model = dir.path().join("tiny");
    ok(&["init", "--config", "tiny", "--out", model.to_str().expect("utf-8")]);
    let out =
        policy(&["logits", "--model", model.to_str().expect("utf-8"), "--input-ids", "1,100000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("100000"));

    let out = policy(&["init", "--config", "gpt-5", "--out", model.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gpt-5"));

    let out = policy(&["logits", "--input-ids", "1"]);
    assert_eq!(out.status.code(), Some(2), "a missing flag is a usage error");
}
