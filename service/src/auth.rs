//! Authorisation of every gRPC call by the caller's principal, as a tower layer in front of a
//! TLS server's routes (docs/security.md has the table in prose).
//!
//! The caller is named by its client certificate (checked against the run's CA by rustls
//! before this layer runs) or, lacking one, by an `authorization: Bearer <token>` header whose
//! SHA-256 the server holds. Then the method decides:
//!
//! | method                                         | who                       |
//! |------------------------------------------------|---------------------------|
//! | `grpc.health.v1.Health/*`                      | anyone (Kubernetes probes)|
//! | `GetStatus`, `WatchStatus`, reflection         | any principal (operators) |
//! | `Coordinator/Register`, `Heartbeat`, `GetRendezvous` | learner, actor, tool-server |
//! | `Coordinator/ReportObjectives`, `WatchWeights` | learner                   |
//! | `Learner/PushTrajectories`, `WatchPolicy`      | actor                     |
//! | `ToolServer/ListTools`, `Call`                 | actor, learner            |
//! | anything else                                  | no one                    |
//!
//! A caller with no credential, or a wrong one, gets UNAUTHENTICATED; a known principal calling
//! another role's method gets PERMISSION_DENIED. Each refusal is logged with the peer address
//! and the method (never the credential), and reaches no handler, so it changes nothing. A
//! peer address that fails to authenticate more than `max_auth_failures_per_minute` times in a
//! minute is refused unchecked for the rest of that minute, logged once; a call that presents a
//! verified client certificate is never held back by that (every process of a local run shares
//! 127.0.0.1 with whatever guesses tokens there).
//!
//! An admitted call carries its [`Principal`] in the request's extensions. Rules that need
//! more than the role (a node id belongs to the role that registered it; only learner rank 0
//! reports objectives) need the membership and are the coordinator's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::Role;
use crate::security::{Principal, Security, principal_of};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a credential.
    Open,
    /// Any principal of the run, operators included.
    AnyPrincipal,
    /// Only these roles.
    Roles(&'static [Role]),
}

/// The access rule of the gRPC method at `path` (`/package.Service/Method`).
pub fn access(path: &str) -> Access {
    use Role::{Actor, Learner, ToolServer};
    if path.starts_with("/grpc.health.v1.Health/") {
        return Access::Open;
    }
    if path.starts_with("/grpc.reflection.") {
        return Access::AnyPrincipal;
    }
    let Some((service, method)) =
        path.strip_prefix("/paretopo.v1.").and_then(|rest| rest.split_once('/'))
    else {
        return Access::Roles(&[]);
    };
    match (service, method) {
        (_, "GetStatus" | "WatchStatus") => Access::AnyPrincipal,
        ("Coordinator", "Register" | "Heartbeat" | "GetRendezvous") => {
            Access::Roles(&[Learner, Actor, ToolServer])
        }
        ("Coordinator", "ReportObjectives" | "WatchWeights") => Access::Roles(&[Learner]),
        ("Learner", "PushTrajectories" | "WatchPolicy") => Access::Roles(&[Actor]),
        ("ToolServer", "ListTools" | "Call") => Access::Roles(&[Actor, Learner]),
        _ => Access::Roles(&[]),
    }
}

/// Why a call was refused: the gRPC status, and the reason the log gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credential, or one that names no principal.
    Unauthenticated(&'static str),
    /// A known principal calling a method that is not its.
    PermissionDenied(Principal),
    /// Too many failures from this peer in the last minute.
    RateLimited,
}

impl Refusal {
    /// The status the caller gets; its message names the method, never a credential.
    pub fn status(&self, method: &str) -> tonic::Status {
        match self {
            Refusal::Unauthenticated(why) => {
                tonic::Status::unauthenticated(format!("{method}: {why}"))
            }
            Refusal::PermissionDenied(who) => tonic::Status::permission_denied(format!(
                "{method}: the {who} credential may not call this method"
            )),
            Refusal::RateLimited => tonic::Status::unauthenticated(format!(
                "{method}: too many failed authentications from this address; try again later"
            )),
        }
    }
}

/// The principal a request presents: its verified client certificate's, else its bearer
/// token's.
pub fn authenticate<B>(
    request: &http::Request<B>,
    security: &Security,
) -> Result<Principal, Refusal> {
    if let Some(leaf) = client_certificate(request) {
        return principal_of(&leaf)
            .map_err(|_| Refusal::Unauthenticated("the client certificate names no principal"));
    }
    let Some(header) = request.headers().get(http::header::AUTHORIZATION) else {
        return Err(Refusal::Unauthenticated("no client certificate and no bearer token"));
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Refusal::Unauthenticated("the authorization header is not `Bearer <token>`"))?;
    security
        .tokens()
        .principal_of(token.trim().as_bytes())
        .ok_or(Refusal::Unauthenticated("the bearer token is not accepted"))
}

/// The leaf of the client certificate the request's TLS connection presented (rustls has
/// verified its chain against the run's CA), if any.
fn client_certificate<B>(
    request: &http::Request<B>,
) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let tls = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
    tls.peer_certs()?.first().cloned()
}

/// Whether `principal` may call a method with `access`.
pub fn permits(access: Access, principal: Principal) -> bool {
    match access {
        Access::Open | Access::AnyPrincipal => true,
        Access::Roles(roles) => matches!(principal, Principal::Role(r) if roles.contains(&r)),
    }
}

/// Failed authentications per peer address, for the rate limit.
#[derive(Debug, Default)]
struct Failures {
    /// Window start and failures in it, by address, at most `MAX_TRACKED` addresses.
    by_peer: HashMap<IpAddr, (Instant, u32)>,
}

const MAX_TRACKED: usize = 4096;
const WINDOW: Duration = Duration::from_secs(60);

impl Failures {
    /// Whether `peer` is over the limit now (a failure in progress is not yet counted).
    fn limited(&mut self, peer: IpAddr, limit: u32, now: Instant) -> bool {
        match self.by_peer.get(&peer) {
            Some((start, count)) => now.duration_since(*start) < WINDOW && *count >= limit,
            None => false,
        }
    }

    /// Counts a failure; returns true when this one reaches the limit (logged once).
    fn record(&mut self, peer: IpAddr, limit: u32, now: Instant) -> bool {
        if self.by_peer.len() >= MAX_TRACKED && !self.by_peer.contains_key(&peer) {
            // Make room from windows that have ended; when every tracked address is in a live
            // window, a new address goes untracked rather than freeing one that is limited.
            self.by_peer.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.by_peer.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = self.by_peer.entry(peer).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 == limit
    }
}

/// The tower layer that authorises every call (see the module docs).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    security: Arc<Security>,
    failures: Arc<Mutex<Failures>>,
}

impl AuthLayer {
    /// Authorises by `security`'s token hashes and rate limit.
    pub fn new(security: Arc<Security>) -> AuthLayer {
        AuthLayer { security, failures: Arc::default() }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The decision for `request`, with logging and the rate limit: the caller's principal
    /// (`None` on an open method), or the refusal.
    fn decide<B>(&self, request: &http::Request<B>) -> Result<Option<Principal>, Refusal> {
        let method = request.uri().path();
        let access = access(method);
        if access == Access::Open {
            return Ok(None);
        }
        let peer = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|t| t.get_ref().remote_addr())
            .or_else(|| request.extensions().get::<TcpConnectInfo>().and_then(|t| t.remote_addr()));
        let peer_ip = peer.map(|p| p.ip());
        let limit = self.security.max_auth_failures_per_minute();
        let now = Instant::now();
        // A verified client certificate is never rate-limited: the limit is for guessing
        // tokens, and must not lock out the run's processes that share an address with a
        // guesser (every process of a local run is 127.0.0.1).
        if client_certificate(request).is_none()
            && let Some(ip) = peer_ip
            && self.failures().limited(ip, limit, now)
        {
            return Err(Refusal::RateLimited);
        }
        let refusal = match authenticate(request, &self.security) {
            Ok(principal) if permits(access, principal) => return Ok(Some(principal)),
            Ok(principal) => Refusal::PermissionDenied(principal),
            Err(refusal) => refusal,
        };
        let peer_shown = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        match &refusal {
            Refusal::PermissionDenied(who) => {
                tracing::warn!(peer = %peer_shown, method, principal = %who, "call refused: permission denied");
            }
            Refusal::Unauthenticated(why) => {
                tracing::warn!(peer = %peer_shown, method, reason = why, "call refused: unauthenticated");
                if let Some(ip) = peer_ip
                    && self.failures().record(ip, limit, now)
                {
                    tracing::warn!(peer = %peer_shown, limit, "failed authentications reached the limit; refusing this address unchecked for the rest of the minute");
                }
            }
            Refusal::RateLimited => {}
        }
        Err(refusal)
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { layer: self.clone(), inner }
    }
}

/// [`AuthLayer`]'s service: passes authorised calls to `inner`, answers the rest itself.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    layer: AuthLayer,
    inner: S,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<ResBody>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.layer.decide(&request) {
            Ok(principal) => {
                // Handlers that bind a request to its caller (the coordinator: a node id to
                // the role that registered it) read it from the request's extensions.
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                futures_util::future::Either::Left(self.inner.call(request))
            }
            Err(refusal) => {
                let status = refusal.status(request.uri().path());
                futures_util::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_METHODS: [&str; 20] = [
        "/paretopo.v1.Coordinator/Register",
        "/paretopo.v1.Coordinator/Heartbeat",
        "/paretopo.v1.Coordinator/GetRendezvous",
        "/paretopo.v1.Coordinator/ReportObjectives",
        "/paretopo.v1.Coordinator/WatchWeights",
        "/paretopo.v1.Coordinator/GetStatus",
        "/paretopo.v1.Coordinator/WatchStatus",
        "/paretopo.v1.Learner/PushTrajectories",
        "/paretopo.v1.Learner/WatchPolicy",
        "/paretopo.v1.Learner/GetStatus",
        "/paretopo.v1.Learner/WatchStatus",
        "/paretopo.v1.Actor/GetStatus",
        "/paretopo.v1.Actor/WatchStatus",
        "/paretopo.v1.ToolServer/ListTools",
        "/paretopo.v1.ToolServer/Call",
        "/paretopo.v1.ToolServer/GetStatus",
        "/paretopo.v1.ToolServer/WatchStatus",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/paretopo.v1.Learner/Unknown",
    ];

    #[test]
    fn operators_read_status_and_nothing_else() {
        for method in ALL_METHODS {
            let reads = method.ends_with("/GetStatus")
                || method.ends_with("/WatchStatus")
                || method.starts_with("/grpc.");
            assert_eq!(permits(access(method), Principal::Operator), reads, "{method}");
        }
    }

    #[test]
    fn each_write_method_admits_exactly_its_roles() {
        let expected: [(&str, &[Role]); 9] = [
            ("/paretopo.v1.Coordinator/Register", &[Role::Learner, Role::Actor, Role::ToolServer]),
            ("/paretopo.v1.Coordinator/Heartbeat", &[Role::Learner, Role::Actor, Role::ToolServer]),
            ("/paretopo.v1.Coordinator/ReportObjectives", &[Role::Learner]),
            ("/paretopo.v1.Coordinator/WatchWeights", &[Role::Learner]),
            ("/paretopo.v1.Learner/PushTrajectories", &[Role::Actor]),
            ("/paretopo.v1.Learner/WatchPolicy", &[Role::Actor]),
            ("/paretopo.v1.ToolServer/Call", &[Role::Actor, Role::Learner]),
            ("/paretopo.v1.ToolServer/ListTools", &[Role::Actor, Role::Learner]),
            ("/paretopo.v1.Learner/Unknown", &[]),
        ];
        let roles = [Role::Coordinator, Role::Learner, Role::Actor, Role::ToolServer];
        for (method, allowed) in expected {
            for role in roles {
                assert_eq!(
                    permits(access(method), Principal::Role(role)),
                    allowed.contains(&role),
                    "{method} by {role}"
                );
            }
        }
    }

    #[test]
    fn a_peer_is_limited_after_its_failures_for_one_window_only() {
        let mut failures = Failures::default();
        let peer: IpAddr = "10.0.0.9".parse().expect("ip");
        let other: IpAddr = "10.0.0.10".parse().expect("ip");
        let t0 = Instant::now();
        for i in 1..=3 {
            assert!(!failures.limited(peer, 3, t0));
            assert_eq!(failures.record(peer, 3, t0), i == 3);
        }
        assert!(failures.limited(peer, 3, t0 + Duration::from_secs(59)));
        assert!(!failures.limited(other, 3, t0), "another address is not limited");
        assert!(!failures.limited(peer, 3, t0 + WINDOW), "a new minute starts afresh");
    }

    #[test]
    fn a_full_table_keeps_its_limited_addresses() {
        let mut failures = Failures::default();
        let t0 = Instant::now();
        let limited: IpAddr = "10.9.9.9".parse().expect("ip");
        for _ in 0..3 {
            failures.record(limited, 3, t0);
        }
        for i in 0..(MAX_TRACKED as u32 + 10) {
            failures.record(IpAddr::from(i.to_be_bytes()), 3, t0);
        }
        assert!(failures.by_peer.len() <= MAX_TRACKED);
        assert!(failures.limited(limited, 3, t0), "new addresses freed a limited one");
        // Once the windows are over, the table makes room again.
        let later = t0 + WINDOW;
        failures.record("10.1.1.1".parse().expect("ip"), 3, later);
        assert!(failures.by_peer.len() <= 2, "{}", failures.by_peer.len());
    }
}
