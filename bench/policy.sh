#!/usr/bin/env bash
# Policy translation benchmark: POLICIES AuthorizationPolicies (1000) across NAMESPACES (100):
# load + validate, recompute (translate + encode every proxy class), sizes of the largest RBAC
# filter and listener. See docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
POLICIES="${POLICIES:-1000}" NAMESPACES="${NAMESPACES:-100}" ROUNDS="${ROUNDS:-5}" \
    cargo bench -p citadel --bench policy_scale
