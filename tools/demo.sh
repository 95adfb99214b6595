#!/usr/bin/env bash
# The main job, from nothing: builds the kernel (cached), the module and ckpt, boots the guest,
# loads the module, starts a program, checkpoints it, kills it, restores it, and shows that it
# went on exactly where it stopped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
if [[ "${1:-}" == --in-guest ]]; then
  ko=$2 ckpt=$3 prog=$4
  insmod "$ko"
  out=/tmp/counter.out img=/tmp/counter.img
  echo "--- starting: counter $out 64   (appends 0,1,2,... to $out every ~10 ms; 64 MiB of patterned memory)"
  "$prog" "$out" 64 > /dev/null 2>&1 < /dev/null &
  pid=$!
  sleep 2
  echo "--- it has written up to: $(tail -n1 "$out")"
  echo "--- ckpt checkpoint $pid -o $img --kill"
  "$ckpt" checkpoint "$pid" -o "$img" --kill
  wait "$pid" 2>/dev/null || true
  last=$(tail -n1 "$out")
  echo "--- killed; the last number it wrote was $last. /proc/$pid exists: $([[ -e /proc/$pid ]] && echo yes || echo no)"
  sleep 1
  echo "--- ckpt inspect $img (first lines)"
  "$ckpt" inspect "$img" | head -n 6
  echo "--- ckpt restore $img"
  newpid=$("$ckpt" restore "$img" </dev/null)
  echo "restored as pid $newpid"
  sleep 2
  kill -USR1 "$newpid"; kill -USR2 "$newpid"; sleep 1
  echo "--- around the restore point, $out says:"
  grep -n -x -A4 -B2 "$last" "$out" | head -n 8
  echo "--- after the restore it answered SIGUSR1 and checked its 64 MiB:"
  grep -E '^(usr1|mem-)' "$out"
  if grep -qE 'mismatch|bad' "$out"; then echo "--- PROBLEM: $(grep -E 'mismatch|bad' "$out" | head -n3)"; exit 1; fi
  echo "--- it continues: now at $(tail -n1 "$out"), no gap, no repeat, registers/TLS/heap intact"
  kill "$newpid"
  rmmod ckpt
  exit 0
fi
"$here/deps.sh"
"$here/kernel.sh" >/dev/null
ko=$("$here/kmod.sh")
cargo build --release --locked -q
prog=$(ls -t target/release/build/ckpt-*/out/progs/counter | head -n1)
"$here/guest.sh" -- "$here/demo.sh" --in-guest "$ko" "$root/target/release/ckpt" "$prog"
