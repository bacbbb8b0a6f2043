//! Issue #11: only the run's own processes and its operators get in. A run of the real
//! binaries with mutual TLS; every method of every role is called with no credential, with
//! each role's certificate, with the operator's certificate and with the operator's bearer
//! token, and each answer is checked against who may call what (docs/security.md). Then
//! everything the processes printed or served is searched for the bytes of every key and token.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use paretopo_proto::v1::actor_client::ActorClient;
use paretopo_proto::v1::coordinator_client::CoordinatorClient;
use paretopo_proto::v1::learner_client::LearnerClient;
use paretopo_proto::v1::tool_server_client::ToolServerClient;
use paretopo_proto::v1::{
    GetRendezvousRequest, GetStatusRequest, HeartbeatRequest, ListToolsRequest, RegisterRequest,
    ReportObjectivesRequest, ToolCallRequest, TrajectoryGroup, WatchPolicyRequest,
    WatchStatusRequest, WatchWeightsRequest,
};
use paretopo_service::Role;
use paretopo_service::security::{Principal, Security};
use paretopo_tests::Server;
use paretopo_tests::run::{TestRun, learner_status, start_run, wait_until};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Adds `authorization: Bearer <token>` when there is a token.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    /// TLS that checks the server, no client certificate, no token.
    Nobody,
    /// The certificate of a principal.
    Certificate(Principal),
    /// No certificate; the operator's bearer token.
    OperatorToken,
    /// No certificate; a token the run never issued.
    WrongToken,
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// A channel to the `role` at `server` as `caller`, and the header it sends.
async fn dial(tls: &Path, server: &Server, role: Role, caller: Caller) -> (Channel, Bearer) {
    let address = server.grpc.to_string();
    let bearer =
        |token: String| Bearer(Some(format!("Bearer {}", token.trim()).parse().expect("ascii")));
    let (endpoint, header) = match caller {
        Caller::Certificate(principal) => {
            let security = Security::from_tls_dir(&tls.join(principal.name())).expect("credential");
            (security.endpoint(&address, role).expect("endpoint"), Bearer(None))
        }
        other => {
            let ca = std::fs::read(tls.join("ca.crt")).expect("ca.crt");
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(Principal::Role(role).dns_name());
            let endpoint = Endpoint::from_shared(format!("https://{address}"))
                .expect("url")
                .tls_config(config)
                .expect("tls");
            let header = match other {
                Caller::OperatorToken => {
                    bearer(std::fs::read_to_string(tls.join("operator/token")).expect("token"))
                }
                Caller::WrongToken => bearer("0".repeat(64)),
                _ => Bearer(None),
            };
            (endpoint, header)
        }
    };
    let channel = endpoint
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the {role} as {caller:?}: {e}"));
    (channel, header)
}

/// Calls every method of the `role`'s service, and health; the answer's code by method.
async fn call_every_method(
    tls: &Path,
    server: &Server,
    role: Role,
    caller: Caller,
) -> BTreeMap<&'static str, Code> {
    let (channel, bearer) = dial(tls, server, role, caller).await;
    let mut codes = BTreeMap::new();
    let health = HealthClient::with_interceptor(channel.clone(), bearer.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await;
    codes.insert("Health/Check", code(health));
    match role {
        Role::Coordinator => {
            let mut c = CoordinatorClient::with_interceptor(channel, bearer);
            codes.insert("Register", code(c.register(RegisterRequest::default()).await));
            codes.insert("Heartbeat", code(c.heartbeat(HeartbeatRequest::default()).await));
            let rendezvous = GetRendezvousRequest { node_id: "nobody".into() };
            codes.insert("GetRendezvous", code(c.get_rendezvous(rendezvous).await));
            let report = ReportObjectivesRequest::default();
            codes.insert("ReportObjectives", code(c.report_objectives(report).await));
            let watch = WatchWeightsRequest { node_id: "nobody".into() };
            codes.insert("WatchWeights", code(c.watch_weights(watch).await));
            codes.insert("GetStatus", code(c.get_status(GetStatusRequest {}).await));
            let watch = WatchStatusRequest { interval_ms: 1000 };
            codes.insert("WatchStatus", code(c.watch_status(watch).await));
        }
        Role::Learner => {
            let mut c = LearnerClient::with_interceptor(channel, bearer);
            let nothing = tokio_stream::iter(Vec::<TrajectoryGroup>::new());
            codes.insert("PushTrajectories", code(c.push_trajectories(nothing).await));
            let watch = WatchPolicyRequest { node_id: "nobody".into(), ..Default::default() };
            codes.insert("WatchPolicy", code(c.watch_policy(watch).await));
            codes.insert("GetStatus", code(c.get_status(GetStatusRequest {}).await));
            let watch = WatchStatusRequest { interval_ms: 1000 };
            codes.insert("WatchStatus", code(c.watch_status(watch).await));
        }
        Role::Actor => {
            let mut c = ActorClient::with_interceptor(channel, bearer);
            codes.insert("GetStatus", code(c.get_status(GetStatusRequest {}).await));
            let watch = WatchStatusRequest { interval_ms: 1000 };
            codes.insert("WatchStatus", code(c.watch_status(watch).await));
        }
        Role::ToolServer => {
            let mut c = ToolServerClient::with_interceptor(channel, bearer);
            codes.insert("ListTools", code(c.list_tools(ListToolsRequest {}).await));
            let call = ToolCallRequest { tool: "calculator".into(), ..Default::default() };
            codes.insert("Call", code(c.call(call).await));
            codes.insert("GetStatus", code(c.get_status(GetStatusRequest {}).await));
            let watch = WatchStatusRequest { interval_ms: 1000 };
            codes.insert("WatchStatus", code(c.watch_status(watch).await));
        }
    }
    codes
}

/// The roles that may call `method` of the `role`'s service, as docs/security.md states them
/// (written out here, independently of the server's table).
fn allowed(role: Role, method: &str) -> &'static [Role] {
    use Role::{Actor, Coordinator, Learner, ToolServer};
    const EVERY: &[Role] = &[Coordinator, Learner, Actor, ToolServer];
    match (role, method) {
        (_, "Health/Check" | "GetStatus" | "WatchStatus") => EVERY,
        (Coordinator, "Register" | "Heartbeat" | "GetRendezvous") => &[Learner, Actor, ToolServer],
        (Coordinator, "ReportObjectives" | "WatchWeights") => &[Learner],
        (Learner, "PushTrajectories" | "WatchPolicy") => &[Actor],
        (ToolServer, "ListTools" | "Call") => &[Actor, Learner],
        _ => &[],
    }
}

fn is_read(method: &str) -> bool {
    matches!(method, "Health/Check" | "GetStatus" | "WatchStatus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_of_every_role_admits_exactly_its_callers_and_no_secret_leaks() {
    // A high failure limit: this test makes many refused calls from one address on purpose.
    let run = TestRun::new(3, 1_000, &["security.max_auth_failures_per_minute=1000"]).with_mtls();
    let (coordinator, tool_server, learner, actors) = start_run(&run, 1).await;
    wait_until(&run, "training", Duration::from_secs(120), || async {
        learner_status(&learner).await.step >= 1
    })
    .await;
    let tls = run.tls_dir();
    let servers = [
        (Role::Coordinator, &coordinator),
        (Role::Learner, &learner),
        (Role::Actor, &actors[0]),
        (Role::ToolServer, &tool_server),
    ];
    let callers = [
        Caller::Nobody,
        Caller::WrongToken,
        Caller::OperatorToken,
        Caller::Certificate(Principal::Operator),
        Caller::Certificate(Principal::Role(Role::Coordinator)),
        Caller::Certificate(Principal::Role(Role::Learner)),
        Caller::Certificate(Principal::Role(Role::Actor)),
        Caller::Certificate(Principal::Role(Role::ToolServer)),
    ];
    let mut checked = 0;
    for (role, server) in servers {
        for caller in callers {
            let codes = call_every_method(&tls, server, role, caller).await;
            for (method, got) in codes {
                let expected_refusal = match caller {
                    _ if method == "Health/Check" => None,
                    Caller::Nobody | Caller::WrongToken => Some(Code::Unauthenticated),
                    Caller::OperatorToken | Caller::Certificate(Principal::Operator) => {
                        (!is_read(method)).then_some(Code::PermissionDenied)
                    }
                    Caller::Certificate(Principal::Role(r)) => {
                        (!allowed(role, method).contains(&r)).then_some(Code::PermissionDenied)
                    }
                };
                match expected_refusal {
                    Some(want) => assert_eq!(got, want, "{role} {method} as {caller:?}"),
                    None => assert!(
                        !matches!(got, Code::Unauthenticated | Code::PermissionDenied),
                        "{role} {method} as {caller:?} was refused: {got:?}"
                    ),
                }
                checked += 1;
            }
        }
    }
    eprintln!("security: {checked} (role, method, caller) answers as expected");

    // Refusals changed nothing: the run still has its three nodes and trains on.
    let before = learner_status(&learner).await.step;
    wait_until(&run, "training after the refusals", Duration::from_secs(120), || async {
        learner_status(&learner).await.step > before
    })
    .await;
    let status = paretopo_tests::run::coordinator_status(&run).await;
    assert_eq!(status.nodes.len(), 3, "{status:?}");

    // Each refusal is logged with the peer and the method, never the credential.
    let coordinator_log = std::fs::read_to_string(run.log("coordinator")).expect("log");
    assert!(
        coordinator_log.lines().any(|l| l.contains("call refused")
            && l.contains("peer=127.0.0.1:")
            && l.contains("/paretopo.v1.Coordinator/Register")),
        "no refusal logged with its peer and method"
    );

    // Nothing printed or served holds a key or the token.
    let secrets = secrets_of(&tls);
    let mut served = run.logs_full();
    for (role, server) in servers {
        served.push_str(&status_text(&tls, server, role).await);
        served.push_str(&metrics_over_tls(&tls, server, role).await);
    }
    assert!(served.contains("paretopo_build_info"), "the metrics were read");
    for (name, secret) in &secrets {
        assert!(
            !served.contains(secret.as_str()),
            "{name} appears in what the processes printed or served"
        );
    }
    eprintln!(
        "security: {} secret sequences searched for in {} bytes of logs, status and metrics",
        secrets.len(),
        served.len()
    );
}

/// Every secret of the run as text to look for: each key's PEM body and each line of it, and
/// the operator token.
fn secrets_of(tls: &Path) -> Vec<(String, String)> {
    let mut secrets = Vec::new();
    let token = std::fs::read_to_string(tls.join("operator/token")).expect("token");
    secrets.push(("the operator token".into(), token.trim().to_owned()));
    let mut keys = vec![tls.join("ca.key")];
    keys.extend(Principal::ALL.iter().map(|p| tls.join(p.name()).join("tls.key")));
    for key in keys {
        let pem = std::fs::read_to_string(&key).expect("key");
        let lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!lines.is_empty(), "{} has a body", key.display());
        secrets.push((format!("{}", key.display()), lines.concat()));
        for (i, line) in lines.iter().enumerate() {
            secrets.push((format!("line {} of {}", i + 1, key.display()), (*line).to_owned()));
        }
    }
    secrets
}

/// The `role`'s status as the operator reads it, in protobuf's text of every field.
async fn status_text(tls: &Path, server: &Server, role: Role) -> String {
    let (channel, bearer) = dial(tls, server, role, Caller::Certificate(Principal::Operator)).await;
    let request = || GetStatusRequest {};
    match role {
        Role::Coordinator => format!(
            "{:?}",
            CoordinatorClient::with_interceptor(channel, bearer).get_status(request()).await
        ),
        Role::Learner => format!(
            "{:?}",
            LearnerClient::with_interceptor(channel, bearer).get_status(request()).await
        ),
        Role::Actor => format!(
            "{:?}",
            ActorClient::with_interceptor(channel, bearer).get_status(request()).await
        ),
        Role::ToolServer => format!(
            "{:?}",
            ToolServerClient::with_interceptor(channel, bearer).get_status(request()).await
        ),
    }
}

/// `GET /metrics` over TLS with the operator's certificate.
async fn metrics_over_tls(tls: &Path, server: &Server, role: Role) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let operator = Security::from_tls_dir(&tls.join("operator")).expect("operator");
    let connector = tokio_rustls::TlsConnector::from(operator.rustls_client_config().expect("tls"));
    let name =
        rustls::pki_types::ServerName::try_from(Principal::Role(role).dns_name()).expect("name");
    let tcp = tokio::net::TcpStream::connect(server.metrics).await.expect("metrics port");
    let mut stream = connector.connect(name, tcp).await.expect("TLS to the metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{role} metrics: {}", &body[..body.len().min(200)]);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_refuses_a_client_without_a_certificate_and_plaintext() {
    let run = TestRun::new(1, 1, &[]).with_mtls();
    let mut tool_server = run.start("tool-server", "tool-server", paretopo_tests::free_addr());
    tool_server.wait_serving(Duration::from_secs(20)).await;
    // TLS that trusts the CA but presents no certificate: the handshake is refused.
    let ca = std::fs::read(run.tls_dir().join("ca.crt")).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("tool-server.paretopo").expect("name");
    let tcp = tokio::net::TcpStream::connect(tool_server.metrics).await.expect("connect");
    let refused = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = connector.connect(name, tcp).await?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        std::io::Result::Ok(body)
    }
    .await;
    assert!(
        refused.as_ref().map_or(true, |body| !body.contains("paretopo_")),
        "metrics served without a client certificate: {refused:?}"
    );
    // Plain HTTP to a TLS port gets no metrics either.
    let plain = ureq::get(&format!("http://{}/metrics", tool_server.metrics)).call();
    assert!(plain.is_err(), "plain HTTP was answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_health_port_serves_health_and_nothing_else() {
    let run = TestRun::new(1, 1, &[]).with_mtls();
    let health = paretopo_tests::free_addr();
    let health_flag = format!("security.health_listen=\"{health}\"");
    let mut args = run.args();
    args.extend(["--set".into(), health_flag]);
    args.extend(["--tls-dir".into(), run.tls_dir().join("tool-server").display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tool_server = Server::start_logged(
        "tool-server",
        paretopo_tests::free_addr(),
        &args,
        &run.log("tool-server"),
    );
    tool_server.dialer = run.dialer();
    tool_server.wait_serving(Duration::from_secs(20)).await;
    let channel = Endpoint::from_shared(format!("http://{health}"))
        .expect("url")
        .connect()
        .await
        .expect("the health port takes plaintext");
    let serving = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: "paretopo.v1.ToolServer".into() })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    let status = ToolServerClient::new(channel).get_status(GetStatusRequest {}).await;
    assert_eq!(code(status), Code::Unimplemented, "the health port serves health alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_token_failures_from_one_address_are_refused_unchecked_for_the_minute() {
    let run = TestRun::new(1, 1, &["security.max_auth_failures_per_minute=3"]).with_mtls();
    let mut tool_server = run.start("tool-server", "tool-server", paretopo_tests::free_addr());
    tool_server.wait_serving(Duration::from_secs(20)).await;
    let tls = run.tls_dir();
    for _ in 0..3 {
        let (channel, bearer) =
            dial(&tls, &tool_server, Role::ToolServer, Caller::WrongToken).await;
        let answer = ToolServerClient::with_interceptor(channel, bearer)
            .get_status(GetStatusRequest {})
            .await
            .expect_err("a wrong token");
        assert_eq!(answer.code(), Code::Unauthenticated);
        assert!(answer.message().contains("not accepted"), "{}", answer.message());
    }
    // Now even the right token from this address is refused until the minute is over.
    let (channel, bearer) = dial(&tls, &tool_server, Role::ToolServer, Caller::OperatorToken).await;
    let answer = ToolServerClient::with_interceptor(channel, bearer)
        .get_status(GetStatusRequest {})
        .await
        .expect_err("rate-limited");
    assert_eq!(answer.code(), Code::Unauthenticated);
    assert!(answer.message().contains("too many failed"), "{}", answer.message());
    // A verified certificate from the same address is not held back by the limit.
    let operator = Caller::Certificate(Principal::Operator);
    let (channel, bearer) = dial(&tls, &tool_server, Role::ToolServer, operator).await;
    let answer =
        ToolServerClient::with_interceptor(channel, bearer).get_status(GetStatusRequest {}).await;
    assert!(answer.is_ok(), "a certificate was rate-limited: {answer:?}");
    let log = std::fs::read_to_string(run.log("tool-server")).expect("log");
    assert_eq!(log.matches("reached the limit").count(), 1, "the limit is logged once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_off_loopback_needs_insecure_and_a_certificate_must_be_the_processs_own() {
    let off_loopback = paretopo_tests::run_to_end("tool-server", &["--listen", "0.0.0.0:0"]);
    assert_eq!(off_loopback.status.code(), Some(2), "{off_loopback:?}");
    let stderr = String::from_utf8_lossy(&off_loopback.stderr);
    assert!(stderr.contains("not loopback") && stderr.contains("--insecure"), "{stderr}");

    let run = TestRun::new(1, 1, &[]).with_mtls();
    let actor_dir = run.tls_dir().join("actor").display().to_string();
    let wrong = paretopo_tests::run_to_end("tool-server", &["--tls-dir", &actor_dir]);
    assert_eq!(wrong.status.code(), Some(2), "{wrong:?}");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("names the actor") && stderr.contains("tool-server"), "{stderr}");
    let key = std::fs::read_to_string(run.tls_dir().join("actor/tls.key")).expect("key");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!stderr.contains(&body[..32]), "the error shows key bytes");
}

#[test]
fn a_checkpoint_whose_bytes_were_altered_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("dir");
    let model = dir.path().join("model");
    let model_arg = model.display().to_string();
    let init = paretopo_tests::run_to_end(
        "policy",
        &["init", "--config", "tiny", "--seed", "0", "--out", &model_arg],
    );
    assert!(init.status.success(), "{init:?}");
    // A manifest, as the learner writes into each of its checkpoints.
    policy::manifest::write(&model).expect("manifest");
    let logits = |model: &str| {
        paretopo_tests::run_to_end("policy", &["logits", "--model", model, "--input-ids", "1,2,3"])
    };
    assert!(logits(&model_arg).status.success(), "the intact checkpoint loads");

    // One byte of the weights changed, its size kept.
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).expect("weights");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).expect("alter");
    let refused = logits(&model_arg);
    assert!(!refused.status.success(), "an altered checkpoint loaded");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("SHA-256"),
        "the refusal names the file: {stderr}"
    );
}
