#!/usr/bin/env bash
# Runs every Flatnet test: unit tests, the shim's local tests, and the integration tests that start
# a real flatnetd inside network namespaces. The integration tests need root, `ip` (iproute2) and
# `busybox` (busybox-static); build as yourself, and the test binaries run through sudo when needed.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh -p flatnet-tests -- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    host=$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')
    export "CARGO_TARGET_${host}_RUNNER=sudo -E"
    echo "tests/run.sh: not root; test binaries will run with sudo -E" >&2
fi

cargo build --workspace --bins
cargo test --workspace "$@"
