#!/usr/bin/env bash
# Installs Flatnet on this host (run as root), or removes it again with --uninstall.
#
#   sudo deploy/install.sh                      build, install, start flatnetd
#   sudo deploy/install.sh --configure-podman   also switch Podman to the CNI backend (podman system reset!)
#   sudo deploy/install.sh --uninstall          stop flatnetd and remove everything this script installed
#
# Running it again upgrades in place. What it creates is recorded in /var/lib/flatnet/install-manifest,
# so --uninstall removes exactly that and leaves the machine as it was.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/install.sh [options]

  --uninstall          stop flatnetd and remove everything this script installed
  --configure-podman   if Podman uses netavark, switch it to the CNI backend: installs
                       /etc/containers/containers.conf.d/90-flatnet.conf and runs
                       `podman system reset --force`, which DELETES all containers, images and volumes
  --podman-runc        also make Podman use runc with 1024 nofile/nproc limits (for kernels where crun
                       fails; see DEVELOPERS.md)
  --bin-dir DIR        install the binaries found in DIR instead of building them
  --prefix DIR         where flatnetd and flatnetctl go (default /usr/local, so /usr/local/bin)
  --force              with --uninstall: go on even while containers still hold flatnet addresses
  -h, --help           this text
EOF
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/usr/local
BIN_SRC=""
UNINSTALL=0
CONFIGURE_PODMAN=0
PODMAN_RUNC=0
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) UNINSTALL=1 ;;
        --configure-podman) CONFIGURE_PODMAN=1 ;;
        --podman-runc) PODMAN_RUNC=1 ;;
        --force) FORCE=1 ;;
        --bin-dir) BIN_SRC=${2:?--bin-dir needs a directory}; shift ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

CNI_BIN_DIR=/opt/cni/bin
BIN_DIR=$PREFIX/bin
CONFLIST=/etc/cni/net.d/90-flatnet.conflist
STATE_DIR=/var/lib/flatnet
MANIFEST=$STATE_DIR/install-manifest
SOCKET=/run/flatnet/flatnetd.sock
PIDFILE=/run/flatnet/flatnetd.pid
LOG=/var/log/flatnetd.log
UNIT_DIR=/etc/systemd/system
NM_DROPIN=/etc/NetworkManager/conf.d/90-flatnet-unmanaged.conf
NETWORKD_DROPIN=/etc/systemd/network/10-flatnet-unmanaged.network
PODMAN_DROPIN=/etc/containers/containers.conf.d/90-flatnet.conf
PODMAN_RUNC_DROPIN=/etc/containers/containers.conf.d/91-flatnet-runc.conf
BRIDGE=flatnet-br0

say() { echo "flatnet: $*"; }
die() { echo "flatnet: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run this as root (sudo $0 $*)"

have_systemd() { [ -d /run/systemd/system ]; }

# --- manifest: what this script created, so uninstall removes exactly that -----------------------

record() { # record KIND PATH  (KIND: file or dir)
    mkdir -p "$STATE_DIR"
    chmod 0700 "$STATE_DIR"
    touch "$MANIFEST"
    grep -qxF "$1 $2" "$MANIFEST" || echo "$1 $2" >>"$MANIFEST"
}

# Creates the directories leading to PATH's parent, recording the ones that did not exist.
make_parents() {
    local dir missing=()
    dir=$(dirname "$1")
    while [ ! -d "$dir" ]; do
        missing=("$dir" "${missing[@]}")
        dir=$(dirname "$dir")
    done
    for dir in "${missing[@]}"; do
        mkdir -m 0755 "$dir"
        record dir "$dir"
    done
}

put() { # put MODE SOURCE DEST
    make_parents "$3"
    install -m "$1" "$2" "$3"
    record file "$3"
}

# --- the daemon ------------------------------------------------------------------------------------

background_pid() {
    local pid exe
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] || return 1
    # After an upgrade replaced the binary, the kernel shows the old one as "PATH (deleted)".
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [ "${exe% (deleted)}" = "$BIN_DIR/flatnetd" ] && echo "$pid"
}

stop_background() {
    local pid i
    pid=$(background_pid) || { rm -f "$PIDFILE"; return 0; }
    kill -TERM "$pid"
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$PIDFILE"
    say "stopped flatnetd (pid $pid)"
}

wait_for_daemon() {
    local i
    for i in $(seq 100); do
        if "$BIN_DIR/flatnetctl" --socket "$SOCKET" ls >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start_daemon() {
    if have_systemd; then
        sed "s#/usr/local/bin/flatnetd#$BIN_DIR/flatnetd#" "$REPO/systemd/flatnetd.service" >"$UNIT_DIR/flatnetd.service.tmp"
        mv "$UNIT_DIR/flatnetd.service.tmp" "$UNIT_DIR/flatnetd.service"
        record file "$UNIT_DIR/flatnetd.service"
        put 0644 "$REPO/systemd/flatnetd.socket" "$UNIT_DIR/flatnetd.socket"
        systemctl daemon-reload
        systemctl enable --now flatnetd.socket
        # An upgrade: the running daemon must pick up the new binary.
        if systemctl is-active --quiet flatnetd.service; then
            systemctl restart flatnetd.service
        fi
        wait_for_daemon || die "flatnetd did not answer on $SOCKET: see journalctl -u flatnetd"
        say "flatnetd is managed by systemd (flatnetd.socket enabled; logs: journalctl -u flatnetd)"
    else
        mkdir -p "$(dirname "$SOCKET")"
        chmod 0700 "$(dirname "$SOCKET")"
        # Recorded (and removed by --uninstall) only when this script made it.
        [ -e "$LOG" ] || { touch "$LOG"; record file "$LOG"; }
        setsid "$BIN_DIR/flatnetd" --socket "$SOCKET" --state-dir "$STATE_DIR" >>"$LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
        wait_for_daemon || die "flatnetd did not start: see $LOG"
        say "systemd is not running here (PID 1 is $(cat /proc/1/comm)), so flatnetd was started in the"
        say "background (pid $(cat "$PIDFILE")), logging to $LOG. It does not come back after a reboot:"
        say "run deploy/install.sh again, or start it from your init system."
    fi
}

# --- Podman ----------------------------------------------------------------------------------------

podman_backend() {
    command -v podman >/dev/null 2>&1 || return 0
    podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null || true
}

configure_podman() {
    if ! command -v podman >/dev/null 2>&1; then
        say "Podman is not installed: install it (apt-get install podman) to use --network flatnet"
        return 0
    fi
    if [ "$PODMAN_RUNC" -eq 1 ]; then
        put 0644 "$REPO/deploy/podman-runc.conf" "$PODMAN_RUNC_DROPIN"
        say "Podman set to use runc ($PODMAN_RUNC_DROPIN)"
    fi
    local backend
    backend=$(podman_backend)
    case "$backend" in
        cni)
            say "Podman uses the CNI backend: \`podman run --network flatnet\` is ready"
            ;;
        netavark)
            if [ "$CONFIGURE_PODMAN" -eq 1 ]; then
                put 0644 "$REPO/deploy/podman-flatnet.conf" "$PODMAN_DROPIN"
                say "switching Podman to the CNI backend: running \`podman system reset --force\`"
                podman system reset --force
                backend=$(podman_backend)
                [ "$backend" = cni ] || die "Podman still reports network backend '$backend'"
                say "Podman now uses the CNI backend"
            else
                cat <<EOF
flatnet: Podman uses the netavark network backend. Flatnet is a CNI plugin, so Podman must use
flatnet: the CNI backend (network_backend = "cni") for \`podman run --network flatnet\`.
flatnet: Switching backends needs \`podman system reset\`, which DELETES ALL containers, images,
flatnet: volumes and networks of root's Podman. Nothing was changed. To switch, run:
flatnet:     sudo deploy/install.sh --configure-podman
EOF
            fi
            ;;
        *)
            say "could not tell Podman's network backend ('$backend'); flatnet needs network_backend = \"cni\""
            ;;
    esac
}

# --- install / uninstall ---------------------------------------------------------------------------

build() {
    if [ -n "$BIN_SRC" ]; then
        return 0
    fi
    local cmd="'$REPO/deploy/build-release.sh'"
    if command -v cargo >/dev/null 2>&1; then
        say "building the release binaries (cargo build --release)"
        bash -c "$cmd"
    elif [ -n "${SUDO_USER:-}" ] && runuser -u "$SUDO_USER" -- bash -lc 'command -v cargo' >/dev/null 2>&1; then
        say "building the release binaries as $SUDO_USER"
        runuser -u "$SUDO_USER" -- bash -lc "$cmd"
    else
        die "cargo is not in PATH: build first with deploy/build-release.sh and re-run with --bin-dir target/dist"
    fi
    BIN_SRC=$REPO/target/dist
}

install_all() {
    build
    for bin in flatnet flatnetd flatnetctl; do
        [ -x "$BIN_SRC/$bin" ] || die "$BIN_SRC/$bin is missing: build it first (deploy/build-release.sh)"
    done
    # An upgrade: the daemon started in the background by an earlier run stops before its binary is
    # replaced, and starts again below.
    stop_background
    put 0755 "$BIN_SRC/flatnet" "$CNI_BIN_DIR/flatnet"
    put 0755 "$BIN_SRC/flatnetd" "$BIN_DIR/flatnetd"
    put 0755 "$BIN_SRC/flatnetctl" "$BIN_DIR/flatnetctl"
    say "installed $CNI_BIN_DIR/flatnet, $BIN_DIR/flatnetd, $BIN_DIR/flatnetctl"
    # Before the network config: switching Podman's backend runs `podman system reset`, which
    # deletes the network configs in /etc/cni/net.d.
    configure_podman
    if [ -f "$CONFLIST" ] && ! grep -q '"type": "flatnet"' "$CONFLIST"; then
        die "$CONFLIST exists and is not Flatnet's: move it away first"
    fi
    put 0644 "$REPO/deploy/90-flatnet.conflist" "$CONFLIST"
    say "installed network 'flatnet' (10.87.1.0/24 on $BRIDGE, gateway 10.87.1.1) in $CONFLIST"
    if [ -d /etc/NetworkManager ]; then
        put 0644 "$REPO/deploy/networkmanager-flatnet.conf" "$NM_DROPIN"
        command -v nmcli >/dev/null 2>&1 && nmcli general reload conf >/dev/null 2>&1 || true
    fi
    if [ -d /etc/systemd/network ]; then
        put 0644 "$REPO/deploy/networkd-flatnet.network" "$NETWORKD_DROPIN"
        have_systemd && networkctl reload >/dev/null 2>&1 || true
    fi
    start_daemon
    say "done. Try: podman run --rm --network flatnet <image> ip addr"
}

uninstall_all() {
    local held
    if [ -x "$BIN_DIR/flatnetctl" ] && held=$("$BIN_DIR/flatnetctl" --socket "$SOCKET" ls 2>/dev/null | tail -n +2) && [ -n "$held" ]; then
        if [ "$FORCE" -ne 1 ]; then
            echo "$held" >&2
            die "containers still hold flatnet addresses (above): remove them first, or re-run with --force"
        fi
        say "--force: removing Flatnet while containers still use it"
    fi
    if have_systemd && [ -f "$UNIT_DIR/flatnetd.socket" ]; then
        systemctl disable --now flatnetd.socket flatnetd.service >/dev/null 2>&1 || true
    fi
    stop_background
    if [ -f "$PODMAN_DROPIN" ] && grep -q "Installed by Flatnet" "$PODMAN_DROPIN"; then
        say "removing $PODMAN_DROPIN: Podman goes back to its default backend after \`podman system reset\`"
    fi
    # Links flatnetd made: the bridge, and any container veth a --force uninstall leaves.
    local link
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^fn-[0-9a-f]{8}$' || true); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
    if [ -f "$MANIFEST" ]; then
        # Files first, then directories deepest first (reverse order of creation). A manifest may
        # hold no directory at all (every one existed before): sed, unlike grep, succeeds then.
        local path
        local -a files dirs
        mapfile -t files < <(sed -n 's/^file //p' "$MANIFEST")
        mapfile -t dirs < <(sed -n 's/^dir //p' "$MANIFEST" | tac)
        for path in "${files[@]}"; do rm -f "$path"; done
        for path in "${dirs[@]}"; do rmdir "$path" 2>/dev/null || true; done
    fi
    have_systemd && systemctl daemon-reload || true
    rm -rf "$STATE_DIR" "$(dirname "$SOCKET")"
    say "Flatnet removed"
}

if [ "$UNINSTALL" -eq 1 ]; then
    uninstall_all
else
    install_all
fi
