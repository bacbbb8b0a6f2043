#!/usr/bin/env bash
# Builds the paretopo image (deploy/Dockerfile) on a machine that reaches no image registry:
# Debian's debootstrap makes the two base root filesystems, `docker import` turns them into
# local images, and `docker build` runs with them as its base-image arguments.
#
#   deploy/build-image.sh [TAG]       (default paretopo:latest)
#
#   paretopo/debian:bookworm   minimal Debian 12: the runtime base
#   paretopo/rust:bookworm     Debian 12 with gcc and Python 3, plus this machine's Rust
#                              toolchain (`rustc --print sysroot`), copied in: the build base
#
# Each base is made once (an existing image is kept; `docker rmi` it to remake it). Needs root,
# a running Docker engine and Debian's package mirror (debootstrap is installed when missing).
# Prints the build time and the image sizes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-paretopo:latest}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
work="$root/.tools/images"
mkdir -p "$work"

if ! command -v debootstrap >/dev/null; then
    echo "build-image: installing debootstrap" >&2
    apt-get install -y -qq debootstrap >/dev/null
fi

# make_base IMAGE PACKAGES [EXTRA-STEP]: debootstrap, run the extra step on the tree, import.
make_base() {
    local image=$1 packages=$2 extra=${3:-}
    if docker image inspect "$image" >/dev/null 2>&1; then
        echo "build-image: $image exists, kept" >&2
        return
    fi
    local tree="$work/${image//[:\/]/-}"
    rm -rf "$tree"
    echo "build-image: debootstrap $suite into $tree (with: ${packages:-nothing more})" >&2
    debootstrap --variant=minbase ${packages:+--include="$packages"} "$suite" "$tree" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        exit 1
    }
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
    [ -z "$extra" ] || "$extra" "$tree"
    tar -C "$tree" -c . | docker import \
        --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' - "$image" >/dev/null
    rm -rf "$tree"
    echo "build-image: imported $image" >&2
}

# The build base gets this machine's Rust toolchain (docs left out) and its CA bundle, so
# that cargo and pip inside the build trust what this machine trusts (a TLS-inspecting
# egress proxy's CA, say).
add_rust() {
    local sysroot
    sysroot=$(rustc --print sysroot)
    mkdir -p "$1/usr/local/rust"
    tar -C "$sysroot" --exclude=share/doc -c . | tar -C "$1/usr/local/rust" -x
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
    fi
}

make_base paretopo/debian:$suite "libstdc++6,libgomp1"
make_base paretopo/rust:$suite \
    "ca-certificates,gcc,g++,libc6-dev,make,pkg-config,python3,python3-venv,git" add_rust

started=$(date +%s)
docker build -f "$root/deploy/Dockerfile" \
    --build-arg BUILD_IMAGE=paretopo/rust:$suite \
    --build-arg RUNTIME_IMAGE=paretopo/debian:$suite \
    -t "$tag" "$root"
seconds=$(( $(date +%s) - started ))
echo "build-image: built $tag in ${seconds} s"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(paretopo|$tag)" | sort -u
