#!/bin/bash
# Build the boot component into OUTDIR (an empty directory):
#   vmlinux   the Debian 12 generic kernel, uncompressed ELF (qemu boots it through its PVH entry,
#             which skips the decompressor: about 3.5 s saved per boot under TCG)
#   base.cpio busybox-static + the few kernel modules the guests need (virtio-pci, virtio-blk,
#             ext4, 9p), depmod'ed; /init is supplied per boot by run-in-host (guest/*.sh)
#   kernel-version
# The -cloud kernel flavour has no 9p, hence the generic one. Needs: apt-get, dpkg-deb, python3,
# busybox-static, cpio. Uses only the machine's configured apt sources.
set -euo pipefail
OUT=$(realpath "$1")
W=$OUT/work
mkdir -p "$W"
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
[ -n "$KPKG" ] || { echo "boot.sh: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
KV=${KPKG#linux-image-}
(cd "$W" && apt-get download -qq "$KPKG" 2>/dev/null)
dpkg-deb -x "$W/${KPKG}"_*.deb "$W/kroot"
echo "$KV" > "$OUT/kernel-version"

python3 - "$W/kroot/boot/vmlinuz-$KV" "$OUT/vmlinux" <<'PY'
import sys, lzma
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
assert i >= 0, "no xz stream in vmlinuz"
open(sys.argv[2], 'wb').write(lzma.LZMADecompressor().decompress(d[i:]))
PY

ST=$W/initramfs
mkdir -p "$ST"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,root,sysroot,lib/modules}
cp /bin/busybox "$ST/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] && continue
  ln -sf busybox "$ST/bin/$a"
  ln -sf ../bin/busybox "$ST/sbin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ST/etc/passwd"
printf 'root:x:0:\n' > "$ST/etc/group"

# kernel modules: the listed ones plus their dependencies (from the package's modules.dep)
MD=$W/kroot/lib/modules/$KV
/bin/busybox depmod -b "$W/kroot" "$KV"
want=""
for m in virtio_pci virtio_blk crc32c_generic ext4 9pnet_virtio 9p; do
  line=$(grep -E "/${m//_/[_-]}\.ko(\.xz)?:" "$MD/modules.dep" || true)
  if [ -z "$line" ]; then echo "boot.sh: module $m not found (built in?)" >&2; continue; fi
  want="$want ${line%%:*} ${line#*:}"
done
for f in $(echo "$want" | tr ' ' '\n' | sort -u); do
  mkdir -p "$ST/lib/modules/$KV/$(dirname "$f")"
  cp "$MD/$f" "$ST/lib/modules/$KV/$f"
done
/bin/busybox depmod -b "$ST" "$KV"
(cd "$ST" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$OUT/base.cpio"
rm -rf "$W"
ls -l "$OUT" >&2
