#!/usr/bin/env bash
# Node agent benchmark: 1,000 identities rotating every ~60 s, 100 SDS streams; agent RSS,
# CPU per rotation, rotation-to-stream latency. See docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
IDENTITIES="${IDENTITIES:-1000}" STREAMS="${STREAMS:-100}" SECONDS="${SECONDS:-130}" TTL="${TTL:-120}" \
    cargo bench -p node-agent --bench agent_sds
