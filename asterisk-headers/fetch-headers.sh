#!/usr/bin/env bash
# Fetch the Asterisk 22 development headers from Debian sid's asterisk-dev package.
#
#   fetch-headers.sh DEST
#
# Leaves DEST/asterisk.h and DEST/asterisk/ (nothing else in DEST). Used by the Rust build
# script when no Asterisk headers are installed. Needs apt-get and dpkg-deb (any Debian-based
# host) and network access to a Debian mirror; does not need root and never touches the
# host's apt sources or package lists: it uses a private, temporary apt directory.
# Idempotent: does nothing when DEST/asterisk.h exists.
# The mirror is taken from the host's apt sources; override with RES_SCALE_DEBIAN_MIRROR.
set -euo pipefail

PROG=fetch-headers
HELP="Install the Asterisk 22 development headers (Debian/Ubuntu package asterisk-dev 22.x,
or 'make install-headers' from an Asterisk 22 source tree), or set ASTERISK_INCLUDE_DIR to a
folder that holds asterisk.h and asterisk/ (e.g. ASTERISK_INCLUDE_DIR=/usr/include)."

fail() {
    echo "$PROG: ERROR: $*" >&2
    echo "$HELP" >&2
    exit 1
}

[ $# -eq 1 ] && [ -n "$1" ] || { echo "usage: $0 DEST" >&2; exit 2; }
DEST=$1

if [ -f "$DEST/asterisk.h" ] && [ -d "$DEST/asterisk" ]; then
    exit 0
fi

for tool in apt-get dpkg-deb mktemp; do
    command -v "$tool" >/dev/null 2>&1 || fail "'$tool' not found: cannot download asterisk-dev automatically."
done

# ---- the Debian mirror from the host's own apt configuration
# shellcheck source=host-mirror.sh
. "$(dirname "${BASH_SOURCE[0]}")/host-mirror.sh"
MIRROR= SIGNED_BY=
read -r MIRROR SIGNED_BY < <(host_mirror || true) || true
[ -n "$MIRROR" ] || fail "no Debian mirror found in the host's apt sources (or set RES_SCALE_DEBIAN_MIRROR=http://deb.debian.org/debian)."
MIRROR=${MIRROR%/}
# Without an explicit keyring apt uses the host's trusted keys (/etc/apt/trusted.gpg.d).
if [ -z "$SIGNED_BY" ] && [ -r /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    SIGNED_BY=/usr/share/keyrings/debian-archive-keyring.gpg
fi

# ---- private apt directory (temporary), next to DEST so the final rename stays on one filesystem
PARENT=$(dirname -- "$DEST")
mkdir -p -- "$PARENT"
WORK=$(mktemp -d "$PARENT/.fetch-headers.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/dl" "$WORK/x"
echo "deb ${SIGNED_BY:+[signed-by=$SIGNED_BY] }$MIRROR sid main" > "$WORK/sources.list"
APTO=(-o "Dir::Etc::sourcelist=$WORK/sources.list" -o Dir::Etc::sourceparts=-
      -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache=$WORK/cache"
      -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
      -o APT::Get::List-Cleanup=0 -o Acquire::Check-Valid-Until=false -o APT::Update::Error-Mode=any
      -o Acquire::Languages=none -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
if [ "$(id -u)" = 0 ]; then
    APTO+=(-o APT::Sandbox::User=root)      # private dirs are not readable by _apt
else
    APTO+=(-o Debug::NoLocking=1)
fi

if ! apt-get "${APTO[@]}" update >"$WORK/update.log" 2>&1; then
    sed 's/^/  | /' "$WORK/update.log" >&2
    fail "could not read Debian sid's package lists from $MIRROR."
fi
if ! (cd "$WORK/dl" && apt-get "${APTO[@]}" download asterisk-dev) >"$WORK/download.log" 2>&1; then
    sed 's/^/  | /' "$WORK/download.log" >&2
    fail "could not download asterisk-dev from Debian sid ($MIRROR)."
fi
deb=$(ls "$WORK/dl"/asterisk-dev_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || fail "apt-get download produced no asterisk-dev .deb."
version=$(dpkg-deb -f "$deb" Version)
case ${version#*:} in
    22.*) ;;
    *) echo "$PROG: WARNING: Debian sid now ships asterisk-dev $version, not Asterisk 22" >&2 ;;
esac
dpkg-deb -x "$deb" "$WORK/x" || fail "dpkg-deb -x failed on $deb."
[ -f "$WORK/x/usr/include/asterisk.h" ] && [ -d "$WORK/x/usr/include/asterisk" ] \
    || fail "$deb holds no usr/include/asterisk.h + usr/include/asterisk/."

# ---- move into place atomically: DEST appears complete or not at all
mkdir "$WORK/include"
mv "$WORK/x/usr/include/asterisk.h" "$WORK/x/usr/include/asterisk" "$WORK/include/"
chmod 755 "$WORK/include"
if [ -d "$DEST" ] && [ ! -f "$DEST/asterisk.h" ]; then
    # leftovers of an older, interrupted layout: only our own files may be removed
    rm -rf -- "$DEST/asterisk"
    rmdir -- "$DEST" 2>/dev/null || fail "$DEST exists and is not empty; remove it or choose another DEST."
fi
if ! mv -T -- "$WORK/include" "$DEST" 2>/dev/null; then
    # a concurrent run may have won the race
    [ -f "$DEST/asterisk.h" ] || fail "could not move the headers into $DEST."
fi
echo "$PROG: asterisk-dev $version headers in $DEST" >&2
