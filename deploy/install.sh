#!/usr/bin/env bash
# Installs Flatnet on this host (run as root), or removes it again with --uninstall.
#
# With Podman's CNI backend (Podman 4), or without Podman, Flatnet is the CNI plugin
# /opt/cni/bin/flatnet with the network file /etc/cni/net.d/90-flatnet.conflist. With netavark 1.6
# or later (Podman 5), it is the netavark plugin /usr/local/libexec/netavark/flatnet with the Podman
# network `flatnet`.
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
  --configure-podman   if Podman uses a netavark older than 1.6 (which cannot run plugins), switch it
                       to the CNI backend: installs /etc/containers/containers.conf.d/90-flatnet.conf
                       and runs `podman system reset --force`, which DELETES all containers, images
                       and volumes
  --podman-runc        also make Podman use runc with 1024 nofile/nproc limits (for kernels where crun
                       fails; see DEVELOPERS.md)
  --bin-dir DIR        install the binaries found in DIR instead of building them
  --prefix DIR         where flatnetd and flatnetctl go (default /usr/local, so /usr/local/bin)
  --force              with --uninstall: go on even while containers still hold flatnet addresses
                       (on Podman 5 they are disconnected from the network flatnet, not removed)
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
# The first of netavark's default plugin directories; the file name is the network driver's name.
NETAVARK_PLUGIN=/usr/local/libexec/netavark/flatnet
NETAVARK_PLUGINS_SINCE=1.6.0
PODMAN_NETWORK=flatnet
PODMAN_NETWORK_DIR=/etc/containers/networks
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

# The version of the netavark Podman runs (e.g. 1.14.0), or nothing.
netavark_version() {
    local bin v
    for bin in $(podman info --format '{{.Host.NetworkBackendInfo.Path}}' 2>/dev/null) \
        /usr/lib/podman/netavark /usr/libexec/podman/netavark /usr/local/lib/podman/netavark \
        /usr/local/libexec/podman/netavark; do
        [ -x "$bin" ] || continue
        v=$("$bin" --version 2>/dev/null | sed -n 's/^netavark \([0-9][0-9.]*\).*/\1/p')
        if [ -n "$v" ]; then
            echo "$v"
            return 0
        fi
    done
}

# Whether version $1 is at least $2.
version_at_least() {
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# How Flatnet meets this host's Podman: "none" (no Podman), "cni" (the CNI backend), "plugin"
# (a netavark that runs plugins: 1.6 and later) or "switch" (an older netavark: only Podman's CNI
# backend can use Flatnet).
podman_mode() {
    command -v podman >/dev/null 2>&1 || { echo none; return 0; }
    local version
    case "$(podman_backend)" in
        netavark)
            version=$(netavark_version)
            if [ -n "$version" ] && version_at_least "$version" "$NETAVARK_PLUGINS_SINCE"; then
                echo plugin
            else
                echo switch
            fi
            ;;
        *) echo cni ;;
    esac
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
flatnet: Podman uses netavark $(netavark_version), which cannot run network plugins (that needs
flatnet: netavark $NETAVARK_PLUGINS_SINCE or later), so Flatnet needs Podman's CNI backend
flatnet: (network_backend = "cni") for \`podman run --network flatnet\`. Switching backends needs
flatnet: \`podman system reset\`, which DELETES ALL containers, images, volumes and networks of
flatnet: root's Podman. Nothing was changed. To switch, run:
flatnet:     sudo deploy/install.sh --configure-podman
EOF
            fi
            ;;
        *)
            say "could not tell Podman's network backend ('$backend'); flatnet needs network_backend = \"cni\""
            ;;
    esac
}

# Podman 5 with netavark: the plugin, where Podman finds it.
install_netavark_plugin() {
    if [ "$CONFIGURE_PODMAN" -eq 1 ]; then
        say "--configure-podman is not needed: this Podman's netavark runs Flatnet as a plugin"
    fi
    put 0755 "$BIN_SRC/flatnet" "$NETAVARK_PLUGIN"
    if ! podman info --format '{{range .Plugins.Network}}{{.}} {{end}}' 2>/dev/null | tr ' ' '\n' | grep -qx flatnet; then
        die "Podman does not list the network plugin $NETAVARK_PLUGIN: if containers.conf sets netavark_plugin_dirs, add $(dirname "$NETAVARK_PLUGIN") to it"
    fi
    say "installed the netavark plugin $NETAVARK_PLUGIN (netavark $(netavark_version))"
}

# The Podman network `flatnet` of the driver `flatnet`, made unless it is there.
create_podman_network() {
    local driver out
    if podman network exists "$PODMAN_NETWORK" >/dev/null 2>&1; then
        driver=$(podman network inspect --format '{{.Driver}}' "$PODMAN_NETWORK" 2>/dev/null || true)
        [ "$driver" = flatnet ] || die "a Podman network named $PODMAN_NETWORK exists with the driver '$driver': remove it (podman network rm $PODMAN_NETWORK) and run this again"
        say "the Podman network $PODMAN_NETWORK is there already"
        return 0
    fi
    # Podman makes its network directory with the first network: it goes again with this one.
    local had_dir=1
    [ -d "$PODMAN_NETWORK_DIR" ] || had_dir=0
    out=$(podman network create --driver flatnet "$PODMAN_NETWORK" 2>&1) || die "podman network create --driver flatnet $PODMAN_NETWORK failed: $out"
    [ "$had_dir" -eq 1 ] || [ ! -d "$PODMAN_NETWORK_DIR" ] || record dir "$PODMAN_NETWORK_DIR"
    record podman-network "$PODMAN_NETWORK"
    say "created the Podman network $PODMAN_NETWORK (10.87.1.0/24 on $BRIDGE, gateway 10.87.1.1)"
}

# Removes the Podman network this script created, unless containers still use it.
remove_podman_network() {
    grep -qxF "podman-network $PODMAN_NETWORK" "$MANIFEST" 2>/dev/null || return 0
    command -v podman >/dev/null 2>&1 || return 0
    podman network exists "$PODMAN_NETWORK" >/dev/null 2>&1 || return 0
    local users
    users=$(podman ps --all --filter "network=$PODMAN_NETWORK" --format '{{.Names}}' 2>/dev/null | tr '\n' ' ')
    if [ -n "${users// /}" ]; then
        [ "$FORCE" -eq 1 ] || die "containers use the Podman network $PODMAN_NETWORK (${users% }): remove them first, or re-run with --force"
        # Disconnected, not removed (`podman network rm --force` would delete the containers).
        local name
        for name in $users; do
            podman network disconnect --force "$PODMAN_NETWORK" "$name" >/dev/null 2>&1 ||
                say "warning: could not disconnect $name from $PODMAN_NETWORK"
        done
        say "--force: disconnected ${users% } from the Podman network $PODMAN_NETWORK"
    fi
    podman network rm "$PODMAN_NETWORK" >/dev/null
    say "removed the Podman network $PODMAN_NETWORK"
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
    put 0755 "$BIN_SRC/flatnetd" "$BIN_DIR/flatnetd"
    put 0755 "$BIN_SRC/flatnetctl" "$BIN_DIR/flatnetctl"
    say "installed $BIN_DIR/flatnetd, $BIN_DIR/flatnetctl"
    local mode
    mode=$(podman_mode)
    if [ "$mode" = plugin ]; then
        install_netavark_plugin
    else
        put 0755 "$BIN_SRC/flatnet" "$CNI_BIN_DIR/flatnet"
        say "installed the CNI plugin $CNI_BIN_DIR/flatnet"
        # Before the network config: switching Podman's backend runs `podman system reset`, which
        # deletes the network configs in /etc/cni/net.d.
        configure_podman
        if [ -f "$CONFLIST" ] && ! grep -q '"type": "flatnet"' "$CONFLIST"; then
            die "$CONFLIST exists and is not Flatnet's: move it away first"
        fi
        put 0644 "$REPO/deploy/90-flatnet.conflist" "$CONFLIST"
        say "installed network 'flatnet' (10.87.1.0/24 on $BRIDGE, gateway 10.87.1.1) in $CONFLIST"
    fi
    if [ -d /etc/NetworkManager ]; then
        put 0644 "$REPO/deploy/networkmanager-flatnet.conf" "$NM_DROPIN"
        command -v nmcli >/dev/null 2>&1 && nmcli general reload conf >/dev/null 2>&1 || true
    fi
    if [ -d /etc/systemd/network ]; then
        put 0644 "$REPO/deploy/networkd-flatnet.network" "$NETWORKD_DROPIN"
        have_systemd && networkctl reload >/dev/null 2>&1 || true
    fi
    start_daemon
    # The network's create asks flatnetd which subnets are taken: after the daemon is up.
    if [ "$mode" = plugin ]; then
        create_podman_network
    fi
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
    remove_podman_network
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
