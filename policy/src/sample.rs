//! Batched sampling with a KV cache: temperature, top-k, top-p or greedy; stop on an end token,
//! a stop string or the token budget; the log-prob of every sampled token.
//!
//! A [`Session`] holds one batch of sequences and their cache for a whole multi-turn episode:
//! [`Session::generate`] samples a turn for each row, [`Session::append`] adds text that the
//! model did not write (a tool response), and the next `generate` continues from the cache, so
//! the prefix is never recomputed.
//!
//! The log-prob returned for a token is `log_softmax(logits / temperature)` of the full
//! distribution (temperature 1 when greedy), before top-k/top-p truncation: the same number the
//! training forward computes at that temperature, so a PPO ratio on fresh samples is exactly 1.
//!
//! What this module does not do: parse tool calls or decide what a tool returns.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::model::{KvCache, Qwen2};
use crate::tokenizer::Tokenizer;

/// How to choose each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose mass reaches `top_p` (1 = off).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: i64,
    /// The most tokens one call to [`Session::generate`] samples per row.
    pub max_new_tokens: usize,
    /// Tokens that end the sequence.
    pub eos_token_ids: Vec<i64>,
    /// Texts that end the turn when the sampled text contains them (e.g. `</tool_call>`).
    pub stop_strings: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

/// Why a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was sampled (it is the turn's last token).
    Eos,
    /// The turn's text came to contain this stop string.
    StopString(String),
    /// `max_new_tokens` were sampled.
    Length,
    /// The sequence reached the model's `max_position_embeddings`.
    ContextFull,
}

/// One row's sampled turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The sampled token ids.
    pub tokens: Vec<i64>,
    /// The log-prob of each sampled token under the sampling temperature.
    pub logprobs: Vec<f32>,
    /// Why the turn ended.
    pub finish: FinishReason,
}

/// Draws tokens from logits with its own seeded generator (ChaCha8), so a seed reproduces a run
/// on any device and is untouched by other users of libtorch's global generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Sampler { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// For each row of `logits` [N, vocab] (float32), a token and its log-prob.
    pub fn pick(&mut self, logits: &Tensor, params: &SamplingParams) -> (Vec<i64>, Vec<f32>) {
        let greedy = params.temperature <= 0.0;
        let scaled = if greedy { logits.shallow_clone() } else { logits / params.temperature };
        let logp = scaled.log_softmax(-1, Kind::Float);
        let tokens = if greedy {
            logp.argmax(-1, false)
        } else {
            let probs = truncate(&logp.exp(), params.top_k, params.top_p);
            let cdf = probs.cumsum(-1, Kind::Float);
            let n = logits.size()[0];
            let vocab = logits.size()[1];
            let u: Vec<f32> = (0..n).map(|_| self.rng.random::<f32>()).collect();
            let u = Tensor::from_slice(&u).to_device(logits.device()).unsqueeze(1);
            let threshold = u * cdf.narrow(1, vocab - 1, 1);
            // The first index whose cumulative mass exceeds u: inverse-CDF sampling.
            cdf.le_tensor(&threshold).sum_dim_intlist(-1, false, Kind::Int64).clamp_max(vocab - 1)
        };
        let picked = logp.gather(1, &tokens.unsqueeze(1), false).squeeze_dim(1);
        let tokens = Vec::<i64>::try_from(tokens.to_device(tch::Device::Cpu)).unwrap_or_default();
        let logprobs = Vec::<f32>::try_from(picked.to_device(tch::Device::Cpu)).unwrap_or_default();
        (tokens, logprobs)
    }
}

/// Zeroes the probabilities outside the top-k and outside the top-p nucleus (not renormalised;
/// the sampler draws in proportion).
fn truncate(probs: &Tensor, top_k: i64, top_p: f64) -> Tensor {
    let vocab = probs.size()[1];
    let mut probs = probs.shallow_clone();
    if top_k > 0 && top_k < vocab {
        let (values, _) = probs.topk(top_k, -1, true, true);
        let kth = values.narrow(1, top_k - 1, 1);
        probs = probs.where_self(&probs.ge_tensor(&kth), &probs.zeros_like());
    }
    if top_p < 1.0 {
        let (sorted, order) = probs.sort(-1, true);
        let mass_before = sorted.cumsum(-1, Kind::Float) - &sorted;
        // Keep a token while the mass of the more likely ones is still below top_p (the first
        // token is always kept).
        let keep_sorted = mass_before.lt(top_p);
        let keep = keep_sorted.zeros_like().scatter(-1, &order, &keep_sorted);
        probs = probs.where_self(&keep, &probs.zeros_like());
    }
    probs
}

/// A batch of sequences being sampled, with their cache.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m Qwen2,
    cache: KvCache,
    /// Tokens each row has but the cache does not yet: the prompt, then the last sampled token
    /// and anything appended after it.
    pending: Vec<Vec<i64>>,
    /// Each row's whole sequence so far (prompt, samples, appended text).
    sequences: Vec<Vec<i64>>,
}

impl<'m> Session<'m> {
    /// A session over `prompts`, one row each (prompts may differ in length). `capacity` is a
    /// hint of the longest sequence expected, so the cache rarely grows.
    pub fn new(model: &'m Qwen2, prompts: &[Vec<i64>], capacity: i64) -> Self {
        Session {
            model,
            cache: model.new_cache(prompts.len(), capacity),
            pending: prompts.to_vec(),
            sequences: prompts.to_vec(),
        }
    }

    /// Each row's whole sequence so far.
    pub fn sequences(&self) -> &[Vec<i64>] {
        &self.sequences
    }

    /// Tokens the cache holds for `row` (for tests: it never counts a prefix twice).
    pub fn cached_len(&self, row: usize) -> i64 {
        self.cache.len_of(row)
    }

    /// Adds `tokens` (text the model did not write) to the end of `row`.
    pub fn append(&mut self, row: usize, tokens: &[i64]) {
        self.pending[row].extend_from_slice(tokens);
        self.sequences[row].extend_from_slice(tokens);
    }

    /// Samples one turn for each row in `rows`; other rows wait. A stop string is looked for
    /// only when `tokenizer` is given.
    pub fn generate(
        &mut self,
        rows: &[usize],
        params: &SamplingParams,
        sampler: &mut Sampler,
        tokenizer: Option<&Tokenizer>,
    ) -> Vec<Turn> {
        let limits = vec![params.max_new_tokens; rows.len()];
        self.generate_limited(rows, &limits, params, sampler, tokenizer)
    }

    /// Like [`Session::generate`], with each row's own token limit (`limits[i]` for
    /// `rows[i]`, in place of `params.max_new_tokens`): an agent's rows have different budgets
    /// left, and a turn cut short by another row's budget would have to be resumed.
    pub fn generate_limited(
        &mut self,
        rows: &[usize],
        limits: &[usize],
        params: &SamplingParams,
        sampler: &mut Sampler,
        tokenizer: Option<&Tokenizer>,
    ) -> Vec<Turn> {
        assert_eq!(rows.len(), limits.len(), "one limit per row");
        let _guard = tch::no_grad_guard();
        let batch = self.sequences.len();
        let mut turns: Vec<Turn> = rows
            .iter()
            .map(|_| Turn {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                finish: FinishReason::Length,
            })
            .collect();
        let mut active: Vec<bool> = limits.iter().map(|&limit| limit > 0).collect();
        let max_positions = self.model.config().max_position_embeddings;
        for _ in 0..limits.iter().copied().max().unwrap_or(0) {
            if !active.iter().any(|&a| a) {
                break;
            }
            // Feed what each active row has pending; other rows get an empty chunk.
            let mut chunks: Vec<&[i64]> = vec![&[]; batch];
            for (i, &row) in rows.iter().enumerate() {
                if active[i] {
                    chunks[row] = &self.pending[row];
                }
            }
            let hidden = self.model.forward_chunk(&mut self.cache, &chunks);
            let live: Vec<usize> = (0..rows.len()).filter(|&i| active[i]).collect();
            let live_rows: Vec<i64> = live.iter().map(|&i| rows[i] as i64).collect();
            let index = Tensor::from_slice(&live_rows).to_device(self.model.device());
            let logits = self.model.sampling_logits(&hidden.index_select(0, &index));
            let (tokens, logprobs) = sampler.pick(&logits, params);
            for ((&i, &token), &logprob) in live.iter().zip(&tokens).zip(&logprobs) {
                let row = rows[i];
                self.pending[row].clear();
                self.pending[row].push(token);
                self.sequences[row].push(token);
                let turn = &mut turns[i];
                turn.tokens.push(token);
                turn.logprobs.push(logprob);
                if let Some(reason) = finished(turn, token, params, tokenizer) {
                    turn.finish = reason;
                    active[i] = false;
                } else if self.sequences[row].len() as i64 >= max_positions {
                    turn.finish = FinishReason::ContextFull;
                    active[i] = false;
                } else if turn.tokens.len() >= limits[i] {
                    active[i] = false;
                }
            }
        }
        turns
    }
}

/// Whether `token`, just added to `turn`, ends it.
fn finished(
    turn: &Turn,
    token: i64,
    params: &SamplingParams,
    tokenizer: Option<&Tokenizer>,
) -> Option<FinishReason> {
    if params.eos_token_ids.contains(&token) {
        return Some(FinishReason::Eos);
    }
    let tokenizer = tokenizer?;
    // A new occurrence ends in the last token, and every token is at least one byte, so it lies
    // within the last `stop.len()` tokens. One decode of the longest such window serves every
    // stop string: an older occurrence inside it would have ended the turn when it appeared.
    let longest = params.stop_strings.iter().map(String::len).max()?;
    let window = &turn.tokens[turn.tokens.len().saturating_sub(longest)..];
    let text = tokenizer.decode(window).ok()?;
    params
        .stop_strings
        .iter()
        .find(|stop| text.contains(stop.as_str()))
        .map(|stop| FinishReason::StopString(stop.clone()))
}
