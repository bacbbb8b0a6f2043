//! `manifest.json`: the size and SHA-256 of every other file of a checkpoint directory, so that
//! a torn, truncated or altered checkpoint is refused at load, naming the file
//! ([`crate::checkpoint::load`] checks it whenever the file is there; the learner writes it).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// One file's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileDigest {
    bytes: u64,
    sha256: String,
}

/// Every file of the checkpoint but the manifest itself, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    files: BTreeMap<String, FileDigest>,
}

fn digest(path: &Path) -> std::io::Result<FileDigest> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileDigest { bytes, sha256 })
}

/// The regular files of `dir` (flat, as the Hugging Face layout is) but the manifest.
fn files_of(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && name != MANIFEST {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Writes `dir/manifest.json` for every other file of `dir`, syncing each file first and the
/// manifest after.
pub fn write(dir: &Path) -> std::io::Result<()> {
    let sync = |path: &Path| std::fs::File::open(path).and_then(|f| f.sync_all());
    let mut manifest = Manifest { files: BTreeMap::new() };
    for name in files_of(dir)? {
        let path = dir.join(&name);
        sync(&path)?;
        manifest.files.insert(name, digest(&path)?);
    }
    let file = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).map_err(std::io::Error::other)?;
    std::fs::write(&file, text)?;
    sync(&file)
}

/// Checks every file `dir/manifest.json` lists; the error names the file that differs.
pub fn verify(dir: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(dir.join(MANIFEST)).map_err(|e| format!("{MANIFEST}: {e}"))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| format!("{MANIFEST}: {e}"))?;
    for (name, want) in &manifest.files {
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(format!(
                "{MANIFEST} names {name:?}, which is not a file of this directory"
            ));
        }
        let got = digest(&dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if got.bytes != want.bytes {
            return Err(format!(
                "{name} has {} bytes, the manifest says {}",
                got.bytes, want.bytes
            ));
        }
        if got.sha256 != want.sha256 {
            return Err(format!("{name}'s SHA-256 differs from the manifest's"));
        }
    }
    Ok(())
}
