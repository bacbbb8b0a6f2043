//! Policy weights on the wire (`paretopo.v1.WeightChunk`): the learner cuts each checkpoint
//! tensor's little-endian bytes into chunks below the 4 MiB gRPC limit, and the actor puts a
//! version back together and copies it into its model between episodes. Tensors travel by
//! their Hugging Face names in the model's own order and dtype, so a version is exactly the
//! learner's parameters: no conversion, no rounding.
//!
//! The same versions also travel over plain TCP ([`write_raw`], [`read_raw`]): one header
//! naming every tensor with its dtype, shape and length, then the tensors' bytes back to back,
//! written straight from the chunks' buffers. The gRPC stream costs several copies per byte in
//! its framing; a large policy moves several times faster this way (BENCHMARKS.md).
//!
//! What it does not do: decide when to publish or subscribe (the learner's and the actor's
//! loops do).

use std::collections::HashMap;
use std::sync::Arc;

use paretopo_proto::v1::{DType, WeightChunk};
use policy::Qwen2;
use std::io::{Read, Write};
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
pub fn tensor_bytes(tensor: &Tensor) -> Vec<u8> {
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
                raw_address: String::new(),
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

/// The first bytes of a raw version: format and its revision.
const RAW_MAGIC: &[u8; 4] = b"PPW1";
/// Longest tensor name and most dimensions a raw header may carry (a bound on bad input).
const RAW_MAX_NAME: usize = 1024;
const RAW_MAX_DIMS: usize = 8;
/// Most tensors in a raw version.
const RAW_MAX_TENSORS: usize = 1 << 16;

/// Writes `published` in the raw format: `PPW1`, the version (u64), the tensor count (u32),
/// per tensor its name (u16 length + UTF-8), dtype (u8, `DType`), dimensions (u8 count + u64
/// each) and byte length (u64), then every tensor's bytes in header order. All integers are
/// little-endian.
pub fn write_raw(out: &mut impl Write, published: &Published) -> std::io::Result<()> {
    out.write_all(&raw_header(published))?;
    for chunk in &published.chunks {
        out.write_all(&chunk.data)?;
    }
    out.flush()
}

/// The header [`write_raw`] writes before the tensors' bytes (the chunks' payloads, in order).
pub fn raw_header(published: &Published) -> Vec<u8> {
    // Chunks come tensor by tensor in order, so a tensor's chunks are consecutive.
    let mut tensors: Vec<(&WeightChunk, u64)> = Vec::new();
    for chunk in &published.chunks {
        match tensors.last_mut() {
            Some((first, len)) if first.tensor_name == chunk.tensor_name => {
                *len += chunk.data.len() as u64;
            }
            _ => tensors.push((chunk, chunk.data.len() as u64)),
        }
    }
    let mut header = Vec::with_capacity(64 * tensors.len() + 16);
    header.extend_from_slice(RAW_MAGIC);
    header.extend_from_slice(&published.version.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for (chunk, len) in &tensors {
        let name = chunk.tensor_name.as_bytes();
        header.extend_from_slice(&(name.len() as u16).to_le_bytes());
        header.extend_from_slice(name);
        header.push(chunk.dtype as u8);
        header.push(chunk.shape.len() as u8);
        for d in &chunk.shape {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&len.to_le_bytes());
    }
    header
}

pub(crate) fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn read_array<const N: usize>(input: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Reads one version in the raw format ([`write_raw`]) into the buffers of `staging` (an
/// earlier version no one holds any more) where they fit; malformed input is an `InvalidData`
/// error, never a panic or an unbounded allocation before the bytes arrive. Blocking: call it
/// from a blocking thread.
pub fn read_raw(
    input: &mut impl Read,
    mut staging: Option<PolicyVersion>,
) -> std::io::Result<PolicyVersion> {
    let magic: [u8; 4] = read_array(input)?;
    if &magic != RAW_MAGIC {
        return Err(invalid(format!("not a raw policy version (magic {magic:?})")));
    }
    let version = u64::from_le_bytes(read_array(input)?);
    let count = u32::from_le_bytes(read_array(input)?) as usize;
    if count > RAW_MAX_TENSORS {
        return Err(invalid(format!("{count} tensors is more than {RAW_MAX_TENSORS}")));
    }
    let mut order = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = u16::from_le_bytes(read_array(input)?) as usize;
        if name_len > RAW_MAX_NAME {
            return Err(invalid(format!("a tensor name of {name_len} bytes")));
        }
        let mut name = vec![0u8; name_len];
        input.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|e| invalid(format!("tensor name: {e}")))?;
        let [dtype] = read_array::<1>(input)?;
        let kind =
            kind_of(i32::from(dtype)).ok_or_else(|| invalid(format!("{name}: dtype {dtype}")))?;
        let [dims] = read_array::<1>(input)?;
        let dims = dims as usize;
        if dims > RAW_MAX_DIMS {
            return Err(invalid(format!("{name}: {dims} dimensions")));
        }
        let mut shape = Vec::with_capacity(dims);
        for _ in 0..dims {
            let d = u64::from_le_bytes(read_array(input)?);
            shape.push(i64::try_from(d).map_err(|e| invalid(e.to_string()))?);
        }
        let len = u64::from_le_bytes(read_array(input)?);
        let expected = shape.iter().try_fold(kind.elt_size_in_bytes() as u64, |acc, &d| {
            acc.checked_mul(u64::try_from(d).ok()?)
        });
        if expected != Some(len) {
            return Err(invalid(format!("{name}: {len} bytes for shape {shape:?} {kind:?}")));
        }
        order.push((name, ReceivedTensor { shape, kind, bytes: Vec::new() }, len as usize));
    }
    let mut tensors = HashMap::with_capacity(count);
    for (name, mut tensor, len) in order {
        // A buffer of the version before is reused when it fits: its pages are already
        // there, and first-touch page faults on gigabytes of fresh memory cost more than the
        // transfer itself.
        tensor.bytes = match staging.as_mut().and_then(|old| old.tensors.remove(&name)) {
            Some(old) if old.bytes.len() == len => old.bytes,
            _ => vec![0u8; len],
        };
        input.read_exact(&mut tensor.bytes)?;
        tensors.insert(name, tensor);
    }
    Ok(PolicyVersion { version, tensors })
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
    fn a_version_sent_raw_is_the_same_bits_and_bad_headers_are_errors() {
        let (source, target) = (model(3), model(4));
        let published = publish(&source, 9);
        let mut wire = Vec::new();
        write_raw(&mut wire, &published).expect("write");
        let version = read_raw(&mut wire.as_slice(), None).expect("read");
        // Read again into the first one's buffers: the same bits.
        let again = read_raw(&mut wire.as_slice(), Some(version.clone())).expect("reuse");
        for (name, t) in &version.tensors {
            assert_eq!(again.tensors[name].bytes, t.bytes, "{name}");
        }
        assert_eq!(version.version, 9);
        apply(&target, &version).expect("apply");
        for ((name, a), (_, b)) in source.checkpoint_tensors().zip(target.checkpoint_tensors()) {
            assert!(a.equal(b), "{name} differs");
        }
        // Cut short anywhere, or with a wrong magic or byte length, it is an error.
        for cut in [3, 20, wire.len() / 2, wire.len() - 1] {
            assert!(read_raw(&mut &wire[..cut], None).is_err(), "cut at {cut}");
        }
        let mut bad = wire.clone();
        bad[0] = b'X';
        assert!(read_raw(&mut bad.as_slice(), None).is_err());
        // A tensor count past the bound (bytes 12..16) is refused before anything is allocated.
        let mut bad = wire.clone();
        bad[12..16].copy_from_slice(&(1u32 << 20).to_le_bytes());
        let err = read_raw(&mut bad.as_slice(), None).expect_err("tensor count");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
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
