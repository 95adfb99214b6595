#!/usr/bin/env bash
# `make bench`: checkpoint and restore of 0 (tiny), 64, 256 and 1024 MiB processes in the test
# guest, with wall time, frozen time, dump throughput and image size; and the same with CRIU
# 4.x in the same guest run when tools/criu.sh can provide it (--no-criu skips it). Prints the
# median of REPS runs (default 3) and ckpt/CRIU ratios. Then a tree of 8 processes sharing
# TREE MiB of anonymous shared memory (default 256; 0 skips it), taken and restored whole.
# Then a server with TCP established connections (default 100; 0 skips it) to clients
# outside its tree, checkpointed with --kill and restored: dump and restore time and the
# longest time the clients saw no progress (CRIU with --tcp-established).
# Last, a live checkpoint (the process runs on) of each size: how long it is frozen (ckpt's
# copy-on-write snapshot against CRIU's --leave-running).
# Images live on the guest's tmpfs.
# Then a process with 500 threads and one with 10,000 mappings (per-thread and per-mapping
# costs; 0 skips either).
# Then an incremental checkpoint of a live INCR MiB process (default 256; 0 skips it) after
# 1 % of its pages changed since a full one: ckpt --parent against CRIU's pre-dump --track-mem
# then dump --prev-images-dir --track-mem --leave-running.
# Then --compress: COMPRESS MiB (default 256; 0 skips) of compressible memory (a repeated
# text) and of incompressible memory (random bytes), taken with --kill plain and compressed,
# against CRIU's dump and CRIU's dump followed by zstd of its image directory (--compress-level
# L: ckpt's and zstd's level, default 3).
# Then lazy restores of each size in LAZY (default "256 1024"; "" skips): how long until the
# restored program runs (restore started to its next output line) and until every page is in
# (its page server gone), against CRIU's restore --lazy-pages with its lazy-pages daemon.
#   tools/bench.sh [--no-criu] [--sizes "0 64 256 1024"] [--tree MIB] [--tcp N] [--threads N]
#                  [--maps N] [--incr MIB] [--compress MIB] [--compress-level L] [--reps N]
#                  [--mem MIB] [--lazy "256 1024"] [--append ARGS]
# --append adds ARGS to the guest kernel's command line, e.g. clearcpuid=rep_good (see
# ../shared/notes/benchmarking.md: TCG runs the kernel's `rep stosq` page clearing about 6x
# slower than a plain store loop, a cost both tools share that real CPUs do not have).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

if [[ "${1:-}" == --in-guest ]]; then
  shift
  ko=$1 ckpt=$2 prog=$3 sizes=$4 reps=$5 tree=$6 tcp=$7 threads=$8 maps=$9 incr=${10} lazy=${12} criu=${13:-}
  compress=${11%:*} level=${11#*:}
  tree_prog=$(dirname "$prog")/shmtree
  threads_prog=$(dirname "$prog")/manythreads maps_prog=$(dirname "$prog")/manymaps
  insmod "$ko"
  set +m
  now() { date +%s%N; }
  ms() { echo "scale=1; $1 / 1000000" | bc; }
  median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  # Starts the counter (or $2, e.g. the tree) with $1 MiB, in its own session, all stdio on
  # /dev/null; sets $pid and $family (it and its children).
  start() {
    rm -f /tmp/b.out
    setsid "${2:-$prog}" /tmp/b.out "$1" </dev/null >/dev/null 2>&1 &
    pid=$!
    until [[ -s /tmp/b.out ]] && (( $(wc -l < /tmp/b.out) >= 3 )); do sleep 0.05; done
    # shellcheck disable=SC2207
    family=($pid $(cat /proc/"$pid"/task/*/children 2>/dev/null))
  }
  # Waits until every process of the family is gone (killed ones reaped by init).
  gone() {
    for p in "${family[@]}"; do
      while [[ -e /proc/$p ]]; do sleep 0.01; done
    done
  }
  # Checks that the restored process writes on; then kills it.
  check_runs() {
    local n; n=$(wc -l < /tmp/b.out)
    for _ in $(seq 100); do (( $(wc -l < /tmp/b.out) > n + 2 )) && break; sleep 0.05; done
    (( $(wc -l < /tmp/b.out) > n + 2 )) || { echo "bench: the restored process did not run" >&2; exit 1; }
    if grep -qE "mismatch|bad" /tmp/b.out; then echo "bench: restored process reports damage: $(grep -E "mismatch|bad" /tmp/b.out | head -n 3)" >&2; exit 1; fi
    local kids; kids=$(cat /proc/"$1"/task/*/children 2>/dev/null || true)
    # shellcheck disable=SC2086
    kill -9 "$1" $kids 2>/dev/null || true
  }
  # One run of the TCP row with $1 (ckpt or criu): sets $dump_ms $restore_ms $stall_ms, or
  # returns 1 if the tool failed.
  tcp_once() {
    local port=$((30000 + RANDOM % 20000)) bprog spid cpid t0 t1 t2 t3
    bprog=$(dirname "$prog")/tcpbench
    rm -f /tmp/srv.out /tmp/cli.out /tmp/gap.out
    # Started from a subshell that exits at once (reaped by init, not this shell's jobs).
    (setsid "$bprog" server "$port" </dev/null >/tmp/srv.out 2>&1 &)
    until grep -q ready /tmp/srv.out 2>/dev/null; do sleep 0.05; done
    spid=$(awk '{print $2}' /tmp/srv.out)
    ("$bprog" clients "$port" "$tcp" /tmp/gap.out </dev/null >/tmp/cli.out 2>&1 & echo $! >/tmp/cli.pid)
    until grep -q ready /tmp/cli.out 2>/dev/null; do sleep 0.05; done
    cpid=$(cat /tmp/cli.pid)
    sleep 0.5; kill -USR1 "$cpid"; until [[ -s /tmp/gap.out ]]; do sleep 0.02; done
    rm -f /tmp/gap.out /tmp/t.img; rm -rf /tmp/criu; mkdir -p /tmp/criu
    local ok=1
    t0=$(now)
    if [[ $1 == ckpt ]]; then
      "$ckpt" checkpoint "$spid" -o /tmp/t.img --kill >/dev/null || ok=0
    else
      $criu dump -t "$spid" -D /tmp/criu --tcp-established --network-lock nftables -o dump.log >/dev/null 2>&1 || ok=0
    fi
    t1=$(now)
    while ((ok)) && [[ -e /proc/$spid ]]; do sleep 0.01; done
    t2=$(now)
    if ((ok)) && [[ $1 == ckpt ]]; then
      "$ckpt" restore /tmp/t.img >/dev/null || ok=0
    elif ((ok)); then
      $criu restore -D /tmp/criu --tcp-established --network-lock nftables -d -o restore.log >/dev/null 2>&1 || ok=0
    fi
    t3=$(now)
    if ((ok)); then
      sleep 1; kill -USR1 "$cpid"
      for _ in $(seq 600); do [[ -s /tmp/gap.out ]] && break; sleep 0.05; done
    fi
    stall_ms=$(awk '{print $2}' /tmp/gap.out 2>/dev/null || true)
    kill -9 "$cpid" 2>/dev/null || true
    pkill -9 -f "tcpbench server $port" 2>/dev/null || true
    if ((!ok)) || [[ -z $stall_ms ]]; then
      [[ $1 == criu ]] && { echo "criu failed:"; tail -n 5 /tmp/criu/dump.log /tmp/criu/restore.log 2>/dev/null; }
      return 1
    fi
    dump_ms=$(( (t1 - t0) / 1000000 )); restore_ms=$(( (t3 - t2) / 1000000 ))
  }
  tcp_bench() {
    local tool d r s line cline
    printf '\n%-16s | %-32s | %-32s\n' "$tcp TCP conns" "ckpt: dump / restore / stall ms" "criu: dump / restore / stall ms"
    local -A D R S
    for tool in ckpt ${criu:+criu}; do
      d=(); r=(); s=()
      for _ in $(seq "$reps"); do
        tcp_once "$tool" || { d=(); break; }
        d+=("$dump_ms"); r+=("$restore_ms"); s+=("$stall_ms")
      done
      if ((${#d[@]})); then
        D[$tool]=$(median "${d[@]}"); R[$tool]=$(median "${r[@]}"); S[$tool]=$(median "${s[@]}")
      fi
    done
    line="(failed)"; cline="(no CRIU)"
    [[ -n ${D[ckpt]:-} ]] && line=$(printf '%7s / %7s / %7s' "${D[ckpt]}" "${R[ckpt]}" "${S[ckpt]}")
    [[ -n $criu ]] && cline="(failed)"
    [[ -n ${D[criu]:-} ]] && cline=$(printf '%7s / %7s / %7s' "${D[criu]}" "${R[criu]}" "${S[criu]}")
    printf '%-16s | %-32s | %-32s\n' "server" "$line" "$cline"
  }
  # Frozen time of checkpoints that let the process run on, per size.
  live_bench() {
    local mib f cf line cline
    printf '\n%-12s | %-24s | %-24s | %s\n' "live" "ckpt: frozen / total ms" "criu: frozen / total ms" "ckpt/criu frozen"
    for mib in $sizes; do
      f=(); t=(); cf=(); ct=()
      for _ in $(seq "$reps"); do
        start "$mib"
        json=$("$ckpt" checkpoint "$pid" -o /tmp/b.img --json)
        f+=("$(echo "$json" | sed -n 's/.*"frozen_us": \([0-9]*\).*/\1/p')")
        t+=("$(echo "$json" | sed -n 's/.*"total_us": \([0-9]*\).*/\1/p')")
        kill -9 "$pid"; wait "$pid" 2>/dev/null || true; rm -f /tmp/b.img
        if [[ -n "$criu" ]]; then
          start "$mib"
          rm -rf /tmp/criu && mkdir -p /tmp/criu
          t0=$(now)
          $criu dump -t "$pid" -D /tmp/criu --leave-running --display-stats -o dump.log > /tmp/criu/dump.stats 2>&1 \
            || { echo "criu live dump failed:"; tail -n 20 /tmp/criu/dump.log; criu=""; }
          t1=$(now)
          cf+=("$(awk '/Frozen time/ {print $3}' /tmp/criu/dump.stats)"); ct+=("$(( (t1 - t0) / 1000 ))")
          kill -9 "$pid"; wait "$pid" 2>/dev/null || true
        fi
      done
      line=$(printf '%9.1f / %9.1f' "$(ms "$(median "${f[@]}")"000)" "$(ms "$(median "${t[@]}")"000)")
      cline="(no CRIU)"; ratio="-"
      if ((${#cf[@]})) && [[ -n "${cf[0]}" ]]; then
        cline=$(printf '%9.1f / %9.1f' "$(ms "$(median "${cf[@]}")"000)" "$(ms "$(median "${ct[@]}")"000)")
        ratio=$(printf '%.3fx' "$(echo "scale=4; $(median "${f[@]}") / $(median "${cf[@]}")" | bc)")
      fi
      printf '%12s | %-24s | %-24s | %s\n' "$mib MiB" "$line" "$cline" "$ratio"
    done
  }
  # One incremental checkpoint with $1 (ckpt or criu) of the dirtier ($incr MiB) after one
  # step (1 % of its pages changed) since a full checkpoint (CRIU: a pre-dump); sets
  # $total_us $frozen_us $bytes, or returns 1 if the tool failed.
  incr_once() {
    local dprog d=/tmp/inc t0 t1 ok=1 json
    dprog=$(dirname "$prog")/dirtier
    rm -rf $d; mkdir -p $d/1 $d/2
    (setsid "$dprog" $d/out $d/cmd "$incr" </dev/null >$d/ready 2>&1 &)
    until grep -q ready $d/ready 2>/dev/null; do sleep 0.05; done
    pid=$(awk '{print $2}' $d/ready)
    if [[ $1 == ckpt ]]; then
      "$ckpt" checkpoint "$pid" -o $d/base.img >/dev/null || ok=0
    else
      $criu pre-dump -t "$pid" -D $d/1 --track-mem -o pre.log >/dev/null 2>&1 || ok=0
    fi
    echo "1 0" > $d/cmd
    until grep -q "^step 1" $d/out 2>/dev/null; do sleep 0.05; done
    if ((ok)) && [[ $1 == ckpt ]]; then
      t0=$(now); json=$("$ckpt" checkpoint "$pid" -o $d/inc.img --parent $d/base.img --json) || ok=0; t1=$(now)
      frozen_us=$(echo "$json" | sed -n 's/.*"frozen_us": \([0-9]*\).*/\1/p')
      bytes=$(stat -c %s $d/inc.img 2>/dev/null || echo 0)
    elif ((ok)); then
      t0=$(now)
      $criu dump -t "$pid" -D $d/2 --prev-images-dir ../1 --track-mem --leave-running --display-stats -o dump.log > $d/2/dump.stats 2>&1 || ok=0
      t1=$(now)
      frozen_us=$(awk '/Frozen time/ {print $3}' $d/2/dump.stats)
      bytes=$(du -sb --exclude='*.log' --exclude='*.stats' $d/2 | cut -f1)
    fi
    kill -9 "$pid" 2>/dev/null || true
    if ((!ok)); then
      [[ $1 == criu ]] && { echo "criu failed:"; tail -n 5 $d/1/pre.log $d/2/dump.log 2>/dev/null; }
      return 1
    fi
    total_us=$(( (t1 - t0) / 1000 ))
    rm -rf $d
  }
  incr_bench() {
    local tool line cline
    printf '\n%-16s | %-36s | %-36s\n' "incremental" "ckpt --parent: total / frozen ms, image" "criu dump --prev-images-dir: same"
    local -A T F B
    for tool in ckpt ${criu:+criu}; do
      tt=(); ff=(); bb=()
      for _ in $(seq "$reps"); do
        incr_once "$tool" || { tt=(); break; }
        tt+=("$total_us"); ff+=("$frozen_us"); bb+=("$bytes")
      done
      if ((${#tt[@]})); then
        T[$tool]=$(median "${tt[@]}"); F[$tool]=$(median "${ff[@]}"); B[$tool]=$(median "${bb[@]}")
      fi
    done
    row() { printf '%7.1f / %7.1f  %6s KiB' "$(ms "${T[$1]}"000)" "$(ms "${F[$1]}"000)" "$(( ${B[$1]} >> 10 ))"; }
    line="(failed)"; cline="(no CRIU)"
    [[ -n ${T[ckpt]:-} ]] && line=$(row ckpt)
    [[ -n $criu ]] && cline="(failed)"
    [[ -n ${T[criu]:-} ]] && cline=$(row criu)
    printf '%-16s | %-36s | %-36s\n' "$incr MiB, 1 %" "$line" "$cline"
  }
  # One --kill checkpoint and restore of $mib MiB ($target) with ckpt, figures appended.
  ckpt_once() {
    start "$mib" "$target"
    t0=$(now); json=$("$ckpt" checkpoint "$pid" -o /tmp/b.img --kill --json); t1=$(now)
    wait "$pid" 2>/dev/null || true
    gone
    d+=("$(( (t1 - t0) / 1000 ))")
    f+=("$(echo "$json" | sed -n 's/.*"frozen_us": \([0-9]*\).*/\1/p')")
    sz+=("$(stat -c %s /tmp/b.img)")
    t2=$(now); newpid=$("$ckpt" restore /tmp/b.img); t3=$(now)
    r+=("$(( (t3 - t2) / 1000 ))")
    check_runs "$newpid"
    rm -f /tmp/b.img
  }
  # The same with CRIU (nothing when it is unavailable or failed before).
  criu_once() {
    [[ -n "$criu" ]] || return 0
    start "$mib" "$target"
    rm -rf /tmp/criu && mkdir -p /tmp/criu
    t0=$(now); $criu dump -t "$pid" -D /tmp/criu --display-stats -o dump.log > /tmp/criu/dump.stats 2>&1 \
      || { echo "criu dump failed:"; tail -n 20 /tmp/criu/dump.log; criu=""; kill -9 "$pid"; return 0; }
    t1=$(now)
    wait "$pid" 2>/dev/null || true
    gone
    cd_+=("$(( (t1 - t0) / 1000 ))")
    cf+=("$(awk '/Frozen time/ {print $3}' /tmp/criu/dump.stats)")
    t2=$(now); $criu restore -D /tmp/criu -d -o restore.log > /dev/null 2>&1 \
      || { echo "criu restore failed:"; tail -n 20 /tmp/criu/restore.log; criu=""; return 0; }
    t3=$(now)
    cr+=("$(( (t3 - t2) / 1000 ))")
    check_runs "$(pgrep -o -f "$target /tmp/b.out" || echo 0)"
    rm -rf /tmp/criu
  }
  # One --kill checkpoint (ckpt options $1) and restore of the counter ($compress MiB filled as
  # $COUNTER_FILL says): dump and restore time, image size appended to xd xr xs.
  compress_once() {
    start "$compress"
    # shellcheck disable=SC2086
    t0=$(now); "$ckpt" checkpoint "$pid" -o /tmp/b.img --kill $1 >/dev/null; t1=$(now)
    wait "$pid" 2>/dev/null || true
    gone
    xd+=("$(( (t1 - t0) / 1000 ))"); xs+=("$(stat -c %s /tmp/b.img)")
    t2=$(now); newpid=$("$ckpt" restore /tmp/b.img); t3=$(now)
    xr+=("$(( (t3 - t2) / 1000 ))")
    check_runs "$newpid"
    rm -f /tmp/b.img
  }
  # The same with CRIU: its dump (time, image directory size without logs), then zstd of
  # that directory as one tar stream (time of dump + compression, compressed size).
  criu_compress_once() {
    [[ -n "$criu" ]] || return 0
    start "$compress"
    rm -rf /tmp/criu /tmp/criu.tar.zst && mkdir -p /tmp/criu
    t0=$(now); $criu dump -t "$pid" -D /tmp/criu -o dump.log >/dev/null 2>&1 \
      || { echo "criu dump failed:"; tail -n 20 /tmp/criu/dump.log; criu=""; kill -9 "$pid"; return 0; }
    t1=$(now)
    wait "$pid" 2>/dev/null || true
    gone
    rm -f /tmp/criu/*.log
    tar -C /tmp/criu -cf - . | zstd -q -"$level" -T0 -o /tmp/criu.tar.zst; t2=$(now)
    cd_+=("$(( (t1 - t0) / 1000 ))"); cs+=("$(du -sb /tmp/criu | cut -f1)")
    zd+=("$(( (t2 - t0) / 1000 ))"); zs+=("$(stat -c %s /tmp/criu.tar.zst)")
    rm -rf /tmp/criu /tmp/criu.tar.zst
  }
  # Throughput (MiB/s of the buffer over the dump's wall time) and size, for a row.
  rate_of() { echo "scale=0; $compress * 1000000 / ($1 + 1)" | bc; }
  size_of() { numfmt --to=iec-i --suffix=B "$1"; }
  compress_bench() {
    local fill mode flags cline zline
    printf '\n%-13s | %-31s | %-31s | %-18s | %s\n' "$compress MiB" "ckpt: dump/restore ms MiB/s img" "--compress=$level: same" "criu: dump ms, img" "criu + zstd -$level: ms, img"
    for fill in pattern random; do
      local -A L
      for mode in plain compress; do
        flags=""; [[ $mode == compress ]] && flags=--compress=$level
        xd=(); xr=(); xs=()
        export COUNTER_FILL=$fill
        for _ in $(seq "$reps"); do compress_once "$flags"; done
        L[$mode]=$(printf '%6.0f/%6.0f %4s %7s' "$(ms "$(median "${xd[@]}")"000)" "$(ms "$(median "${xr[@]}")"000)" \
          "$(rate_of "$(median "${xd[@]}")")" "$(size_of "$(median "${xs[@]}")")")
      done
      cd_=(); cs=(); zd=(); zs=()
      for _ in $(seq "$reps"); do criu_compress_once; done
      unset COUNTER_FILL
      cline="(no CRIU)"; zline="-"
      if ((${#cd_[@]})); then
        cline=$(printf '%6.0f %9s' "$(ms "$(median "${cd_[@]}")"000)" "$(size_of "$(median "${cs[@]}")")")
        zline=$(printf '%6.0f %9s' "$(ms "$(median "${zd[@]}")"000)" "$(size_of "$(median "${zs[@]}")")")
      fi
      printf '%13s | %-31s | %-31s | %-18s | %s\n' "$fill" "${L[plain]}" "${L[compress]}" "$cline" "$zline"
    done
  }
  # Waits (10 min at most) until the counter has written more than $1 lines.
  # Waits for the restored process $2's next line after line $1; gives up at once if it is
  # gone, after 10 minutes otherwise.
  wait_output() {
    for _ in $(seq 60000); do
      (( $(wc -l < /tmp/b.out) > $1 )) && return 0
      [[ -e /proc/$2 ]] || { echo "bench: restored process $2 is gone" >&2; return 1; }
      sleep 0.01
    done
    echo "bench: restored process $2 wrote nothing for 10 minutes" >&2
    return 1
  }
  # What a lazy restore that stalled left: the restored process's and the page server's
  # threads, and the kernel's last words (an OOM kill, say).
  lazy_stalled() {
    local p t
    for p in $1 $2; do
      echo "bench: pid $p: $(tr '\0' ' ' < /proc/"$p"/cmdline 2>/dev/null) $(grep -E '^(State|TracerPid)' /proc/"$p"/status 2>/dev/null | tr '\n' ' ')" >&2
      for t in /proc/"$p"/task/*; do echo "  $t: $(cat "$t"/wchan 2>/dev/null)" >&2; done
    done
    dmesg | tail -n 20 >&2
  }
  # One lazy restore of $mib MiB with $1 (ckpt or criu): sets $run_us (restore started to the
  # program's next line) and $all_us (to its page server's exit), or returns 1.
  lazy_once() {
    local n t0 t1 t2 server newpid
    start "$mib"
    rm -rf /tmp/criu /tmp/b.img && mkdir -p /tmp/criu
    if [[ $1 == ckpt ]]; then
      "$ckpt" checkpoint "$pid" -o /tmp/b.img --kill >/dev/null || return 1
    else
      $criu dump -t "$pid" -D /tmp/criu -o dump.log >/dev/null 2>&1 || { tail -n 5 /tmp/criu/dump.log; return 1; }
    fi
    wait "$pid" 2>/dev/null || true
    gone
    n=$(wc -l < /tmp/b.out)
    if [[ $1 == ckpt ]]; then
      t0=$(now); newpid=$("$ckpt" restore --lazy /tmp/b.img) || return 1
      server=$(pgrep -f "restore --lazy /tmp/b.img" || true)
    else
      (setsid $criu lazy-pages -D /tmp/criu -o lazy.log </dev/null >/dev/null 2>&1 &)
      # Its socket, which restore connects to, is there once it listens.
      for _ in $(seq 200); do [[ -S /tmp/criu/lazy-pages.socket ]] && break; sleep 0.05; done
      t0=$(now)
      # Bounded: at 1 GiB it has been seen never to return (sessions 8 and 10).
      timeout 300 $criu restore -D /tmp/criu --lazy-pages -d --pidfile /tmp/criu/restored.pid -o restore.log >/dev/null 2>&1 || { echo "criu restore --lazy-pages failed or timed out: $?"; tail -n 5 /tmp/criu/restore.log; pkill -9 -f "criu lazy-pages"; return 1; }
      server=$(pgrep -f "criu lazy-pages" || true)
      # Not by its command line: that is in its memory, absent until the daemon brings it
      # (pgrep reads it as empty).
      newpid=$(cat /tmp/criu/restored.pid 2>/dev/null || echo 0)
    fi
    # (kill 0 would signal this script's own group.)
    ((newpid > 0)) || { echo "$1: no restored process"; tail -n 5 /tmp/criu/restore.log /tmp/criu/lazy.log 2>/dev/null; return 1; }
    wait_output "$n" "$newpid" || { lazy_stalled "$newpid" "$server"; return 1; }
    t1=$(now)
    for p in $server; do while [[ -e /proc/$p ]] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; do sleep 0.01; done; done
    t2=$(now)
    n=$(wc -l < /tmp/b.out); kill -USR2 "$newpid"
    # Its check reads the whole buffer: minutes at 1 GiB under TCG.
    for _ in $(seq 6000); do tail -n +"$n" /tmp/b.out | grep -q "^mem-" && break; [[ -e /proc/$newpid ]] || break; sleep 0.1; done
    tail -n +"$n" /tmp/b.out | grep -q "^mem-" || { echo "bench: the lazily restored counter did not answer its memory check" >&2; lazy_stalled "$newpid" "$server"; exit 1; }
    tail -n +"$n" /tmp/b.out | grep -q "^mem-ok" || { echo "bench: lazily restored memory is not whole" >&2; exit 1; }
    check_runs "$newpid"
    run_us=$(( (t1 - t0) / 1000 )); all_us=$(( (t2 - t0) / 1000 ))
    rm -rf /tmp/b.img /tmp/criu
  }
  lazy_bench() {
    local tool line cline
    printf '\n%-12s | %-30s | %-30s\n' "lazy restore" "ckpt --lazy: running / all in ms" "criu --lazy-pages: same"
    for mib in $lazy; do
      local -A RUN ALL
      for tool in ckpt ${criu:+criu}; do
        ru=(); al=()
        for _ in $(seq "$reps"); do
          lazy_once "$tool" || { ru=(); break; }
          ru+=("$run_us"); al+=("$all_us")
        done
        if ((${#ru[@]})); then RUN[$tool]=$(median "${ru[@]}"); ALL[$tool]=$(median "${al[@]}"); fi
      done
      line="(failed)"; cline="(no CRIU)"
      [[ -n ${RUN[ckpt]:-} ]] && line=$(printf '%8.1f / %8.1f' "$(ms "${RUN[ckpt]}"000)" "$(ms "${ALL[ckpt]}"000)")
      [[ -n $criu ]] && cline="(failed)"
      [[ -n ${RUN[criu]:-} ]] && cline=$(printf '%8.1f / %8.1f' "$(ms "${RUN[criu]}"000)" "$(ms "${ALL[criu]}"000)")
      printf '%12s | %-30s | %-30s\n' "$mib MiB" "$line" "$cline"
      unset RUN ALL
    done
  }
  echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled)   images on tmpfs   guest: QEMU TCG, 2 vCPU, memory preallocated, tools alternate going first"
  printf '%-6s | %-38s | %-38s | %s\n' "" "ckpt: dump / frozen / restore ms, MiB/s, image" "criu: dump / frozen / restore ms" "ckpt/criu frozen, restore"
  rows=()
  for mib in $sizes; do rows+=("$mib:$prog"); done
  ((tree > 0)) && rows+=("$tree:$tree_prog")
  ((threads > 0)) && rows+=("$threads:$threads_prog")
  ((maps > 0)) && rows+=("$maps:$maps_prog")
  for row in "${rows[@]}"; do
    mib=${row%%:*} target=${row#*:}
    d=(); f=(); r=(); tp=(); sz=()
    cd_=(); cf=(); cr=()
    # The tools take turns going first: whichever runs first after a boot or a freed
    # image pays for memory the guest touches for the first time (benchmarking notes).
    for rep in $(seq "$reps"); do
      if [[ -n "$criu" ]] && ((rep % 2 == 0)); then criu_once && ckpt_once; else ckpt_once && criu_once; fi
    done
    md=$(median "${d[@]}"); mf=$(median "${f[@]}"); mr=$(median "${r[@]}"); msz=$(median "${sz[@]}")
    rate=$(echo "scale=0; $mib * 1000000 / ($mf + 1)" | bc)
    # Thread and mapping counts are not sizes: no throughput.
    [[ $target == "$threads_prog" || $target == "$maps_prog" ]] && rate="-"
    line=$(printf '%7.1f / %7.1f / %7.1f  %5s  %5s MiB' "$(ms "$md"000)" "$(ms "$mf"000)" "$(ms "$mr"000)" "$rate" "$((msz >> 20))")
    if ((${#cd_[@]})); then
      cmd=$(median "${cd_[@]}"); cmf=$(median "${cf[@]}"); cmr=$(median "${cr[@]}")
      cline=$(printf '%7.1f / %7.1f / %7.1f' "$(ms "$cmd"000)" "$(ms "$cmf"000)" "$(ms "$cmr"000)")
      ratio=$(printf '%.2fx, %.2fx' "$(echo "scale=3; $mf / $cmf" | bc)" "$(echo "scale=3; $mr / $cmr" | bc)")
    else
      cline="(no CRIU)"; ratio="-"
    fi
    label="$mib MiB"; [[ $target == "$tree_prog" ]] && label="tree 8x$mib"
    [[ $target == "$threads_prog" ]] && label="$mib threads"
    [[ $target == "$maps_prog" ]] && label="$mib maps"
    printf '%12s | %-38s | %-38s | %s\n' "$label" "$line" "$cline" "$ratio"
  done
  ((tcp > 0)) && tcp_bench
  ((incr > 0)) && incr_bench
  live_bench
  ((compress > 0)) && compress_bench
  [[ -n $lazy ]] && lazy_bench
  rmmod ckpt
  exit 0
fi

criu_wanted=1 sizes="0 64 256 1024" reps=3 tree=256 tcp=100 threads=500 maps=10000 incr=256 mem=6144 compress=256 level=3 lazy="256 1024" append=""
while (($#)); do
  case "$1" in
    --no-criu) criu_wanted=0; shift ;;
    --sizes) sizes=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --tree) tree=$2; shift 2 ;;
    --tcp) tcp=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --maps) maps=$2; shift 2 ;;
    --incr) incr=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    --compress-level) level=$2; shift 2 ;;
    --lazy) lazy=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    *) echo "usage: tools/bench.sh [--no-criu] [--sizes LIST] [--tree MIB] [--tcp N] [--threads N] [--maps N] [--incr MIB] [--compress MIB] [--compress-level L] [--reps N] [--mem MIB] [--lazy LIST] [--append ARGS]" >&2; exit 2 ;;
  esac
done
"$here/deps.sh"
"$here/kernel.sh" >/dev/null
ko=$("$here/kmod.sh")
cargo build --release --locked -q
prog=$(ls -t target/release/build/ckpt-*/out/progs/counter | head -n1)
criu=""
if ((criu_wanted)); then
  criu=$("$here/criu.sh") || { echo "bench: CRIU unavailable; measuring ckpt alone" >&2; criu=""; }
fi
"$here/guest.sh" --mem "$mem" --prealloc --timeout 3000 ${append:+--append "$append"} -- "$here/bench.sh" --in-guest "$ko" "$root/target/release/ckpt" "$prog" "$sizes" "$reps" "$tree" "$tcp" "$threads" "$maps" "$incr" "$compress:$level" "$lazy" "$criu"
