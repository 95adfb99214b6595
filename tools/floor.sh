#!/usr/bin/env bash
# What the emulated guest charges per operation a checkpoint or restore is made of
# (bench/floor.c: faulting and zeroing fresh memory, copies by user space and by the kernel,
# XXH64), in one guest run with memory preallocated, ROUNDS times; prints each line's median.
# These are the floors that ckpt's and CRIU's `make bench` figures sit on (docs/design.md).
#   tools/floor.sh [MIB] [ROUNDS]        (make floor)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
mib=${1:-1024} rounds=${2:-3}
# Under the checkout: the guest sees the host's files there (its /tmp and /var/tmp are its own).
work=$root/target/floor
mkdir -p "$work"
cc -O2 -Wall -Werror -pthread -o "$work/floor" "$root/bench/floor.c"
# The source file, its copy (tmpfs: half the guest's memory) and the anonymous memory.
"$here/guest.sh" --mem $((mib * 5 + 1024)) --prealloc --timeout 1200 -- \
  bash -c "for i in \$(seq $rounds); do $work/floor $mib || exit 1; done" | tee "$work/out" >&2
echo "median of $rounds, ms for $mib MiB (operation, threads, ms):"
tr -d '\r' < "$work/out" | grep -E '^[a-zA-Z0-9_+]+ +[12] +[0-9]+$' | sort -k1,1 -k2,2n -k3,3n |
  awk '{k = $1 " " $2; c[k]++; v[k, c[k]] = $3; if (!(k in seen)) {seen[k] = 1; order[++n] = k}}
       END {for (i = 1; i <= n; i++) {k = order[i]; printf "%-18s %s\n", k, v[k, int((c[k] + 1) / 2)]}}'
