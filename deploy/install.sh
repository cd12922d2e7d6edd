#!/usr/bin/env bash
# Installs Flatnet on this host (run as root), or removes it again with --uninstall.
#
# With Podman's CNI backend (Podman 4), or without Podman, Flatnet is the CNI plugin
# /opt/cni/bin/flatnet with the network file /etc/cni/net.d/90-flatnet.conflist. With netavark 1.6
# or later (Podman 5), it is the netavark plugin /usr/local/libexec/netavark/flatnet with the Podman
# network `flatnet`.
#
#   sudo deploy/install.sh                      install what is missing, build, install, start flatnetd,
#                                               and check that a container on `flatnet` answers over HTTP
#   sudo deploy/install.sh --configure-podman   also switch an old-netavark Podman 4 to the CNI backend
#                                               (podman system reset!)
#   sudo deploy/install.sh --uninstall          stop flatnetd and remove everything this script installed
#
# With apt (Debian, Ubuntu) it installs what is missing from the distribution: Podman and its network
# parts, iproute2, busybox-static (the self-check's image), and runc when Podman cannot start a
# container with its own runtime. Every change to Podman is checked before it is made and taken back
# when a later step fails. Running it again upgrades in place. What it creates is recorded in
# /var/lib/flatnet/install-manifest, so --uninstall removes exactly that and leaves the machine as it
# was (the distribution packages it installed stay, and it names them).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/install.sh [options]

  --uninstall          stop flatnetd and remove everything this script installed
  --configure-podman   if Podman 4 uses a netavark older than 1.6 (which cannot run plugins), switch it
                       to the CNI backend: installs /etc/containers/containers.conf.d/90-flatnet.conf
                       and runs `podman system reset --force`, which DELETES all containers, images
                       and volumes (only where this Podman has a CNI backend: Podman 5 has none)
  --podman-runc        make Podman use runc with 1024 nofile/nproc limits (installs runc first). Without
                       it, this happens only when Podman cannot start a container with its own runtime
                       and runc can
  --no-self-check      skip the last step (a throwaway container on `flatnet` answering over HTTP)
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
SELF_CHECK=1
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) UNINSTALL=1 ;;
        --configure-podman) CONFIGURE_PODMAN=1 ;;
        --podman-runc) PODMAN_RUNC=1 ;;
        --force) FORCE=1 ;;
        --no-self-check) SELF_CHECK=0 ;;
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
# The self-check's image, made here from busybox-static (no registry needed).
SELF_CHECK_IMAGE=localhost/flatnet-selfcheck
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flatnet-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say() { echo "flatnet: $*"; }

# Podman changes made by this run, newest last ("file PATH" or "podman-network NAME"): a failure
# takes them back, so Podman is left as this run found it.
PODMAN_CHANGES=()

rollback_podman() {
    local i change kind what
    for ((i = ${#PODMAN_CHANGES[@]} - 1; i >= 0; i--)); do
        change=${PODMAN_CHANGES[$i]}
        kind=${change%% *}
        what=${change#* }
        case "$kind" in
            file) rm -f "$what" ;;
            podman-network) podman network rm "$what" >/dev/null 2>&1 || true ;;
        esac
        unrecord "$kind" "$what"
        echo "flatnet: took back: $change" >&2
    done
    PODMAN_CHANGES=()
}

die() {
    [ "${#PODMAN_CHANGES[@]}" -eq 0 ] || rollback_podman
    echo "flatnet: error: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run this as root (sudo $0 $*)"

have_systemd() { [ -d /run/systemd/system ]; }

# --- manifest: what this script created, so uninstall removes exactly that -----------------------

record() { # record KIND PATH  (KIND: file or dir)
    mkdir -p "$STATE_DIR"
    chmod 0700 "$STATE_DIR"
    touch "$MANIFEST"
    grep -qxF "$1 $2" "$MANIFEST" || echo "$1 $2" >>"$MANIFEST"
}

unrecord() { # unrecord KIND PATH
    [ -f "$MANIFEST" ] || return 0
    grep -vxF "$1 $2" "$MANIFEST" >"$MANIFEST.tmp" || true
    mv "$MANIFEST.tmp" "$MANIFEST"
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

# put, for a Podman configuration file: a later failure of this run takes it back.
put_podman() { # put_podman MODE SOURCE DEST
    [ -e "$3" ] || PODMAN_CHANGES+=("file $3")
    put "$@"
}

# --- distribution packages -------------------------------------------------------------------------

APT_UPDATED=0

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# apt_install WHY PACKAGE...: installs those of the packages that are missing, saying why.
apt_install() {
    local why=$1 p
    shift
    local missing=()
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        die "this machine has no apt: install $* ($why) with its package manager and run this again"
    fi
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ "${#missing[@]}" -gt 0 ] || return 0
    say "installing ${missing[*]} from the distribution ($why)"
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -qq >"$WORK/apt.log" 2>&1 ||
            die "apt-get update failed (is the distribution's mirror reachable?): $(tail -n 3 "$WORK/apt.log")"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >"$WORK/apt.log" 2>&1 ||
        die "apt-get install ${missing[*]} failed: $(tail -n 5 "$WORK/apt.log")"
    for p in "${missing[@]}"; do record package "$p"; done
}

# The major version of the Podman the distribution offers, or nothing.
candidate_podman_major() {
    command -v apt-cache >/dev/null 2>&1 || return 0
    apt-cache policy podman 2>/dev/null | sed -n 's/^ *Candidate: *\([0-9]*\).*/\1/p' | head -n 1
}

# What Flatnet and its self-check need from the distribution. Podman itself when it is missing:
# Podman 5 with netavark (Flatnet is its plugin); Podman 4 with the CNI network parts and without
# netavark (Debian 12's and Ubuntu 24.04's netavark 1.4 runs no plugins, and Podman 4 picks netavark
# whenever it is installed on a fresh store). Either with runc rather than crun: crun cannot start a
# container on a cgroup v1 hybrid layout (WSL2, older kernels), and Podman runs runc when crun is
# not installed, with no setting of ours.
install_packages() {
    command -v apt-get >/dev/null 2>&1 || return 0
    apt_install "Flatnet's host networking and the outbound NAT of networks with ipMasq" iproute2 nftables
    if ! command -v podman >/dev/null 2>&1; then
        local major
        major=$(candidate_podman_major)
        case "$major" in
            "") say "this distribution offers no Podman: Flatnet is installed as a CNI plugin only" ;;
            4) apt_install "Podman, with its CNI network backend" podman containernetworking-plugins runc ;;
            *) apt_install "Podman, with netavark" podman netavark runc ;;
        esac
    fi
    if command -v podman >/dev/null 2>&1; then
        apt_install "the self-check's container image" busybox-static
    fi
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
    podman_info '{{.Host.NetworkBackend}}' || die "Podman does not work here: \`podman info\` fails with: $(podman_info_error)
flatnet: fix Podman first (for example a runtime named in containers.conf that is not installed), then run this again"
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
    local version backend
    backend=$(podman_backend) || exit 1
    case "$backend" in
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

# What `podman info` says of this Podman (a Go template), or a failure naming Podman's own error.
podman_info() {
    podman info --format "$1" 2>"$WORK/podman-info.err"
}

podman_info_error() {
    sed -n 's/^Error: //p' "$WORK/podman-info.err" | head -n 1
}

# The self-check's image: busybox-static's busybox and the applets it needs, imported (no
# registry). Made again when missing (`podman system reset` deletes it).
make_image() {
    podman image exists "$SELF_CHECK_IMAGE" >/dev/null 2>&1 && return 0
    local root=$WORK/image a
    [ -x /bin/busybox ] || die "/bin/busybox is missing: install busybox-static (the self-check's image)"
    mkdir -p "$root/bin" "$root/www"
    cp /bin/busybox "$root/bin/"
    for a in sh true httpd; do ln -s busybox "$root/bin/$a"; done
    echo "flatnet self-check" >"$root/www/index.html"
    tar -C "$root" -c . | podman import -q - "$SELF_CHECK_IMAGE" >/dev/null 2>"$WORK/import.err" ||
        die "podman import of the self-check image failed: $(cat "$WORK/import.err")"
    rm -rf "$root"
    record podman-image "$SELF_CHECK_IMAGE"
}

# Whether Podman starts a container (no network) with ARGS; its error in $WORK/start.err.
podman_starts() {
    podman run --rm --network none "$@" "$SELF_CHECK_IMAGE" true >/dev/null 2>"$WORK/start.err"
}

start_error() {
    grep -v '^time=' "$WORK/start.err" | sed 's/^Error: //' | head -n 2 | tr '\n' ' '
}

RUNC_ARGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

# Podman's runtime: switched to runc when asked (--podman-runc), or when Podman cannot start a
# container with its own runtime and runc can. Checked with a real container before it is written.
check_runtime() {
    make_image
    if [ "$PODMAN_RUNC" -eq 0 ] && podman_starts; then
        return 0
    fi
    local why
    if [ "$PODMAN_RUNC" -eq 1 ]; then
        why="--podman-runc"
    else
        why="Podman cannot start a container with its runtime $(podman_info '{{.Host.OCIRuntime.Name}}' || true): $(start_error)"
        say "$why"
        say "trying runc instead"
    fi
    apt_install "the runtime runc, for Podman" runc
    if ! podman_starts "${RUNC_ARGS[@]}"; then
        die "Podman cannot start a container with runc either: $(start_error)
flatnet: Podman was left as it was. Check \`podman run --rm --network none $SELF_CHECK_IMAGE true\`"
    fi
    if [ -f "$PODMAN_RUNC_DROPIN" ]; then
        say "Podman uses runc already ($PODMAN_RUNC_DROPIN)"
        return 0
    fi
    put_podman 0644 "$REPO/deploy/podman-runc.conf" "$PODMAN_RUNC_DROPIN"
    say "Podman now uses runc with 1024 nofile/nproc limits ($PODMAN_RUNC_DROPIN; --uninstall takes it back)"
}

# Whether this Podman has a CNI backend (Podman 5 is built without one), asked of a throwaway store
# and configuration so that nothing of the machine's Podman is touched.
podman_has_cni() {
    local d=$WORK/cni-probe
    mkdir -p "$d"
    printf '[network]\nnetwork_backend = "cni"\n[engine]\ntmp_dir = "%s/tmp"\n' "$d" >"$d/containers.conf"
    [ "$(CONTAINERS_CONF=$d/containers.conf podman --root "$d/root" --runroot "$d/runroot" \
        info --format '{{.Host.NetworkBackend}}' 2>"$d/err")" = cni ]
}

cni_probe_error() {
    sed -n 's/^Error: //p' "$WORK/cni-probe/err" | head -n 1
}

# A Podman whose netavark runs no plugins: Flatnet needs Podman's CNI backend, which only
# --configure-podman switches to (podman system reset), and only where this Podman has one.
switch_to_cni() {
    if ! podman_has_cni; then
        cat <<EOF
flatnet: Podman uses netavark $(netavark_version), which cannot run network plugins (that needs
flatnet: netavark $NETAVARK_PLUGINS_SINCE or later), and this Podman has no CNI backend to switch to
flatnet: ($(cni_probe_error)). Install netavark $NETAVARK_PLUGINS_SINCE or later and run this again.
flatnet: Podman was not changed.
EOF
        [ "$CONFIGURE_PODMAN" -eq 0 ] || die "--configure-podman: this Podman has no CNI backend; nothing was changed"
        return 1
    fi
    if [ "$CONFIGURE_PODMAN" -eq 0 ]; then
        cat <<EOF
flatnet: Podman uses netavark $(netavark_version), which cannot run network plugins (that needs
flatnet: netavark $NETAVARK_PLUGINS_SINCE or later), so Flatnet needs Podman's CNI backend
flatnet: (network_backend = "cni") for \`podman run --network flatnet\`. Switching backends needs
flatnet: \`podman system reset\`, which DELETES ALL containers, images, volumes and networks of
flatnet: root's Podman. Nothing was changed. To switch, run:
flatnet:     sudo deploy/install.sh --configure-podman
EOF
        return 1
    fi
    put_podman 0644 "$REPO/deploy/podman-flatnet.conf" "$PODMAN_DROPIN"
    say "switching Podman to the CNI backend: running \`podman system reset --force\` (deletes all containers, images and volumes)"
    podman system reset --force >"$WORK/reset.log" 2>&1 ||
        die "podman system reset failed: $(tail -n 3 "$WORK/reset.log")"
    local backend
    backend=$(podman_info '{{.Host.NetworkBackend}}') || die "podman info fails after the switch: $(podman_info_error)"
    [ "$backend" = cni ] || die "Podman still reports network backend '$backend'"
    say "Podman now uses the CNI backend"
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
    PODMAN_CHANGES+=("podman-network $PODMAN_NETWORK")
    say "created the Podman network $PODMAN_NETWORK (10.87.1.0/24 on $BRIDGE, gateway 10.87.1.1)"
}

# What this script changed in Podman's configuration goes back; its self-check image goes.
restore_podman() {
    command -v podman >/dev/null 2>&1 || return 0
    if grep -qxF "podman-image $SELF_CHECK_IMAGE" "$MANIFEST" 2>/dev/null; then
        podman image rm "$SELF_CHECK_IMAGE" >/dev/null 2>&1 || true
    fi
    if grep -qxF "file $PODMAN_RUNC_DROPIN" "$MANIFEST" 2>/dev/null; then
        say "Podman goes back to its own runtime ($PODMAN_RUNC_DROPIN removed)"
    fi
    if grep -qxF "file $PODMAN_DROPIN" "$MANIFEST" 2>/dev/null; then
        cat <<EOF
flatnet: Podman goes back to its default network backend ($PODMAN_DROPIN removed). Podman 4 keeps
flatnet: using CNI while it holds containers, images or networks made with it; \`podman system reset\`
flatnet: would switch it to netavark but DELETES ALL of root's containers, images and volumes.
EOF
    fi
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

# --- the self-check --------------------------------------------------------------------------------

# A throwaway container on the network flatnet must answer over HTTP from this host.
self_check() {
    local name=flatnet-selfcheck-$$ addr body deadline
    make_image
    say "self-check: starting a throwaway container on the network $PODMAN_NETWORK"
    if ! podman run -d --name "$name" --network "$PODMAN_NETWORK" "$SELF_CHECK_IMAGE" \
        httpd -f -p 80 -h /www >/dev/null 2>"$WORK/start.err"; then
        podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
        die "self-check: \`podman run --network $PODMAN_NETWORK\` failed: $(start_error)
flatnet: flatnetd's log: $(daemon_log_hint)"
    fi
    addr=$(podman inspect -f "{{.NetworkSettings.Networks.$PODMAN_NETWORK.IPAddress}}" "$name" 2>/dev/null || true)
    body=""
    if [ -n "$addr" ]; then
        # httpd may take a moment to listen: up to 10 s.
        deadline=$((SECONDS + 10))
        while [ "$SECONDS" -lt "$deadline" ]; do
            body=$(http_get "$addr" 2>/dev/null || true)
            [ -z "$body" ] || break
            sleep 0.1
        done
    fi
    podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
    [ -n "$addr" ] || die "self-check: the container got no address on the network $PODMAN_NETWORK
flatnet: flatnetd's log: $(daemon_log_hint)"
    [ "$body" = "flatnet self-check" ] || die "self-check: the container at $addr did not answer http://$addr/ from this host
flatnet: is something filtering $BRIDGE? flatnetd's log: $(daemon_log_hint)"
    say "self-check passed: a container on the network $PODMAN_NETWORK answered http://$addr/ (and was removed)"
}

# The body of http://ADDR/, with bash alone (no HTTP client needed), within 2 s.
http_get() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/80" && printf "GET / HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3 && cat <&3' _ "$1" |
        tr -d '\r' | sed '1,/^$/d'
}

daemon_log_hint() {
    if have_systemd; then echo "journalctl -u flatnetd"; else echo "$LOG"; fi
}

# --- install / uninstall ---------------------------------------------------------------------------

build() {
    if [ -n "$BIN_SRC" ]; then
        return 0
    fi
    local cmd="'$REPO/deploy/build-release.sh'" started=$SECONDS
    local note="the first build takes about 5 minutes on 2 cores (cargo shows its progress); later ones seconds"
    if command -v cargo >/dev/null 2>&1; then
        say "building the release binaries: $note"
        bash -c "$cmd" || die "the build failed (above)"
    elif [ -n "${SUDO_USER:-}" ] && runuser -u "$SUDO_USER" -- bash -lc 'command -v cargo' >/dev/null 2>&1; then
        say "building the release binaries as $SUDO_USER: $note"
        runuser -u "$SUDO_USER" -- bash -lc "$cmd" || die "the build failed (above)"
    else
        die "cargo is not in PATH: install Rust (https://rustup.rs), or build first with deploy/build-release.sh and re-run with --bin-dir target/dist"
    fi
    say "built in $((SECONDS - started)) s"
    BIN_SRC=$REPO/target/dist
}

install_all() {
    install_packages
    build
    for bin in flatnet flatnetd flatnetctl; do
        [ -x "$BIN_SRC/$bin" ] || die "$BIN_SRC/$bin is missing: build it first (deploy/build-release.sh)"
    done
    local mode usable=1
    mode=$(podman_mode) || exit 1
    # Before anything is installed: the runtime must start a container, or Podman gets runc.
    [ "$mode" = none ] || check_runtime
    # An upgrade: the daemon started in the background by an earlier run stops before its binary is
    # replaced, and starts again below.
    stop_background
    put 0755 "$BIN_SRC/flatnetd" "$BIN_DIR/flatnetd"
    put 0755 "$BIN_SRC/flatnetctl" "$BIN_DIR/flatnetctl"
    say "installed $BIN_DIR/flatnetd, $BIN_DIR/flatnetctl"
    case "$mode" in
        plugin) install_netavark_plugin ;;
        none) say "Podman is not installed: Flatnet is installed as a CNI plugin for other runtimes" ;;
        cni)
            [ "$CONFIGURE_PODMAN" -eq 0 ] || say "--configure-podman is not needed: Podman uses the CNI backend already"
            say "Podman uses the CNI backend: Flatnet is its CNI plugin"
            ;;
        switch)
            # Before the network config: switching Podman's backend runs `podman system reset`,
            # which deletes the network configs in /etc/cni/net.d.
            switch_to_cni || usable=0
            ;;
    esac
    if [ "$mode" != plugin ]; then
        put 0755 "$BIN_SRC/flatnet" "$CNI_BIN_DIR/flatnet"
        say "installed the CNI plugin $CNI_BIN_DIR/flatnet"
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
    if [ "$mode" = none ]; then
        say "done. flatnetd serves $SOCKET; the CNI network is in $CONFLIST"
        return 0
    fi
    if [ "$usable" -eq 0 ]; then
        say "Flatnet is installed, but Podman cannot use it until the above is done"
        return 0
    fi
    if [ "$SELF_CHECK" -eq 1 ]; then
        self_check
    fi
    PODMAN_CHANGES=()
    say "done. Try:"
    say "    sudo podman run -d --name web --network flatnet <image>"
    say "    sudo flatnetctl ls        # its address; curl http://<that address>/ reaches it"
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
    restore_podman
    # The outbound NAT table flatnetd wrote (networks with ipMasq); nothing else in nftables is its.
    if command -v nft >/dev/null 2>&1 && nft list table inet flatnet >/dev/null 2>&1; then
        nft delete table inet flatnet
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
    local packages
    packages=$(sed -n 's/^package //p' "$MANIFEST" 2>/dev/null | tr '\n' ' ')
    rm -rf "$STATE_DIR" "$(dirname "$SOCKET")"
    say "Flatnet removed"
    if [ -n "${packages// /}" ]; then
        say "the distribution packages installed for it stay (Podman may be in use): ${packages% }"
        say "to remove them too: sudo apt-get purge ${packages% } && sudo apt-get autoremove"
    fi
}

if [ "$UNINSTALL" -eq 1 ]; then
    uninstall_all
else
    install_all
fi
