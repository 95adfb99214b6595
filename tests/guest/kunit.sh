#!/usr/bin/env bash
# Checks the KUnit results (KTAP) that loading a module with #[kunit_tests] suites printed to
# the kernel log: every suite and every test case must say "ok", and the number of suites must
# match the plan ("1..N"). Prints one line per suite, each failure's lines and a total.
#   tests/guest/kunit.sh [LOG]    LOG (default: stdin) is that part of dmesg, timestamps or not.
# Exit status 1 on a failed test case or suite, a missing result (a test that crashed the run)
# or no test at all (a kernel without CONFIG_KUNIT, or a module built without its tests).
set -euo pipefail
# No /dev/stdin in the guest's devtmpfs: sed reads stdin when given no file.
sed 's/^\[[^]]*\] \{0,1\}//' "$@" | awk '
  /^KTAP version/ { header = 1; next }
  header && /^1\.\.[0-9]+$/ { planned += substr($0, 4); header = 0; next }
  { header = 0 }
  # A test case (one level in): "    ok 3 name" or "    not ok 3 name", maybe "# SKIP why".
  /^    (not )?ok [0-9]+ / {
    cases++
    if ($0 ~ /# SKIP/) skipped++
    else if ($0 ~ /^    not ok/) { failed++; print "kunit: FAILED:" $0 }
    else passed++
    next
  }
  # What a failing assertion prints, and the suite totals.
  /ASSERTION FAILED|Expected .* but|^ *# [A-Za-z0-9_]+: pass:/ && !/# Totals/ { print "kunit: " $0; next }
  # A suite (top level).
  /^(not )?ok [0-9]+ / {
    suites++
    if ($0 ~ /^not ok/ && $0 !~ /# SKIP/) { bad_suites++; print "kunit: FAILED: suite " $0 }
    else print "kunit: suite " $0
  }
  END {
    printf "kunit: %d suites (%d planned), %d test cases: %d passed, %d failed, %d skipped\n",
      suites, planned, cases, passed, failed, skipped
    if (failed || bad_suites) { print "kunit: FAILED: failing tests (above)"; exit 1 }
    if (suites != planned) { print "kunit: FAILED: results missing: a test crashed or hung?"; exit 1 }
    if (passed == 0) { print "kunit: FAILED: no test ran (no CONFIG_KUNIT, or no tests in the module)"; exit 1 }
  }'
