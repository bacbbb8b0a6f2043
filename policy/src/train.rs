//! Training the policy: per-token log-probs and entropy of given sequences under a loss mask
//! (one forward pass over a right-padded batch), optional gradient checkpointing, gradients as
//! one flat buffer, and AdamW with clipping.
//!
//! The loss itself (PPO-clip, spec §4) is the learner's: [`backward`] takes it as a closure of
//! the token statistics, so checkpointed and plain passes share one interface. Gradients from
//! several calls add up (gradient accumulation) until [`zero_grad`]. What this module does not
//! do: advantages, batching policy or collectives (the learner all-reduces [`flat_grads`]).

use tch::{Device, Kind, Tensor};

use crate::model::{AttentionMask, Parameters, Qwen2};

/// A right-padded batch of whole sequences (prompt, samples, tool responses).
#[derive(Debug)]
pub struct TokenBatch {
    /// [B, T] token ids, padded with 0 after each sequence.
    pub input_ids: Tensor,
    /// [B, T] bool: true where the token at that position was sampled by the policy and counts
    /// in the loss (never a prompt, tool-response or padding token, never position 0).
    pub loss_mask: Tensor,
}

impl TokenBatch {
    /// Pads `sequences` to one length; `masks[i][t]` says whether token t of sequence i is
    /// trained on.
    pub fn new(sequences: &[Vec<i64>], masks: &[Vec<bool>], device: Device) -> Self {
        assert_eq!(sequences.len(), masks.len(), "one mask per sequence");
        let t = sequences.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = vec![0i64; sequences.len() * t];
        let mut mask = vec![false; sequences.len() * t];
        for (b, (seq, m)) in sequences.iter().zip(masks).enumerate() {
            assert_eq!(seq.len(), m.len(), "mask length equals sequence length");
            ids[b * t..b * t + seq.len()].copy_from_slice(seq);
            mask[b * t..b * t + m.len()].copy_from_slice(m);
            mask[b * t] = false;
        }
        let b = sequences.len() as i64;
        TokenBatch {
            input_ids: Tensor::from_slice(&ids).view([b, t as i64]).to_device(device),
            loss_mask: Tensor::from_slice(&mask).view([b, t as i64]).to_device(device),
        }
    }

    /// The batch of the rows `rows` of `sequences` (and their `masks`): one pass of
    /// [`passes`].
    pub fn of_rows(
        sequences: &[Vec<i64>],
        masks: &[Vec<bool>],
        rows: &[usize],
        device: Device,
    ) -> Self {
        let picked: Vec<Vec<i64>> = rows.iter().map(|&i| sequences[i].clone()).collect();
        let picked_masks: Vec<Vec<bool>> = rows.iter().map(|&i| masks[i].clone()).collect();
        TokenBatch::new(&picked, &picked_masks, device)
    }

    /// Number of tokens in the loss.
    pub fn num_loss_tokens(&self) -> i64 {
        self.loss_mask.sum(Kind::Int64).int64_value(&[])
    }
}

/// Per-token statistics of a batch, [B, T] float32, zero outside the loss mask.
#[derive(Debug)]
pub struct TokenStats {
    /// `log p(token_t | tokens_<t)` at the given temperature.
    pub logprobs: Tensor,
    /// Entropy of the distribution that predicted token t.
    pub entropy: Tensor,
}

impl TokenStats {
    /// The same numbers, cut from the autograd graph.
    pub fn detach(&self) -> TokenStats {
        TokenStats { logprobs: self.logprobs.detach(), entropy: self.entropy.detach() }
    }
}

/// Log-probs and entropy of `batch` under `model` at `temperature`, differentiable. The output
/// head runs only at the masked positions, so prompts and tool responses cost no vocab-sized
/// work.
pub fn token_stats(model: &Qwen2, batch: &TokenBatch, temperature: f64) -> TokenStats {
    stats_from_hidden(model, &model.forward_hidden(&batch.input_ids), batch, temperature)
}

fn stats_from_hidden(
    model: &Qwen2,
    hidden: &Tensor,
    batch: &TokenBatch,
    temperature: f64,
) -> TokenStats {
    let (b, t, h) = hidden.size3().expect("hidden is [B, T, hidden]");
    // Position t-1 predicts token t.
    let predictors = hidden.narrow(1, 0, t - 1).reshape([-1, h]);
    let targets = batch.input_ids.narrow(1, 1, t - 1).reshape([-1]);
    let picked = batch.loss_mask.narrow(1, 1, t - 1).reshape([-1]).nonzero().squeeze_dim(1);
    let logits = model.logits(&predictors.index_select(0, &picked));
    let logits = if temperature == 1.0 { logits } else { logits / temperature };
    let logp = logits.log_softmax(-1, Kind::Float);
    let token_logp =
        logp.gather(1, &targets.index_select(0, &picked).unsqueeze(1), false).squeeze_dim(1);
    let entropy = -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float);
    let place = |values: &Tensor| {
        let flat = Tensor::zeros([b * (t - 1)], (Kind::Float, hidden.device()))
            .index_add(0, &picked, values);
        Tensor::cat(
            &[Tensor::zeros([b, 1], (Kind::Float, hidden.device())), flat.view([b, t - 1])],
            1,
        )
    };
    TokenStats { logprobs: place(&token_logp), entropy: place(&entropy) }
}

/// The most padded tokens (rows x longest row) [`passes`] puts in one forward+backward pass by
/// default. On the CPU a pass of a few thousand tokens trains faster per token than one big
/// pass (the `small` config: 3,072-token passes about 1.1x as fast as one 6,144-token pass,
/// BENCHMARKS.md, issue #4), and on any device it bounds the activations and the vocab-wide
/// logits one pass holds.
pub const DEFAULT_MAX_TOKENS_PER_PASS: usize = 3072;

/// Splits a batch of rows with these `lengths` into passes of at most `max_tokens` padded
/// tokens each (rows x the pass's longest row), as lists of row indices. Rows are taken
/// longest first, so a pass holds rows of similar length and pads little; a row longer than
/// `max_tokens` gets a pass of its own. `max_tokens == 0` gives one pass with every row, in
/// order. Gradients of a loss that is a sum over tokens (the learner's, divided by the step's
/// global token count) add up over the passes to the whole batch's: train each pass with
/// [`backward`] without zeroing in between.
pub fn passes(lengths: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    if max_tokens == 0 || lengths.is_empty() {
        return vec![(0..lengths.len()).collect()];
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable: rows of equal length keep their order.
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut passes: Vec<Vec<usize>> = Vec::new();
    let mut longest = 0;
    for i in order {
        match passes.last_mut() {
            // Rows come longest first, so the pass's longest row is its first.
            Some(pass) if (pass.len() + 1) * longest.max(1) <= max_tokens => pass.push(i),
            _ => {
                longest = lengths[i];
                passes.push(vec![i]);
            }
        }
    }
    passes
}

/// Computes `loss_fn` of the batch's token statistics and adds its gradient to every
/// parameter's. With `checkpointing`, layer activations are not kept: each layer is recomputed
/// during the backward pass (memory of one layer instead of all, for about one more forward).
/// Returns the loss and the statistics (detached).
pub fn backward(
    model: &Qwen2,
    batch: &TokenBatch,
    temperature: f64,
    checkpointing: bool,
    loss_fn: impl FnOnce(&TokenStats) -> Tensor,
) -> (f64, TokenStats) {
    if !checkpointing {
        let stats = token_stats(model, batch, temperature);
        let loss = loss_fn(&stats);
        loss.backward();
        return (loss.double_value(&[]), stats.detach());
    }
    let (_, t) = batch.input_ids.size2().expect("input_ids is [B, T]");
    let (cos, sin) = model.rotary_prefix(t);
    let mut layer_inputs = Vec::with_capacity(model.layers().len());
    let top = tch::no_grad(|| {
        let mut x = model.embed(&batch.input_ids);
        for layer in model.layers() {
            layer_inputs.push(x.shallow_clone());
            x = layer.forward(&x, &cos, &sin, &AttentionMask::Causal, None);
        }
        x
    });
    let top = top.detach().set_requires_grad(true);
    let stats = stats_from_hidden(model, &model.final_norm(&top), batch, temperature);
    let loss = loss_fn(&stats);
    loss.backward();
    let mut grad = top.grad();
    for (layer, input) in model.layers().iter().zip(layer_inputs).rev() {
        let input = input.detach().set_requires_grad(true);
        let output = layer.forward(&input, &cos, &sin, &AttentionMask::Causal, None);
        // d/dθ <output, grad> is the chain rule's contribution of this layer.
        (output * &grad).sum(Kind::Float).backward();
        grad = input.grad();
    }
    (model.embed(&batch.input_ids) * &grad).sum(Kind::Float).backward();
    (loss.double_value(&[]), stats.detach())
}

/// Clears every parameter's gradient.
pub fn zero_grad(params: &Parameters) {
    for (_, p) in params.iter() {
        p.shallow_clone().zero_grad();
    }
}

/// Every parameter's gradient in one float32 buffer, in [`Parameters`] order (zeros for a
/// parameter with no gradient yet). This is what learner ranks all-reduce.
pub fn flat_grads(params: &Parameters) -> Tensor {
    let parts: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| {
            let g = p.grad();
            if g.defined() {
                g.to_kind(Kind::Float).reshape([-1])
            } else {
                p.zeros_like().to_kind(Kind::Float).reshape([-1])
            }
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// AdamW settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (none when not set).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
        }
    }
}

/// AdamW (Loshchilov & Hutter) as PyTorch's `torch.optim.AdamW` computes it, on a flat gradient
/// buffer. Written here rather than taken from tch because its moments must be saved in
/// checkpoints and the gradient arrives as one all-reduced buffer.
#[derive(Debug)]
pub struct AdamW {
    /// The settings; `lr` may be changed between steps (schedules).
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: i64,
    /// First moments, float32, flat in [`Parameters`] order.
    pub exp_avg: Tensor,
    /// Second moments, float32, flat.
    pub exp_avg_sq: Tensor,
}

/// What one optimizer step saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &Parameters, config: AdamWConfig) -> Self {
        let n = params.numel();
        let device = params.iter().next().map_or(Device::Cpu, |(_, p)| p.device());
        AdamW {
            config,
            step: 0,
            exp_avg: Tensor::zeros([n], (Kind::Float, device)),
            exp_avg_sq: Tensor::zeros([n], (Kind::Float, device)),
        }
    }

    /// One step with the parameters' own gradients.
    pub fn step(&mut self, params: &Parameters) -> StepStats {
        let grads = flat_grads(params);
        self.step_with(params, &grads)
    }

    /// One step with `grads`, a flat buffer as [`flat_grads`] lays it out (e.g. all-reduced
    /// across learner ranks): clip by global norm, then the AdamW update.
    pub fn step_with(&mut self, params: &Parameters, grads: &Tensor) -> StepStats {
        let _guard = tch::no_grad_guard();
        let c = &self.config;
        let grad_norm = grads.norm().double_value(&[]);
        let grads = match c.max_grad_norm {
            Some(max) if grad_norm > max => grads * (max / (grad_norm + 1e-6)),
            _ => grads.shallow_clone(),
        };
        self.step += 1;
        let _ = self.exp_avg.g_mul_scalar_(c.beta1).g_add_(&(&grads * (1.0 - c.beta1)));
        let _ = self.exp_avg_sq.g_mul_scalar_(c.beta2).g_add_(&(grads.square() * (1.0 - c.beta2)));
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        let denom = (self.exp_avg_sq.sqrt() / bias2.sqrt()) + c.eps;
        let update = (&self.exp_avg / &denom) * (c.lr / bias1);
        let mut offset = 0i64;
        for (_, p) in params.iter() {
            let n = p.numel() as i64;
            let delta = update.narrow(0, offset, n).view(p.size().as_slice());
            let decayed = p.to_kind(Kind::Float) * (1.0 - c.lr * c.weight_decay) - delta;
            p.shallow_clone().copy_(&decayed.to_kind(p.kind()));
            offset += n;
        }
        StepStats { grad_norm }
    }
}

#[cfg(test)]
mod tests {
    use super::passes;

    #[test]
    fn passes_cover_every_row_once_within_the_cap_longest_first() {
        let lengths = [5, 9, 3, 9, 1, 7, 2, 20, 4];
        for max_tokens in [1, 9, 10, 18, 25, 40, 1000] {
            let got = passes(&lengths, max_tokens);
            let mut seen: Vec<usize> = got.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>(), "cap {max_tokens}");
            let longest = |p: &Vec<usize>| p.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            for pass in &got {
                assert!(
                    pass.len() == 1 || pass.len() * longest(pass) <= max_tokens,
                    "cap {max_tokens}: pass {pass:?} holds more"
                );
            }
            // Longest first: no row of a later pass is longer than any row of an earlier one.
            for pair in got.windows(2) {
                let shortest = pair[0].iter().map(|&i| lengths[i]).min().unwrap_or(0);
                assert!(longest(&pair[1]) <= shortest, "cap {max_tokens}: {got:?}");
            }
        }
        // Greedy packing: 4 rows of 10 tokens in passes of 25 make 2 + 2.
        assert_eq!(passes(&[10; 4], 25), vec![vec![0, 1], vec![2, 3]]);
        // No cap: one pass in the batch's order.
        assert_eq!(passes(&lengths, 0), vec![(0..lengths.len()).collect::<Vec<_>>()]);
    }
}
