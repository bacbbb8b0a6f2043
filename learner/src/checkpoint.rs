//! Learner checkpoints (DESIGN.md §10): `checkpoints/step-<n>/` in the run directory holds the
//! policy in the Hugging Face layout (`transformers` opens it), `optimizer.safetensors` (AdamW's
//! moments) and `trainer_state.json` (step, optimizer step, policy version, data position and
//! the objective weights in use). `checkpoints/latest` names the newest complete one; a
//! checkpoint is written under a temporary name and renamed, so `latest` never points at half
//! a directory. A learner that starts and finds `latest` resumes from it.
//!
//! The learner draws no random numbers during RL (advantages and the loss are deterministic;
//! the actors sample), so there is no generator state to save beyond the run seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use policy::{AdamW, Qwen2, SaveOptions, Tokenizer};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// What a checkpoint says about the run besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Learner steps completed.
    pub step: u64,
    /// AdamW's step count (bias correction).
    pub optimizer_step: i64,
    /// The policy version published last.
    pub policy_version: u64,
    /// Data position: groups taken into steps so far, over all actors.
    pub groups_consumed: u64,
    /// Data position per actor: the last group sequence number taken from it, so a resumed
    /// learner recognises groups it already trained on.
    pub last_group_seq: BTreeMap<String, u64>,
    /// The objective weights of the last step and their sequence number.
    pub objective_weights: Vec<f64>,
    /// The stage of the last step.
    pub stage: u8,
}

/// What can go wrong reading or writing a checkpoint; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("checkpoint {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Io { path: path.to_owned(), message: e.to_string() }
}

/// The checkpoints directory of a run.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes `step-<n>` and points `latest` at it.
pub fn save(
    run_dir: &Path,
    model: &Qwen2,
    tokenizer: &Tokenizer,
    optimizer: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf, CheckpointError> {
    let root = checkpoints_dir(run_dir);
    let name = format!("step-{}", state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
    let options = SaveOptions { tokenizer: Some(tokenizer), ..Default::default() };
    policy::checkpoint::save(model, &tmp, &options).map_err(|e| io_error(&tmp, e))?;
    let moments = [("exp_avg", &optimizer.exp_avg), ("exp_avg_sq", &optimizer.exp_avg_sq)];
    let moments: Vec<(&str, Tensor)> =
        moments.iter().map(|(n, t)| (*n, t.to_device(tch::Device::Cpu))).collect();
    let file = tmp.join("optimizer.safetensors");
    Tensor::write_safetensors(&moments, &file).map_err(|e| io_error(&file, e))?;
    let file = tmp.join("trainer_state.json");
    let text = serde_json::to_string_pretty(state).map_err(|e| io_error(&file, e))?;
    std::fs::write(&file, text).map_err(|e| io_error(&file, e))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| io_error(&dir, e))?;
    let latest = root.join("latest");
    let latest_tmp = root.join("latest.tmp");
    std::fs::write(&latest_tmp, &name).map_err(|e| io_error(&latest_tmp, e))?;
    std::fs::rename(&latest_tmp, &latest).map_err(|e| io_error(&latest, e))?;
    Ok(dir)
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    let root = checkpoints_dir(run_dir);
    let file = root.join("latest");
    match std::fs::read_to_string(&file) {
        Ok(name) => {
            let dir = root.join(name.trim());
            if dir.is_dir() {
                Ok(Some(dir))
            } else {
                Err(io_error(&file, "names a missing directory"))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&file, e)),
    }
}

/// Loads the checkpoint in `dir` into `model` and `optimizer`; returns its trainer state.
pub fn load(
    dir: &Path,
    model: &Qwen2,
    optimizer: &mut AdamW,
) -> Result<TrainerState, CheckpointError> {
    policy::checkpoint::load_weights(model, dir).map_err(|e| io_error(dir, e))?;
    let file = dir.join("optimizer.safetensors");
    let device = optimizer.exp_avg.device();
    for (name, tensor) in Tensor::read_safetensors(&file).map_err(|e| io_error(&file, e))? {
        let target = match name.as_str() {
            "exp_avg" => &mut optimizer.exp_avg,
            "exp_avg_sq" => &mut optimizer.exp_avg_sq,
            other => return Err(io_error(&file, format!("unexpected tensor {other:?}"))),
        };
        if tensor.size() != target.size() {
            return Err(io_error(
                &file,
                format!(
                    "{name} has shape {:?}, the model needs {:?}",
                    tensor.size(),
                    target.size()
                ),
            ));
        }
        *target = tensor.to_device(device);
    }
    let file = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&file).map_err(|e| io_error(&file, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| io_error(&file, e))?;
    optimizer.step = state.optimizer_step;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use policy::train::AdamWConfig;
    use policy::{ModelConfig, Qwen2};
    use tch::{Device, Kind};

    use super::*;

    #[test]
    fn a_saved_checkpoint_loads_back_bit_for_bit() {
        let dir = tempfile::tempdir().expect("dir");
        let tokenizer = Tokenizer::synthetic(&[]).expect("tokenizer");
        let model =
            Qwen2::zeros(ModelConfig::named("tiny").expect("tiny"), Kind::Float, Device::Cpu);
        model.init_random(1);
        let mut optimizer = AdamW::new(model.parameters(), AdamWConfig::default());
        optimizer.exp_avg = Tensor::randn([model.parameters().numel()], (Kind::Float, Device::Cpu));
        optimizer.exp_avg_sq = optimizer.exp_avg.square();
        optimizer.step = 12;
        let state = TrainerState {
            step: 12,
            optimizer_step: 12,
            policy_version: 6,
            groups_consumed: 96,
            last_group_seq: BTreeMap::from([("actor-0".to_owned(), 50)]),
            objective_weights: vec![0.5, 0.25, 0.25],
            stage: 1,
        };
        assert_eq!(latest(dir.path()).expect("none yet"), None);
        let written = save(dir.path(), &model, &tokenizer, &optimizer, &state).expect("save");
        assert_eq!(latest(dir.path()).expect("latest"), Some(written.clone()));

        let other =
            Qwen2::zeros(ModelConfig::named("tiny").expect("tiny"), Kind::Float, Device::Cpu);
        other.init_random(2);
        let mut other_optimizer = AdamW::new(other.parameters(), AdamWConfig::default());
        let loaded = load(&written, &other, &mut other_optimizer).expect("load");
        assert_eq!(loaded, state);
        assert_eq!(other_optimizer.step, 12);
        assert!(other_optimizer.exp_avg.equal(&optimizer.exp_avg));
        assert!(other_optimizer.exp_avg_sq.equal(&optimizer.exp_avg_sq));
        for ((name, a), (_, b)) in model.parameters().iter().zip(other.parameters().iter()) {
            assert!(a.equal(b), "{name}");
        }
    }
}
