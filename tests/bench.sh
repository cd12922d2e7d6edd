#!/usr/bin/env bash
# Benchmarks Flatnet against the reference bridge + host-local plugins: builds the release
# binaries, then runs target/release/flatnet-bench as root, which prints a table and writes
# BENCHMARKS.md. Arguments go to flatnet-bench (`--quick` for a smoke run, `--help` for the rest).
#
#   sudo tests/bench.sh            # or, as yourself: tests/bench.sh (the benchmark runs via sudo)
#
# The build runs as the owner of the checkout, so target/ never ends up owned by root.
set -euo pipefail
cd "$(dirname "$0")/.."

owner=$(stat -c %U .)
# Under sudo, PATH is sudo's secure_path: put the owner's rustup/cargo back in front.
home=$(getent passwd "$owner" | cut -d: -f6)
# The benchmark binary, and Flatnet built as it ships (deploy/build-release.sh: a static shim) in
# target/dist, which the benchmark measures.
build=(env "PATH=$home/.cargo/bin:$PATH" bash -c "cargo build --release -p flatnet-tests --bins && deploy/build-release.sh")
if [ "$(id -u)" -eq 0 ] && [ "$owner" != root ]; then
    sudo -u "$owner" -H "${build[@]}"
else
    "${build[@]}"
fi
export FLATNET_BIN_DIR=$PWD/target/dist

# The commit is read here, as the owner, so git's safe.directory check does not get in the way.
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# BENCHMARKS.md is what this run rewrites, not part of what it measures.
if [ -n "$(git status --porcelain --untracked-files=no -- . ':!BENCHMARKS.md' 2>/dev/null)" ]; then
    commit="$commit + uncommitted changes"
fi
export FLATNET_BENCH_COMMIT="$commit"

status=0
if [ "$(id -u)" -eq 0 ]; then
    target/release/flatnet-bench "$@" || status=$?
else
    sudo --preserve-env=FLATNET_BENCH_COMMIT,FLATNET_BIN_DIR target/release/flatnet-bench "$@" || status=$?
fi
# The report is written as root; give it back to the owner of the checkout.
if [ -f BENCHMARKS.md ] && [ "$owner" != root ]; then
    if [ "$(id -u)" -eq 0 ]; then
        chown "$owner": BENCHMARKS.md
    else
        sudo chown "$owner": BENCHMARKS.md
    fi
fi
exit "$status"
