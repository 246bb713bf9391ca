#!/usr/bin/env bash
# Builds the `inferno:local` image (FROM scratch, no registry needed) from a
# built `inferno` binary and the shared libraries it links.
#
#   scripts/docker-image.sh [BINARY]
#
# BINARY: the first argument, else $INFERNO_BIN, else target/release/inferno,
# else target/debug/inferno (build it with `cargo build -p inferno-cli`).
# INFERNO_IMAGE: the tag to build (default inferno:local).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=${INFERNO_IMAGE:-inferno:local}

# shellcheck source=find-inferno.sh
source "$root/scripts/find-inferno.sh" "${1:-}"

ctx=$(mktemp -d "${TMPDIR:-/tmp}/inferno-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
rootfs=$ctx/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/data" "$rootfs/certs" "$rootfs/models" "$rootfs/etc/inferno" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
cp "$bin" "$rootfs/usr/local/bin/inferno"

# Every shared library the binary loads (the dynamic loader included), at
# the path the loader looks for it. A static binary needs none.
libs=$(ldd "$bin" 2>/dev/null | awk '
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }
' || true)
for lib in $libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

cp "$root/docker/Dockerfile" "$ctx/Dockerfile"
echo "building $image from $bin (libraries: ${libs//$'\n'/ })" >&2
docker build --quiet --tag "$image" "$ctx" >/dev/null
echo "$image"
