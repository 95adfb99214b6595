#!/usr/bin/env bash
# The main job, from nothing: builds the kernel (cached), the module and ckpt, boots the guest,
# loads the module, starts a program, checkpoints it, kills it, restores it, and shows that it
# went on exactly where it stopped. Act 2 does the same with a multi-threaded server started
# under `ckpt run` (the interceptor path): stdio flushed, threads blocked in accept/read/poll
# undisturbed, every output line exactly once. Act 3 takes a whole process tree from a Debian
# package, nginx with two workers, kills it and brings it back answering.
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

  echo
  echo "=== Act 2: a multi-threaded server under ckpt run (the interceptor path)"
  app=$5 dir=/tmp/app
  mkdir -p "$dir"
  echo "--- ckpt run --id web -- app $dir 7400   (8 threads: accept on :7400, pipe read, poll, nanosleep, condvar, workers; printf to a buffered stdout)"
  "$ckpt" run --id web -- "$app" "$dir" 7400 > "$dir/stdout" 2>&1 < /dev/null &
  apid=$!
  disown "$apid"   # ckpt kills it; no job report from this shell
  sleep 2
  "$ckpt" list
  echo "--- asking it on :7400: $(exec 3<>/dev/tcp/127.0.0.1/7400; cat <&3)"
  echo "--- its stdout file holds $(wc -l < "$dir/stdout") lines; it has printed $(sed 's/.*tick=\([0-9]*\).*/\1/' "$dir/progress") so far (buffered)"
  echo "--- ckpt checkpoint $apid -o /tmp/app.img --kill"
  "$ckpt" checkpoint "$apid" -o /tmp/app.img --kill | grep -E 'checkpointed|interceptor|frozen'
  echo "--- killed; stdout now holds $(wc -l < "$dir/stdout") lines: the interceptor flushed the buffer before the snapshot"
  echo "--- ckpt restore /tmp/app.img"
  rpid=$("$ckpt" restore /tmp/app.img </dev/null)
  sleep 2
  echo "--- restored as pid $rpid; asking it on :7400 again: $(exec 3<>/dev/tcp/127.0.0.1/7400; cat <&3)"
  echo "--- its counters: $(cat "$dir/progress")"
  echo "    (eintr=0: no thread saw an interrupted call; sigs=0: no signal reached it)"
  if [[ -s "$dir/bad" ]]; then echo "--- PROBLEM: $(head -n3 "$dir/bad")"; exit 1; fi
  kill -TERM "$rpid"; sleep 1
  echo "--- stopped with SIGTERM; stdout has $(wc -l < "$dir/stdout") lines, $(sort -u "$dir/stdout" | wc -l) distinct: every line exactly once"

  echo
  echo "=== Act 3: a whole process tree: nginx with two workers (the Debian package)"
  n=/tmp/ngx
  mkdir -p "$n/www" "$n/tmp"
  echo "hello from nginx, pid $$ asked" > "$n/www/index.html"
  cat > "$n/nginx.conf" <<CONF
daemon off; master_process on; worker_processes 2; pid $n/nginx.pid; error_log $n/error.log;
events { worker_connections 64; }
http { access_log off; client_body_temp_path $n/tmp/b; proxy_temp_path $n/tmp/p;
  fastcgi_temp_path $n/tmp/f; uwsgi_temp_path $n/tmp/u; scgi_temp_path $n/tmp/s;
  server { listen 127.0.0.1:7500; root $n/www; } }
CONF
  get() { exec 3<>/dev/tcp/127.0.0.1/7500 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && tail -n1 <&3; exec 3<&-; }
  nginx -p "$n" -c "$n/nginx.conf" < /dev/null > /dev/null 2>&1 &
  npid=$!
  disown "$npid"
  sleep 2
  echo "--- the tree (a master and its workers, which run as nobody):"
  ps -o pid,ppid,user,comm -p "$npid" --ppid "$npid"
  echo "--- GET / on :7500: $(get)"
  echo "--- ckpt checkpoint $npid -o /tmp/ngx.img --kill"
  "$ckpt" checkpoint "$npid" -o /tmp/ngx.img --kill | grep -E 'checkpointed|processes|frozen'
  sleep 1
  echo "--- killed: $(pgrep -c nginx || true) nginx processes left; GET / now: $( (get) 2>/dev/null || echo "connection refused")"
  echo "--- ckpt inspect /tmp/ngx.img (the tree):"
  "$ckpt" inspect /tmp/ngx.img | sed -n '/^tree/,/^process/p' | grep -v '^process'
  echo "--- ckpt restore /tmp/ngx.img"
  "$ckpt" restore /tmp/ngx.img < /dev/null
  sleep 1
  ps -o pid,ppid,user,comm -p "$npid" --ppid "$npid"
  echo "--- GET / on :7500 again: $(get)"
  kill -QUIT "$npid"
  rmmod ckpt
  exit 0
fi
"$here/deps.sh"
"$here/kernel.sh" >/dev/null
ko=$("$here/kmod.sh")
cargo build --release --locked -q
prog=$(ls -t target/release/build/ckpt-*/out/progs/counter | head -n1)
app=$(ls -t target/release/build/ckpt-*/out/progs/app | head -n1)
"$here/guest.sh" -- "$here/demo.sh" --in-guest "$ko" "$root/target/release/ckpt" "$prog" "$app"
