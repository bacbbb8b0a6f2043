//! Who may talk to a process, and how it talks to others: mutual TLS with the run's own CA, and
//! bearer tokens for clients that cannot present a certificate (docs/security.md).
//!
//! Every certificate of a run is signed by the run's CA and names its holder in one DNS
//! subject-alternative name, `<principal>.paretopo` (`learner.paretopo`, `operator.paretopo`).
//! A server learns its caller's principal from that name; a client checks that the server it
//! dialled holds the name of the role it meant to reach, whatever the address. The files are in
//! cert-manager's layout (`tls.crt`, `tls.key`, `ca.crt`), so a Kubernetes Secret mounts as is.
//!
//! Bearer tokens: the server holds only their SHA-256 (`tokens.sha256`, lines of
//! `<principal> <hex>`), so neither its files nor its memory hold a token that works.
//!
//! What it is not: the method table and the refusals are in [`crate::auth`]; making the files
//! is `coordinator certs`.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::Role;
use crate::config::{RunConfig, SecuritySection};

/// The suffix of every principal's DNS name.
pub const NAME_SUFFIX: &str = ".paretopo";

/// Who a caller is: one of the run's roles, or an operator (read-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A process of the run, by role.
    Role(Role),
    /// A person or tool that reads status.
    Operator,
}

impl Principal {
    /// Every principal, in a fixed order.
    pub const ALL: [Principal; 5] = [
        Principal::Role(Role::Coordinator),
        Principal::Role(Role::Learner),
        Principal::Role(Role::Actor),
        Principal::Role(Role::ToolServer),
        Principal::Operator,
    ];

    /// `coordinator`, `learner`, `actor`, `tool-server` or `operator`.
    pub fn name(self) -> &'static str {
        match self {
            Principal::Role(role) => role.name(),
            Principal::Operator => "operator",
        }
    }

    /// The DNS name its certificate holds, `<name>.paretopo`.
    pub fn dns_name(self) -> String {
        format!("{}{NAME_SUFFIX}", self.name())
    }

    /// The principal called `name`.
    pub fn from_name(name: &str) -> Option<Principal> {
        Principal::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the security set-up could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read.
    #[error("`security.{key}`: cannot read {path}: {source}")]
    Read {
        /// The config key that led to the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's contents are not what they should be.
    #[error("`security.{key}`: {path}: {message}")]
    Invalid {
        /// The config key that led to the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's bytes).
        message: String,
    },
    /// The certificate names another principal than the process's role.
    #[error(
        "`security.tls_dir`: the certificate names the {found}, but this process is the {role}"
    )]
    WrongPrincipal {
        /// The process's role.
        role: Role,
        /// What the certificate names.
        found: Principal,
    },
    /// Plaintext on an address other peers can reach, without `--insecure`.
    #[error(
        "TLS is off (`security.tls_dir` is unset) and {what} is {address}, which is not \
         loopback: give this process its certificate (`coordinator certs` makes them) or pass \
         --insecure to serve plaintext anyway"
    )]
    PlaintextOffLoopback {
        /// Which address (a config key).
        what: String,
        /// The address.
        address: String,
    },
}

/// Bytes that must never be printed: `Debug` shows only their length.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The bytes, to hand to a TLS library.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret([{} bytes redacted])", self.0.len())
    }
}

/// A process's certificate, key and the run's CA, in PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `tls.crt`: this process's certificate (chain).
    pub cert_pem: Vec<u8>,
    /// `tls.key`: its private key.
    pub key_pem: Secret,
    /// `ca.crt`: the run's CA.
    pub ca_pem: Vec<u8>,
    /// The principal the certificate names.
    pub principal: Principal,
}

impl TlsFiles {
    /// Reads `dir/tls.crt`, `dir/tls.key` and `dir/ca.crt` and finds the principal the
    /// certificate names.
    pub fn load(dir: &Path) -> Result<TlsFiles, SecurityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| SecurityError::Read {
                key: "tls_dir",
                path,
                source,
            })
        };
        let (cert_pem, key_pem, ca_pem) =
            (read("tls.crt")?, Secret(read("tls.key")?), read("ca.crt")?);
        let invalid = |name: &str, message: String| SecurityError::Invalid {
            key: "tls_dir",
            path: dir.join(name),
            message,
        };
        let certs = pem_certificates(&cert_pem).map_err(|m| invalid("tls.crt", m))?;
        pem_certificates(&ca_pem).map_err(|m| invalid("ca.crt", m))?;
        let leaf =
            certs.first().ok_or_else(|| invalid("tls.crt", "holds no certificate".into()))?;
        let principal = principal_of(leaf).map_err(|m| invalid("tls.crt", m))?;
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(key_pem.expose())
            .map_err(|_| invalid("tls.key", "holds no PEM private key".into()))?;
        Ok(TlsFiles { cert_pem, key_pem, ca_pem, principal })
    }
}

/// The DER certificates in `pem`; an error names what is wrong, never the bytes.
fn pem_certificates(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// The one principal whose DNS name `cert` is valid for.
pub fn principal_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Result<Principal, String> {
    let cert = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let named: Vec<Principal> = Principal::ALL
        .into_iter()
        .filter(|p| {
            let name = rustls::pki_types::ServerName::try_from(p.dns_name()).ok();
            name.is_some_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .collect();
    match named.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "names no principal (a DNS name `<role>{NAME_SUFFIX}`: coordinator, learner, actor, \
             tool-server or operator)"
        )),
        _ => Err(format!("names more than one principal: {named:?}")),
    }
}

/// SHA-256 of accepted bearer tokens, by principal.
#[derive(Debug, Clone, Default)]
pub struct TokenHashes(Vec<(Principal, [u8; 32])>);

impl TokenHashes {
    /// Parses lines of `<principal> <64 hex digits>`; `#` starts a comment.
    pub fn parse(text: &str) -> Result<TokenHashes, String> {
        let mut hashes = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", index + 1);
            let (name, hex) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `<principal> <sha256 hex>`"))?;
            let principal = Principal::from_name(name)
                .ok_or_else(|| bad(&format!("unknown principal {name:?}")))?;
            let digest = decode_hex32(hex.trim()).ok_or_else(|| bad("expected 64 hex digits"))?;
            hashes.push((principal, digest));
        }
        Ok(TokenHashes(hashes))
    }

    /// The principal whose token is `token`, comparing digests in constant time.
    pub fn principal_of(&self, token: &[u8]) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for (principal, hash) in &self.0 {
            let differ = hash.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differ == 0 {
                found = Some(*principal);
            }
        }
        found
    }

    /// Whether any token is accepted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The hex SHA-256 of `token`, as `tokens.sha256` holds it.
pub fn token_digest_hex(token: &[u8]) -> String {
    Sha256::digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A process's security set-up: its certificate (TLS on) or none (plaintext), the bearer
/// tokens it accepts, and the token it presents when it has no certificate.
#[derive(Debug, Clone)]
pub struct Security {
    tls: Option<TlsFiles>,
    /// Built once from `tls`: the configs of the blocking streams and the metrics port.
    rustls: Option<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)>,
    tokens: TokenHashes,
    bearer: Option<Secret>,
    max_auth_failures_per_minute: u32,
}

impl Default for Security {
    /// Plaintext, no tokens: what unit tests and loopback-only runs use.
    fn default() -> Security {
        Security::load(&SecuritySection::default()).unwrap_or(Security {
            tls: None,
            rustls: None,
            tokens: TokenHashes::default(),
            bearer: None,
            max_auth_failures_per_minute: 10,
        })
    }
}

impl Security {
    /// The credential in one certificate directory (`tls.crt`, `tls.key`, `ca.crt`, and
    /// `tokens.sha256` when there), with the other `[security]` keys at their defaults: what
    /// a client holding one principal's certificate loads.
    pub fn from_tls_dir(dir: &Path) -> Result<Security, SecurityError> {
        Security::load(&SecuritySection { tls_dir: Some(dir.to_owned()), ..Default::default() })
    }

    /// Loads `[security]`: the certificate directory, the token hashes and the bearer token.
    pub fn load(section: &SecuritySection) -> Result<Security, SecurityError> {
        let tls = section.tls_dir.as_deref().map(TlsFiles::load).transpose()?;
        let hashes_path = section.token_hashes.clone().or_else(|| {
            section.tls_dir.as_ref().map(|d| d.join("tokens.sha256")).filter(|p| p.exists())
        });
        let tokens = match hashes_path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| {
                    SecurityError::Read { key: "token_hashes", path: path.clone(), source }
                })?;
                TokenHashes::parse(&text).map_err(|message| SecurityError::Invalid {
                    key: "token_hashes",
                    path,
                    message,
                })?
            }
            None => TokenHashes::default(),
        };
        let bearer = match &section.token_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| SecurityError::Read {
                    key: "token_file",
                    path: path.clone(),
                    source,
                })?;
                let token = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
                if token.is_empty() {
                    return Err(SecurityError::Invalid {
                        key: "token_file",
                        path: path.clone(),
                        message: "is empty".into(),
                    });
                }
                Some(Secret(token))
            }
            None => None,
        };
        let rustls = match &tls {
            Some(files) => {
                let invalid = |message| SecurityError::Invalid {
                    key: "tls_dir",
                    path: section.tls_dir.clone().unwrap_or_default(),
                    message,
                };
                Some((
                    build_server_config(files).map_err(invalid)?,
                    build_client_config(files).map_err(invalid)?,
                ))
            }
            None => None,
        };
        Ok(Security {
            tls,
            rustls,
            tokens,
            bearer,
            max_auth_failures_per_minute: section.max_auth_failures_per_minute,
        })
    }

    /// Whether this process serves and dials TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// The principal this process's certificate names.
    pub fn own_principal(&self) -> Option<Principal> {
        self.tls.as_ref().map(|t| t.principal)
    }

    /// The accepted bearer tokens.
    pub fn tokens(&self) -> &TokenHashes {
        &self.tokens
    }

    /// Failed authentications one peer address may make in a minute before the rest are
    /// refused without a check.
    pub fn max_auth_failures_per_minute(&self) -> u32 {
        self.max_auth_failures_per_minute
    }

    /// The bearer token this process presents when it calls without a certificate.
    pub fn bearer(&self) -> Option<&Secret> {
        self.bearer.as_ref()
    }

    /// tonic's server TLS: this certificate, and client certificates checked against the
    /// run's CA but optional, so that token clients and health checks get in far enough to be
    /// told (`crate::auth` decides).
    pub fn server_tls(&self) -> Option<tonic::transport::ServerTlsConfig> {
        let tls = self.tls.as_ref()?;
        Some(
            tonic::transport::ServerTlsConfig::new()
                .identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.expose()))
                .client_ca_root(Certificate::from_pem(&tls.ca_pem))
                .client_auth_optional(true)
                .timeout(Duration::from_secs(10)),
        )
    }

    /// The rustls server config that requires a client certificate of the run's CA (the
    /// metrics port, the learner's raw weights port and the CPU collective).
    pub fn rustls_server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.rustls.as_ref().map(|(server, _)| server.clone())
    }

    /// The rustls client config presenting this process's certificate and trusting only the
    /// run's CA.
    pub fn rustls_client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.rustls.as_ref().map(|(_, client)| client.clone())
    }

    /// The server end of a blocking stream accepted on a raw port: TLS when this process has
    /// a certificate (the handshake happens on the first read or write).
    pub fn accept_blocking(&self, tcp: TcpStream) -> std::io::Result<BlockingStream> {
        match self.rustls_server_config() {
            None => Ok(BlockingStream::Plain(tcp)),
            Some(config) => {
                let connection =
                    rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
                Ok(BlockingStream::Server(Box::new(rustls::StreamOwned::new(connection, tcp))))
            }
        }
    }

    /// The client end of a blocking stream to the `peer` on its raw port: TLS, checking the
    /// server holds `peer`'s name, when this process has a certificate.
    pub fn connect_blocking(&self, tcp: TcpStream, peer: Role) -> std::io::Result<BlockingStream> {
        match self.rustls_client_config() {
            None => Ok(BlockingStream::Plain(tcp)),
            Some(config) => {
                let name =
                    rustls::pki_types::ServerName::try_from(Principal::Role(peer).dns_name())
                        .map_err(std::io::Error::other)?;
                let connection =
                    rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
                Ok(BlockingStream::Client(Box::new(rustls::StreamOwned::new(connection, tcp))))
            }
        }
    }

    /// A lazily connecting channel to the `peer` at `address` ("host:port" or a URL): TLS
    /// when this process has a certificate, checking that the server's names `peer`.
    pub fn channel(&self, address: &str, peer: Role) -> anyhow::Result<Channel> {
        Ok(self.endpoint(address, peer)?.connect_lazy())
    }

    /// The endpoint [`Security::channel`] connects, for callers that connect eagerly.
    pub fn endpoint(&self, address: &str, peer: Role) -> anyhow::Result<Endpoint> {
        use anyhow::Context;
        let host_port = address.split_once("://").map_or(address, |(_, rest)| rest);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{host_port}");
        let mut endpoint = Endpoint::from_shared(url)
            .with_context(|| format!("bad address {address:?}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::grpc::STREAM_WINDOW)
            .initial_connection_window_size(crate::grpc::CONNECTION_WINDOW);
        if let Some(tls) = &self.tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.expose()))
                .domain_name(Principal::Role(peer).dns_name());
            endpoint = endpoint
                .tls_config(config)
                .with_context(|| format!("TLS to the {peer} at {address}"))?;
        }
        Ok(endpoint)
    }
}

/// The crypto of every TLS connection of the process: ring, with TLS 1.3's AES-128-GCM put
/// first (with AES-NI the fastest suite; a policy version is gigabytes). Installed as the
/// process's default, so that tonic's connections use it too; peers settle on the client's
/// first choice.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::CipherSuite::{
                TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
            };
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites.sort_by_key(|suite| match suite.suite() {
                TLS13_AES_128_GCM_SHA256 => 0,
                TLS13_AES_256_GCM_SHA384 => 1,
                TLS13_CHACHA20_POLY1305_SHA256 => 2,
                _ => 3,
            });
            // Another default installed first (none is, in our binaries) is kept.
            let _ = provider.clone().install_default();
            Arc::new(provider)
        })
        .clone()
}

fn roots(files: &TlsFiles) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_certificates(&files.ca_pem)? {
        roots.add(ca).map_err(|e| format!("ca.crt: {e}"))?;
    }
    Ok(roots)
}

fn private_key(files: &TlsFiles) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(files.key_pem.expose())
        .map_err(|_| "tls.key holds no PEM private key".to_owned())
}

fn build_server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(files)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pem_certificates(&files.cert_pem)?, private_key(files)?)
        .map_err(|e| format!("tls.crt and tls.key: {e}"))?;
    Ok(Arc::new(config))
}

fn build_client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = crypto_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(files)?)
        .with_client_auth_cert(pem_certificates(&files.cert_pem)?, private_key(files)?)
        .map_err(|e| format!("tls.crt and tls.key: {e}"))?;
    Ok(Arc::new(config))
}

/// A blocking TCP stream that is TLS when the process has a certificate: what the raw weights
/// port and the CPU collective speak. Timeouts are set on [`BlockingStream::tcp`].
pub enum BlockingStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, the accepting side.
    Server(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    /// TLS, the connecting side.
    Client(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl std::fmt::Debug for BlockingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            BlockingStream::Plain(_) => "plain",
            BlockingStream::Server(_) => "tls-server",
            BlockingStream::Client(_) => "tls-client",
        };
        f.debug_struct("BlockingStream").field("kind", &kind).field("tcp", self.tcp()).finish()
    }
}

impl BlockingStream {
    /// The TCP stream underneath (for timeouts and `TCP_NODELAY`).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            BlockingStream::Plain(tcp) => tcp,
            BlockingStream::Server(tls) => tls.get_ref(),
            BlockingStream::Client(tls) => tls.get_ref(),
        }
    }

    /// Checks, on the accepting side of TLS once the handshake is done (after the first
    /// read), that the client is the `role`; plaintext and the connecting side pass.
    pub fn expect_peer(&self, role: Role) -> std::io::Result<()> {
        match self {
            BlockingStream::Server(tls) => expect_client(&tls.conn, role),
            BlockingStream::Plain(_) | BlockingStream::Client(_) => Ok(()),
        }
    }
}

/// Checks that the client of a finished TLS handshake presented a certificate naming `role`.
pub fn expect_client(connection: &rustls::ServerConnection, role: Role) -> std::io::Result<()> {
    let denied = |why| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    let leaf = connection.peer_certificates().and_then(|c| c.first());
    let found = principal_of(leaf.ok_or_else(|| denied("no client certificate".to_owned()))?)
        .map_err(denied)?;
    if found != Principal::Role(role) {
        return Err(denied(format!(
            "the {found} credential may not use this port (only the {role})"
        )));
    }
    Ok(())
}

impl std::io::Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlockingStream::Plain(tcp) => tcp.read(buf),
            BlockingStream::Server(tls) => tls.read(buf),
            BlockingStream::Client(tls) => tls.read(buf),
        }
    }
}

impl std::io::Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            BlockingStream::Plain(tcp) => tcp.write(buf),
            BlockingStream::Server(tls) => tls.write(buf),
            BlockingStream::Client(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            BlockingStream::Plain(tcp) => tcp.flush(),
            BlockingStream::Server(tls) => tls.flush(),
            BlockingStream::Client(tls) => tls.flush(),
        }
    }
}

/// Plaintext is allowed only on loopback: checks every address this process listens on or
/// dials (`--insecure` skips the check; the caller logs a warning).
pub fn check_plaintext_allowed(
    config: &RunConfig,
    listening: &[(String, SocketAddr)],
) -> Result<(), SecurityError> {
    if config.security.tls_dir.is_some() || config.security.insecure {
        return Ok(());
    }
    for (what, address) in listening {
        if !address.ip().is_loopback() {
            return Err(SecurityError::PlaintextOffLoopback {
                what: what.clone(),
                address: address.to_string(),
            });
        }
    }
    let coordinator = &config.cluster.coordinator_address;
    if !host_is_loopback(coordinator) {
        return Err(SecurityError::PlaintextOffLoopback {
            what: "`cluster.coordinator_address`".into(),
            address: coordinator.clone(),
        });
    }
    Ok(())
}

/// Whether `address` ("host:port", a URL, or a bare host) names this machine's loopback.
pub fn host_is_loopback(address: &str) -> bool {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    if let Ok(socket) = rest.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    let host = rest.rsplit_once(':').map_or(rest, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_find_the_principal_of_a_token_and_nothing_else() {
        let text = format!(
            "# operators\noperator {}\nactor {}\n",
            token_digest_hex(b"op-secret"),
            token_digest_hex(b"actor-secret")
        );
        let hashes = TokenHashes::parse(&text).expect("parses");
        assert_eq!(hashes.principal_of(b"op-secret"), Some(Principal::Operator));
        assert_eq!(hashes.principal_of(b"actor-secret"), Some(Principal::Role(Role::Actor)));
        assert_eq!(hashes.principal_of(b"op-secreT"), None);
        assert_eq!(hashes.principal_of(b""), None);
    }

    #[test]
    fn token_hash_files_with_mistakes_name_the_line() {
        let error = TokenHashes::parse("operator abc").expect_err("short");
        assert!(error.starts_with("line 1:"), "{error}");
        let error = TokenHashes::parse(&format!("\nroot {}", "0".repeat(64))).expect_err("who");
        assert!(error.contains("line 2") && error.contains("root"), "{error}");
    }

    #[test]
    fn loopback_hosts_are_recognised_in_every_spelling() {
        for yes in ["127.0.0.1:80", "http://127.0.0.1:80", "localhost:1", "[::1]:9", "127.3.2.1"] {
            assert!(host_is_loopback(yes), "{yes}");
        }
        for no in ["10.0.0.1:80", "coordinator.run.svc:50051", "0.0.0.0:1", "https://example:1"] {
            assert!(!host_is_loopback(no), "{no}");
        }
    }

    #[test]
    fn a_secret_never_shows_its_bytes() {
        let shown = format!("{:?}", Secret(b"hunter2".to_vec()));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
