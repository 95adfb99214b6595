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
"$here/guest.sh" --mem $((mib * 3 + 1024)) --prealloc --timeout 1200 -- \
  bash -c "for i in \$(seq $rounds); do $work/floor $mib; done" | tee "$work/out" >&2
echo "median of $rounds, ms for $mib MiB (operation, threads, ms):"
grep -E '^[a-zA-Z_+]+ +[12] +[0-9]+$' "$work/out" |
  awk '{k=$1" "$2; v[k]=v[k]" "$3; if (!(k in seen)) {seen[k]=1; order[++n]=k}}
       END {for (i=1;i<=n;i++) {m=split(v[order[i]],a," "); asort(a); printf "%-18s %s\n", order[i], a[int((m+1)/2)]}}'
