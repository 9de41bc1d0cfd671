#!/usr/bin/env bash
# Single-machine setup: builds citadel and runs it on loopback with ./citadel-data.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p citadel
exec ./target/release/citadel --data-dir "${CITADEL_DATA_DIR:-citadel-data}" serve "$@"
