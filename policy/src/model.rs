//! The Qwen2-family decoder as plain structs with a `forward`, in the layout of Hugging Face's
//! `Qwen2ForCausalLM` (field names are the checkpoint's tensor names).
//!
//! Two ways in:
//! - [`Qwen2::forward_hidden`]: a whole right-padded batch, causal attention, no cache (training;
//!   padding sits after every real token, so the causal mask alone keeps it out of sight);
//! - [`Qwen2::forward_chunk`]: appends a chunk of tokens per sequence to a [`KvCache`] and
//!   attends over everything cached (sampling; a tool response appended mid-episode is one more
//!   chunk, so the cached prefix is never recomputed).
//!
//! What this module does not do: sampling policy, losses or file formats.

use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;

/// Every trainable tensor of a model, by name, in a fixed (sorted) order: what the optimizer
/// steps and what [`crate::train::flat_grads`] lays out. The tensors are shared with the model's
/// layers, so writing here changes the model.
///
/// Projections that read the same input are stored fused (`qkv_proj` for q/k/v, `gate_up_proj`
/// for gate/up), one matrix product instead of three or two; [`Qwen2::checkpoint_tensors`] gives
/// the Hugging Face names, as views into these.
#[derive(Debug)]
pub struct Parameters {
    named: Vec<(String, Tensor)>,
}

impl Parameters {
    /// The parameters, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.named.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.named.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.named.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// Number of scalar parameters.
    pub fn numel(&self) -> i64 {
        self.named.iter().map(|(_, t)| t.numel() as i64).sum()
    }
}

/// Makes parameters and remembers their names: the trainable tensors, and the Hugging Face
/// names (the same tensors, or row ranges of a fused one).
struct ParamBuilder {
    named: Vec<(String, Tensor)>,
    checkpoint: Vec<(String, Tensor)>,
    kind: Kind,
    device: Device,
}

impl ParamBuilder {
    fn zeros(&mut self, name: String, dims: &[i64]) -> Tensor {
        let t = Tensor::zeros(dims, (self.kind, self.device)).set_requires_grad(true);
        self.named.push((name.clone(), t.shallow_clone()));
        self.checkpoint.push((name, t.shallow_clone()));
        t
    }

    /// One tensor whose rows are the `parts` (Hugging Face name, rows) stacked in order;
    /// `suffix` is `weight` or `bias` and `cols` the width (none for a bias).
    fn fused(
        &mut self,
        name: String,
        parts: &[(String, i64)],
        suffix: &str,
        cols: Option<i64>,
    ) -> Tensor {
        let rows: i64 = parts.iter().map(|(_, r)| r).sum();
        let dims: Vec<i64> = std::iter::once(rows).chain(cols).collect();
        let t = Tensor::zeros(dims.as_slice(), (self.kind, self.device)).set_requires_grad(true);
        self.named.push((format!("{name}.{suffix}"), t.shallow_clone()));
        let _guard = tch::no_grad_guard();
        let mut start = 0;
        for (part, r) in parts {
            self.checkpoint.push((format!("{part}.{suffix}"), t.narrow(0, start, *r)));
            start += r;
        }
        t
    }
}

/// `y = x W^T + b`.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(p: &mut ParamBuilder, name: &str, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let weight = p.zeros(format!("{name}.weight"), &[out_dim, in_dim]);
        let bias = bias.then(|| p.zeros(format!("{name}.bias"), &[out_dim]));
        Linear { weight, bias }
    }

    /// Several projections of the same input as one: `parts` are (Hugging Face name, outputs).
    fn fused(
        p: &mut ParamBuilder,
        name: &str,
        in_dim: i64,
        parts: &[(String, i64)],
        bias: bool,
    ) -> Self {
        let weight = p.fused(name.to_string(), parts, "weight", Some(in_dim));
        let bias = bias.then(|| p.fused(name.to_string(), parts, "bias", None));
        Linear { weight, bias }
    }

    /// Applies the projection to the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// The same product for a pass that records no gradients (sampling): a few rows on the
    /// CPU take [`crate::small_batch`], which reads the weights once instead of packing them.
    fn forward_no_grad(&self, x: &Tensor) -> Tensor {
        crate::small_batch::linear(x, &self.weight, self.bias.as_ref())
            .unwrap_or_else(|| self.forward(x))
    }

    /// [`Linear::forward`] or, when `no_grad`, [`Linear::forward_no_grad`].
    fn apply(&self, x: &Tensor, no_grad: bool) -> Tensor {
        if no_grad { self.forward_no_grad(x) } else { self.forward(x) }
    }
}

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * weight`, computed in float32 as `transformers` does.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: &mut ParamBuilder, name: &str, dim: i64, eps: f64) -> Self {
        RmsNorm { weight: p.zeros(format!("{name}.weight"), &[dim]), eps }
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if x.kind() == Kind::Float {
            // libtorch's fused kernel: one call instead of seven on the decode path.
            let dim = self.weight.size()[0];
            return x.rms_norm([dim], Some(&self.weight), self.eps);
        }
        // Lower precision: normalise in float32, cast, then scale, in transformers' order.
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.square().mean_dim(-1, true, Kind::Float);
        let normed = x32 * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

/// Rotary position embeddings: cos/sin tables for every position, in float32 like `transformers`
/// (`inv_freq = 1 / theta^(2i/d)`, angles `position * inv_freq`), cast to the model's dtype.
/// The sin table carries the sign of `rotate_half` (`[-sin, sin]`), so rotating is
/// `x * cos + roll(x, d/2) * sin`: four operations, the same numbers.
#[derive(Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(config: &ModelConfig, kind: Kind, device: Device) -> Self {
        let dim = config.head_dim;
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / dim as f64;
        let inv_freq = Tensor::from(config.rope_theta as f32).pow(&exponents).reciprocal();
        let positions = Tensor::arange(config.max_position_embeddings, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float);
        let angles = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
        let cos = Tensor::cat(&[angles.cos(), angles.cos()], -1);
        let sin = Tensor::cat(&[-angles.sin(), angles.sin()], -1);
        Rotary {
            cos: cos.to_kind(kind).to_device(device),
            sin: sin.to_kind(kind).to_device(device),
        }
    }

    /// cos and sin for `positions` [B, L], shaped [B, 1, L, head_dim] to broadcast over heads.
    fn at(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let (b, l) = positions.size2().expect("positions are [B, L]");
        let flat = positions.reshape([-1]);
        let pick = |table: &Tensor| table.index_select(0, &flat).reshape([b, 1, l, -1]);
        (pick(&self.cos), pick(&self.sin))
    }
}

/// `x * cos + rotate_half(x) * sin`, with `rotate_half([x1, x2]) = [-x2, x1]`: the roll gives
/// `[x2, x1]` and the signed sin table the minus.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    x * cos + x.roll([half], [3]) * sin
}

/// The two parts of a two-way split.
fn two(parts: Vec<Tensor>) -> [Tensor; 2] {
    parts.try_into().unwrap_or_else(|p: Vec<Tensor>| panic!("split into {} parts, not 2", p.len()))
}

/// How queries may see keys in one attention call.
pub(crate) enum AttentionMask {
    /// Query i sees keys 0..=i (a batch that starts at position 0 with no padding before real
    /// tokens).
    Causal,
    /// Every query sees every key.
    All,
    /// An explicit boolean mask [B, 1, L, S]: true where the query may attend.
    Explicit(Tensor),
}

/// Grouped-query self-attention with rotary embeddings.
#[derive(Debug)]
pub struct Attention {
    /// q_proj, k_proj and v_proj stacked.
    qkv_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: &mut ParamBuilder, name: &str, c: &ModelConfig) -> Self {
        let (h, d) = (c.hidden_size, c.head_dim);
        let (nq, nkv, bias) = (c.num_attention_heads, c.num_key_value_heads, c.attention_bias);
        let parts = [
            (format!("{name}.q_proj"), nq * d),
            (format!("{name}.k_proj"), nkv * d),
            (format!("{name}.v_proj"), nkv * d),
        ];
        Attention {
            qkv_proj: Linear::fused(p, &format!("{name}.qkv_proj"), h, &parts, bias),
            o_proj: Linear::new(p, &format!("{name}.o_proj"), nq * d, h, false),
            num_heads: nq,
            num_kv_heads: nkv,
            head_dim: d,
        }
    }

    /// `x` [B, L, hidden] -> [B, L, hidden]. With a cache, this chunk's keys and values are
    /// written at slots `start..start + L` and the queries attend over slots `0..start + L`.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        cache: Option<(&mut LayerKv, i64)>,
    ) -> Tensor {
        let (b, l, _) = x.size3().expect("attention input is [B, L, hidden]");
        let (nq, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // A cached pass is a sampling pass, which records no gradients.
        let no_grad = cache.is_some();
        // [B, L, nq + 2 nkv, D] -> [B, nq + 2 nkv, L, D]; q and k rotate together. `split`
        // rather than `narrow`: its backward is one concatenation, not a zero-filled buffer per
        // part.
        let qkv = self.qkv_proj.apply(x, no_grad).view([b, l, nq + 2 * nkv, d]).transpose(1, 2);
        let [qk, v] = two(qkv.split_with_sizes([nq + nkv, nkv], 1));
        let [q, k] = two(apply_rotary(&qk, cos, sin).split_with_sizes([nq, nkv], 1));
        let (k, v) = match cache {
            Some((kv, start)) => {
                kv.keys.narrow(2, start, l).copy_(&k);
                kv.values.narrow(2, start, l).copy_(&v);
                (kv.keys.narrow(2, 0, start + l), kv.values.narrow(2, 0, start + l))
            }
            None => (k, v),
        };
        let gqa = self.num_heads != self.num_kv_heads;
        let y = match mask {
            AttentionMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, true, None, gqa,
            ),
            AttentionMask::All => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, false, None, gqa,
            ),
            AttentionMask::Explicit(m) => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), 0.0, false, None, gqa)
            }
        };
        let y = y.transpose(1, 2).reshape([b, l, self.num_heads * self.head_dim]);
        self.o_proj.apply(&y, no_grad)
    }
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    /// gate_proj and up_proj stacked.
    gate_up_proj: Linear,
    down_proj: Linear,
    intermediate: i64,
}

impl Mlp {
    fn new(p: &mut ParamBuilder, name: &str, c: &ModelConfig) -> Self {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let parts = [(format!("{name}.gate_proj"), i), (format!("{name}.up_proj"), i)];
        Mlp {
            gate_up_proj: Linear::fused(p, &format!("{name}.gate_up_proj"), h, &parts, false),
            down_proj: Linear::new(p, &format!("{name}.down_proj"), i, h, false),
            intermediate: i,
        }
    }

    fn forward(&self, x: &Tensor, no_grad: bool) -> Tensor {
        let i = self.intermediate;
        let [gate, up] = two(self.gate_up_proj.apply(x, no_grad).split_with_sizes([i, i], -1));
        self.down_proj.apply(&(gate.silu() * up), no_grad)
    }
}

/// One pre-norm decoder layer: `h = x + attn(norm(x)); out = h + mlp(norm(h))`.
#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(p: &mut ParamBuilder, i: usize, c: &ModelConfig) -> Self {
        let name = format!("model.layers.{i}");
        DecoderLayer {
            input_layernorm: RmsNorm::new(
                p,
                &format!("{name}.input_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            ),
            self_attn: Attention::new(p, &format!("{name}.self_attn"), c),
            post_attention_layernorm: RmsNorm::new(
                p,
                &format!("{name}.post_attention_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            ),
            mlp: Mlp::new(p, &format!("{name}.mlp"), c),
        }
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        cache: Option<(&mut LayerKv, i64)>,
    ) -> Tensor {
        let no_grad = cache.is_some();
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x), cos, sin, mask, cache);
        let out = self.mlp.forward(&self.post_attention_layernorm.forward(&h), no_grad);
        h + out
    }
}

/// One layer's cached keys and values, [B, kv_heads, capacity, head_dim].
#[derive(Debug)]
pub struct LayerKv {
    keys: Tensor,
    values: Tensor,
}

/// The keys and values of every token a batch of sequences has seen, so that each new token, or
/// each appended chunk, costs only its own forward pass.
///
/// Slots are shared by the batch: every chunk takes the same slots in every row, and a row whose
/// chunk is shorter leaves the rest of its slots empty (`valid` false), never attended. A row's
/// positions count only its own tokens, so holes do not shift its rotary positions.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// [B, capacity] bool: which slots hold a real token of that row.
    valid: Tensor,
    /// Slots used so far (the same for every row).
    used: i64,
    /// The rotary position of each row's next token (its number of real tokens so far).
    next_position: Vec<i64>,
    /// Whether any used slot is empty, so attention needs an explicit mask.
    has_holes: bool,
}

impl KvCache {
    /// Number of rows.
    pub fn batch_size(&self) -> usize {
        self.next_position.len()
    }

    /// How many tokens row `row` holds.
    pub fn len_of(&self, row: usize) -> i64 {
        self.next_position[row]
    }

    /// Slots allocated per row (for memory accounting).
    pub fn capacity(&self) -> i64 {
        self.valid.size()[1]
    }

    fn ensure_capacity(&mut self, needed: i64) {
        let capacity = self.capacity();
        if needed <= capacity {
            return;
        }
        let new_capacity = (needed.max(2 * capacity) + 63) / 64 * 64;
        let grow = |t: &Tensor| {
            let mut size = t.size();
            size[2] = new_capacity;
            let bigger = Tensor::zeros(&size, (t.kind(), t.device()));
            bigger.narrow(2, 0, self.used).copy_(&t.narrow(2, 0, self.used));
            bigger
        };
        for layer in &mut self.layers {
            layer.keys = grow(&layer.keys);
            layer.values = grow(&layer.values);
        }
        let valid = Tensor::zeros(
            [self.batch_size() as i64, new_capacity],
            (Kind::Bool, self.valid.device()),
        );
        valid.narrow(1, 0, self.used).copy_(&self.valid.narrow(1, 0, self.used));
        self.valid = valid;
    }
}

/// `Qwen2ForCausalLM`: token embedding, decoder layers, final norm, output head (the embedding
/// itself when tied).
#[derive(Debug)]
pub struct Qwen2 {
    config: ModelConfig,
    params: Parameters,
    /// Hugging Face name -> tensor (a parameter, or rows of a fused one).
    checkpoint_tensors: Vec<(String, Tensor)>,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    rotary: Rotary,
    kind: Kind,
    device: Device,
}

impl Qwen2 {
    /// A model with every parameter zero, ready to be filled by
    /// [`crate::checkpoint::load_weights`] or [`Qwen2::init_random`].
    pub fn zeros(config: ModelConfig, kind: Kind, device: Device) -> Self {
        let mut p = ParamBuilder { named: Vec::new(), checkpoint: Vec::new(), kind, device };
        let c = &config;
        let embed_tokens =
            p.zeros("model.embed_tokens.weight".into(), &[c.vocab_size, c.hidden_size]);
        let layers =
            (0..c.num_hidden_layers as usize).map(|i| DecoderLayer::new(&mut p, i, c)).collect();
        let norm = RmsNorm::new(&mut p, "model.norm", c.hidden_size, c.rms_norm_eps);
        let lm_head = (!c.tie_word_embeddings)
            .then(|| p.zeros("lm_head.weight".into(), &[c.vocab_size, c.hidden_size]));
        let rotary = Rotary::new(c, kind, device);
        p.named.sort_by(|a, b| a.0.cmp(&b.0));
        p.checkpoint.sort_by(|a, b| a.0.cmp(&b.0));
        Qwen2 {
            params: Parameters { named: p.named },
            checkpoint_tensors: p.checkpoint,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            kind,
            device,
            config,
        }
    }

    /// Fills the parameters with `transformers`' initialisation: normal(0, initializer_range)
    /// for projections and embeddings, zero biases, unit norms. The numbers are drawn on the CPU
    /// from `seed`, so a seed gives the same model on every device. libtorch has one global
    /// generator, so concurrent calls take turns: two threads initialising models at once
    /// would otherwise interleave their draws and get models that no seed describes.
    pub fn init_random(&self, seed: i64) {
        static GLOBAL_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = GLOBAL_GENERATOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::manual_seed(seed);
        let std = self.config.initializer_range;
        let _guard = tch::no_grad_guard();
        for (name, t) in self.checkpoint_tensors() {
            let value = if name.ends_with("norm.weight") {
                Tensor::ones(t.size(), (Kind::Float, Device::Cpu))
            } else if name.ends_with(".bias") {
                Tensor::zeros(t.size(), (Kind::Float, Device::Cpu))
            } else {
                Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * std
            };
            t.shallow_clone().copy_(&value);
        }
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The trainable tensors (fused projections stored whole).
    pub fn parameters(&self) -> &Parameters {
        &self.params
    }

    /// Every tensor by its Hugging Face checkpoint name, sorted; writing into one (under
    /// `tch::no_grad`) changes the model.
    pub fn checkpoint_tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.checkpoint_tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// The dtype of the parameters.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Where the parameters live.
    pub fn device(&self) -> Device {
        self.device
    }

    pub(crate) fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// Token embeddings of `input_ids` [B, L] -> [B, L, hidden].
    pub(crate) fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false)
    }

    /// cos/sin for positions `0..len`, shaped [1, 1, len, head_dim].
    pub(crate) fn rotary_prefix(&self, len: i64) -> (Tensor, Tensor) {
        let positions = Tensor::arange(len, (Kind::Int64, self.device)).unsqueeze(0);
        self.rotary.at(&positions)
    }

    /// The final hidden states of a right-padded batch `input_ids` [B, T] -> [B, T, hidden],
    /// positions 0..T, causal attention, no cache.
    pub fn forward_hidden(&self, input_ids: &Tensor) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids is [B, T]");
        let (cos, sin) = self.rotary_prefix(t);
        let mut x = self.embed(input_ids);
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin, &AttentionMask::Causal, None);
        }
        self.norm.forward(&x)
    }

    /// Final norm of raw layer output (for callers that run the layers themselves).
    pub(crate) fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }

    /// The output head: `lm_head`, or the embedding when tied.
    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Logits of normed hidden states [..., hidden] -> [..., vocab], in float32.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<Tensor>(self.head(), None).to_kind(Kind::Float)
    }

    /// [`Qwen2::logits`] for hidden states that need no gradient (sampling): a few rows on the
    /// CPU take [`crate::small_batch`].
    pub fn sampling_logits(&self, hidden: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let head = self.head();
        crate::small_batch::linear(hidden, head, None)
            .unwrap_or_else(|| hidden.linear::<Tensor>(head, None))
            .to_kind(Kind::Float)
    }

    /// Logits of every position of `input_ids` [B, T] -> [B, T, vocab], float32.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.logits(&self.forward_hidden(input_ids))
    }

    /// An empty cache for `batch_size` rows, with room for `capacity` tokens per row before it
    /// grows.
    pub fn new_cache(&self, batch_size: usize, capacity: i64) -> KvCache {
        let c = &self.config;
        let capacity = capacity.max(1);
        let shape = [batch_size as i64, c.num_key_value_heads, capacity, c.head_dim];
        let layers = (0..c.num_hidden_layers)
            .map(|_| LayerKv {
                keys: Tensor::zeros(shape, (self.kind, self.device)),
                values: Tensor::zeros(shape, (self.kind, self.device)),
            })
            .collect();
        KvCache {
            layers,
            valid: Tensor::zeros([batch_size as i64, capacity], (Kind::Bool, self.device)),
            used: 0,
            next_position: vec![0; batch_size],
            has_holes: false,
        }
    }

    /// Appends `chunks[row]` to each row of `cache` and returns, for each row, the normed hidden
    /// state of its last token ([B, hidden]; a row with an empty chunk gets the state of a
    /// padding slot, which callers ignore). It records no gradients.
    pub fn forward_chunk(&self, cache: &mut KvCache, chunks: &[&[i64]]) -> Tensor {
        let _guard = tch::no_grad_guard();
        let batch = cache.batch_size();
        assert_eq!(chunks.len(), batch, "one chunk per cached row");
        let l = chunks.iter().map(|c| c.len()).max().unwrap_or(0).max(1) as i64;
        let max_pos = self.config.max_position_embeddings - 1;
        let mut ids = Vec::with_capacity(batch * l as usize);
        let mut positions = Vec::with_capacity(batch * l as usize);
        let mut chunk_valid = Vec::with_capacity(batch * l as usize);
        for (row, chunk) in chunks.iter().enumerate() {
            let start = cache.next_position[row];
            for j in 0..l as usize {
                ids.push(chunk.get(j).copied().unwrap_or(0));
                positions.push((start + j as i64).min(max_pos));
                chunk_valid.push(j < chunk.len());
            }
        }
        let all_valid = chunk_valid.iter().all(|&v| v);
        let b = batch as i64;
        let ids = Tensor::from_slice(&ids).view([b, l]).to_device(self.device);
        let positions = Tensor::from_slice(&positions).view([b, l]).to_device(self.device);
        let chunk_valid = Tensor::from_slice(&chunk_valid).view([b, l]).to_device(self.device);

        let start = cache.used;
        cache.ensure_capacity(start + l);
        let mask = if start == 0 && all_valid {
            AttentionMask::Causal
        } else if l == 1 && all_valid && !cache.has_holes {
            AttentionMask::All
        } else {
            AttentionMask::Explicit(self.chunk_mask(cache, &chunk_valid, start, l))
        };
        cache.valid.narrow(1, start, l).copy_(&chunk_valid);
        cache.has_holes |= !all_valid;

        let (cos, sin) = self.rotary.at(&positions);
        let mut x = self.embed(&ids);
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &cos, &sin, &mask, Some((kv, start)));
        }
        cache.used = start + l;
        let last: Vec<i64> = chunks.iter().map(|c| (c.len() as i64 - 1).max(0)).collect();
        for (row, chunk) in chunks.iter().enumerate() {
            cache.next_position[row] += chunk.len() as i64;
        }
        let last = Tensor::from_slice(&last).to_device(self.device).view([b, 1, 1]);
        let hidden = self.config.hidden_size;
        let picked = x.gather(1, &last.expand([b, 1, hidden], false), false).squeeze_dim(1);
        self.norm.forward(&picked)
    }

    /// [B, 1, L, start + L]: a query sees the row's real cached tokens, and the chunk's real
    /// tokens up to itself; a padding query sees itself, so no row of the softmax is empty.
    fn chunk_mask(&self, cache: &KvCache, chunk_valid: &Tensor, start: i64, l: i64) -> Tensor {
        let b = cache.batch_size() as i64;
        let prefix =
            cache.valid.narrow(1, 0, start).view([b, 1, 1, start]).expand([b, 1, l, start], false);
        let causal = Tensor::ones([l, l], (Kind::Bool, self.device)).tril(0);
        let eye = Tensor::eye(l, (Kind::Bool, self.device));
        let own = causal.view([1, 1, l, l]).logical_and(&chunk_valid.view([b, 1, 1, l]));
        let own = own.logical_or(&eye.view([1, 1, l, l]));
        Tensor::cat(&[prefix, own], 3)
    }
}
