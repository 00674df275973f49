#!/usr/bin/env bash
# Build and install strata, create a store if there is none, and mount it.
#
#   ./install.sh                      store /var/lib/strata, mounted on /var/lib/images
#   STORE=/srv/strata MOUNTPOINT=/srv/images ./install.sh
#
# Needs root (apt-get, /usr/local, a FUSE mount other users can open).
set -euo pipefail
cd "$(dirname "$0")"

STORE=${STORE:-/var/lib/strata}
MOUNTPOINT=${MOUNTPOINT:-/var/lib/images}
PREFIX=${PREFIX:-/usr/local}

if ! command -v fusermount3 >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q fuse3
fi
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi

cargo install --locked --path . --root "$PREFIX"
install -d "$PREFIX/share/man/man1"
install -m 644 man/*.1 "$PREFIX/share/man/man1/"
strata=$PREFIX/bin/strata

# An existing store is kept: init refuses it with exit code 4.
if [ ! -e "$STORE" ] || [ -z "$(ls -A "$STORE" 2>/dev/null)" ]; then
    "$strata" init "$STORE"
fi
mkdir -p "$MOUNTPOINT"
if mountpoint -q "$MOUNTPOINT"; then
    echo "$MOUNTPOINT is already mounted"
else
    "$strata" mount "$STORE" "$MOUNTPOINT"
fi
echo "strata store $STORE is mounted on $MOUNTPOINT"
