#!/usr/bin/env bash
# Provides CRIU 4.x for side-by-side benchmarks: bookworm's criu 3.17 fails on these kernels, so
# this unpacks a minimal Debian sid tree under $CKPT_CACHE_DIR/criu-sid (debootstrap; nothing is
# installed into the host system) and installs sid's criu inside it. Prints a command prefix
# that runs that criu with sid's own loader and libraries.
#   tools/criu.sh          set up (once) and print the prefix
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
log() { printf '[criu] %s\n' "$*" >&2; }
dir="$CKPT_CACHE_DIR/criu-sid"
if [[ ! -x "$dir/usr/sbin/criu" ]]; then
  command -v debootstrap >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  if [[ ! -f "$dir/.ckpt-bootstrapped" ]]; then
    rm -rf "$dir"
    log "debootstrap --variant=minbase sid (a few minutes)"
    debootstrap --variant=minbase sid "$dir" http://deb.debian.org/debian >&2
    touch "$dir/.ckpt-bootstrapped"
  fi
  log "installing criu inside the sid tree"
  chroot "$dir" apt-get -o Acquire::Check-Valid-Until=false -qq update >&2
  DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get -o Acquire::Check-Valid-Until=false \
    install -y -qq --no-install-recommends criu >&2
fi
libs="$dir/usr/lib/x86_64-linux-gnu:$dir/lib/x86_64-linux-gnu"
echo "$dir/lib64/ld-linux-x86-64.so.2 --library-path $libs $dir/usr/sbin/criu"
