#!/usr/bin/env bash
# Builds the Debian 13 root the Podman 5 tests run real Podman 5.4 + netavark 1.14 in (Debian 12
# has only Podman 4.3), once: about a minute with debootstrap, ~300 MB. A root that is complete
# (its stamp file names the same package list) is left as it is, so running this again is cheap.
#
#   sudo tests/podman5-root.sh [DIR]     default DIR: target/debian13-root
#
# The tests look for the root in $FLATNET_PODMAN5_ROOT, else in target/debian13-root. Needs root
# and debootstrap (Debian 12's knows Debian 13 and holds its keys).
set -euo pipefail
cd "$(dirname "$0")/.."

root=${1:-target/debian13-root}
suite=trixie
mirror=${FLATNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=podman,netavark,aardvark-dns,runc,conmon,catatonit,passt,uidmap,busybox-static,iproute2,ca-certificates,nftables,iptables
stamp="$root/.flatnet-root"
want="$suite $packages"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "tests/podman5-root.sh: $root is ready"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "tests/podman5-root.sh: run as root (debootstrap needs it)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "tests/podman5-root.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

rm -rf "$root"
mkdir -p "$(dirname "$root")"
echo "tests/podman5-root.sh: building a Debian 13 root with Podman 5 in $root (about a minute)"
# In a mount namespace of its own, so debootstrap's /proc and /sys mounts never show on the host.
unshare --mount debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    echo "tests/podman5-root.sh: debootstrap failed (whole log: $root.log)" >&2
    exit 1
}
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

# Podman as it works on this kind of machine: runc (crun fails on a cgroup v1 hybrid layout),
# cgroupfs and file events (no systemd), fixed rlimits, netavark.
cat >"$root/etc/containers/containers.conf" <<'EOF'
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "netavark"
EOF
echo "$want" >"$stamp"
rm -f "$root.log"
echo "tests/podman5-root.sh: $root is ready"
