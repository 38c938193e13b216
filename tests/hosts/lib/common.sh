# shellcheck shell=bash
# Shared by setup, run-in-host and matrix (sourced, not executed).
#
# Cache layout: $HOSTCG_CACHE/<component>-<key>/ with a .complete marker, where <key> is a hash
# of the content of the script that builds that component:
#   boot-<key>    (build/boot.sh)    vmlinux + base.cpio (busybox, kernel modules)
#   rootfs-<key>  (build/rootfs.sh)  rootfs.img: Debian 12 (debootstrap) with systemd 252
# Editing a build script therefore changes its key and the next setup rebuilds that component.
# The guest-side scripts (guest/*.sh) are not baked into the images: run-in-host adds them to
# every boot, so editing them needs no rebuild.

# shellcheck disable=SC2034  # used by the scripts that source this file
HOSTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOSTCG_CACHE=${HOSTCG_TESTHOSTS_CACHE:-/var/cache/host-cgroups-testhosts}
HOSTCG_MODES="v1 v2 sd-v1 sd-v2 sd-legacy"

hostcg_key() { cat "$@" | sha256sum | cut -c1-16; }
BOOT_KEY=$(hostcg_key "$HOSTS_DIR/build/boot.sh")
ROOTFS_KEY=$(hostcg_key "$HOSTS_DIR/build/rootfs.sh")
BOOT_DIR=$HOSTCG_CACHE/boot-$BOOT_KEY
ROOTFS_DIR=$HOSTCG_CACHE/rootfs-$ROOTFS_KEY

hostcg_ready() { # component dirs given as args
  local d
  for d in "$@"; do [ -f "$d/.complete" ] || return 1; done
}

hostcg_now() { date +%s.%N; }
hostcg_since() { # seconds since $1, one decimal
  awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'
}
