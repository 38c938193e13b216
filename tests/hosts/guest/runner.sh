#!/bin/sh
# Runs /hostcg/payload.sh (written by run-in-host) inside the test host and hands its exit code
# back: to /run/hostcg/share/rc (9p share = a host directory), as a console marker, and via
# qemu's isa-debug-exit device (qemu exits with 2*min(rc,127)+1).
# busybox hosts: started by /init (PID 1). systemd hosts: systemd.run=/hostcg/runner.sh.
exec </dev/null >/dev/ttyS0 2>&1
MODE=$(cat /hostcg/mode)   # the host kind: v1 v2 sd-v1 sd-v2 sd-legacy
NAME=$(cat /hostcg/name 2>/dev/null || echo "$MODE")   # e.g. deb11-sd-v2
SHARE=/run/hostcg/share
mkdir -p "$SHARE"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none hostcg "$SHARE" \
  || echo "runner: cannot mount the 9p share; exit code only via console/debug-exit"
mkdir -p "$SHARE/out"
case "$MODE" in
  # systemd.run= boots only to sysinit.target: bring the system bus up, and wait until PID 1
  # is connected to it (org.freedesktop.systemd1 owned)
  sd-*)
    systemctl start dbus.socket dbus.service || echo "runner: cannot start dbus"
    i=0
    until busctl --system status org.freedesktop.systemd1 >/dev/null 2>&1; do
      i=$((i + 1)); [ $i -gt 100 ] && { echo "runner: systemd not on the bus after 10 s"; break; }
      sleep 0.1
    done ;;
esac
echo "=== hostcg: $NAME up at $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r), running payload"
/bin/sh /hostcg/payload.sh
RC=$?
echo "=== hostcg: payload exit code $RC at $(cut -d' ' -f1 /proc/uptime)s"
echo "$RC" > "$SHARE/rc.tmp" && mv "$SHARE/rc.tmp" "$SHARE/rc"
umount "$SHARE" 2>/dev/null
# let the UART drain (its tx counter stops moving) before qemu is told to exit
prev=; i=0
while [ $i -lt 40 ]; do
  cur=$(grep '^0:' /proc/tty/driver/serial 2>/dev/null)
  [ -n "$prev" ] && [ "$cur" = "$prev" ] && break
  prev=$cur; sleep 0.05; i=$((i + 1))
done
V=$RC; [ "$V" -gt 127 ] && V=127
# shellcheck disable=SC2059  # one octal-escaped byte
printf "\\$(printf %o "$V")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
sleep 2
case "$MODE" in
  sd-*) systemctl poweroff --force --force ;;
  *) poweroff -f ;;
esac
