//! A run's CA, one certificate per principal, and an operator token, for
//! local runs and tests (in Kubernetes, cert-manager issues the same layout from a CA Secret;
//! docs/security.md).
//!
//! ```text
//! DIR/ca.crt, DIR/ca.key             the run's CA (keep ca.key off the cluster)
//! DIR/<principal>/tls.crt, tls.key   one per coordinator, learner, actor, tool-server, operator
//! DIR/<principal>/ca.crt             the CA again, so each directory is a complete tls_dir
//! DIR/<principal>/tokens.sha256      the SHA-256 of the operator token (what servers accept)
//! DIR/operator/token                 the operator's bearer token
//! ```
//!
//! Each certificate names its principal in one DNS name, `<principal>.paretopo`, and is valid
//! for both server and client authentication. Keys and the token are written with mode 0600,
//! and never printed.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::security::{Principal, token_digest_hex};
use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What `certs` made.
#[derive(Debug)]
pub struct Made {
    /// The per-principal directories, in [`Principal::ALL`] order.
    pub dirs: Vec<(Principal, PathBuf)>,
}

/// Writes a new CA, certificates for every principal and an operator token under `out`,
/// valid for `days` from now. Refuses to overwrite an existing `ca.crt` (a second CA would
/// lock out every process that holds the first).
pub fn make(out: &Path, run_name: &str, days: u32) -> anyhow::Result<Made> {
    if out.join("ca.crt").exists() {
        anyhow::bail!(
            "{} already holds a CA (ca.crt); choose another directory or remove it",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(days.into());

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("paretopo run {run_name} CA"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    write_secret(&out.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let token = new_token()?;
    let hashes = format!(
        "# Bearer tokens this run accepts: <principal> <sha256 of the token>\noperator {}\n",
        token_digest_hex(token.as_bytes())
    );
    let mut dirs = Vec::new();
    for principal in Principal::ALL {
        let dir = out.join(principal.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut params = CertificateParams::new(vec![principal.dns_name()])?;
        params.distinguished_name.push(DnType::CommonName, principal.dns_name());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_public(&dir.join("tls.crt"), cert.pem().as_bytes())?;
        write_secret(&dir.join("tls.key"), key.serialize_pem().as_bytes())?;
        write_public(&dir.join("ca.crt"), ca_pem.as_bytes())?;
        write_public(&dir.join("tokens.sha256"), hashes.as_bytes())?;
        if principal == Principal::Operator {
            write_secret(&dir.join("token"), format!("{token}\n").as_bytes())?;
        }
        dirs.push((principal, dir));
    }
    // Last: a directory with `ca.crt` is complete (the check above, and the local launcher).
    write_public(&out.join("ca.crt"), ca_pem.as_bytes())?;
    Ok(Made { dirs })
}

/// 32 random bytes from the operating system, as hex.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes `bytes` to a new file only its owner can read.
fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::TlsFiles;

    #[test]
    fn every_directory_loads_and_names_its_own_principal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = make(dir.path(), "t", 1).expect("certs");
        for (principal, path) in &made.dirs {
            let files = TlsFiles::load(path).expect("loads");
            assert_eq!(files.principal, *principal, "{}", path.display());
        }
        let error = make(dir.path(), "t", 1).expect_err("a second CA in the same place");
        assert!(error.to_string().contains("already holds a CA"), "{error}");
    }

    #[test]
    fn keys_and_the_token_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        make(dir.path(), "t", 1).expect("certs");
        for secret in ["ca.key", "learner/tls.key", "operator/token"] {
            let mode =
                std::fs::metadata(dir.path().join(secret)).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
    }
}
