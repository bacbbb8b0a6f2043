//! Policy weights on the wire (`paretopo.v1.WeightChunk`): the learner cuts each checkpoint
//! tensor's little-endian bytes into chunks below the 4 MiB gRPC limit, and the actor puts a
//! version back together and copies it into its model between episodes. Tensors travel by
//! their Hugging Face names in the model's own order and dtype, so a version is exactly the
//! learner's parameters: no conversion, no rounding.
//!
//! What it does not do: decide when to publish or subscribe (the learner's and the actor's
//! loops do).

use std::collections::HashMap;
use std::sync::Arc;

use paretopo_proto::v1::{DType, WeightChunk};
use policy::Qwen2;
use tch::{Device, Kind, Tensor};

/// The largest chunk payload: 1 MiB keeps every message far below gRPC's 4 MiB default.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One version of the policy, ready to send: its chunks in order, the last one marked.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The version number (0 = the weights RL starts from).
    pub version: u64,
    /// The chunks.
    pub chunks: Vec<WeightChunk>,
}

/// What can be wrong with a received version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsError {
    /// A chunk named a tensor the model does not have.
    #[error("tensor_name: the model has no tensor {0:?}")]
    UnknownTensor(String),
    /// A tensor's shape, dtype or byte count does not match the model's.
    #[error("tensor {name:?}: {message}")]
    Mismatch {
        /// The tensor.
        name: String,
        /// What differs.
        message: String,
    },
    /// The version ended with tensors missing.
    #[error("version {version}: got {got} tensors, expected {expected}")]
    Incomplete {
        /// The version.
        version: u64,
        /// Tensors received.
        got: usize,
        /// Tensors the model has.
        expected: usize,
    },
}

fn dtype_of(kind: Kind) -> DType {
    match kind {
        Kind::BFloat16 => DType::Bf16,
        Kind::Half => DType::F16,
        _ => DType::F32,
    }
}

fn kind_of(dtype: i32) -> Option<Kind> {
    match DType::try_from(dtype).ok()? {
        DType::F32 => Some(Kind::Float),
        DType::Bf16 => Some(Kind::BFloat16),
        DType::F16 => Some(Kind::Half),
        DType::Unspecified => None,
    }
}

/// The bytes of a tensor, little-endian, row-major (on CPU).
fn tensor_bytes(tensor: &Tensor) -> Vec<u8> {
    let flat = tensor.detach().to_device(Device::Cpu).contiguous().reshape([-1]);
    // A byte view of the same storage: the exact bits, whatever the dtype.
    Vec::<u8>::try_from(flat.view_dtype(Kind::Uint8)).unwrap_or_default()
}

/// Cuts `model`'s weights into the chunks of `version`.
pub fn publish(model: &Qwen2, version: u64) -> Published {
    let tensors: Vec<(&str, &Tensor)> = model.checkpoint_tensors().collect();
    let count = tensors.len() as u32;
    let mut chunks = Vec::new();
    for (name, tensor) in tensors {
        // One buffer per tensor; its chunks are views of it.
        let bytes = bytes::Bytes::from(tensor_bytes(tensor));
        let shape: Vec<u64> = tensor.size().iter().map(|&d| d as u64).collect();
        let dtype = dtype_of(tensor.kind()) as i32;
        let mut offset = 0;
        // A tensor with no elements still gets one (empty) chunk, so every name arrives.
        loop {
            let end = (offset + CHUNK_BYTES).min(bytes.len());
            chunks.push(WeightChunk {
                version,
                tensor_name: name.to_owned(),
                dtype,
                shape: shape.clone(),
                offset: offset as u64,
                data: bytes.slice(offset..end),
                last: false,
                tensor_count: count,
            });
            offset = end;
            if offset >= bytes.len() {
                break;
            }
        }
    }
    if let Some(last) = chunks.last_mut() {
        last.last = true;
    }
    Published { version, chunks }
}

/// One tensor of a received version.
#[derive(Debug, Clone)]
pub struct ReceivedTensor {
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its dtype.
    pub kind: Kind,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A whole received version.
#[derive(Debug, Clone)]
pub struct PolicyVersion {
    /// The version number.
    pub version: u64,
    /// Tensors by name.
    pub tensors: HashMap<String, ReceivedTensor>,
}

/// Puts versions back together from a stream of chunks.
#[derive(Debug, Default)]
pub struct Assembler {
    version: Option<u64>,
    tensors: HashMap<String, ReceivedTensor>,
}

impl Assembler {
    /// Takes one chunk; returns the version when this chunk completed it. A chunk of a new
    /// version drops a partial older one (the learner moved on mid-send).
    pub fn push(&mut self, chunk: WeightChunk) -> Result<Option<Arc<PolicyVersion>>, WeightsError> {
        if self.version != Some(chunk.version) {
            self.version = Some(chunk.version);
            self.tensors.clear();
        }
        let mismatch =
            |message: String| WeightsError::Mismatch { name: chunk.tensor_name.clone(), message };
        let kind = kind_of(chunk.dtype)
            .ok_or_else(|| mismatch(format!("dtype {} unknown", chunk.dtype)))?;
        let entry =
            self.tensors.entry(chunk.tensor_name.clone()).or_insert_with(|| ReceivedTensor {
                shape: chunk.shape.iter().map(|&d| d as i64).collect(),
                kind,
                bytes: Vec::new(),
            });
        if chunk.offset as usize != entry.bytes.len() {
            return Err(mismatch(format!(
                "chunk at offset {} after {} bytes",
                chunk.offset,
                entry.bytes.len()
            )));
        }
        entry.bytes.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(None);
        }
        let tensors = std::mem::take(&mut self.tensors);
        if tensors.len() != chunk.tensor_count as usize {
            return Err(WeightsError::Incomplete {
                version: chunk.version,
                got: tensors.len(),
                expected: chunk.tensor_count as usize,
            });
        }
        for (name, t) in &tensors {
            let expected = t.shape.iter().product::<i64>() as usize * t.kind.elt_size_in_bytes();
            if t.bytes.len() != expected {
                return Err(WeightsError::Mismatch {
                    name: name.clone(),
                    message: format!("got {} bytes, its shape needs {expected}", t.bytes.len()),
                });
            }
        }
        self.version = None;
        Ok(Some(Arc::new(PolicyVersion { version: chunk.version, tensors })))
    }
}

/// Copies `version` into `model`; every tensor of the model must be there with its shape and
/// dtype, or nothing is copied.
pub fn apply(model: &Qwen2, version: &PolicyVersion) -> Result<(), WeightsError> {
    let targets: Vec<(&str, &Tensor)> = model.checkpoint_tensors().collect();
    if targets.len() != version.tensors.len() {
        return Err(WeightsError::Incomplete {
            version: version.version,
            got: version.tensors.len(),
            expected: targets.len(),
        });
    }
    let mut sources = Vec::with_capacity(targets.len());
    for (name, target) in &targets {
        let received = version
            .tensors
            .get(*name)
            .ok_or_else(|| WeightsError::UnknownTensor((*name).to_owned()))?;
        let mismatch =
            |message: String| WeightsError::Mismatch { name: (*name).to_owned(), message };
        if received.shape != target.size() || received.kind != target.kind() {
            return Err(mismatch(format!(
                "got {:?} {:?}, the model has {:?} {:?}",
                received.shape,
                received.kind,
                target.size(),
                target.kind()
            )));
        }
        let expected = target.numel() * target.kind().elt_size_in_bytes();
        if received.bytes.len() != expected {
            return Err(mismatch(format!("{} bytes, expected {expected}", received.bytes.len())));
        }
        sources.push(
            Tensor::from_slice(&received.bytes)
                .view_dtype(received.kind)
                .view(received.shape.as_slice())
                .to_device(target.device()),
        );
    }
    let _guard = tch::no_grad_guard();
    for ((_, target), source) in targets.iter().zip(sources) {
        target.shallow_clone().copy_(&source);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use policy::ModelConfig;

    use super::*;

    fn model(seed: i64) -> Qwen2 {
        let model =
            Qwen2::zeros(ModelConfig::named("tiny").expect("tiny"), Kind::Float, Device::Cpu);
        model.init_random(seed);
        model
    }

    #[test]
    fn a_published_version_applied_elsewhere_gives_the_same_bits() {
        let (source, target) = (model(1), model(2));
        let published = publish(&source, 7);
        assert!(published.chunks.iter().all(|c| c.data.len() <= CHUNK_BYTES));
        assert_eq!(published.chunks.iter().filter(|c| c.last).count(), 1);
        let mut assembler = Assembler::default();
        let mut done = None;
        for chunk in published.chunks {
            if let Some(v) = assembler.push(chunk).expect("chunk") {
                done = Some(v);
            }
        }
        let version = done.expect("complete");
        assert_eq!(version.version, 7);
        apply(&target, &version).expect("apply");
        for ((name, a), (_, b)) in source.checkpoint_tensors().zip(target.checkpoint_tensors()) {
            assert!(a.equal(b), "{name} differs");
        }
    }

    #[test]
    fn a_large_tensor_is_cut_into_chunks_and_a_gap_is_an_error() {
        let mut config = ModelConfig::named("tiny").expect("tiny");
        config.vocab_size = 4096; // embedding 4096 x 128 f32 = 2 MiB: at least two chunks
        let model = Qwen2::zeros(config, Kind::Float, Device::Cpu);
        let published = publish(&model, 1);
        let embed: Vec<&WeightChunk> =
            published.chunks.iter().filter(|c| c.tensor_name.contains("embed_tokens")).collect();
        assert_eq!(embed.len(), 2);
        let mut assembler = Assembler::default();
        let mut chunks = published.chunks.clone();
        let skip = chunks.iter().position(|c| c.offset > 0).expect("a second chunk");
        chunks.remove(skip);
        let err = chunks.into_iter().find_map(|c| assembler.push(c).err()).expect("gap");
        assert!(matches!(err, WeightsError::Mismatch { .. }), "{err}");
        // A model of another shape refuses the version whole.
        let mut assembler = Assembler::default();
        let version = published
            .chunks
            .into_iter()
            .find_map(|c| assembler.push(c).expect("chunk"))
            .expect("complete");
        let err = apply(&self::model(0), &version).expect_err("shape");
        assert!(err.to_string().contains("embed_tokens"), "{err}");
    }
}
