#!/usr/bin/env bash
# Builds the binaries Flatnet ships into target/dist/: flatnet (the CNI shim), flatnetd, flatnetctl.
#
# The shim runs once per container start, so it is built on its own (the daemon's features do not
# leak into it) and linked statically: no dynamic loader at start-up, about a third of its start-up
# time on the benchmark machine. It is built for the explicit host target so that the static flag
# does not reach build scripts and proc-macros.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
    *-linux-gnu) static=(env "RUSTFLAGS=${RUSTFLAGS:-} -C target-feature=+crt-static") ;;
    *) static=(env) ;;
esac
"${static[@]}" cargo build --release -p flatnet-shim --target "$host"
cargo build --release -p flatnet-daemon -p flatnet-ctl

mkdir -p target/dist
install -m 0755 "target/$host/release/flatnet" target/dist/flatnet
install -m 0755 target/release/flatnetd target/release/flatnetctl target/dist/
echo "built target/dist/flatnet, target/dist/flatnetd, target/dist/flatnetctl"
