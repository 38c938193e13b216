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
# A payload still running shortly before the host's time limit is hung: print where every
# user thread waits (state, kernel wait channel, top kernel stack frames), so that the console
# tail the matrix and CI show names the stuck task. /hostcg/hangdump: seconds after boot.
hang_dump() {
  echo "=== hostcg: hang dump at $(cut -d' ' -f1 /proc/uptime)s (the host's time limit is near)"
  for t in /proc/[0-9]*/task/[0-9]*; do
    p=${t%/task/*}
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null | cut -c1-50)
    [ -n "$cmd" ] || continue   # kernel threads
    comm=$(cat "$t/comm" 2>/dev/null)
    case "$comm" in systemd*|dbus*|\(sd-*|agetty|sleep) continue ;; esac
    st=$(awk '/^State:/ {print $2}' "$t/status" 2>/dev/null)
    wchan=$(cat "$t/wchan" 2>/dev/null)
    stack=$(awk '{sub(/\+.*/, "", $2)} $2 !~ /^(do_syscall_64|entry_SYSCALL_64_after_hwframe)$/ {printf "%s<", $2}' "$t/stack" 2>/dev/null | cut -c1-110)
    echo "hang: ${t#/proc/} $comm [$st] wchan=$wchan stack=$stack cmd=$cmd"
  done
  echo "=== hostcg: hang dump end"
}
WATCHDOG=
if AT=$(cat /hostcg/hangdump 2>/dev/null) && [ "${AT:-0}" -gt 0 ]; then
  NOW=$(cut -d. -f1 /proc/uptime)
  if [ "$AT" -gt "$NOW" ]; then
    ( sleep $((AT - NOW)) && hang_dump ) &
    WATCHDOG=$!
  fi
fi
echo "=== hostcg: $NAME up at $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r), running payload"
/bin/sh /hostcg/payload.sh
RC=$?
[ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
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
