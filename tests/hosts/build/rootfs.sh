#!/bin/bash
# usage: rootfs.sh OUTDIR SUITE
# Build the rootfs component of Debian SUITE (bullseye, bookworm, trixie) into OUTDIR (empty):
# rootfs.img, an ext4 image of a minimal Debian (debootstrap --variant=minbase) with the
# suite's systemd (247, 252, 257), dbus and udev. The guests boot it with snapshot=on, so it
# stays pristine. No kernel inside: the kernel and its modules come from the boot component
# (stage-1 initramfs loads them, then switch_root's to systemd).
# When the suite's glibc is older than this machine's (bullseye: 2.31 < 2.36), the machine's
# libc6 and libc-bin packages are installed over it, so that test binaries built here run
# in the image (they need e.g. GLIBC_2.34); everything else, systemd included, is the suite's.
# Uses only the machine's configured Debian mirror (build/apt.sh).
set -euo pipefail
[ $# = 2 ] || { echo "usage: rootfs.sh OUTDIR SUITE" >&2; exit 2; }
OUT=$(realpath "$1"); SUITE=$2
# shellcheck source-path=SCRIPTDIR source=apt.sh
. "$(dirname "$(realpath "$0")")/apt.sh"
R=$OUT/rootfs
hostcg_mirrors
echo "rootfs.sh: debootstrap $SUITE from $MIRROR" >&2
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,udev "$SUITE" "$R" "$MIRROR" >/dev/null

HOSTV=$(dpkg-query -W -f '${Version}' libc6)
IMGV=$(chroot "$R" dpkg-query -W -f '${Version}' libc6)
if dpkg --compare-versions "$IMGV" lt "$HOSTV"; then
  echo "rootfs.sh: $SUITE has libc6 $IMGV, older than this machine's $HOSTV: installing $HOSTV" >&2
  mkdir -p "$R/tmp/libc"
  (cd "$R/tmp/libc" && apt-get -o APT::Sandbox::User=root download -qq "libc6=$HOSTV" "libc-bin=$HOSTV") || {
    echo "rootfs.sh: cannot download libc6=$HOSTV from this machine's apt sources (apt-get update?)" >&2
    exit 1
  }
  chroot "$R" sh -c 'dpkg -i /tmp/libc/*.deb' > "$OUT/dpkg.log" 2>&1 || { cat "$OUT/dpkg.log" >&2; exit 1; }
  rm -f "$OUT/dpkg.log"
  rm -rf "$R/tmp/libc"
fi
echo "rootfs.sh: $SUITE image: systemd $(chroot "$R" dpkg-query -W -f '${Version}' systemd)," \
     "libc6 $(chroot "$R" dpkg-query -W -f '${Version}' libc6)" >&2

# trim, and configure for fast throwaway boots
rm -rf "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* \
       "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/locale/* "$R"/usr/share/info/*
echo testhost > "$R/etc/hostname"
echo '/dev/vda / ext4 rw,relatime 0 1' > "$R/etc/fstab"
chroot "$R" systemd-machine-id-setup >/dev/null
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
         fstrim.timer dpkg-db-backup.timer systemd-timesyncd.service getty@tty1.service \
         serial-getty@ttyS0.service; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"
done
chroot "$R" passwd -d root >/dev/null
# 2 GiB, sparse: room for payload files (test binaries) copied in by stage 1
mkfs.ext4 -q -F -L testroot -d "$R" "$OUT/rootfs.img" 2G
rm -rf "$R"
ls -ls "$OUT" >&2
