#!/usr/bin/env bash
# ADS scale benchmark: the citadel binary serving SERVICES x ENDPOINTS to CLIENTS simulated
# sidecars (state of the world, ACKing); first full push, endpoint-change p99, VirtualService
# change, CPU per push, RSS. See docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVICES="${SERVICES:-1000}" ENDPOINTS="${ENDPOINTS:-10}" CLIENTS="${CLIENTS:-100}" CHANGES="${CHANGES:-5}" \
    cargo bench -p citadel --bench ads_scale
