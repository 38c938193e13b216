#!/bin/sh
# Stage-1 /init of the systemd hosts: load the modules (virtio, ext4, 9p), mount the Debian
# root image (/dev/vda, a qemu snapshot: writes are thrown away), copy /hostcg (runner,
# payload) and the payload files into it at their absolute paths (the ldd libraries only where
# the image lacks them), then switch_root to systemd; systemd.run=/hostcg/runner.sh runs the
# payload.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "stage1: $*"; sleep 1; poweroff -f; }
for m in virtio_pci virtio_blk crc32c_generic ext4 9pnet_virtio 9p; do
  # built-in modules (virtio_pci on 6.12) are not in the initramfs but show in /sys/module
  modprobe "$m" 2>/dev/null || [ -d "/sys/module/$m" ] || echo "stage1: modprobe $m failed"
done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
mount -t ext4 -o rw /dev/vda /sysroot || fail "cannot mount /dev/vda"
rm -rf /sysroot/hostcg
cp -a /hostcg /sysroot/hostcg || fail "cannot copy /hostcg"
copy_in() { # PATH ONLY_IF_MISSING
  [ "$2" = 1 ] && [ -e "/sysroot$1" ] && return 0
  { mkdir -p "/sysroot$(dirname "$1")" && cp -a "$1" "/sysroot$(dirname "$1")/"; } \
    || fail "cannot copy $1"
}
while IFS= read -r p; do copy_in "$p" 0; done < /hostcg/files.list
# The payload may live under /tmp (a checkout there): keep systemd from mounting a tmpfs over
# it (tmp.mount) or emptying it at boot (tmpfiles' `D /tmp`; `d` only creates).
if grep -q '^/tmp/' /hostcg/files.list; then
  ln -sf /dev/null /sysroot/etc/systemd/system/tmp.mount
  mkdir -p /sysroot/etc/tmpfiles.d
  echo 'd /tmp 1777 root root -' > /sysroot/etc/tmpfiles.d/tmp.conf
fi
while IFS= read -r p; do copy_in "$p" 1; done < /hostcg/libs.list
umount /proc /sys /dev
exec switch_root /sysroot /sbin/init
