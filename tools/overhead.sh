#!/usr/bin/env bash
# The interceptor's cost while no checkpoint runs, natively (no module, no guest):
# bench/overhead.c's loops and program launch, each run ROUNDS times alternately without and
# with the library preloaded (and its control thread running, as under `ckpt run`).
# Prints ns per operation (the fastest of the rounds, the least disturbed by other load on the
# machine, and the median) and the difference.
#   tools/overhead.sh [ROUNDS]        (make overhead)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
rounds=${1:-9}
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cd "$root"
cargo build --release --locked -p ckpt-interceptor >&2
lib=$root/target/release/libckpt_interceptor.so
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$work/overhead
cc -O2 -pthread -o "$bin" bench/overhead.c
with=(env LD_PRELOAD="$lib" CKPT_APP_ID=overhead CKPT_RUNTIME_DIR="$work/rt")

# name:iterations
loops=(malloc:2000000 open:200000 write:1000000 getpid:2000000 thread:10000 launch:300)
stats() { sort -g | awk '{v[NR]=$1} END {printf "%s %s\n", v[1], v[int((NR+1)/2)]}'; }
printf '| loop | without (min / median) | with (min / median) | overhead (min) | overhead (median) |\n'
printf '|---|---|---|---|---|\n'
for spec in "${loops[@]}"; do
  name=${spec%%:*} n=${spec##*:}
  : > "$work/a"; : > "$work/b"
  for ((i = 0; i < rounds; i++)); do
    if [[ $name == launch ]]; then
      # Launch time of a small dynamic program; the library goes into the child only.
      "$bin" launch "$n" /bin/true | awk '{print $2 * 1000}' >> "$work/a"
      "${with[@]}" "$bin" launch "$n" /bin/true | awk '{print $2 * 1000}' >> "$work/b"
    else
      "$bin" "$name" "$n" | awk '{print $2}' >> "$work/a"
      "${with[@]}" "$bin" "$name" "$n" | awk '{print $2}' >> "$work/b"
    fi
  done
  read -r amin amed < <(stats < "$work/a")
  read -r bmin bmed < <(stats < "$work/b")
  unit=ns; [[ $name == launch ]] && unit="ns (per launch)"
  awk -v n="$name" -v u="$unit" -v a="$amin" -v am="$amed" -v b="$bmin" -v bm="$bmed" 'BEGIN {
    if (n == "launch")
      printf "| launch | %.0f / %.0f us | %.0f / %.0f us | %+.0f us (%+.1f %%) | %+.0f us (%+.1f %%) |\n",
        a/1000, am/1000, b/1000, bm/1000, (b-a)/1000, (b-a)/a*100, (bm-am)/1000, (bm-am)/am*100
    else
      printf "| %s | %.1f / %.1f %s | %.1f / %.1f %s | %+.1f %% | %+.1f %% |\n",
        n, a, am, u, b, bm, u, (b-a)/a*100, (bm-am)/am*100
  }'
done
