#!/usr/bin/env bash
# Registry scale benchmark: CreateEntry p50/p99 at 1k/10k/100k entries over 1,000 nodes through
# the admin API, citadel RSS, and a burst of 1,000 entry changes to 1,000 watching agents.
# BENCH_DIR=/dev/shm puts the data directory on tmpfs (no fsync cost). See docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES="${ENTRIES:-100000}" NODES="${NODES:-1000}" SAMPLE="${SAMPLE:-1000}" \
    cargo bench -p citadel --bench registry_scale
