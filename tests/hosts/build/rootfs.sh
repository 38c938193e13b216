#!/bin/bash
# Build the rootfs component into OUTDIR (an empty directory): rootfs.img, an ext4 image of a
# minimal Debian 12 (debootstrap --variant=minbase) with systemd 252, dbus and udev. The guests
# boot it with snapshot=on, so it stays pristine. No kernel inside: the kernel and its modules
# come from the boot component (stage-1 initramfs loads them, then switch_root's to systemd).
# Uses the machine's own Debian mirror, read from its apt sources.
set -euo pipefail
OUT=$(realpath "$1")
R=$OUT/rootfs
MIRROR=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
         | grep -v -e security -e '\[.*\]' | grep -i debian | head -n1 \
         | sed -E 's/^URIs: *//; s/^deb +//; s/ .*//') || true
MIRROR=${MIRROR:-http://deb.debian.org/debian}
echo "rootfs.sh: debootstrap bookworm from $MIRROR" >&2
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,udev bookworm "$R" "$MIRROR" >/dev/null

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
