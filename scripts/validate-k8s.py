#!/usr/bin/env python3
"""Renders each Kustomize overlay of deploy/k8s and validates what it renders.

    scripts/validate-k8s.py deploy/k8s/overlays/cpu-8-nodes [...]
    scripts/validate-k8s.py --rendered FILE      (an already rendered multi-document YAML)

- Built-in objects: kubernetes-validate, strict (unknown fields are errors), Kubernetes 1.37.
- JobSets: the JobSet CRD's openAPIV3Schema (a copy in ../shared/k8s/, or $JOBSET_CRD), with
  unknown fields made errors the way the API server's strict field validation makes them.
- The run's shape: the coordinator's --nodes equals the worker pods (replicas x parallelism of
  every replicated job but the coordinator), and --learners/--actors/--tool-servers equal the
  pods of those jobs; every pod's run config names the coordinator's JobSet DNS name; each
  learner pod drives as many devices (`learner.devices`) as it requests GPUs, and
  `algorithm.groups_per_step` splits evenly over the learner ranks (pods x devices).

Prints one line per overlay; exits 1 naming the first problem of each that fails. kubectl comes
from $KUBECTL or .tools/bin/kubectl (scripts/install-k8s-tools.sh puts it there).
"""

import copy
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.37.0"
WORKER_ROLES = {"learner": "--learners", "actor": "--actors", "tool-server": "--tool-servers"}
# The defaults of `learner.devices` and `algorithm.groups_per_step` (service/src/config.rs).
DEFAULT_DEVICES = 1
DEFAULT_GROUPS_PER_STEP = 8


def kubectl():
    return os.environ.get("KUBECTL") or str(ROOT / ".tools/bin/kubectl")


def crd_path():
    return Path(os.environ.get("JOBSET_CRD", ROOT.parent / "shared/k8s/jobset.x-k8s.io_jobsets.yaml"))


def crd_schema():
    """The CRD's schema made strict, or None when no copy of the CRD is at hand."""
    path = crd_path()
    if not path.is_file():
        return None
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    version = next(v for v in docs[0]["spec"]["versions"] if v["name"] == "v1alpha2")
    return strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def strict(schema):
    """Unknown fields become errors wherever the schema lists its fields."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def flag(args, name):
    """The value after `name` in a container's args."""
    if name not in args:
        raise ValueError(f"the coordinator has no {name} flag")
    return int(args[args.index(name) + 1])


def check_shape(jobset, configs):
    """The coordinator's role plan against the pods the JobSet makes."""
    name = jobset["metadata"]["name"]
    jobs = {j["name"]: j for j in jobset["spec"]["replicatedJobs"]}
    pods = {
        n: j.get("replicas", 1) * j["template"]["spec"].get("parallelism", 1) for n, j in jobs.items()
    }
    coordinator = jobs["coordinator"]["template"]["spec"]["template"]["spec"]["containers"][0]
    args = coordinator.get("args", [])
    nodes = flag(args, "--nodes")
    workers = sum(count for role, count in pods.items() if role != "coordinator")
    if nodes != workers:
        raise ValueError(f"--nodes {nodes}, but the JobSet makes {workers} worker pods {pods}")
    for role, option in WORKER_ROLES.items():
        if flag(args, option) != pods.get(role, 0):
            raise ValueError(f"{option} {flag(args, option)}, but {role} has {pods.get(role, 0)} pods")
    subdomain = jobset["spec"].get("network", {}).get("subdomain", name)
    want = f"{name}-coordinator-0-0.{subdomain}:"
    learner = jobs["learner"]["template"]["spec"]["template"]["spec"]["containers"][0]
    gpus = int(learner.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    for config_name, text in configs.items():
        config = tomllib.loads(text)
        address = config.get("cluster", {}).get("coordinator_address", "")
        if not address.startswith(want):
            raise ValueError(f"ConfigMap {config_name}: coordinator_address {address!r} is not {want}<port>")
        devices = config.get("learner", {}).get("devices", DEFAULT_DEVICES)
        if gpus and devices != gpus:
            raise ValueError(f"ConfigMap {config_name}: learner.devices = {devices}, but learner pods "
                             f"request {gpus} GPUs")
        ranks = pods.get("learner", 0) * devices
        groups = config.get("algorithm", {}).get("groups_per_step", DEFAULT_GROUPS_PER_STEP)
        if ranks and groups % ranks:
            raise ValueError(f"ConfigMap {config_name}: algorithm.groups_per_step = {groups} does not "
                             f"split over {ranks} learner ranks ({pods['learner']} pods x {devices} devices)")
    return nodes, pods


def check_least_privilege(jobset, configs):
    """Every pod non-root with RuntimeDefault seccomp, every container without privilege
    escalation, capabilities or a writable root, its role's TLS Secret mounted read-only, probes
    on the plaintext health port (docs/security.md); every run config with TLS on."""
    for config_name, text in configs.items():
        security = tomllib.loads(text).get("security", {})
        if not security.get("tls_dir") or security.get("insecure"):
            raise ValueError(f"ConfigMap {config_name}: security.tls_dir is unset or insecure is on")
        health = security.get("health_listen", "")
        if not health:
            raise ValueError(f"ConfigMap {config_name}: security.health_listen is unset")
        health_port = int(health.rsplit(":", 1)[1])
    for job in jobset["spec"]["replicatedJobs"]:
        role = job["name"]
        pod = job["template"]["spec"]["template"]["spec"]
        where = f"JobSet job {role}"
        context = pod.get("securityContext", {})
        if context.get("runAsNonRoot") is not True:
            raise ValueError(f"{where}: the pod may run as root (securityContext.runAsNonRoot)")
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            raise ValueError(f"{where}: seccompProfile is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            raise ValueError(f"{where}: the service account token is mounted")
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        if f"paretopo-tls-{role}" not in secrets.values():
            raise ValueError(f"{where}: no volume of the Secret paretopo-tls-{role}")
        for container in pod["containers"]:
            at = f"{where} container {container['name']}"
            sc = container.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                raise ValueError(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                raise ValueError(f"{at}: the root filesystem is writable")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                raise ValueError(f"{at}: capabilities are not all dropped")
            if sc.get("privileged"):
                raise ValueError(f"{at}: privileged")
            for mount in container.get("volumeMounts", []):
                if mount["name"] in secrets and mount.get("readOnly") is not True:
                    raise ValueError(f"{at}: Secret volume {mount['name']} is mounted writable")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("grpc", {}).get("port")
                if port is not None and port != health_port:
                    raise ValueError(f"{at}: {probe} uses port {port}, not the health port {health_port}")


def validate(label, text, schema):
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds, jobsets, configs = [], [], {}
    for doc in docs:
        kind = doc.get("kind", "?")
        where = f"{kind} {doc.get('metadata', {}).get('name', '?')}"
        kinds.append(kind)
        if doc.get("apiVersion", "").startswith("jobset.x-k8s.io/"):
            validator = jsonschema.Draft7Validator(schema) if schema else None
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path)) if validator else []
            if errors:
                path = "/".join(str(p) for p in errors[0].path)
                raise ValueError(f"{where}: {path}: {errors[0].message}")
            jobsets.append(doc)
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                raise ValueError(f"{where}: {path}: {e.message}") from None
            if kind == "ConfigMap" and "run.toml" in doc.get("data", {}):
                configs[doc["metadata"]["name"]] = doc["data"]["run.toml"]
    if len(jobsets) != 1:
        raise ValueError(f"expected one JobSet, found {len(jobsets)}")
    if not configs:
        raise ValueError("no ConfigMap holds a run.toml")
    nodes, pods = check_shape(jobsets[0], configs)
    check_least_privilege(jobsets[0], configs)
    plan = ", ".join(f"{pods.get(r, 0)} {r}" for r in WORKER_ROLES)
    return (f"{label}: {len(docs)} objects valid ({', '.join(sorted(set(kinds)))}); least privilege "
            f"and TLS hold; --nodes {nodes} = {plan}")


def main(argv):
    if not argv or argv == ["--rendered"]:
        print(__doc__, file=sys.stderr)
        return 2
    schema = crd_schema()
    if schema is None:
        print(f"validate-k8s: NOTE: no JobSet CRD at {crd_path()}: JobSets are checked for their "
              "shape only, not against the CRD's schema", file=sys.stderr)
    if argv[0] == "--rendered":
        targets = [(path, Path(path).read_text()) for path in argv[1:]]
    else:
        targets = []
        for overlay in argv:
            rendered = subprocess.run([kubectl(), "kustomize", overlay], capture_output=True, text=True)
            if rendered.returncode != 0:
                print(f"{overlay}: kubectl kustomize failed: {rendered.stderr.strip()}", file=sys.stderr)
                return 1
            targets.append((overlay, rendered.stdout))
    failed = False
    for label, text in targets:
        try:
            print(validate(label, text, schema))
        except (ValueError, KeyError) as e:
            print(f"{label}: INVALID: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
