#!/usr/bin/env bash
# The module's KUnit tests (`make kunit`): builds the test kernel (cached; every flavour has
# CONFIG_KUNIT) and the module for it, boots it, loads the module, which runs its
# #[kunit_tests] suites, checks their KTAP results in the kernel log (tests/guest/kunit.sh) and
# unloads it. Fails on a failing or missing test and on any kernel report (tools/guest.sh).
# Every guest suite (tests/guest/suite.sh, so CI's) runs the same check after its load.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
KDIR=$("$here/kernel.sh")
export KDIR
mkdir -p "$root/target"
# The module is copied aside: a build for another kernel meanwhile must not replace it.
ko=$(mktemp "$root/target/kunit-ckpt.XXXXXX.ko")
trap 'rm -f "$ko"' EXIT
cp "$("$here/kmod.sh")" "$ko"
# shellcheck disable=SC2016 # expanded in the guest
"$here/guest.sh" --timeout 900 -- bash -c '
  lines=$(dmesg | wc -l)
  insmod "$1" || exit 1
  dmesg | tail -n +$((lines + 1)) | tests/guest/kunit.sh
  rc=$?
  rmmod ckpt || { echo "kunit: FAILED: rmmod ckpt"; rc=1; }
  exit $rc' kunit "$ko"
