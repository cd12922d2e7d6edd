#!/usr/bin/env bash
# Follows README.md literally on fresh minimal Debian 12 and Debian 13 machines: each is a root made
# by debootstrap with only what a new user brings (the Rust toolchain, git, gcc, python3, curl,
# sudo), run as a machine of its own (network, pid, mount, IPC and UTS namespaces; an uplink through
# slirp4netns, in user space, for apt and PyPI; no systemd, like this machine kind). In each:
#
#   1. the README's install command (it installs Podman and the rest from the distribution);
#   2. the README's first container, which must answer over HTTP, twice (a second attempt works);
#   3. `podman rm -f web`, the README's uninstall command, and a comparison of the whole file tree
#      with the one before step 1: only the files of the distribution packages that step 1 says it
#      installed may differ (and their configuration files must be as the packages shipped them);
#   4. Podman still starts a container;
#   5. Debian 12 only: the README's install again, then the README's test command, `tests/run.sh`.
#
# The checkout is seen inside at its own path and the machine's Rust toolchain as root's, so the
# build is shared. Needs root, debootstrap and slirp4netns.
#
#   sudo tests/fresh-roots.sh [bookworm] [trixie]     default: both
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
MIRROR=${FLATNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=ca-certificates,curl,sudo,git,gcc,libc6-dev,python3
WORK=$REPO/target/fresh-roots
SUITES=("$@")
[ "${#SUITES[@]}" -gt 0 ] || SUITES=(bookworm trixie)

say() { echo "fresh-roots: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root"
for tool in debootstrap slirp4netns nsenter unshare setpriv; do
    command -v "$tool" >/dev/null || fail "needs $tool (apt-get install debootstrap slirp4netns util-linux)"
done
for tool in cargo rustc; do
    command -v "$tool" >/dev/null || fail "needs the Rust toolchain ($tool)"
done
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
[ -d "$CARGO_HOME" ] && [ -d "$RUSTUP_HOME" ] || fail "needs a rustup toolchain in $CARGO_HOME and $RUSTUP_HOME"

# The README's lines: the install and test commands of its first block, and the block under
# "### A first container".
readme_line() { grep -m 1 -x "$1" README.md || fail "README.md has no line matching $1"; }
INSTALL_CMD=$(readme_line 'sudo deploy/install\.sh')
TEST_CMD=$(readme_line 'tests/run\.sh')
UNINSTALL_CMD=$(readme_line 'sudo deploy/install\.sh --uninstall')
DEMO=$(awk '/^### A first container/ {f = 1} f && /^```sh$/ {b = 1; next} b && /^```$/ {exit} b {print}' README.md)
[ -n "$DEMO" ] || fail "README.md has no sh block under '### A first container'"

mkdir -p "$WORK"
MACHINES=()
SLIRPS=()
NETNSES=()
cleanup() {
    local p n
    for p in "${MACHINES[@]}" "${SLIRPS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for n in "${NETNSES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT

# --- the machines ----------------------------------------------------------------------------------

make_root() { # make_root SUITE DIR
    rm -rf "$2"
    say "$1: debootstrap of a minimal root ($BASE)"
    if ! unshare --mount debootstrap --variant=minbase --include="$BASE" "$1" "$2" "$MIRROR" >"$2.log" 2>&1; then
        tail -n 20 "$2.log" >&2
        fail "$1: debootstrap failed (log: $2.log)"
    fi
    rm -rf "$2"/var/cache/apt/archives/*.deb
    # What a machine has that a bare root lacks: a host name, a resolver (slirp4netns's), this
    # machine's certificate authorities (downloads go through its TLS proxy), and rustup's line in
    # root's profile.
    echo "fresh-$1" >"$2/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 fresh-%s\n::1 localhost\n' "$1" >"$2/etc/hosts"
    echo "nameserver 10.0.2.3" >"$2/etc/resolv.conf"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$2/usr/local/share/ca-certificates/"
        chroot "$2" update-ca-certificates >/dev/null 2>&1 || fail "$1: update-ca-certificates failed"
    fi
    echo '. "$HOME/.cargo/env"' >>"$2/root/.profile"
    mkdir -p "$2/root/.cargo" "$2/root/.rustup"
}

# Starts the machine; sets MACHINE to the pid (as this host sees it) of its PID 1.
start_machine() { # start_machine SUITE DIR NETNS
    local root=$2 ns=$3
    ip netns add "$ns"
    NETNSES+=("$ns")
    ip -n "$ns" link set lo up
    slirp4netns --configure --mtu=65520 --disable-host-loopback --netns-type=path "/run/netns/$ns" tap0 \
        >"$WORK/$1-slirp.log" 2>&1 &
    SLIRPS+=("$!")
    disown "$!"
    local script
    script=$(cat <<EOF
set -e
R=$root
cat \$R/etc/hostname > /proc/sys/kernel/hostname
mount --bind \$R \$R
mount -t proc proc \$R/proc
mount -t sysfs sysfs \$R/sys
mount --rbind /sys/fs/cgroup \$R/sys/fs/cgroup
mount -t tmpfs tmpfs \$R/run
mount -t tmpfs tmpfs \$R/tmp
mkdir -p \$R$REPO
mount --bind $REPO \$R$REPO
mount --bind $CARGO_HOME \$R/root/.cargo
mount --bind $RUSTUP_HOME \$R/root/.rustup
mount -t tmpfs -o mode=755 tmpfs \$R/dev
for d in null zero full random urandom tty; do touch \$R/dev/\$d; mount --bind /dev/\$d \$R/dev/\$d; done
mkdir -p \$R/dev/net; touch \$R/dev/net/tun; mount --bind /dev/net/tun \$R/dev/net/tun
if [ -e /dev/fuse ]; then touch \$R/dev/fuse; mount --bind /dev/fuse \$R/dev/fuse; fi
mkdir \$R/dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts \$R/dev/pts; ln -s pts/ptmx \$R/dev/ptmx
mkdir \$R/dev/shm; mount -t tmpfs -o mode=1777 tmpfs \$R/dev/shm
mkdir \$R/dev/mqueue; mount -t mqueue mqueue \$R/dev/mqueue
ln -s /proc/self/fd \$R/dev/fd
cd \$R
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
rmdir /oldroot
cd /
echo ready
exec sleep infinity
EOF
)
    local out=$WORK/$1-machine.out
    setpriv --pdeathsig KILL -- nsenter --net="/run/netns/$ns" unshare --kill-child --fork --pid --mount \
        --propagation private --ipc --uts sh -c "$script" >"$out" 2>&1 &
    local holder=$! i pid=""
    MACHINES+=("$holder")
    disown "$holder"
    for i in $(seq 100); do
        if grep -q ready "$out" 2>/dev/null; then
            pid=$(cut -d' ' -f1 "/proc/$holder/task/$holder/children" 2>/dev/null || true)
            [ -n "$pid" ] && break
        fi
        sleep 0.1
    done
    [ -n "$pid" ] || { cat "$out" >&2; fail "$1: the machine did not start"; }
    MACHINES+=("$pid")
    MACHINE=$pid
}

# Runs a bash script as root on the machine, in the checkout, with a login shell's environment (so
# rustup's cargo is on PATH); its output goes to LOG and, on failure, to stderr.
on_machine() { # on_machine PID LOG SCRIPT
    local pid=$1 log=$2
    if ! timeout 1800 nsenter --target "$pid" --mount --pid --net --ipc --uts --root --wd \
        env -i HOME=/root TERM=dumb LANG=C.UTF-8 CI=true PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
        bash -lc "cd '$REPO' && set -euo pipefail && $3" >"$log" 2>&1; then
        # A failed test's own output (cargo prints it between "---- NAME stdout ----" and the list
        # of failures) comes first, since only what is printed outlives the checkout.
        awk '/^---- .* stdout ----$/, /^failures:$/' "$log" | head -n 300 >&2
        tail -n 60 "$log" >&2
        return 1
    fi
}

# --- the file tree ---------------------------------------------------------------------------------

snapshot() { # snapshot ROOT: one line per path (type, mode, owner, and size and mtime of files)
    (cd "$1" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run -o -path ./tmp \
        -o -path "./${REPO#/}" -o -path ./root/.cargo -o -path ./root/.rustup \) -prune -o \
        \( -type d -printf 'd %m %U:%G %p\n' \) -o \( -type l -printf 'l %p -> %l\n' \) -o \
        -printf '%y %m %U:%G %s %T@ %p\n') | LC_ALL=C sort
}

packages() { # packages ROOT
    dpkg-query --admindir="$1/var/lib/dpkg" -W -f='${Package}\n' | LC_ALL=C sort
}

# Paths that installing packages changes besides the packages' own files: dpkg's and apt's state,
# the caches and logs, what maintainer scripts write (systemd unit links, netbase's /etc/networks;
# the links to /etc/alternatives are checked on their own), and Podman's own state: its storage
# (the README's image) and, on Podman 4, the CNI library's lock and result cache.
BOOKKEEPING='^\./(var/lib/(dpkg|apt|ucf|systemd/deb-systemd-[a-z-]*|containers|cni|pam|python)(/|$)|var/cache(/|$)|var/log/(apt|dpkg\.log|alternatives\.log)|etc/(alternatives|ld\.so\.cache|subuid|subgid|networks)($|/)|etc/systemd/(system|user)/[^/]*\.wants(/|$)|etc/cni/net\.d/cni\.lock$|usr/lib/python3[^/]*/.*__pycache__|usr/share/man/)'

# compare SUITE ROOT BEFORE-SNAPSHOT BEFORE-PACKAGES: fails on any change not owned by a package
# installed since, or a configuration file of those packages that is not as shipped.
compare() {
    local suite=$1 root=$2 after new
    after=$WORK/$suite-after.tree
    snapshot "$root" >"$after"
    new=$(LC_ALL=C comm -13 "$4" <(packages "$root") | tr '\n' ' ')
    say "$suite: packages installed since: ${new:-none}"
    local owned=$WORK/$suite-owned
    : >"$owned"
    local p
    for p in $new; do
        # Merged /usr: dpkg names /bin/ip what the root holds as /usr/bin/ip.
        dpkg-query --admindir="$root/var/lib/dpkg" -L "$p" 2>/dev/null |
            sed -e 's#^#.#' -e 's#^\./\(bin\|sbin\|lib\|lib64\)\(/\|$\)#./usr/\1\2#' >>"$owned"
    done
    # The changed paths: lines in one snapshot and not the other, by path.
    local changed=$WORK/$suite-changed
    { LC_ALL=C diff "$3" "$after" || true; } | sed -n 's/^[<>] //p' |
        awk '{ if ($1 == "l") print $2; else print $NF }' | LC_ALL=C sort -u >"$changed"
    local bad
    bad=$(grep -vE "$BOOKKEEPING" "$changed" | LC_ALL=C comm -23 - <(LC_ALL=C sort -u "$owned") |
        while read -r path; do
            # update-alternatives' links, made by the packages' maintainer scripts.
            case "$(readlink "$root/$path" || true)" in /etc/alternatives/*) ;; *) echo "$path" ;; esac
        done || true)
    if [ -n "$bad" ]; then
        echo "$bad" | head -n 40 >&2
        LC_ALL=C diff "$3" "$after" | grep -F -f <(echo "$bad" | head -n 40) | head -n 40 >&2 || true
        fail "$suite: the uninstall left the file tree changed outside the packages installed (above)"
    fi
    # The packages' configuration files are as they shipped them.
    local conf md5 file
    for p in $new; do
        while read -r file md5 _; do
            [ -n "$file" ] && [ -f "$root$file" ] || continue
            [ "$(md5sum <"$root$file" | cut -d' ' -f1)" = "$md5" ] ||
                fail "$suite: $file (of $p) is not as the package shipped it"
        done < <(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Conffiles}\n' "$p")
    done
    say "$suite: the file tree is as it was, but for the packages installed ($(wc -l <"$changed") paths)"
}

# --- the run ---------------------------------------------------------------------------------------

follow_readme() { # follow_readme SUITE
    local suite=$1 root=$WORK/$1
    local pid started=$SECONDS
    start_machine "$suite" "$root" "fnfresh-$suite-$$"
    pid=$MACHINE
    snapshot "$root" >"$WORK/$suite-before.tree"
    packages "$root" >"$WORK/$suite-before.packages"

    say "$suite: $INSTALL_CMD"
    on_machine "$pid" "$WORK/$suite-install.log" "$INSTALL_CMD" || fail "$suite: $INSTALL_CMD failed"
    grep -q "self-check passed" "$WORK/$suite-install.log" || fail "$suite: install.sh did not pass its self-check"

    # Twice: a second attempt, as after a first one that went wrong, works as well.
    local attempt
    for attempt in first second; do
        say "$suite: the README's first container ($attempt time)"
        on_machine "$pid" "$WORK/$suite-demo.log" "$DEMO" || fail "$suite: the README's first container failed"
        [ "$(tail -n 1 "$WORK/$suite-demo.log")" = hello ] || {
            cat "$WORK/$suite-demo.log" >&2
            fail "$suite: the README's container did not answer hello"
        }
    done

    say "$suite: podman rm -f web; $UNINSTALL_CMD"
    on_machine "$pid" "$WORK/$suite-uninstall.log" "sudo podman rm -f -t 0 web && $UNINSTALL_CMD" ||
        fail "$suite: the uninstall failed"
    compare "$suite" "$root" "$WORK/$suite-before.tree" "$WORK/$suite-before.packages"

    say "$suite: Podman still starts a container"
    on_machine "$pid" "$WORK/$suite-podman.log" \
        "sudo podman run --rm --network none localhost/busybox sh -c 'echo still works'" ||
        fail "$suite: Podman no longer starts a container after the uninstall"
    on_machine "$pid" "$WORK/$suite-image.log" "! sudo podman image exists localhost/flatnet-selfcheck" ||
        fail "$suite: the uninstall left the self-check image"

    if [ "$suite" = bookworm ]; then
        say "$suite: $INSTALL_CMD; $TEST_CMD (several minutes)"
        on_machine "$pid" "$WORK/$suite-tests.log" "$INSTALL_CMD && $TEST_CMD" ||
            fail "$suite: $TEST_CMD failed inside the fresh root (log: $WORK/$suite-tests.log)"
        tail -n 1 "$WORK/$suite-tests.log" >&2
    fi
    say "$suite: passed in $((SECONDS - started)) s"
}

# The roots are made side by side (downloads), then used one after the other.
for suite in "${SUITES[@]}"; do
    make_root "$suite" "$WORK/$suite" &
done
wait_all=0
for job in $(jobs -p); do wait "$job" || wait_all=1; done
[ "$wait_all" -eq 0 ] || fail "a root could not be made"
for suite in "${SUITES[@]}"; do
    follow_readme "$suite"
done
say "README.md followed on ${SUITES[*]}: all passed"
