# shellcheck shell=bash
# Shared by setup, run-in-host and matrix (sourced, not executed).
#
# Hosts come from Debian releases; each release has two cache components:
#   boot    (build/boot.sh)    vmlinux + base.cpio (busybox, kernel modules) of that release's kernel
#   rootfs  (build/rootfs.sh)  rootfs.img: debootstrap of that release, with its systemd
# in $HOSTCG_CACHE/<component>[-<release>]-<key>/ with a .complete marker, where <key> is a hash
# of the scripts that build the component and of the suite name (deb12 keeps the unprefixed
# names). Editing a build script therefore changes its key and the next setup rebuilds.
# The guest-side scripts (guest/*.sh) are not baked into the images: run-in-host adds them to
# every boot, so editing them needs no rebuild.
#
# Host names: the default four (and sd-legacy) are Debian 12; the wider ones are prefixed by
# their release: deb11-v1 ... deb13-sd-v2. HOSTCG_TESTHOST in the guest is the host *kind*
# (v1, v2, sd-v1, sd-v2, sd-legacy) whatever the release.

# shellcheck disable=SC2034  # used by the scripts that source this file
HOSTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOSTCG_CACHE=${HOSTCG_TESTHOSTS_CACHE:-/var/cache/host-cgroups-testhosts}
# shellcheck disable=SC2034
HOSTCG_DEFAULT_HOSTS="v1 v2 sd-v1 sd-v2"
HOSTCG_MODES="v1 v2 sd-v1 sd-v2 sd-legacy deb11-v1 deb11-v2 deb11-sd-v1 deb11-sd-v2 deb13-v2 deb13-sd-v2"
HOSTCG_RELEASES="deb11 deb12 deb13"

hostcg_valid_mode() { case " $HOSTCG_MODES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
hostcg_release() { # MODE -> deb11|deb12|deb13
  case "$1" in deb1[0-9]-*) echo "${1%%-*}" ;; *) echo deb12 ;; esac
}
hostcg_kind() { # MODE -> v1|v2|sd-v1|sd-v2|sd-legacy
  case "$1" in deb1[0-9]-*) echo "${1#*-}" ;; *) echo "$1" ;; esac
}
hostcg_suite() { # RELEASE -> Debian suite (codename)
  case "$1" in
    deb11) echo bullseye ;; deb12) echo bookworm ;; deb13) echo trixie ;;
    *) echo "hostcg_suite: unknown release $1" >&2; return 1 ;;
  esac
}
hostcg_key() { # SUITE FILE... : 16 hex digits
  local suite=$1; shift
  { cat "$@"; echo "suite=$suite"; } | sha256sum | cut -c1-16
}
hostcg_boot_dir() { # RELEASE
  local p=boot; [ "$1" = deb12 ] || p=boot-$1
  echo "$HOSTCG_CACHE/$p-$(hostcg_key "$(hostcg_suite "$1")" "$HOSTS_DIR/build/boot.sh" "$HOSTS_DIR/build/apt.sh")"
}
hostcg_rootfs_dir() { # RELEASE
  local p=rootfs; [ "$1" = deb12 ] || p=rootfs-$1
  echo "$HOSTCG_CACHE/$p-$(hostcg_key "$(hostcg_suite "$1")" "$HOSTS_DIR/build/rootfs.sh" "$HOSTS_DIR/build/apt.sh")"
}
hostcg_needs() { # MODE -> the component dirs it boots from, one per line
  local rel; rel=$(hostcg_release "$1")
  hostcg_boot_dir "$rel"
  case "$(hostcg_kind "$1")" in sd-*) hostcg_rootfs_dir "$rel" ;; esac
}

hostcg_ready() { # component dirs given as args
  local d
  for d in "$@"; do [ -f "$d/.complete" ] || return 1; done
}

hostcg_now() { date +%s.%N; }
hostcg_since() { # seconds since $1, one decimal
  awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'
}
