#!/usr/bin/env bash
# Runs one command as root inside a guest booted from the cached ckpt test kernel under QEMU
# (software emulation: this machine's /dev/kvm hangs ordinary kernels). The host's root
# filesystem is shared read-only over 9p and becomes the guest's root, so host binaries (cargo
# test executables, ckpt, the test programs) run there as they are; /tmp, /run and /var/tmp are
# fresh tmpfs in the guest. The command runs in the current directory.
#
#   tools/guest.sh [--debug|--kasan] [--timeout SECS] [--mem MIB] [--smp N] [--append ARGS]
#                  [--prealloc] [--keep-log FILE] -- CMD [ARGS...]
# (--debug/--kasan: boot that flavour of kernel (tools/kernel.sh); --append: more kernel
# command-line parameters; --prealloc: QEMU allocates all guest memory up front, so that no
# measurement pays for the host's first touch of it; for benchmarks.)
#
# Exit status: the command's. The run fails (status 1, or 124 on timeout) when the guest never
# reports the command's end, or when its kernel log shows an oops, BUG, WARNING, KASAN,
# kmemleak or lockdep report, whatever the command said.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
die() { printf '[guest] error: %s\n' "$*" >&2; exit 1; }

variant=() timeout=900 mem=2048 smp=2 append="" keep_log="" prealloc=()
while (($#)); do
  case "$1" in
    --debug|--kasan) variant=("$1"); shift ;;
    --timeout) timeout=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --prealloc) prealloc=(-mem-prealloc); shift ;;
    --keep-log) keep_log=$2; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option $1 (usage: tools/guest.sh [--debug|--kasan] [--timeout S] [--mem MIB] [--smp N] [--append ARGS] -- CMD...)" ;;
  esac
done
(($#)) || die "no command given"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing: run tools/deps.sh"
kdir=$("$here/kernel.sh" "${variant[@]}")
bzimage="$kdir/arch/x86/boot/bzImage"
[[ -f "$bzimage" ]] || die "no kernel image at $bzimage"

work=$(mktemp -d /tmp/ckpt-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The initramfs: busybox and an /init that mounts the host and runs /ckpt-cmd.
busybox=$(command -v busybox) || die "busybox is missing: run tools/deps.sh"
mkdir -p "$work/root/bin" "$work/root/proc" "$work/root/sys" "$work/root/dev" "$work/root/host"
cp "$busybox" "$work/root/bin/busybox"
cat > "$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host; then
  echo "CKPT_GUEST_EXIT=200"; poweroff -f
fi
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t debugfs debugfs /host/sys/kernel/debug 2>/dev/null
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
# Fresh tmpfs on /tmp, /var/tmp and /run; but paths the run needs from the host that live
# there (a checkout in /tmp, as CI may use) are bound back in, read-only like the rest.
mkdir -p /keep/tmp /keep/var/tmp
mount --bind /host/tmp /keep/tmp
mount --bind /host/var/tmp /keep/var/tmp
for d in tmp var/tmp run; do mount -t tmpfs -o mode=1777 tmpfs /host/$d; done
while read -r p; do
  case "$p" in
    /tmp/*|/var/tmp/*) mkdir -p "/host$p" && mount --bind "/keep$p" "/host$p" ;;
  esac
done < /ckpt-binds
cp /ckpt-cmd /host/tmp/.ckpt-cmd
echo "CKPT_GUEST_START"
chroot /host /bin/bash /tmp/.ckpt-cmd
rc=$?
echo "CKPT_GUEST_DMESG_BEGIN"
dmesg
echo "CKPT_GUEST_DMESG_END"
echo "CKPT_GUEST_EXIT=$rc"
sync
poweroff -f
INIT
chmod +x "$work/root/init"
{
  echo 'set -u'
  printf 'export PATH=%q HOME=/root TERM=dumb LANG=C.UTF-8\n' "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${CARGO_HOME:-$HOME/.cargo}/bin"
  for v in $(compgen -e | grep -E '^(CKPT_|RUST_BACKTRACE$|RUST_LOG$)' || true); do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'cd %q || exit 201\n' "$PWD"
  printf '%q ' "$@"; echo
} > "$work/root/ckpt-cmd"
# Host paths that must stay visible in the guest: the checkout and the current directory.
printf '%s\n' "$(dirname "$here")" "$PWD" > "$work/root/ckpt-binds"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd"

# On the KASAN kernel the instrumented ACPI interpreter takes about 30 s (TCG) to evaluate the
# PCI routing method \_SB.PCI0._PRT, and on a loaded host it overruns ACPICA's 30 s loop limit
# (AE_AML_LOOP_TIMEOUT), leaving virtio without interrupts. acpi=noirq routes PCI interrupts
# from the BIOS's table instead: boot to /init 35 s -> 7 s. ACPI stays on for poweroff.
[[ "${variant[*]}" == --kasan ]] && append="acpi=noirq${append:+ $append}"
log="$work/console.log"
: > "$log"
qemu=(qemu-system-x86_64 -accel tcg -cpu max -smp "$smp" -m "$mem" "${prealloc[@]}" -no-reboot
  -display none -monitor none -serial "file:$log"
  -kernel "$bzimage" -initrd "$work/initrd"
  -append "console=ttyS0 panic=-1 quiet loglevel=4 rw${append:+ $append}"
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
  -nic none)
start=$(date +%s.%N)
timeout --foreground -k 10 "$timeout" "${qemu[@]}" </dev/null &
qpid=$!
# Show the console live, without the kernel log dump at the end (it is checked below).
tail -n +1 -f --pid="$qpid" "$log" | sed -u '/^CKPT_GUEST_DMESG_BEGIN/,/^CKPT_GUEST_DMESG_END/d' &
tpid=$!
set +e
wait "$qpid"; qrc=$?
wait "$tpid"
set -e
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
[[ -n "$keep_log" ]] && cp "$log" "$keep_log"
tr -d '\r' < "$log" > "$log.txt"

if ((qrc == 124)); then
  printf '[guest] error: the guest did not finish within %s s\n' "$timeout" >&2; exit 124
fi
rc=$(sed -n 's/^CKPT_GUEST_EXIT=\([0-9]*\)$/\1/p' "$log.txt" | tail -n1)
if [[ -z "$rc" ]]; then
  die "the guest stopped without reporting the command's end (qemu status $qrc): it crashed or paniced; console above"
fi
# Kernel trouble anywhere in the console or the log dump fails the run.
splat='(BUG:|WARNING:|Oops|general protection fault|KASAN|UBSAN|kernel BUG|Call Trace:|unreferenced object|possible circular locking|possible recursive locking|INFO: task .* blocked|refusing to load)'
if grep -Eq "$splat" "$log.txt"; then
  echo "[guest] error: the guest kernel reported a problem:" >&2
  grep -En -B2 -A20 "$splat" "$log.txt" | head -n 80 >&2
  exit 1
fi
printf '[guest] command exited with %s after %.1f s in the guest run\n' "$rc" "$elapsed" >&2
exit "$rc"
