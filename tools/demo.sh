#!/usr/bin/env bash
# The main job, from nothing: builds the kernel (cached), the module and ckpt, boots the guest,
# loads the module, starts a multi-threaded program and shows what `ckpt info` sees of it next to
# what /proc says.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
if [[ "${1:-}" == --in-guest ]]; then
  ko=$2 ckpt=$3 prog=$4
  insmod "$ko"
  coproc TARGET { exec "$prog" 5; }
  read -r ready addr len <&"${TARGET[0]}"
  pid=$TARGET_PID
  echo "--- started $prog (pid $pid): 1 main thread + 5 workers, a 2 MiB patterned heap buffer at $addr"
  echo "--- /proc says: $(ls /proc/$pid/task | wc -l) threads, $(grep -vc '\[vsyscall\]' /proc/$pid/maps) VMAs"
  echo "--- ckpt info $pid --read $addr --len 48"
  "$ckpt" info "$pid" --read "$addr" --len 48
  echo "--- ckpt info $pid --json"
  "$ckpt" info "$pid" --json
  kill "$pid"
  rmmod ckpt
  exit 0
fi
"$here/deps.sh"
"$here/kernel.sh" >/dev/null
ko=$("$here/kmod.sh")
cargo build --release --locked -q
prog=$(ls -t target/release/build/ckpt-*/out/progs/threaded_target | head -n1)
"$here/guest.sh" -- "$here/demo.sh" --in-guest "$ko" "$root/target/release/ckpt" "$prog"
