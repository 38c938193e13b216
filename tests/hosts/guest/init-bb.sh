#!/bin/sh
# /init of the busybox hosts v1 and v2 (PID 1 is this shell; no systemd). It:
#  - mounts /proc, /sys, /dev (devtmpfs, devpts, /dev/shm) and tmpfs on /run; /tmp stays on the
#    (writable, in-RAM) initramfs, since the payload may live there (a checkout under /tmp);
#  - mounts cgroups like a systemd host of that kind would, and nothing else:
#      v2: cgroup2 on /sys/fs/cgroup (nsdelegate,memory_recursiveprot); cgroup.subtree_control
#          of the root is left empty (enabling controllers is up to the payload);
#      v1: tmpfs on /sys/fs/cgroup, each enabled v1 controller on its own hierarchy
#          (cpu,cpuacct and net_cls,net_prio co-mounted, with the usual symlinks), and an
#          empty cgroup2 on /sys/fs/cgroup/unified (hybrid-style);
#    it creates no cgroup and moves nothing: the payload starts in the root cgroup(s);
#  - loads virtio-pci + 9p (for the result share), then runs /hostcg/runner.sh.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sys /sys
mount -t devtmpfs -o nosuid dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec devpts /dev/pts
mount -t tmpfs -o nosuid,nodev shm /dev/shm
mkdir -p /tmp && chmod 1777 /tmp
mount -t tmpfs -o nosuid,nodev,mode=755 run /run
hostname testhost
MODE=$(cat /hostcg/mode)
CGO=nosuid,nodev,noexec,relatime
case "$MODE" in
  v2)
    mount -t cgroup2 -o "$CGO,nsdelegate,memory_recursiveprot" cgroup2 /sys/fs/cgroup ;;
  v1)
    mount -t tmpfs -o "$CGO,mode=755" tmpfs /sys/fs/cgroup
    have() { awk -v c="$1" '$1 == c && $4 == 1 { f = 1 } END { exit !f }' /proc/cgroups; }
    for c in cpuset cpu,cpuacct blkio memory devices freezer net_cls,net_prio perf_event \
             hugetlb pids rdma misc; do
      ok=1
      for one in $(echo "$c" | tr , ' '); do have "$one" || ok=0; done
      [ $ok = 1 ] || continue
      mkdir -p "/sys/fs/cgroup/$c"
      mount -t cgroup -o "$CGO,$c" cgroup "/sys/fs/cgroup/$c" || echo "init: cannot mount v1 $c"
      case "$c" in
        *,*) for one in $(echo "$c" | tr , ' '); do ln -s "$c" "/sys/fs/cgroup/$one"; done ;;
      esac
    done
    mkdir -p /sys/fs/cgroup/unified
    mount -t cgroup2 -o "$CGO,nsdelegate" cgroup2 /sys/fs/cgroup/unified ;;
  *) echo "init: unknown mode $MODE" ;;
esac
# a module built into this kernel (virtio_pci on 6.12) is not in the initramfs: /sys/module has it
for m in virtio_pci 9pnet_virtio 9p; do
  modprobe "$m" 2>/dev/null || [ -d "/sys/module/$m" ] || echo "init: modprobe $m failed"
done
/bin/sh /hostcg/runner.sh
poweroff -f
