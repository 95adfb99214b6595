#!/usr/bin/env bash
# The ioctl fuzzer's full form (`make fuzz`): builds the debug kernel (cached), the module for
# it and the fuzzer, then in the guest loads the module, runs the fuzzer (a million calls by
# default), unloads the module and has kmemleak scan for anything ckpt leaked. The run fails on
# any kernel report (the fuzzer watches the log, tools/guest.sh checks it again), a leak, a
# failed rmmod, or a failure the fuzzer itself reports.
#   tools/fuzz.sh [--test-kernel|--kasan] [FUZZER ARGS...]    e.g. --seed 42 --calls 100000
# (--kasan: on the KASAN kernel, tools/kernel/kasan.fragment: out-of-bounds and use-after-free
# accesses are caught, leaks are not: it has no kmemleak.)
# A failing run prints its seed; `tools/fuzz.sh --seed S` replays it (add --only T:I --verbose
# for one call).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
variant=(--debug)
case "${1:-}" in
  --test-kernel) variant=(); shift ;;
  --kasan) variant=(--kasan); shift ;;
esac
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
KDIR=$("$here/kernel.sh" "${variant[@]}")
export KDIR
cargo build --release --locked -p ckpt-fuzz-ioctl
# The module is copied aside: a build for the other kernel meanwhile must not replace it.
ko=$(mktemp "$root/target/fuzz-ckpt.XXXXXX.ko")
script=$(mktemp "$root/target/fuzz-guest.XXXXXX.sh")
trap 'rm -f "$script" "$ko"' EXIT
cp "$("$here/kmod.sh")" "$ko"
cat > "$script" <<'GUEST'
set -u
fail=0
ko=$1; shift
insmod "$ko" || exit 1
# Restored children die of SIGSEGV by the thousand: do not log each one.
echo 0 > /proc/sys/debug/exception-trace
target/release/ckpt-fuzz-ioctl "$@" || fail=1
rmmod ckpt || { echo "fuzz: FAILED: rmmod ckpt"; fail=1; }
[[ ! -e /dev/ckpt ]] || { echo "fuzz: FAILED: /dev/ckpt is still there"; fail=1; }
if [[ -w /sys/kernel/debug/kmemleak ]]; then
  # Two scans: kmemleak reports an object only once it has stayed unreferenced for a while.
  echo scan > /sys/kernel/debug/kmemleak; sleep 6; echo scan > /sys/kernel/debug/kmemleak
  if grep -q ckpt /sys/kernel/debug/kmemleak; then
    echo "fuzz: FAILED: kmemleak found leaks from ckpt:"; grep -B3 -A20 ckpt /sys/kernel/debug/kmemleak | head -60
    fail=1
  else
    echo "fuzz: kmemleak: nothing from ckpt ($(grep -c unreferenced /sys/kernel/debug/kmemleak) suspected leaks elsewhere)"
  fi
else
  echo "fuzz: no kmemleak in this kernel: leaks not checked"
fi
exit $fail
GUEST
"$here/guest.sh" "${variant[@]}" --timeout 10800 -- bash "$script" "$ko" "$@"
