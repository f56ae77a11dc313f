#!/usr/bin/env bash
# Makes `make images` and `tlp run --local --docker` work on a Debian 12 machine with no Docker
# engine and no reachable container registry (CI, the development machines): installs the
# engine, starts one unless one answers, and builds local stand-ins for the base images from
# Debian packages. Prints the environment to use, so:
#   eval "$(docker/local-engine.sh)"             # engine + CPU base (Debian 12, Python 3.11)
#   eval "$(docker/local-engine.sh --gpu-base)"  # also a GPU base stand-in (+ TensorFlow)
#   make images
# Needs root or sudo. State (engine data, socket, log) under $TLP_DOCKER_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${TLP_DOCKER_DIR:-/tmp/tlp-docker}
CPU_BASE=tlp-local/python:3.11-bookworm
TF_VERSION=$(sed -n 's/.*"tensorflow-cpu==\([0-9.]*\).*/\1/p' pyproject.toml)
GPU_BASE=tlp-local/tensorflow:$TF_VERSION-gpu
log() { echo "local-engine: [${SECONDS} s] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
fi

# BuildKit is needed; a client without the buildx plugin cannot use it, Debian's can.
DOCKER=${DOCKER:-docker}
$DOCKER buildx version >/dev/null 2>&1 || DOCKER=/usr/bin/docker

if ! $DOCKER info >/dev/null 2>&1; then
    export DOCKER_HOST=unix://$STATE/docker.sock
    if ! $DOCKER info >/dev/null 2>&1; then
        log "starting dockerd (log: $STATE/dockerd.log)"
        as_root mkdir -p "$STATE"
        as_root setsid dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" \
            -H "$DOCKER_HOST" --group "$(id -g)" --pidfile "$STATE/dockerd.pid" \
            </dev/null >"$STATE/dockerd.log" 2>&1 &
        for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 1; done
        $DOCKER info >/dev/null || { log "dockerd did not start"; exit 1; }
    fi
fi

if ! $DOCKER image inspect "$CPU_BASE" >/dev/null 2>&1; then
    log "making $CPU_BASE with mmdebstrap"
    mirror=$(sed -n 's|^URIs: *\(\S*/debian\)$|\1|p' /etc/apt/sources.list.d/*.sources \
        2>/dev/null | head -1)
    # mmdebstrap, not debootstrap: apt's parallel downloads, a tarball straight to stdout and
    # ~40% less CPU (measured side by side: docs/engineering-notes.md). The host's CA bundle
    # goes in: it holds the CA of a TLS-inspecting proxy, if the host has one.
    bundle=/etc/ssl/certs/ca-certificates.crt
    as_root mmdebstrap --quiet --variant=minbase --include=python3,python3-pip \
        --customize-hook="upload $bundle $bundle" \
        bookworm - "${mirror:-http://deb.debian.org/debian}" \
        | $DOCKER import -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
            -c 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' - "$CPU_BASE" >&2
fi

images="CPU_BASE_IMAGE=$CPU_BASE"
if [ "${1:-}" = --gpu-base ]; then
    if ! $DOCKER image inspect "$GPU_BASE" >/dev/null 2>&1; then
        log "making $GPU_BASE: $CPU_BASE with tensorflow==$TF_VERSION (no CUDA libraries)"
        printf 'FROM %s\nRUN python3 -m pip install --no-cache-dir tensorflow==%s\n' \
            "$CPU_BASE" "$TF_VERSION" | DOCKER_BUILDKIT=1 $DOCKER build -t "$GPU_BASE" - >&2
    fi
    images="$images GPU_BASE_IMAGE=$GPU_BASE"
fi
echo "export DOCKER=$DOCKER DOCKER_HOST=${DOCKER_HOST:-} $images"
