#!/usr/bin/env bash
# Builds ckpt.ko out of tree (top-level Kbuild) against KDIR, by default the cached tree that
# tools/kernel.sh builds, with the very rustc that built it. Extra arguments go to kbuild:
#   tools/kmod.sh              build ckpt.ko
#   tools/kmod.sh CLIPPY=1     build with the kernel's clippy settings
#   tools/kmod.sh clean
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
. "$here/versions.env"
KDIR=${KDIR:-$("$here/kernel.sh")}
[[ -f "$KDIR/Module.symvers" ]] || { echo "[kmod] error: $KDIR is not a built kernel tree" >&2; exit 1; }
toolchain_rustc=$(rustup which --toolchain "$CKPT_RUST_TOOLCHAIN" rustc)
export LIBCLANG_PATH=/usr/lib/llvm-${CKPT_LLVM_VERSION}/lib
# clippy-driver must come from the same toolchain as rustc.
export PATH="$(dirname "$toolchain_rustc"):$PATH"
llvm=()
# A tree built with clang (the debug variant) needs the module built with clang too.
grep -q '^CONFIG_CC_IS_CLANG=y' "$KDIR/.config" && llvm=(LLVM=-"$CKPT_LLVM_VERSION")
make -s -C "$KDIR" M="$root" ARCH=x86_64 RUSTC="$toolchain_rustc" HOSTRUSTC="$toolchain_rustc" \
  BINDGEN="${CARGO_HOME:-$HOME/.cargo}/bin/bindgen" "${llvm[@]}" -j"$(nproc)" "$@" >&2
if [[ $# -eq 0 || "$*" != *clean* ]]; then
  echo "$root/ckpt.ko"
fi
