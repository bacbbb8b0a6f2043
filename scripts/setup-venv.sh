#!/usr/bin/env bash
# Makes the project-local Python environment `.venv/` that the build and the tests use:
#   - torch==2.11.0 from PyPI, whose bundled libtorch the `tch` crate (0.24) links against;
#   - the Python gRPC client packages the black-box API tests use, and `transformers` for the
#     policy crate's golden tests (scripts/requirements-test.txt);
#   - `.venv/libtorch`, a link to the wheel's `torch/` that the build uses as LIBTORCH;
#   - `libnccl.so` in torch's lib/, a link to the wheel's NCCL, because cudarc's loader never
#     looks for `libnccl.so.2` (DESIGN.md §9).
# `--build-only` stops after torch and the links (the container image's build needs no more).
# Idempotent: a complete `.venv` is left alone, so it costs nothing after the first run.
# Uses the venv's own pip, never the system one (DESIGN.md §10).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    echo "setup-venv: creating $venv" >&2
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        # Debian splits ensurepip into python3-venv; without it, make the venv bare and put pip
        # into it once with the interpreter's pip. From then on only the venv's own pip is used.
        rm -rf "$venv"
        "$python" -m venv --without-pip "$venv"
        "$python" -m pip --python "$venv/bin/python" install --quiet pip
    fi
fi

pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }

if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; then
    echo "setup-venv: installing torch==2.11.0 (about 1 minute, several GB)" >&2
    pip install --quiet "torch==2.11.0"
fi

# The test requirements are installed again whenever the file changes (a stamp holds its hash).
requirements="$root/scripts/requirements-test.txt"
stamp="$venv/.requirements-test.sha256"
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ "${1:-}" != "--build-only" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup-venv: installing the Python test clients and transformers" >&2
    pip install --quiet -r "$requirements"
    echo "$wanted" > "$stamp"
fi

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# A fixed path to the wheel's libtorch, whatever the Python version: `.cargo/config.toml` points
# the `torch-sys` build at `.venv/libtorch` (its include/ and lib/).
ln -sfn "$site/torch" "$venv/libtorch"

# NCCL for cudarc's dynamic loader, which looks for `libnccl.so` but never `libnccl.so.2`
# (DESIGN.md §9). The link sits in torch's lib/, which is already on our binaries' rpath.
nccl="$site/nvidia/nccl/lib/libnccl.so.2"
if [ -e "$nccl" ]; then
    ln -sfn "$nccl" "$site/torch/lib/libnccl.so"
fi

version=$(PYTHONWARNINGS=ignore "$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)
echo "setup-venv: ready (torch $version in $venv)" >&2
