#!/bin/bash
# usage: boot.sh OUTDIR SUITE
# Build the boot component of Debian SUITE (bullseye, bookworm, trixie) into OUTDIR (empty):
#   vmlinux   the suite's generic kernel (linux-image-amd64), uncompressed ELF (qemu boots it
#             through its PVH entry, which skips the decompressor: about 3.5 s saved per boot
#             under TCG); xz (<= 6.1) or zstd (6.12) compressed in the package
#   base.cpio busybox-static (the machine's) + the few kernel modules the guests need
#             (virtio-pci, virtio-blk, ext4, 9p; some are built in, depending on the kernel)
#             with their dependencies, decompressed (trixie ships .ko.xz), depmod'ed;
#             /init is supplied per boot by run-in-host (guest/*.sh)
#   kernel-version
# The -cloud kernel flavour has no 9p, hence the generic one. The package comes from the
# machine's configured Debian mirror (build/apt.sh: a private apt setup for SUITE; the
# machine's apt state is untouched). Needs: apt-get, dpkg-deb, python3, busybox-static, cpio,
# zstd.
set -euo pipefail
[ $# = 2 ] || { echo "usage: boot.sh OUTDIR SUITE" >&2; exit 2; }
OUT=$(realpath "$1"); SUITE=$2
# shellcheck source-path=SCRIPTDIR source=apt.sh
. "$(dirname "$(realpath "$0")")/apt.sh"
W=$OUT/work
mkdir -p "$W"
hostcg_apt "$SUITE" "$W/apt"
KPKG=$("${PAPT_CACHE[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
[ -n "$KPKG" ] || { echo "boot.sh: cannot resolve linux-image-amd64 in $SUITE" >&2; exit 1; }
KV=${KPKG#linux-image-}
echo "boot.sh: $SUITE kernel $KPKG" >&2
(cd "$W" && "${PAPT_GET[@]}" download -qq "$KPKG")
dpkg-deb -x "$W/${KPKG}"_*.deb "$W/kroot"
echo "$KV" > "$OUT/kernel-version"
MD=$W/kroot/lib/modules/$KV
[ -d "$MD" ] || MD=$W/kroot/usr/lib/modules/$KV   # merged /usr (trixie)
[ -d "$MD" ] || { echo "boot.sh: no modules directory for $KV in $KPKG" >&2; exit 1; }

python3 - "$W/kroot/boot/vmlinuz-$KV" "$OUT/vmlinux" <<'PY'
import sys, lzma, subprocess
d = open(sys.argv[1], 'rb').read()
out = None
i = d.find(b'\xfd7zXZ\x00')
if i >= 0:
    out = lzma.LZMADecompressor().decompress(d[i:])
else:
    i = d.find(b'\x28\xb5\x2f\xfd')
    assert i >= 0, "vmlinuz: neither an xz nor a zstd stream"
    # zstd complains about the bytes after the frame; what it decoded is checked below
    out = subprocess.run(["zstd", "-dcq"], input=d[i:], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout
assert out[:4] == b'\x7fELF' and len(out) > 8 << 20, "vmlinuz: decompressed payload is not a kernel ELF"
open(sys.argv[2], 'wb').write(out)
PY

ST=$W/initramfs
mkdir -p "$ST"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,root,sysroot,lib/modules/"$KV"}
cp /bin/busybox "$ST/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] && continue
  ln -sf busybox "$ST/bin/$a"
  ln -sf ../bin/busybox "$ST/sbin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ST/etc/passwd"
printf 'root:x:0:\n' > "$ST/etc/group"

# kernel modules: the listed ones plus what they depend on (modinfo "depends="), decompressed;
# built-in ones are skipped (the guest scripts accept a failing modprobe of a built-in module)
python3 - "$MD" "$ST/lib/modules/$KV" virtio_pci virtio_blk crc32c_generic ext4 9pnet_virtio 9p <<'PY'
import lzma, os, re, sys
md, dst, want = sys.argv[1], sys.argv[2], sys.argv[3:]
norm = lambda n: n.replace('-', '_')
index = {}
for root, _, files in os.walk(os.path.join(md, 'kernel')):
    for f in files:
        m = re.match(r'^(.*)\.ko(\.xz)?$', f)
        if m:
            index[norm(m.group(1))] = os.path.join(root, f)
builtin = set()
if os.path.exists(os.path.join(md, 'modules.builtin')):
    for l in open(os.path.join(md, 'modules.builtin')):
        builtin.add(norm(os.path.basename(l.strip())[:-3]))
done = set()
todo = [norm(w) for w in want]
while todo:
    n = todo.pop()
    if n in done:
        continue
    done.add(n)
    if n not in index:
        if n in builtin:
            print(f"boot.sh: module {n} is built in", file=sys.stderr)
            continue
        sys.exit(f"boot.sh: module {n} neither a module nor built in")
    src = index[n]
    data = open(src, 'rb').read()
    if src.endswith('.xz'):
        data = lzma.decompress(data)
    rel = os.path.relpath(src, md)
    if rel.endswith('.xz'):
        rel = rel[:-3]
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    open(os.path.join(dst, rel), 'wb').write(data)
    m = re.search(rb'(?:^|\x00)depends=([^\x00]*)\x00', data)
    if m and m.group(1):
        todo += [norm(x) for x in m.group(1).decode().split(',') if x]
print("boot.sh: modules:", " ".join(sorted(done - builtin)), file=sys.stderr)
PY
/bin/busybox depmod -b "$ST" "$KV"
(cd "$ST" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$OUT/base.cpio"
rm -rf "$W"
ls -l "$OUT" >&2
