//! The model's paths must agree with each other: cached vs whole-sequence forward, sampling
//! log-probs vs training log-probs, checkpointed vs plain gradients, one batch vs accumulated
//! halves, our AdamW vs its formula. Golden tests against `transformers` are in `golden.rs`.

use policy::checkpoint::{self, CheckpointError, SaveOptions};
use policy::train::{self, AdamW, AdamWConfig, TokenBatch};
use policy::{FinishReason, ModelConfig, Qwen2, Sampler, SamplingParams, Session, Tokenizer};
use tch::{Device, Kind, Tensor};

/// A small model with GQA (4 heads, 2 kv heads), random weights scaled up (2.5x the usual 0.02)
/// so logits are far from uniform and mistakes show, yet of the size trained models have.
fn model(seed: i64) -> Qwen2 {
    let mut config = ModelConfig::named("tiny").expect("tiny");
    config.initializer_range = 0.05;
    let model = Qwen2::zeros(config, Kind::Float, Device::Cpu);
    model.init_random(seed);
    model
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).expect("f32 tensor")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn prompts() -> Vec<Vec<i64>> {
    vec![vec![5, 17, 40, 3, 90, 11, 12], vec![8, 9], vec![70, 71, 72, 73, 74]]
}

#[test]
fn cached_forward_matches_whole_sequence_forward() {
    let model = model(1);
    let _guard = tch::no_grad_guard();
    let prompts = prompts();
    let mut cache = model.new_cache(prompts.len(), 4);
    let chunks: Vec<&[i64]> = prompts.iter().map(Vec::as_slice).collect();
    let last = model.logits(&model.forward_chunk(&mut cache, &chunks));
    // Then two more chunks of different lengths per row (the cache grows past its capacity).
    let extra: [[&[i64]; 3]; 2] = [[&[1, 2, 3], &[], &[4]], [&[9], &[10, 11], &[]]];
    let mut sequences = prompts.clone();
    for step in extra {
        let logits = model.logits(&model.forward_chunk(&mut cache, &step));
        for (row, chunk) in step.iter().enumerate() {
            sequences[row].extend_from_slice(chunk);
            if !chunk.is_empty() {
                last.get(row as i64).copy_(&logits.get(row as i64));
            }
        }
    }
    for (row, seq) in sequences.iter().enumerate() {
        let ids = Tensor::from_slice(seq).unsqueeze(0);
        let full = model.forward(&ids).get(0).get(seq.len() as i64 - 1);
        let diff = max_abs_diff(&full, &last.get(row as i64));
        assert!(diff < 1e-5, "row {row}: cached and full logits differ by {diff}");
        assert_eq!(cache.len_of(row), seq.len() as i64);
    }
}

/// New weights written in place, through the checkpoint names (as an actor applies a published
/// version) or into the parameters (as the optimizer steps), reach the next sampling call:
/// nothing on the sampling path may keep a stale copy of a weight.
#[test]
fn sampling_sees_weights_written_after_it_started() {
    let model = model(1);
    let _guard = tch::no_grad_guard();
    let ids: Vec<i64> = vec![5, 17, 40, 3, 90];
    let cached_last = |model: &Qwen2| {
        let mut cache = model.new_cache(1, 8);
        model.logits(&model.forward_chunk(&mut cache, &[ids.as_slice()])).get(0)
    };
    let full_last = |model: &Qwen2| {
        model.forward(&Tensor::from_slice(&ids).unsqueeze(0)).get(0).get(ids.len() as i64 - 1)
    };
    let before = cached_last(&model);

    let other = self::model(2);
    for ((_, target), (_, source)) in model.checkpoint_tensors().zip(other.checkpoint_tensors()) {
        target.shallow_clone().copy_(source);
    }
    let applied = cached_last(&model);
    let diff = max_abs_diff(&applied, &full_last(&other));
    assert!(diff < 1e-5, "after applying new weights, sampling differs by {diff}");
    assert!(max_abs_diff(&applied, &before) > 1e-2, "the new weights changed nothing");

    for (_, p) in model.parameters().iter() {
        let _ = p.shallow_clone().g_mul_scalar_(0.5);
    }
    let stepped = cached_last(&model);
    let diff = max_abs_diff(&stepped, &full_last(&model));
    assert!(diff < 1e-5, "after an in-place parameter update, sampling differs by {diff}");
    assert!(max_abs_diff(&stepped, &applied) > 1e-2, "halving the weights changed nothing");
}

#[test]
#[allow(clippy::needless_range_loop)] // t indexes the sequence and the stats tensors alike
fn right_padding_does_not_change_real_positions() {
    let model = model(2);
    let _guard = tch::no_grad_guard();
    let seqs = prompts();
    let masks: Vec<Vec<bool>> = seqs.iter().map(|s| vec![true; s.len()]).collect();
    let batch = TokenBatch::new(&seqs, &masks, Device::Cpu);
    let stats = train::token_stats(&model, &batch, 1.0);
    for (row, seq) in seqs.iter().enumerate() {
        // Independent path: the full logits of this sequence alone, log-softmax, pick targets.
        let logits = model.forward(&Tensor::from_slice(seq).unsqueeze(0)).get(0);
        let logp = logits.log_softmax(-1, Kind::Float);
        for t in 1..seq.len() {
            let want = logp.double_value(&[t as i64 - 1, seq[t]]);
            let got = stats.logprobs.double_value(&[row as i64, t as i64]);
            assert!((want - got).abs() < 1e-5, "row {row} t {t}: {got} vs {want}");
            let p = logp.get(t as i64 - 1).exp();
            let entropy = -(&p * p.log()).sum(Kind::Float).double_value(&[]);
            let got = stats.entropy.double_value(&[row as i64, t as i64]);
            assert!((entropy - got).abs() < 1e-4, "entropy row {row} t {t}: {got} vs {entropy}");
        }
        // Position 0 and padding are outside the mask: zero.
        assert_eq!(stats.logprobs.double_value(&[row as i64, 0]), 0.0);
    }
}

/// Per row: the whole sequence, the loss mask (sampled tokens only), the sampled log-probs.
type Episode = (Vec<Vec<i64>>, Vec<Vec<bool>>, Vec<Vec<f32>>);

/// Samples a two-turn episode per row, with a "tool response" appended between turns.
fn episode(model: &Qwen2, params: &SamplingParams, seed: u64) -> Episode {
    let prompts = prompts();
    let rows: Vec<usize> = (0..prompts.len()).collect();
    let mut session = Session::new(model, &prompts, 16);
    let mut sampler = Sampler::new(seed);
    let mut masks: Vec<Vec<bool>> = prompts.iter().map(|p| vec![false; p.len()]).collect();
    let mut logprobs: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
    for turn in 0..2 {
        let turns = session.generate(&rows, params, &mut sampler, None);
        for (row, t) in turns.iter().enumerate() {
            masks[row].extend(std::iter::repeat_n(true, t.tokens.len()));
            logprobs[row].extend(&t.logprobs);
            if turn == 0 {
                let response: Vec<i64> = (0..row as i64 + 2).map(|i| 20 + i).collect();
                session.append(row, &response);
                masks[row].extend(std::iter::repeat_n(false, response.len()));
            }
        }
    }
    for (row, seq) in session.sequences().iter().enumerate() {
        // The cache holds everything but the last sampled token: no prefix was fed twice.
        assert_eq!(session.cached_len(row), seq.len() as i64 - 1);
    }
    (session.sequences().to_vec(), masks, logprobs)
}

#[test]
fn sampling_logprobs_equal_training_logprobs() {
    let model = model(3);
    for (temperature, top_p, top_k) in [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 20), (0.0, 1.0, 0)]
    {
        let params =
            SamplingParams { temperature, top_p, top_k, max_new_tokens: 6, ..Default::default() };
        let (seqs, masks, sampled) = episode(&model, &params, 7);
        let batch = TokenBatch::new(&seqs, &masks, Device::Cpu);
        let train_temperature = if temperature > 0.0 { temperature } else { 1.0 };
        let stats = tch::no_grad(|| train::token_stats(&model, &batch, train_temperature));
        for (row, mask) in masks.iter().enumerate() {
            let positions: Vec<usize> = (0..mask.len()).filter(|&t| mask[t]).collect();
            assert_eq!(positions.len(), sampled[row].len());
            for (&t, &want) in positions.iter().zip(&sampled[row]) {
                let got = stats.logprobs.double_value(&[row as i64, t as i64]);
                assert!(
                    (got - want as f64).abs() < 1e-5,
                    "T={temperature} row {row} t {t}: training {got}, sampling {want}"
                );
            }
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_top_k_one_is_greedy() {
    let model = model(4);
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 8, ..Default::default() };
    let a = episode(&model, &params, 11);
    let b = episode(&model, &params, 11);
    let c = episode(&model, &params, 12);
    assert_eq!(a.0, b.0);
    assert_ne!(a.0, c.0, "another seed should sample something else");
    let greedy = SamplingParams { temperature: 0.0, ..params.clone() };
    let top1 = SamplingParams { top_k: 1, ..params };
    assert_eq!(episode(&model, &greedy, 1).0, episode(&model, &top1, 99).0);
}

#[test]
fn greedy_generation_is_the_argmax_of_the_full_forward() {
    let model = model(5);
    let prompts = prompts();
    let params = SamplingParams { temperature: 0.0, max_new_tokens: 5, ..Default::default() };
    let mut session = Session::new(&model, &prompts, 8);
    session.generate(&[0, 1, 2], &params, &mut Sampler::new(0), None);
    let _guard = tch::no_grad_guard();
    for (row, seq) in session.sequences().iter().enumerate() {
        let p = prompts[row].len();
        for t in p..seq.len() {
            let logits = model.forward(&Tensor::from_slice(&seq[..t]).unsqueeze(0));
            let argmax = logits.get(0).get(t as i64 - 1).argmax(-1, false).int64_value(&[]);
            assert_eq!(seq[t], argmax, "row {row} position {t}");
        }
    }
}

#[test]
fn turns_stop_at_eos_stop_strings_and_length() {
    let model = model(6);
    let tokenizer = Tokenizer::synthetic(&[]).expect("tokenizer");
    let every_token: Vec<i64> = (0..model.config().vocab_size).collect();
    let params =
        SamplingParams { max_new_tokens: 50, eos_token_ids: every_token, ..Default::default() };
    let turns = Session::new(&model, &prompts(), 8).generate(
        &[0, 1, 2],
        &params,
        &mut Sampler::new(0),
        None,
    );
    assert!(turns.iter().all(|t| t.tokens.len() == 1 && t.finish == FinishReason::Eos));

    // Stop on any digit: the turn ends at the first token whose text has one, not before.
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let params =
        SamplingParams { max_new_tokens: 400, stop_strings: digits.clone(), ..Default::default() };
    let turns = Session::new(&model, &prompts(), 8).generate(
        &[0, 1, 2],
        &params,
        &mut Sampler::new(3),
        Some(&tokenizer),
    );
    for turn in &turns {
        let text = tokenizer.decode(&turn.tokens).expect("decode");
        let FinishReason::StopString(stop) = &turn.finish else {
            panic!("no stop in {text:?}: {:?}", turn.finish)
        };
        assert!(text.ends_with(stop.as_str()), "{text:?} ends with {stop:?}");
        let before = tokenizer.decode(&turn.tokens[..turn.tokens.len() - 1]).expect("decode");
        assert!(
            !digits.iter().any(|d| before.contains(d.as_str())),
            "{before:?} should not have stopped"
        );
    }
    let params = SamplingParams { max_new_tokens: 3, ..Default::default() };
    let turns =
        Session::new(&model, &prompts(), 8).generate(&[1], &params, &mut Sampler::new(0), None);
    assert_eq!(turns[0].tokens.len(), 3);
    assert_eq!(turns[0].finish, FinishReason::Length);
}

fn loss_of(stats: &policy::TokenStats, count: f64) -> Tensor {
    // A PPO-like weighting so gradients differ per token.
    let weights = Tensor::arange(stats.logprobs.size()[1], (Kind::Float, Device::Cpu)) * 0.1 - 0.3;
    -(&stats.logprobs * weights).sum(Kind::Float) / count
        - stats.entropy.sum(Kind::Float) * 0.01 / count
}

#[test]
fn checkpointed_gradients_and_accumulated_halves_equal_the_plain_full_batch() {
    let model = model(7);
    let params = SamplingParams { max_new_tokens: 6, ..Default::default() };
    let (seqs, masks, _) = episode(&model, &params, 5);
    let full = TokenBatch::new(&seqs, &masks, Device::Cpu);
    let count = full.num_loss_tokens() as f64;

    train::zero_grad(model.parameters());
    let (loss, _) = train::backward(&model, &full, 1.0, false, |s| loss_of(s, count));
    let plain = train::flat_grads(model.parameters());
    assert!(plain.abs().sum(Kind::Float).double_value(&[]) > 0.0);

    train::zero_grad(model.parameters());
    let (loss_ckpt, _) = train::backward(&model, &full, 1.0, true, |s| loss_of(s, count));
    let checkpointed = train::flat_grads(model.parameters());
    assert!((loss - loss_ckpt).abs() < 1e-6);
    let diff = max_abs_diff(&plain, &checkpointed);
    assert!(diff < 1e-6, "checkpointed gradients differ by {diff}");

    // Rows 0..2 then row 2, each normalised by the whole batch's token count.
    train::zero_grad(model.parameters());
    for range in [0..2, 2..3] {
        let part = TokenBatch::new(&seqs[range.clone()], &masks[range], Device::Cpu);
        train::backward(&model, &part, 1.0, false, |s| loss_of(s, count));
    }
    let accumulated = train::flat_grads(model.parameters());
    let diff = max_abs_diff(&plain, &accumulated);
    assert!(diff < 1e-6, "accumulated gradients differ by {diff}");

    // The passes the learner trains in: rows regrouped longest first, each pass padded to its
    // own longest row. A cap of one row's length forces a pass per row.
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    for max_tokens in [1, *lengths.iter().max().expect("rows") * 2] {
        let passes = train::passes(&lengths, max_tokens);
        assert!(passes.len() > 1, "{max_tokens} tokens per pass splits the batch");
        train::zero_grad(model.parameters());
        let mut pass_loss = 0.0;
        for pass in passes {
            let part = TokenBatch::of_rows(&seqs, &masks, &pass, Device::Cpu);
            pass_loss += train::backward(&model, &part, 1.0, false, |s| loss_of(s, count)).0;
        }
        let in_passes = train::flat_grads(model.parameters());
        let diff = max_abs_diff(&plain, &in_passes);
        assert!(diff < 1e-6, "gradients in passes of {max_tokens} tokens differ by {diff}");
        assert!((pass_loss - loss).abs() < 1e-6);
    }
}

#[test]
fn adamw_follows_its_formula_on_a_reduced_buffer() {
    let model = model(8);
    let config =
        AdamWConfig { lr: 0.01, weight_decay: 0.1, max_grad_norm: Some(0.5), ..Default::default() };
    let mut opt = AdamW::new(model.parameters(), config.clone());
    let before: Vec<f32> = model.parameters().iter().flat_map(|(_, p)| to_vec(p)).collect();
    let n = before.len() as i64;
    // Two steps with made-up gradients, as an all-reduce would hand them back.
    let g1 = Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.01;
    let g2 = Tensor::randn([n], (Kind::Float, Device::Cpu));
    opt.step_with(model.parameters(), &g1);
    let stats = opt.step_with(model.parameters(), &g2);
    let after: Vec<f32> = model.parameters().iter().flat_map(|(_, p)| to_vec(p)).collect();

    // The same two steps in f64 scalars, straight from the AdamW paper's algorithm.
    let (g1, g2) = (to_vec(&g1), to_vec(&g2));
    let norm = |g: &[f32]| g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    assert!((stats.grad_norm - norm(&g2)).abs() < 1e-3 * norm(&g2));
    let (b1, b2, lr, wd, eps) =
        (config.beta1, config.beta2, config.lr, config.weight_decay, config.eps);
    let clip = |g: &[f32]| {
        let total = norm(g);
        if total > 0.5 { 0.5 / (total + 1e-6) } else { 1.0 }
    };
    let (clip1, clip2) = (clip(&g1), clip(&g2));
    let mut worst = 0f64;
    for i in 0..before.len() {
        let mut p = before[i] as f64;
        let (mut m, mut v) = (0.0, 0.0);
        for (step, g, clip) in [(1, &g1, clip1), (2, &g2, clip2)] {
            let gi = g[i] as f64 * clip;
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * gi;
            v = b2 * v + (1.0 - b2) * gi * gi;
            let m_hat = m / (1.0 - b1.powi(step));
            let v_hat = v / (1.0 - b2.powi(step));
            p -= lr * m_hat / (v_hat.sqrt() + eps);
        }
        worst = worst.max((p - after[i] as f64).abs());
    }
    assert!(worst < 1e-5, "parameters differ from the formula by {worst}");
}

#[test]
fn save_load_round_trip_and_clear_errors() {
    let model = model(9);
    let dir = tempfile::tempdir().expect("tempdir");
    let tokenizer = Tokenizer::synthetic(&[]).expect("tokenizer");
    // Small shards, so the index path is used.
    let options = SaveOptions {
        tokenizer: Some(&tokenizer),
        generation: None,
        max_shard_bytes: Some(300_000),
    };
    checkpoint::save(&model, dir.path(), &options).expect("save");
    assert!(dir.path().join("model.safetensors.index.json").exists());
    let back = checkpoint::load(dir.path(), Device::Cpu, None).expect("load");
    let ids = Tensor::from_slice(&[3i64, 4, 5, 6]).unsqueeze(0);
    let diff = tch::no_grad(|| max_abs_diff(&model.forward(&ids), &back.model.forward(&ids)));
    assert_eq!(diff, 0.0);
    assert!(back.tokenizer.is_some());

    // bfloat16 loads and runs, close to float32.
    let half = checkpoint::load(dir.path(), Device::Cpu, Some(Kind::BFloat16)).expect("bf16");
    let diff = tch::no_grad(|| max_abs_diff(&model.forward(&ids), &half.model.forward(&ids)));
    assert!(diff < 0.5, "bf16 logits far from f32: {diff}");

    let missing = tempfile::tempdir().expect("tempdir");
    let err = checkpoint::load(missing.path(), Device::Cpu, None).expect_err("no files");
    assert!(err.to_string().contains("config.json"), "{err}");

    // A config that disagrees with the weights names the tensor and both shapes.
    let mut config = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(dir.path().join("config.json")).expect("read"),
    )
    .expect("json");
    config["intermediate_size"] = serde_json::json!(64);
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
    let err = checkpoint::load(dir.path(), Device::Cpu, None).expect_err("wrong shape");
    assert!(matches!(err, CheckpointError::WrongShape { .. }), "{err}");
    assert!(err.to_string().contains("mlp"), "{err}");

    config["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
    let err = checkpoint::load(dir.path(), Device::Cpu, None).expect_err("architecture");
    assert!(err.to_string().contains("MistralForCausalLM"), "{err}");
}
