#!/usr/bin/env bash
# The whole test run, from nothing: installs what is missing, checks formatting and lints,
# runs the native tests, builds the kernel (cached) and the module, and runs the guest suite.
#   tools/test.sh            everything
#   tools/test.sh --native   only what needs no guest
#   tools/test.sh --debug    everything, the guest part on the debug kernel (lockdep, KFENCE,
#                            kmemleak, atomic-sleep checks; see tools/kernel/debug.fragment)
#   tools/test.sh --kasan    everything, the guest part on the KASAN kernel
#                            (tools/kernel/kasan.fragment)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
. "$here/versions.env"
variant=() guest_timeout=2400
case "${1:-}" in
  --debug) variant=(--debug) ;;
  # KASAN checks every access of the kernel and the module: the suite runs slower.
  --kasan) variant=(--kasan) guest_timeout=7200 ;;
  ""|--native) ;;
  *) echo "usage: tools/test.sh [--native|--debug|--kasan]" >&2; exit 2 ;;
esac
step() { printf '\n=== %s\n' "$*" >&2; }
t0=$SECONDS

step "dependencies"
"$here/deps.sh"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# No incremental state: a test run builds once, and stale incremental files only add noise.
export CARGO_INCREMENTAL=0

step "format and lints (user space)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "native tests"
# The interceptor library must sit next to the ckpt binary the tests run (`ckpt run` looks
# there); `cargo test` alone does not build a cdylib.
cargo build --workspace --locked
cargo test --workspace --locked 2>&1

[[ "${1:-}" == --native ]] && exit 0

step "kernel ${variant[*]} (cached in $CKPT_CACHE_DIR)"
kdir=$("$here/kernel.sh" "${variant[@]}")
export KDIR=$kdir
echo "$kdir" >&2

step "module (with the kernel's clippy and rustfmt)"
"$here/kmod.sh" clean >/dev/null
mkdir -p "$root/target"
ko=$("$here/kmod.sh" CLIPPY=1 2>"$root/target/kmod-build.log") || { cat "$root/target/kmod-build.log" >&2; exit 1; }
cat "$root/target/kmod-build.log" >&2
if grep -q "warning:" "$root/target/kmod-build.log"; then
  echo "the module build printed warnings (rustc, clippy or gcc): fix them" >&2; exit 1
fi
"$here/rustfmt-kmod.sh" --check

step "guest runner self-check: a kernel WARNING in the guest must fail the run"
if "$here/guest.sh" "${variant[@]}" -- bash -c 'echo "WARNING: injected by tools/test.sh" > /dev/kmsg' >/dev/null 2>&1; then
  echo "tools/guest.sh did not notice a WARNING in the guest kernel log" >&2; exit 1
fi
echo "ok: the runner failed the run as it should" >&2

step "guest tests"
# The test executables, built on the host and run in the guest through the shared filesystem.
mapfile -t exes < <(cargo test --workspace --locked --no-run --message-format=json 2>/dev/null |
  grep -E '"profile":\{[^}]*"test":true' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
((${#exes[@]})) || { echo "no test executables found" >&2; exit 1; }
"$here/guest.sh" "${variant[@]}" --timeout "$guest_timeout" -- tests/guest/suite.sh "$ko" "${exes[@]}"
printf '\nall tests passed in %d s\n' $((SECONDS - t0)) >&2
