#!/usr/bin/env bash
# Node agent benchmark: 1,000 identities rotating every ~60 s, 100 SDS streams; agent RSS,
# CPU per rotation, rotation-to-stream latency. See docs/BENCHMARKS.md.
set -euo pipefail
# BENCH_SECONDS, not SECONDS: bash keeps its own SECONDS (seconds since the shell started).
cd "$(dirname "$0")/.."
IDENTITIES="${IDENTITIES:-1000}" STREAMS="${STREAMS:-100}" BENCH_SECONDS="${BENCH_SECONDS:-130}" TTL="${TTL:-120}" \
    cargo bench -p node-agent --bench agent_sds
