//! Two learner ranks, each with half of a step's trajectories, summing their gradients (what the
//! all-reduce does) and stepping AdamW on the sum, hold identical parameters after every step,
//! equal to one rank trained on the whole batch (DESIGN.md §10; spec §4's global token count).

use learner::loss::LossConfig;
use learner::step::{PassOptions, Sample, local_gradient};
use policy::train::{self, AdamW, AdamWConfig, TokenBatch};
use policy::{ModelConfig, Qwen2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

fn model() -> Qwen2 {
    let model = Qwen2::zeros(ModelConfig::named("tiny").expect("tiny"), Kind::Float, Device::Cpu);
    model.init_random(3);
    model
}

/// Trajectories of different lengths: a prompt, generated tokens, a tool response (masked),
/// more generated tokens. Old log-probs are the model's own plus noise, so some ratios leave the
/// clip range.
fn samples(model: &Qwen2, rng: &mut ChaCha8Rng) -> Vec<Sample> {
    (0..6)
        .map(|_| {
            let (prompt, first, tool, second) = (
                rng.random_range(3..8),
                rng.random_range(2..10),
                rng.random_range(1..6),
                rng.random_range(1..8),
            );
            let len = prompt + first + tool + second;
            let tokens: Vec<i64> = (0..len).map(|_| rng.random_range(3..128)).collect();
            let generated: Vec<bool> = (0..len)
                .map(|i| (prompt..prompt + first).contains(&i) || i >= prompt + first + tool)
                .collect();
            let batch = TokenBatch::new(
                std::slice::from_ref(&tokens),
                std::slice::from_ref(&generated),
                Device::Cpu,
            );
            let current = tch::no_grad(|| train::token_stats(model, &batch, 1.0)).logprobs;
            let current = Vec::<f32>::try_from(current.reshape([-1])).expect("f32");
            let old_logprobs = current.iter().map(|l| l + rng.random_range(-0.4..0.4f32)).collect();
            Sample { tokens, generated, old_logprobs, advantage: rng.random_range(-1.5..1.5) }
        })
        .collect()
}

fn parameters(model: &Qwen2) -> Tensor {
    Tensor::cat(
        &model.parameters().iter().map(|(_, p)| p.detach().reshape([-1])).collect::<Vec<_>>(),
        0,
    )
}

/// Copies `from`'s parameters into `to`.
fn copy_parameters(from: &Qwen2, to: &Qwen2) {
    tch::no_grad(|| {
        for ((_, src), (_, dst)) in from.parameters().iter().zip(to.parameters().iter()) {
            dst.shallow_clone().copy_(src);
        }
    });
}

#[test]
fn two_ranks_on_halves_step_like_one_rank_on_the_whole_batch() {
    let config = LossConfig::default();
    let adamw = AdamWConfig { lr: 1e-3, ..Default::default() };
    let (rank0, rank1, single) = (model(), model(), model());
    let mut optimizers = [rank0.parameters(), rank1.parameters(), single.parameters()]
        .map(|p| AdamW::new(p, adamw.clone()));
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for step in 0..3 {
        // The single rank starts each step where the ranks are, so each step is compared alone.
        copy_parameters(&rank0, &single);
        let batch = samples(&single, &mut rng);
        let total = batch.iter().map(Sample::generated_tokens).sum::<usize>() as f64;
        let (first, second) = batch.split_at(2);
        let g0 = local_gradient(&rank0, None, first, total, &config, PassOptions::new(1.0));
        // Rank 1 alternates checkpointing, and passes of one sample each.
        let options = if step % 2 == 1 {
            PassOptions { checkpointing: true, max_tokens_per_pass: 1, ..PassOptions::new(1.0) }
        } else {
            PassOptions::new(1.0)
        };
        let g1 = local_gradient(&rank1, None, second, total, &config, options);
        let whole = local_gradient(&single, None, &batch, total, &config, PassOptions::new(1.0));
        assert!((g0.loss + g1.loss - whole.loss).abs() < 1e-6, "step {step}: losses add up");
        assert!(whole.stats.clip_fraction > 0.0, "the noise puts some ratios outside the clip");
        // What the all-reduce computes.
        let summed = &g0.flat + &g1.flat;
        let gap = (&summed - &whole.flat).abs().max().double_value(&[]);
        assert!(gap < 1e-6, "step {step}: summed gradients differ from one rank's by {gap}");
        optimizers[0].step_with(rank0.parameters(), &summed);
        optimizers[1].step_with(rank1.parameters(), &summed);
        assert!(
            parameters(&rank0).equal(&parameters(&rank1)),
            "step {step}: the ranks hold identical parameters"
        );
        if step == 0 {
            // Same start, same optimizer state: one AdamW step on each gradient. Adam divides
            // by sqrt(v), so on entries whose gradient is near float32 rounding (about 1e-9)
            // the rounding of a split sum moves the update by a visible share of `lr`: about
            // 3e-5 here, against updates of 1e-3. Equal to that, not to 1e-6.
            optimizers[2].step_with(single.parameters(), &whole.flat);
            let gap = (parameters(&rank0) - parameters(&single)).abs().max().double_value(&[]);
            assert!(gap < 1e-4, "one step of two ranks and of one rank differ by {gap}");
        }
    }
}

/// The same, as it runs in processes: two ranks in their own threads, each with only its half,
/// all-reduce the token count and the gradient over TCP and step on their own.
#[test]
fn ranks_joined_over_tcp_stay_identical() {
    use learner::collective::TcpCollective;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let root = listener.local_addr().expect("addr");
    let mut listener = Some(listener);
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let listener = if rank == 0 { listener.take() } else { None };
            std::thread::spawn(move || {
                let timeout = std::time::Duration::from_secs(30);
                let mut collective =
                    TcpCollective::join(rank, 2, root, listener, timeout, &Default::default())
                        .expect("join");
                let model = model();
                let mut optimizer =
                    AdamW::new(model.parameters(), AdamWConfig { lr: 1e-3, ..Default::default() });
                let mut rng = ChaCha8Rng::seed_from_u64(9);
                let mut history = Vec::new();
                for _ in 0..3 {
                    // Both draw the step's batch alike (as a shard of one data stream would)
                    // and keep their half.
                    let batch = samples(&model, &mut rng);
                    let mine = if rank == 0 { &batch[..2] } else { &batch[2..] };
                    let mut total =
                        [mine.iter().map(Sample::generated_tokens).sum::<usize>() as f64];
                    collective.all_reduce_sum(&mut total).expect("token count");
                    let local = local_gradient(
                        &model,
                        None,
                        mine,
                        total[0],
                        &LossConfig::default(),
                        PassOptions::new(1.0),
                    );
                    let mut flat = Vec::<f32>::try_from(&local.flat).expect("f32");
                    collective.all_reduce_sum(&mut flat).expect("gradients");
                    optimizer.step_with(model.parameters(), &Tensor::from_slice(&flat));
                    history.push(Vec::<f32>::try_from(parameters(&model)).expect("f32"));
                }
                history
            })
        })
        .collect();
    let histories: Vec<Vec<Vec<f32>>> =
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect();
    for (step, (a, b)) in histories[0].iter().zip(&histories[1]).enumerate() {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "step {step}: the ranks' parameters differ");
    }
    assert_ne!(histories[0][0], histories[0][2], "the parameters moved");
}
