//! The warm start on a built-in task's demonstrations: they tokenize without unknown tokens
//! under the task's synthetic tokenizer, exactly the tool responses are masked, and a tiny model
//! learns them (the loss falls).

use learner::warm_start::{WarmStartConfig, demonstration_tokens, warm_start};
use policy::{ModelConfig, Qwen2, Tokenizer};
use tch::{Device, Kind};

fn tokenizer_for(task: &tasks::synthetic::TaskData) -> Tokenizer {
    let extra: Vec<&str> = task.extra_tokens.iter().map(String::as_str).collect();
    Tokenizer::synthetic(&extra).expect("tokenizer")
}

#[test]
fn demonstrations_tokenize_whole_and_mask_exactly_the_tool_responses() {
    for name in tasks::synthetic::TASKS {
        let task = tasks::synthetic::generate(name, 1).expect("task");
        let tokenizer = tokenizer_for(&task);
        assert!(tokenizer.vocab_size() <= 128, "{name}: fits the tiny config");
        let unk = tokenizer.token_id("<|unk|>").expect("unk");
        for demo in task.demonstrations.iter().take(300) {
            let (ids, mask) = demonstration_tokens(&tokenizer, demo).expect("encode");
            assert!(!ids.contains(&unk), "{name}: unknown token in {}", demo.text());
            assert_eq!(tokenizer.decode(&ids).expect("decode"), demo.text());
            let masked: Vec<i64> = ids
                .iter()
                .zip(&mask)
                .skip(tokenizer.encode(&demo.prompt).expect("prompt").len())
                .filter(|(_, generated)| !**generated)
                .map(|(id, _)| *id)
                .collect();
            let responses: String =
                demo.segments.iter().filter(|s| !s.generated).map(|s| s.text.as_str()).collect();
            assert_eq!(tokenizer.decode(&masked).expect("decode"), responses);
        }
    }
}

#[test]
fn a_tiny_model_learns_the_demonstrations() {
    let task = tasks::synthetic::generate("arith", 2).expect("task");
    let tokenizer = tokenizer_for(&task);
    let model = Qwen2::zeros(ModelConfig::named("tiny").expect("tiny"), Kind::Float, Device::Cpu);
    model.init_random(0);
    let config =
        WarmStartConfig { steps: 60, batch_size: 16, warmup_steps: 10, ..Default::default() };
    let mut seen = 0;
    let losses = warm_start(&model, &tokenizer, &task.demonstrations, &config, |_, _| {
        seen += 1;
        std::ops::ControlFlow::Continue(())
    })
    .expect("warm start");
    assert_eq!((losses.len(), seen), (60, 60));
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[55..].iter().sum::<f64>() / 5.0;
    // A uniform guess over the vocabulary costs ln(vocab) nats per token.
    assert!(first > 0.8 * (tokenizer.vocab_size() as f64).ln(), "starts near uniform: {first}");
    assert!(last < 0.5 * first, "the loss falls: {first} -> {last}");
}

#[test]
fn a_stop_request_ends_the_warm_start_after_the_current_step() {
    let task = tasks::synthetic::generate("arith", 2).expect("task");
    let tokenizer = tokenizer_for(&task);
    let model = Qwen2::zeros(ModelConfig::named("tiny").expect("tiny"), Kind::Float, Device::Cpu);
    model.init_random(0);
    let config = WarmStartConfig { steps: 60, batch_size: 4, ..Default::default() };
    let losses = warm_start(&model, &tokenizer, &task.demonstrations, &config, |step, _| {
        if step == 4 {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })
    .expect("warm start");
    assert_eq!(losses.len(), 5, "steps 0 to 4 ran, then it stopped");
}
