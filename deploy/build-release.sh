#!/usr/bin/env bash
# Builds the binaries Flatnet ships into target/dist/: flatnet (the CNI shim), flatnetd, flatnetctl.
#
# The shim runs once per container start, so it is built on its own (the daemon's features do not
# leak into it) and linked statically: no dynamic loader at start-up, about a third of its start-up
# time on the benchmark machine. Not position-independent either, as Go's static binaries (the
# reference plugins) are not: a position-independent one relocates itself at every start, writing
# to pages it then owns (about a tenth of its CPU time); the shim runs for a millisecond as the
# runtime's child, which is all address randomisation of its code would protect. It is built for
# the explicit host target so that these flags do not reach build scripts and proc-macros.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
    *-linux-gnu) static=(env "RUSTFLAGS=${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static") ;;
    *) static=(env) ;;
esac
"${static[@]}" cargo build --release -p flatnet-shim --target "$host"
cargo build --release -p flatnet-daemon -p flatnet-ctl

mkdir -p target/dist
install -m 0755 "target/$host/release/flatnet" target/dist/flatnet
install -m 0755 target/release/flatnetd target/release/flatnetctl target/dist/
echo "built target/dist/flatnet, target/dist/flatnetd, target/dist/flatnetctl"
