#!/usr/bin/env bash
# Provision everything the res_scale integration tests need (Debian 12 host, root).
#
#   bash tests/provision.sh           everything
#   bash tests/provision.sh --demo    only what `make run` needs (the Dockerized pool brings its
#                                     own Consul; no pjsua2 venv; a Docker engine is required)
#
# Cache root: ${RES_SCALE_CACHE:-/var/cache/res_scale}. Produces:
#   $CACHE/rootfs                    debootstrap sid + asterisk asterisk-modules (marker .res_scale-ready)
#   $CACHE/headers/include           asterisk.h + asterisk/ from the matching asterisk-dev
#   $CACHE/consul/usr/bin/consul     Consul 1.8.7 from bullseye (private apt dir $CACHE/apt-bullseye)
#   $CACHE/pjsua2-venv               python venv with pjsua2-python
#   $CACHE/ari-clients-venv          python venv with the third-party ARI clients asyncari, aioari
#   docker image res_scale/asterisk:22 (only if a Docker engine answers)
#   docker images res_scale/rabbitmq, res_scale/consul (the cluster tests' brokers and agents:
#                                    configs/docker/Dockerfile's stages on that image)
#   $CACHE/testbed.env               sourceable KEY=value file with the paths above
# Host packages: rabbitmq, kamailio, sipp, clang, debootstrap, ...
# Idempotent and cached: a second run only checks. Quiet unless a step fails
# (step logs are kept in $CACHE/log/). Never touches the host's apt sources.
set -euo pipefail

CACHE=${RES_SCALE_CACHE:-/var/cache/res_scale}
IMAGE=res_scale/asterisk:22
ROOTFS=$CACHE/rootfs
MARKER=$ROOTFS/.res_scale-ready
LOGDIR=$CACHE/log
REPO=$(cd "$(dirname "$0")/.." && pwd)
T0=$(date +%s.%N)

say() { echo "provision: $*"; }
die() { echo "provision: ERROR: $*" >&2; exit 1; }

DEMO=0
case "${1:-}" in
    "") ;;
    --demo) DEMO=1 ;;
    *) die "usage: $0 [--demo]" ;;
esac

# run NAME CMD...: run quietly, log to $LOGDIR/NAME.log, show the log tail on failure.
run() {
    local name=$1; shift
    local log=$LOGDIR/$name.log
    if ! "$@" >"$log" 2>&1; then
        echo "provision: FAILED ($name): $*" >&2
        tail -n 40 "$log" | sed 's/^/  | /' >&2
        echo "provision: full log: $log" >&2
        return 1
    fi
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, apt-get)"
export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8
mkdir -p "$CACHE" "$LOGDIR"
CACHE=$(cd "$CACHE" && pwd -P)
ROOTFS=$CACHE/rootfs MARKER=$ROOTFS/.res_scale-ready LOGDIR=$CACHE/log

exec 9>"$CACHE/.provision.lock"
flock -w 900 9 || die "another provision.sh holds $CACHE/.provision.lock"

# ---------------------------------------------------------------- cleanup
CLEANUP_MOUNTS=()   # mount points to unmount on exit
CLEANUP_DIRS=()     # dirs to remove on exit (after unmounting)
CREATED_POLICY_RC=0
cleanup() {
    local m d
    for m in "${CLEANUP_MOUNTS[@]}"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m" 2>/dev/null || true
    done
    for d in "${CLEANUP_DIRS[@]}"; do
        [ -e "$d" ] || continue
        if findmnt -rno TARGET | grep -q "^$d/"; then
            echo "provision: WARNING: not removing $d: something is still mounted below it" >&2
        else
            rm -rf --one-file-system "$d"
        fi
    done
    if [ "$CREATED_POLICY_RC" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# true if anything is mounted at or below $1
has_mounts() { findmnt -rno TARGET | grep -q -e "^$1\$" -e "^$1/"; }

# remove a directory tree we own, refusing if something is mounted in it
remove_tree() {
    local d=$1
    [ -e "$d" ] || return 0
    has_mounts "$d" && die "refusing to remove $d: something is mounted below it (findmnt | grep $d)"
    rm -rf --one-file-system "$d"
}

# ---------------------------------------------------------------- mirror
# shellcheck source=../asterisk-headers/host-mirror.sh
. "$(dirname "${BASH_SOURCE[0]}")/../asterisk-headers/host-mirror.sh"
read -r MIRROR SIGNED_BY < <(host_mirror || true) || true
[ -n "${MIRROR:-}" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list (set RES_SCALE_DEBIAN_MIRROR)"
MIRROR=${MIRROR%/}

# ---------------------------------------------------------------- 1. host packages
HOST_PKGS=(clang libclang-dev debootstrap curl ca-certificates openssl rabbitmq-server kamailio
           kamailio-rabbitmq-modules kamailio-json-modules kamailio-utils-modules
           kamailio-extra-modules kamailio-presence-modules sip-tester iproute2 wrk)
PYTHON=python3
# A venv-capable python3: the Debian one needs python3-venv; another one (e.g. pyenv) must already work.
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(command -v python3 2>/dev/null || true)" = /usr/bin/python3 ] || ! command -v python3 >/dev/null 2>&1; then
        HOST_PKGS+=(python3 python3-venv)
    else
        die "$(command -v python3) cannot create venvs (python3 -m venv); fix it or put /usr/bin first in PATH"
    fi
fi
missing=()
for p in "${HOST_PKGS[@]}"; do
    [ "$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    say "host packages present (cached)"
else
    if [ ! -e /usr/sbin/policy-rc.d ]; then     # keep rabbitmq-server/kamailio from being started
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        CREATED_POLICY_RC=1
    fi
    run apt-update apt-get update
    run apt-install apt-get install -y --no-install-recommends "${missing[@]}"
    if [ "$CREATED_POLICY_RC" = 1 ]; then rm -f /usr/sbin/policy-rc.d; CREATED_POLICY_RC=0; fi
    say "host packages installed: ${missing[*]}"
fi
if [ -z "$(command -v "$PYTHON" || true)" ] || ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    PYTHON=/usr/bin/python3
fi

# ---------------------------------------------------------------- 2. rootfs (sid + Asterisk)
# leftovers of an interrupted run
for d in "$CACHE"/rootfs.tmp.* "$CACHE"/rootfs.old.*; do
    [ -e "$d" ] || continue
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(findmnt -rno TARGET | grep "^$d/" | sort -r)
    remove_tree "$d"
done
if [ -f "$MARKER" ] && [ -s "$MARKER" ] && [ -x "$ROOTFS/usr/sbin/asterisk" ]; then
    say "rootfs ready (cached, asterisk $(cat "$MARKER"))"
else
    tmp=$(mktemp -d "$CACHE/rootfs.tmp.XXXXXX")
    chmod 755 "$tmp"
    CLEANUP_DIRS+=("$tmp")
    run debootstrap debootstrap --variant=minbase sid "$tmp" "$MIRROR"
    printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    CLEANUP_MOUNTS+=("$tmp/proc")
    mount -t proc proc "$tmp/proc"
    # debootstrap leaves fresh package lists: no 'apt-get update' (sid's Release may be expired on
    # snapshot mirrors); only if the install fails, refresh ignoring Valid-Until and retry once.
    inst=(chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends asterisk asterisk-modules)
    if ! run chroot-download "${inst[@]}" --download-only; then
        say "retrying the chroot download after apt-get update"
        run chroot-update chroot "$tmp" apt-get -o Acquire::Check-Valid-Until=false update
        run chroot-download "${inst[@]}" --download-only
    fi
    run chroot-install "${inst[@]}"      # no retry: a failed dpkg run leaves a broken tree, start over
    run chroot-clean chroot "$tmp" apt-get clean
    umount "$tmp/proc"
    has_mounts "$tmp" && die "something is still mounted below $tmp"
    ver=$(chroot "$tmp" dpkg-query -W -f '${Version}' asterisk)
    [ -n "$ver" ] || die "asterisk is not installed in the new rootfs"
    mkdir -p "$tmp/srv/res_scale"
    echo "$ver" > "$tmp/.res_scale-ready"
    if [ -e "$ROOTFS" ]; then            # incomplete/old rootfs: move aside, then delete
        old=$CACHE/rootfs.old.$$
        mv -T "$ROOTFS" "$old"
        CLEANUP_DIRS+=("$old")
    fi
    mv -T "$tmp" "$ROOTFS"
    say "rootfs built (asterisk $ver, $(du -sxh "$ROOTFS" | cut -f1))"
fi
mkdir -p "$ROOTFS/srv/res_scale"
AST_VERSION=$(cat "$MARKER")

# ---------------------------------------------------------------- 3. headers (asterisk-dev matching the rootfs)
HDR=$CACHE/headers
HDR_STAMP=$CACHE/headers.stamp
if [ -f "$HDR/include/asterisk.h" ] && [ -d "$HDR/include/asterisk" ] \
   && [ "$(cat "$HDR_STAMP" 2>/dev/null || true)" = "$AST_VERSION" ]; then
    say "headers ready (cached)"
else
    dl=$(chroot "$ROOTFS" mktemp -d /tmp/res_scale-dl.XXXXXX)
    CLEANUP_DIRS+=("$ROOTFS$dl")
    # no pkgcache.bin/srcpkgcache.bin in the rootfs (they would add ~100 MB to the image)
    get=(chroot "$ROOTFS" sh -c "cd '$dl' && apt-get -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= download 'asterisk-dev=$AST_VERSION'")
    if ! run headers-download "${get[@]}"; then
        say "retrying the asterisk-dev download after apt-get update"
        run chroot-update chroot "$ROOTFS" apt-get -o Acquire::Check-Valid-Until=false \
            -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= update
        run headers-download "${get[@]}" || die "asterisk-dev $AST_VERSION is no longer on the mirror; rm $MARKER and rerun to rebuild the rootfs"
    fi
    htmp=$(mktemp -d "$CACHE/headers.tmp.XXXXXX")
    CLEANUP_DIRS+=("$htmp")
    run headers-extract dpkg -x "$ROOTFS$dl"/asterisk-dev_*.deb "$htmp/x"
    rm -rf "${ROOTFS:?}$dl"
    [ -f "$htmp/x/usr/include/asterisk.h" ] || die "asterisk-dev has no usr/include/asterisk.h"
    mkdir -p "$htmp/h/include"
    mv "$htmp/x/usr/include/asterisk.h" "$htmp/x/usr/include/asterisk" "$htmp/h/include/"
    chmod 755 "$htmp/h"
    remove_tree "$HDR"
    mv -T "$htmp/h" "$HDR"
    echo "$AST_VERSION" > "$HDR_STAMP"
    say "headers extracted ($HDR/include)"
fi

# ---------------------------------------------------------------- 4. docker image
IMAGE_ENV=
if timeout 20 docker info >/dev/null 2>&1; then
    STAMP=$CACHE/docker-image.stamp
    want="$AST_VERSION $(stat -c %Y "$MARKER")"
    have_id=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    if [ -n "$have_id" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want $have_id" ]; then
        say "docker image $IMAGE ready (cached)"
    else
        has_mounts "$ROOTFS" && die "cannot import $ROOTFS into docker: something is mounted below it (stop the tests first)"
        run docker-import sh -c 'tar --one-file-system --numeric-owner --exclude="./srv/res_scale/*" -C "$1" -c . \
            | docker import --change "LABEL res_scale.asterisk=$2" - "$3"' sh "$ROOTFS" "$AST_VERSION" "$IMAGE"
        id=$(docker image inspect -f '{{.Id}}' "$IMAGE")
        echo "$want $id" > "$STAMP"
        if [ -n "$have_id" ] && [ "$have_id" != "$id" ]; then   # drop the superseded image if unused
            docker image rm "$have_id" >/dev/null 2>&1 || true
        fi
        say "docker image $IMAGE imported"
    fi
    IMAGE_ENV=$IMAGE
elif [ "$DEMO" = 1 ]; then
    die "no Docker engine answers (docker info): the Dockerized pool needs one"
else
    say "no Docker engine answers: tests will use chroot"
fi

# ---------------------------------------------------------------- 4b. service images (cluster tests)
# Each broker and Consul agent of a cluster test is a container of its own; Docker's layer cache
# makes a second build take a second.
SERVICE_IMAGES_ENV=
if [ "$DEMO" = 0 ] && [ -n "$IMAGE_ENV" ]; then
    for role in rabbitmq consul; do
        run "image-$role" docker build -q -f "$REPO/configs/docker/Dockerfile" --target "$role" \
            --build-arg BASE="$IMAGE" --build-arg DEBIAN_MIRROR="$MIRROR" -t "res_scale/$role" "$REPO"
    done
    SERVICE_IMAGES_ENV=1
    say "docker images res_scale/rabbitmq, res_scale/consul ready"
fi

# ---------------------------------------------------------------- 5. consul 1.8.7 (bullseye, private apt dir)
CONSUL=$CACHE/consul/usr/bin/consul
if [ "$DEMO" = 1 ]; then
    say "consul not needed (--demo: the pool's Consul runs in a container)"
elif [ -x "$CONSUL" ] && "$CONSUL" version >/dev/null 2>&1; then
    say "consul ready (cached)"
else
    A=$CACHE/apt-bullseye
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/download"
    opt=${SIGNED_BY:+[signed-by=$SIGNED_BY] }
    echo "deb ${opt}$MIRROR bullseye main" > "$A/sources.list"
    APTO=(-o "Dir::Etc::sourcelist=$A/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$A/lists"
          -o "Dir::Cache=$A/cache" -o APT::Get::List-Cleanup=0 -o Acquire::Check-Valid-Until=false
          -o APT::Sandbox::User=root)
    rm -f "$A/download"/*.deb
    if ! ls "$A/lists/"*_Packages* >/dev/null 2>&1 || ! run consul-download sh -c 'cd "$1" && shift && apt-get "$@" download consul' sh "$A/download" "${APTO[@]}"; then
        run consul-update apt-get "${APTO[@]}" update
        run consul-download sh -c 'cd "$1" && shift && apt-get "$@" download consul' sh "$A/download" "${APTO[@]}"
    fi
    ctmp=$(mktemp -d "$CACHE/consul.tmp.XXXXXX")
    CLEANUP_DIRS+=("$ctmp")
    run consul-extract dpkg -x "$A/download"/consul_*.deb "$ctmp"
    chmod 755 "$ctmp"
    "$ctmp/usr/bin/consul" version >/dev/null 2>&1 || die "extracted consul does not run"
    remove_tree "$CACHE/consul"
    mv -T "$ctmp" "$CACHE/consul"
    rm -f "$A/download"/*.deb
    say "consul installed ($("$CONSUL" version | head -1))"
fi

# ---------------------------------------------------------------- 6. pjsua2 venv
VENV=$CACHE/pjsua2-venv
if [ "$DEMO" = 1 ]; then
    say "pjsua2 venv not needed (--demo)"
elif [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pjsua2' >/dev/null 2>&1; then
    say "pjsua2 venv ready (cached)"
else
    remove_tree "$VENV"
    run venv-create "$PYTHON" -m venv "$VENV"
    run venv-pip "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --only-binary=:all: pjsua2-python
    run venv-check "$VENV/bin/python" -c 'import pjsua2'
    say "pjsua2 venv created"
fi

# ---------------------------------------------------------------- 7. ARI clients venv
# Unmodified public ARI client libraries, to drive the gateway as real applications do.
ARI_VENV=$CACHE/ari-clients-venv
ARI_CLIENTS=(asyncari==0.20.6 aioari==0.10.2)
if [ -x "$ARI_VENV/bin/python" ] && "$ARI_VENV/bin/python" -c 'import asyncari, aioari' >/dev/null 2>&1; then
    say "ARI clients venv ready (cached)"
else
    remove_tree "$ARI_VENV"
    run ari-venv-create "$PYTHON" -m venv "$ARI_VENV"
    run ari-venv-pip "$ARI_VENV/bin/python" -m pip install --disable-pip-version-check --no-input "${ARI_CLIENTS[@]}"
    run ari-venv-check "$ARI_VENV/bin/python" -c 'import asyncari, aioari'
    say "ARI clients venv created (${ARI_CLIENTS[*]})"
fi

# ---------------------------------------------------------------- 8. testbed.env
{
    echo "# generated by tests/provision.sh; sourceable"
    echo "RES_SCALE_ROOTFS=$ROOTFS"
    echo "RES_SCALE_CONSUL=$CONSUL"
    echo "RES_SCALE_PJSUA_PYTHON=$VENV/bin/python"
    echo "RES_SCALE_ARI_PYTHON=$ARI_VENV/bin/python"
    echo "RES_SCALE_ASTERISK_IMAGE=$IMAGE_ENV"
    echo "RES_SCALE_SERVICE_IMAGES=${SERVICE_IMAGES_ENV:+res_scale/rabbitmq,res_scale/consul}"
    echo "RES_SCALE_ASTERISK_VERSION=$AST_VERSION"
    echo "RES_SCALE_HEADERS=$HDR/include"
} > "$CACHE/testbed.env.tmp"
mv -f "$CACHE/testbed.env.tmp" "$CACHE/testbed.env"
say "wrote $CACHE/testbed.env"
say "done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f s", b-a}')"
