#!/usr/bin/env bash
# The guest test suite. Runs inside the guest as root (tools/guest.sh), from the checkout:
#   tests/guest/suite.sh KO TEST_EXE...
# Loads the module (checking its KUnit results when the kernel has KUnit), checks the device
# node, runs every given cargo test executable's ignored
# (module-needing) tests, then unloads the module and checks it left nothing behind.
set -uo pipefail
ko=$1; shift
export CKPT_KO=$ko
fail=0
check() { # check DESCRIPTION COMMAND...
  if "${@:2}"; then echo "suite: ok: $1"; else echo "suite: FAILED: $1"; fail=1; fi
}

log_lines=$(dmesg | wc -l)
check "insmod $ko" insmod "$ko"
# On a kernel with KUnit (the kasan flavour) the load ran the module's #[kunit_tests] suites.
# (grep without -q reads it all: with pipefail, zcat killed by SIGPIPE would skip the check.)
if zcat /proc/config.gz 2>/dev/null | grep -x 'CONFIG_KUNIT=y' >/dev/null; then
  check "the module's KUnit tests pass" \
    bash -c "dmesg | tail -n +$((log_lines + 1)) | '$(dirname "$0")/kunit.sh'"
fi
check "/dev/ckpt is a character device" test -c /dev/ckpt
check "/dev/ckpt is root-only (0600)" test "$(stat -c %a /dev/ckpt)" = 600

for exe in "$@"; do
  echo "suite: running $(basename "$exe") --ignored"
  "$exe" --ignored --test-threads=2
  rc=$?
  if ((rc)); then echo "suite: FAILED: $(basename "$exe") exited with $rc"; fail=1; fi
done

check "rmmod ckpt" rmmod ckpt
check "/dev/ckpt is gone after rmmod" test ! -e /dev/ckpt
check "ckpt is not in /proc/modules" bash -c '! grep -q "^ckpt " /proc/modules'
check "the misc device is unregistered" bash -c '! grep -qw ckpt /proc/misc'
# Loading again must work: nothing stale was left registered.
check "insmod again" insmod "$ko"
check "/dev/ckpt is back" test -c /dev/ckpt
check "rmmod again" rmmod ckpt
# group=GID (guest_users.rs loads it so): a value that is no gid is refused at load.
check "insmod group=-2 is refused" bash -c "! insmod '$ko' group=-2 2>/dev/null"
check "insmod group=4294967295 is refused" bash -c "! insmod '$ko' group=4294967295 2>/dev/null"
check "nothing is loaded after the refusals" bash -c '! grep -q "^ckpt " /proc/modules'
if [[ -w /sys/kernel/debug/kmemleak ]]; then
  # Two scans: kmemleak reports an object only once it has stayed unreferenced for a while.
  echo scan > /sys/kernel/debug/kmemleak; sleep 6; echo scan > /sys/kernel/debug/kmemleak
  # Boot-time reports of other kernel code are not ours: only leaks with ckpt in their trace.
  check "kmemleak found no leak from ckpt" bash -c '! grep -q ckpt /sys/kernel/debug/kmemleak'
  echo "suite: kmemleak: $(grep -c unreferenced /sys/kernel/debug/kmemleak) suspected leaks in all (none from ckpt if the check above passed)"
fi
if ((fail)); then echo "suite: FAILED"; exit 1; fi
echo "suite: all guest checks passed"
