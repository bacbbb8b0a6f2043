//! Golden tests against Hugging Face `transformers`, the implementation the checkpoints come
//! from. `scripts/qwen2_reference.py` (run with the project venv's Python) makes small random
//! Qwen2 and Llama checkpoints and their logits and greedy continuations; we load them, and
//! `transformers` loads what we save.
//!
//! Without `.venv` (made by `./dev setup`) these tests print SKIPPED and pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use policy::checkpoint::{self, SaveOptions};
use policy::{ModelConfig, Qwen2, Sampler, SamplingParams, Session, Tokenizer};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// The largest absolute logit difference the issue allows in float32.
const TOLERANCE: f64 = 1e-4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn python() -> Option<PathBuf> {
    let python = repo_root().join(".venv/bin/python");
    if python.exists() {
        Some(python)
    } else {
        eprintln!(
            "SKIPPED: {} is absent; run ./dev setup to check against transformers",
            python.display()
        );
        None
    }
}

/// Runs the reference script and returns its stdout, failing with its stderr.
fn reference(python: &Path, args: &[&str]) -> String {
    let script = repo_root().join("scripts/qwen2_reference.py");
    let out =
        Command::new(python).arg(&script).args(args).output().expect("run the reference script");
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The golden checkpoints, made once per test run.
fn golden_dirs(python: &Path) -> Vec<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        reference(python, &["golden", "--out", dir.to_str().expect("utf-8 path")]);
        dir
    });
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "expected several golden checkpoints in {}", dir.display());
    dirs
}

fn golden(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).expect("golden.json"))
        .expect("json")
}

fn ids_of(v: &Value) -> Vec<i64> {
    v.as_array().expect("array").iter().map(|x| x.as_i64().expect("int")).collect()
}

/// [T, V] logits from JSON rows.
fn logits_of(v: &Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).expect("logit rows");
    let t = rows.len() as i64;
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Tensor::from_slice(&flat).view([t, -1])
}

fn our_logits(model: &Qwen2, ids: &[i64]) -> Tensor {
    tch::no_grad(|| model.forward(&Tensor::from_slice(ids).unsqueeze(0)).get(0))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "logit shapes");
    (a - b).abs().max().double_value(&[])
}

fn greedy(model: &Qwen2, prompt: &[i64], new_tokens: usize) -> Vec<i64> {
    let params =
        SamplingParams { temperature: 0.0, max_new_tokens: new_tokens, ..Default::default() };
    let mut session = Session::new(model, &[prompt.to_vec()], (prompt.len() + new_tokens) as i64);
    session.generate(&[0], &params, &mut Sampler::new(0), None).remove(0).tokens
}

#[test]
fn logits_and_greedy_tokens_match_transformers() {
    let Some(python) = python() else { return };
    for dir in golden_dirs(&python) {
        let expected = golden(&dir);
        let name = dir.file_name().expect("name").to_string_lossy().to_string();
        let ckpt =
            checkpoint::load(&dir, Device::Cpu, Some(Kind::Float)).expect("load golden checkpoint");
        let sequences = expected["input_ids"].as_array().expect("input_ids");
        let logits = expected["logits"].as_array().expect("logits");
        for (seq, want) in sequences.iter().zip(logits) {
            let diff = max_abs_diff(&our_logits(&ckpt.model, &ids_of(seq)), &logits_of(want));
            assert!(diff < TOLERANCE, "{name}: logits differ from transformers by {diff}");
            eprintln!("{name}: max |logit - transformers| = {diff:.2e}");
        }
        for case in expected["greedy"].as_array().expect("greedy") {
            let prompt = ids_of(&case["prompt"]);
            let want = ids_of(&case["tokens"]);
            let n = case["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
            assert_eq!(greedy(&ckpt.model, &prompt, n), want, "{name}: greedy tokens");
        }
    }
}

#[test]
fn transformers_loads_what_we_save() {
    let Some(python) = python() else { return };
    // A random model of ours (GQA, tied, q/k/v bias) with the synthetic tokenizer.
    let mut config = ModelConfig::named("tiny").expect("tiny");
    config.initializer_range = 0.05;
    config.rope_theta = 1e6;
    let model = Qwen2::zeros(config, Kind::Float, Device::Cpu);
    model.init_random(3);
    let tokenizer = Tokenizer::synthetic(&[]).expect("tokenizer");
    let out = tempfile::tempdir().expect("tempdir");
    let ours = out.path().join("tiny");
    let options = SaveOptions { tokenizer: Some(&tokenizer), ..Default::default() };
    checkpoint::save(&model, &ours, &options).expect("save");
    let ids = tokenizer.encode("What is 12*7?<tool_call>").expect("encode");
    let ids_arg = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let theirs: Value = serde_json::from_str(&reference(
        &python,
        &["logits", "--model", ours.to_str().expect("utf-8"), "--input-ids", &ids_arg],
    ))
    .expect("json");
    let diff = max_abs_diff(&our_logits(&model, &ids), &logits_of(&theirs));
    assert!(diff < TOLERANCE, "our saved tiny model: transformers' logits differ by {diff}");
    let theirs: Value = serde_json::from_str(&reference(
        &python,
        &[
            "greedy",
            "--model",
            ours.to_str().expect("utf-8"),
            "--input-ids",
            &ids_arg,
            "--max-new-tokens",
            "12",
        ],
    ))
    .expect("json");
    assert_eq!(greedy(&model, &ids, 12), ids_of(&theirs), "greedy tokens of our saved model");

    // AutoTokenizer (a Qwen2Tokenizer, for a qwen2 config) gives the same ids and text.
    let text = "What is 12*7?<tool_call>{\"x\": 1}</tool_call>\n<answer>84</answer><|endoftext|>";
    let theirs: Value = serde_json::from_str(&reference(
        &python,
        &["tokenize", "--model", ours.to_str().expect("utf-8"), "--text", text],
    ))
    .expect("json");
    assert_eq!(
        ids_of(&theirs["ids"]),
        tokenizer.encode(text).expect("encode"),
        "token ids of {text:?}"
    );
    assert_eq!(theirs["decoded"], text);

    // Every golden checkpoint, loaded and saved again by us (one of them in shards), gives
    // transformers the logits it gave before.
    for (i, dir) in golden_dirs(&python).iter().enumerate() {
        let expected = golden(dir);
        let ckpt = checkpoint::load(dir, Device::Cpu, None).expect("load");
        let resaved = out.path().join(format!("resaved-{i}"));
        let options =
            SaveOptions { max_shard_bytes: (i == 0).then_some(20_000), ..Default::default() };
        checkpoint::save(&ckpt.model, &resaved, &options).expect("save");
        let seq = ids_of(&expected["input_ids"][0]);
        let arg = seq.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let theirs: Value = serde_json::from_str(&reference(
            &python,
            &["logits", "--model", resaved.to_str().expect("utf-8"), "--input-ids", &arg],
        ))
        .expect("json");
        let diff = max_abs_diff(&logits_of(&theirs), &logits_of(&expected["logits"][0]));
        assert!(diff < TOLERANCE, "{}: re-saved checkpoint differs by {diff}", dir.display());
    }
}
