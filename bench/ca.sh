#!/usr/bin/env bash
# CA signing benchmark: citadel vs cfssl serve vs the crypto floor, same machine, same run.
# Installs Debian's golang-cfssl if missing. Results go to stdout; see docs/BENCHMARKS.md.
set -euo pipefail
# BENCH_SECONDS, not SECONDS: bash keeps its own SECONDS (seconds since the shell started).
cd "$(dirname "$0")/.."
if ! command -v cfssl >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-cfssl
fi
CLIENTS="${CLIENTS:-16}" BENCH_SECONDS="${BENCH_SECONDS:-10}" cargo bench -p citadel --bench ca_signing
