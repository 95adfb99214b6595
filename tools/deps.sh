#!/usr/bin/env bash
# Installs everything ckpt's build and tests need on a fresh Debian 12 (bookworm) machine, as root.
# Idempotent: a second run only checks. Never installs anything from sid (the kernel source is
# only downloaded and unpacked, by tools/kernel.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"

log() { printf '[deps] %s\n' "$*" >&2; }

apt_pkgs=(
  build-essential flex bison bc cpio kmod rsync dwarves libelf-dev libssl-dev xz-utils
  "libclang-${CKPT_LLVM_VERSION}-dev" "clang-${CKPT_LLVM_VERSION}"
  # The debug kernel (KASAN + Rust) must be built with clang: LLVM=-19 needs these too.
  "lld-${CKPT_LLVM_VERSION}" "llvm-${CKPT_LLVM_VERSION}"
  qemu-system-x86 busybox-static util-linux procps
  # Real programs the guest tests checkpoint (guest_real.rs): a server with workers, a build,
  # an interpreter with a process pool, a database with background processes, a JIT runtime
  # with a forked child on an IPC channel, a terminal multiplexer.
  nginx-light make python3 postgresql-15 postgresql-client-15 nodejs tmux
  # A JVM (many threads, GC, JIT); an in-memory database whose background save forks.
  openjdk-17-jre-headless redis-server
  # The network lock that holds back packets of TCP connections while their process is down.
  nftables
  # The bench compresses CRIU's images to compare with --compress.
  zstd
)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No service may start on this machine (nginx's package would start one): deny it for the
  # install, unless the machine already has a policy.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ -n $own_policy ]]; then rm -f "$policy"; fi
fi

if ! command -v rustup >/dev/null; then
  echo "rustup is not installed: ckpt needs rustup to pin the kernel's Rust toolchain" >&2
  exit 1
fi
if ! rustup toolchain list | grep -q "^${CKPT_RUST_TOOLCHAIN}-"; then
  log "rustup toolchain install ${CKPT_RUST_TOOLCHAIN}"
  rustup toolchain install --profile minimal "${CKPT_RUST_TOOLCHAIN}"
fi
for c in rust-src rustfmt clippy; do
  if ! rustup component list --toolchain "${CKPT_RUST_TOOLCHAIN}" --installed | grep -q "^${c}"; then
    log "rustup component add $c"
    rustup component add --toolchain "${CKPT_RUST_TOOLCHAIN}" "$c"
  fi
done

bindgen_bin="${CARGO_HOME:-$HOME/.cargo}/bin/bindgen"
if ! "$bindgen_bin" --version 2>/dev/null | grep -q " ${CKPT_BINDGEN_VERSION}\$"; then
  log "cargo install bindgen-cli ${CKPT_BINDGEN_VERSION} (about 2.5 min)"
  cargo +"${CKPT_RUST_TOOLCHAIN}" install --locked --quiet bindgen-cli --version "${CKPT_BINDGEN_VERSION}"
fi
log "ok"
