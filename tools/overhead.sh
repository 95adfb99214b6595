#!/usr/bin/env bash
# The interceptor's cost while no checkpoint runs, natively (no module, no guest):
# bench/overhead.c's loops and program launch, each run ROUNDS times alternately without and
# with the library preloaded (and its control thread running, as under `ckpt run`).
# Prints ns per operation (the fastest of the rounds and the median) and the overhead as the
# median of the per-round differences.
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
loops=(${CKPT_OVERHEAD_LOOPS:-malloc:2000000 open:200000 write:1000000 getpid:2000000 thread:10000 launch:300})
stats() { sort -g | awk '{v[NR]=$1} END {printf "%s %s\n", v[1], v[int((NR+1)/2)]}'; }
# Rounds alternate without/with, so each pair ran under the same conditions: the median of the
# per-round ratios is the headline figure (the machine's load drifts; pairs cancel most of it).
ratio() { paste "$1" "$2" | awk '{print ($2 - $1) / $1 * 100}' | sort -g |
  awk '{v[NR]=$1} END {printf "%+.1f %%\n", v[int((NR+1)/2)]}'; }
printf '| loop | without (min / median) | with (min / median) | overhead (median of paired rounds) |\n'
printf '|---|---|---|---|\n'
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
  r=$(ratio "$work/a" "$work/b")
  if [[ $name == launch ]]; then
    awk -v a="$amin" -v am="$amed" -v b="$bmin" -v bm="$bmed" -v r="$r" 'BEGIN {
      printf "| launch /bin/true | %.0f / %.0f us | %.0f / %.0f us | %s (%+.0f us at the median) |\n",
        a/1000, am/1000, b/1000, bm/1000, r, (bm-am)/1000 }'
  else
    awk -v n="$name" -v a="$amin" -v am="$amed" -v b="$bmin" -v bm="$bmed" -v r="$r" 'BEGIN {
      printf "| %s | %.1f / %.1f ns | %.1f / %.1f ns | %s |\n", n, a, am, b, bm, r }'
  fi
done
