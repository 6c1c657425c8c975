#!/usr/bin/env bash
# Build the root filesystem tar of the demo image from the host's static busybox.
#
#   scripts/build-demo-image.sh OUT_TAR
#
# Nothing is downloaded: the tar holds /bin/busybox (copied from
# /usr/bin/busybox, Debian package busybox-static), one symlink per applet
# (sh, httpd, sleep, wget, env, cat, ...), a minimal /etc/passwd and /etc/group,
# and empty /tmp and /www. Entries are sorted, owned by root and dated at the
# epoch, so the same busybox gives the same tar byte for byte.
#
# Import it into a node's storage with PATH set (without it `podman exec NAME sh`
# fails) and a default command:
#
#   podman import --change 'ENV=PATH=/bin' --change 'CMD ["/bin/sh"]' \
#       OUT_TAR localhost/edgecollab-busybox:1
#
# (PodmanRuntime.import_image does exactly this.)
set -euo pipefail

BUSYBOX="${BUSYBOX:-/usr/bin/busybox}"

usage() {
    echo "usage: $0 OUT_TAR" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
out="$1"

if [[ ! -x "$BUSYBOX" ]]; then
    echo "error: $BUSYBOX not found; install the static busybox (apt-get install busybox-static)" >&2
    exit 1
fi
# A dynamically linked busybox would need the host's libc inside the image.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "error: $BUSYBOX is dynamically linked; install busybox-static instead of busybox" >&2
    exit 1
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/ec-rootfs.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage/bin" "$stage/etc" "$stage/tmp" "$stage/www" "$stage/root"
chmod 0755 "$stage" "$stage/bin" "$stage/etc" "$stage/www"
chmod 0700 "$stage/root"
chmod 1777 "$stage/tmp"
cp "$BUSYBOX" "$stage/bin/busybox"
chmod 0755 "$stage/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [[ "$applet" == busybox ]] && continue
    ln -s busybox "$stage/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$stage/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$stage" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c <"$out") bytes)"
