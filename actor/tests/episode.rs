//! The agent loop on a real model: a tiny policy taught one demonstration calls the tool, reads
//! the response from its cache, answers, and every sampled log-prob is what the training
//! forward computes for that token (the learner's importance ratio starts at exactly 1).

use actor::episode::{SessionModel, ToolRequest, ToolRunner, run_episodes};
use policy::train::{self, AdamW, AdamWConfig, TokenBatch};
use policy::{ModelConfig, Qwen2, Sampler, SamplingParams, Session, Tokenizer};
use tasks::format::STOP_STRINGS;
use tasks::{Budgets, Termination};
use tch::{Device, Kind};

const PROMPT: &str = "What is 6*7?\n";
const CALL: &str =
    r#"<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>"#;
const RESPONSE: &str = "<tool_response>42</tool_response>";
const ANSWER: &str = "<answer>42</answer>";

struct Calculator;

impl ToolRunner for Calculator {
    fn run(&mut self, requests: &[ToolRequest]) -> Vec<String> {
        requests
            .iter()
            .map(|r| {
                assert_eq!(
                    (r.tool.as_str(), r.arguments_json.as_str()),
                    ("calculator", r#"{"expression":"6*7"}"#)
                );
                "42".to_owned()
            })
            .collect()
    }
}

/// A tiny model trained on the one demonstration (loss on the generated segments only) until it
/// reproduces it.
fn taught_model(tokenizer: &Tokenizer) -> Qwen2 {
    let config = ModelConfig::named("tiny").expect("tiny");
    assert!(tokenizer.vocab_size() <= config.vocab_size as usize);
    let model = Qwen2::zeros(config, Kind::Float, Device::Cpu);
    model.init_random(0);
    let mut ids = tokenizer.encode(PROMPT).expect("prompt");
    let mut mask = vec![false; ids.len()];
    for (text, generated) in [(CALL, true), (RESPONSE, false), (ANSWER, true)] {
        let tokens = tokenizer.encode(text).expect("segment");
        mask.extend(std::iter::repeat_n(generated, tokens.len()));
        ids.extend(tokens);
    }
    let batch = TokenBatch::new(&[ids], &[mask], Device::Cpu);
    let count = batch.num_loss_tokens() as f64;
    let config = AdamWConfig { lr: 3e-3, weight_decay: 0.0, ..Default::default() };
    let mut optimizer = AdamW::new(model.parameters(), config);
    // The loss is about 0.01 after 100 steps at this rate (3e-3, the quickstart notes' peak).
    for _ in 0..200 {
        train::zero_grad(model.parameters());
        train::backward(&model, &batch, 1.0, false, |s| -s.logprobs.sum(Kind::Float) / count);
        optimizer.step(model.parameters());
    }
    model
}

#[test]
fn a_taught_policy_calls_the_tool_and_answers_with_consistent_log_probs() {
    let tokenizer = Tokenizer::synthetic(&[]).expect("tokenizer");
    let model = taught_model(&tokenizer);
    let prompt = tokenizer.encode(PROMPT).expect("prompt");
    let prompts = vec![prompt.clone(); 3];
    // top_k = 1 picks the argmax; the log-prob is still the full softmax at temperature 1.
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 1,
        eos_token_ids: vec![tokenizer.token_id("<|endoftext|>").expect("eos")],
        stop_strings: STOP_STRINGS.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let mut sampler = Sampler::new(0);
    let mut session_model = SessionModel {
        session: Session::new(&model, &prompts, 256),
        params: &params,
        sampler: &mut sampler,
        tokenizer: &tokenizer,
    };
    let budgets = Budgets { tool_calls: 2, tokens: 200 };
    let trajectories = run_episodes(
        &mut session_model,
        &tokenizer,
        &mut Calculator,
        &["calculator"],
        &prompts,
        &budgets,
    )
    .expect("episodes");
    for (row, t) in trajectories.iter().enumerate() {
        let text = tokenizer.decode(&t.completion).expect("decode");
        assert_eq!(t.termination, Termination::Answered, "{text}");
        assert_eq!((t.answer.as_deref(), t.tool_calls), (Some("42"), 1));
        assert_eq!(text, format!("{CALL}{RESPONSE}{ANSWER}"));
        // The cache held the whole sequence once: the prefix was never recomputed.
        assert_eq!(
            session_model.session.cached_len(row) as usize + 1,
            prompt.len() + t.completion.len()
        );

        // Training forward over prompt + completion, masked to the generated tokens.
        let mut ids = prompt.clone();
        ids.extend(&t.completion);
        let mut mask = vec![false; prompt.len()];
        mask.extend(&t.generated);
        let batch = TokenBatch::new(&[ids], &[mask.clone()], Device::Cpu);
        let stats = tch::no_grad(|| train::token_stats(&model, &batch, 1.0));
        let computed = Vec::<f32>::try_from(stats.logprobs.reshape([-1])).expect("f32");
        let sampled = t.logprobs.iter().zip(&t.generated).filter(|(_, g)| **g).map(|(l, _)| *l);
        let recomputed = computed.iter().zip(&mask).filter(|(_, m)| **m).map(|(l, _)| *l);
        let mut compared = 0;
        for (a, b) in sampled.zip(recomputed) {
            assert!((a - b).abs() < 1e-5, "sampled {a} vs training forward {b}");
            compared += 1;
        }
        assert_eq!(compared, t.generated_tokens);
    }
}
