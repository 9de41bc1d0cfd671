#!/usr/bin/env bash
# ADS scale benchmark: the citadel binary serving SERVICES x ENDPOINTS to CLIENTS simulated
# sidecars (FLAVOUR=sotw or delta, ACKing as Envoy does): first full push, endpoint-change p99,
# VirtualService change, CPU per push, RSS; then, in the same run and with the same clients,
# go-control-plane serving the same resources (built here from bench/go-control-plane with the
# Go module proxy; ANCHOR=0 skips it) and the prost encode floor. See docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${ANCHOR:-1}" != 0 ]; then
    (cd bench/go-control-plane && go build -o ../../target/go-control-plane .)
    export GO_CONTROL_PLANE="$PWD/target/go-control-plane"
fi
SERVICES="${SERVICES:-1000}" ENDPOINTS="${ENDPOINTS:-10}" CLIENTS="${CLIENTS:-100}" CHANGES="${CHANGES:-5}" \
    FLAVOUR="${FLAVOUR:-sotw}" cargo bench -p citadel --bench ads_scale
