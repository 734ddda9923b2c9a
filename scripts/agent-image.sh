#!/usr/bin/env bash
# Builds a drover agent image without a registry: busybox (for /bin/sh), the given
# drover binary and the shared libraries it links, imported as a root filesystem with
# drover as its entrypoint. What docker/agent.Dockerfile makes from Debian, for machines
# that cannot pull it; the tests and drover-bench use it.
#   scripts/agent-image.sh TAG path/to/drover
set -euo pipefail
tag=${1:?usage: agent-image.sh TAG DROVER_BINARY}
bin=${2:?usage: agent-image.sh TAG DROVER_BINARY}
busybox=$(command -v busybox || true)
[ -x /bin/busybox ] && busybox=/bin/busybox
if [ -z "$busybox" ]; then
  echo "busybox is not installed: apt-get install busybox-static (scripts/test.sh does it)" >&2
  exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,tmp,etc,proc,sys,dev,root,usr/local/bin,var/lib}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in sh echo cat sleep true hostname date; do ln -s busybox "$root/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
cp "$bin" "$root/usr/local/bin/drover"
ldd "$bin" | grep -o '/[^ ]*' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
tar -C "$root" -cf - . | docker import --change 'ENTRYPOINT ["/usr/local/bin/drover"]' - "$tag" >/dev/null
