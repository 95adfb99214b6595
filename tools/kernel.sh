#!/usr/bin/env bash
# Fetches Debian sid's kernel source (download + unpack only, nothing from sid is installed),
# configures it from tools/kernel/config.fragment and builds it with the pinned Rust toolchain.
# The built tree is cached under $CKPT_CACHE_DIR, keyed by source version, toolchain and config,
# so a warm run does nothing. Prints the build directory (the KDIR for the module) on stdout.
#
#   tools/kernel.sh            the test kernel
#   tools/kernel.sh --debug    the same plus lockdep, KFENCE, kmemleak, atomic-sleep checks
#                              (tools/kernel/debug.fragment; built with clang if it asks for KASAN)
#   tools/kernel.sh --kasan    the test kernel plus KASAN (generic, outline), built
#                              with clang (tools/kernel/kasan.fragment)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
log() { printf '[kernel] %s\n' "$*" >&2; }
die() { printf '[kernel] error: %s\n' "$*" >&2; exit 1; }

variant=test
case "${1:-}" in
  --debug) variant=debug ;;
  --kasan) variant=kasan ;;
  --fetch-only) variant=fetch ;;
  "") ;;
  *) die "usage: tools/kernel.sh [--debug|--kasan|--fetch-only]" ;;
esac


# --- 1. Which source version does sid ship? (private apt state; the host's apt is untouched) ---
apt_dir="$CKPT_CACHE_DIR/apt-sid"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
  > "$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Get::List-Cleanup=0)
src_version=""
# Refresh the sid package list at most every 12 hours.
if [[ -z "$(find "$apt_dir/lists" -name '*sid_InRelease' -mmin -720 2>/dev/null)" ]]; then
  apt-get -qq "${apt_opts[@]}" update >&2 || log "warning: apt-get update for sid failed"
fi
src_version=$(apt-cache "${apt_opts[@]}" show "$CKPT_KERNEL_PKG" 2>/dev/null |
  sed -n 's/^Version: //p' | head -n1) || true
src_root="$CKPT_CACHE_DIR/src"
if [[ -z "$src_version" ]]; then
  # sid no longer ships it (or the network is down): use an already unpacked copy if there is one.
  cached=$(ls -d "$src_root/$CKPT_KERNEL_PKG"_* 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n "$cached" ]] || die "Debian sid has no package $CKPT_KERNEL_PKG any more (and none is cached).
  Set CKPT_KERNEL_PKG/CKPT_KERNEL_SERIES in tools/versions.env to the linux-source-X.Y sid ships now."
  src_version=${cached##*/"$CKPT_KERNEL_PKG"_}
  log "warning: sid does not list $CKPT_KERNEL_PKG; using cached $src_version"
fi

# --- 2. Unpack the source once per package version. ---
src_dir="$src_root/${CKPT_KERNEL_PKG}_${src_version}"
if [[ ! -f "$src_dir/.ckpt-unpacked" ]]; then
  log "downloading $CKPT_KERNEL_PKG $src_version from sid"
  tmp=$(mktemp -d "$CKPT_CACHE_DIR/dl.XXXXXX")
  (cd "$tmp" && apt-get -qq "${apt_opts[@]}" download "$CKPT_KERNEL_PKG=$src_version") ||
    die "could not download $CKPT_KERNEL_PKG=$src_version from sid"
  dpkg-deb -x "$tmp"/*.deb "$tmp/x"
  tarball=$(ls "$tmp"/x/usr/src/linux-source-*.tar.* | head -n1)
  rm -rf "$src_dir" && mkdir -p "$src_dir"
  log "unpacking $(basename "$tarball")"
  tar -xf "$tarball" -C "$src_dir" --strip-components=1
  rm -rf "$tmp"
  touch "$src_dir/.ckpt-unpacked"
fi

if [[ $variant == fetch ]]; then echo "$src_dir"; exit 0; fi

# --- 3. Configure and build, once per (source, toolchain, config). ---
toolchain_rustc=$(rustup which --toolchain "$CKPT_RUST_TOOLCHAIN" rustc 2>/dev/null) ||
  die "Rust toolchain $CKPT_RUST_TOOLCHAIN is missing: run tools/deps.sh"
bindgen_bin="${CARGO_HOME:-$HOME/.cargo}/bin/bindgen"
[[ -x "$bindgen_bin" ]] || die "bindgen is missing: run tools/deps.sh"
export LIBCLANG_PATH=/usr/lib/llvm-${CKPT_LLVM_VERSION}/lib
[[ -d "$LIBCLANG_PATH" ]] || die "libclang ${CKPT_LLVM_VERSION} is missing: run tools/deps.sh"
fragments=("$here/kernel/config.fragment")
[[ $variant == debug ]] && fragments+=("$here/kernel/debug.fragment")
[[ $variant == kasan ]] && fragments+=("$here/kernel/kasan.fragment")
key=$( {
  echo "$CKPT_KERNEL_PKG $src_version $variant"
  grep -qx 'CONFIG_KASAN=y' "${fragments[@]}" && clang-"$CKPT_LLVM_VERSION" --version | head -n1
  "$toolchain_rustc" --version; "$bindgen_bin" --version; gcc --version | head -n1
  cat "${fragments[@]}"
} | sha256sum | cut -c1-16)
build_dir="$CKPT_CACHE_DIR/build/${CKPT_KERNEL_SERIES}-${variant}-${key}"
if [[ -f "$build_dir/.ckpt-built" ]]; then
  echo "$build_dir"; exit 0
fi

mkdir -p "$build_dir"
cat "${fragments[@]}" > "$build_dir/ckpt.fragment"
kmake=(make -C "$src_dir" O="$build_dir" ARCH=x86_64 RUSTC="$toolchain_rustc"
  HOSTRUSTC="$toolchain_rustc" BINDGEN="$bindgen_bin" -j"$(nproc)")
# Rust with KASAN requires clang (init/Kconfig: RUST depends on !KASAN || CC_IS_CLANG).
use_clang=0
grep -qx 'CONFIG_KASAN=y' "${fragments[@]}" && use_clang=1
((use_clang)) && kmake+=(LLVM=-"$CKPT_LLVM_VERSION")
log "configuring ($variant) in $build_dir"
KCONFIG_ALLCONFIG="$build_dir/ckpt.fragment" "${kmake[@]}" -s allnoconfig >&2
# allnoconfig silently drops options whose dependencies are unmet: insist on every one.
bad=0
while IFS= read -r line; do
  [[ "$line" =~ ^(CONFIG_[A-Z0-9_]+)=(.*)$ ]] || continue
  opt=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
  grep -qx "$opt=$want" "$build_dir/.config" || { log "config: $opt=$want did not stick"; bad=1; }
done < "$build_dir/ckpt.fragment"
((bad == 0)) || die "kernel config is not what tools/kernel/*.fragment asks for (see above)"
"${kmake[@]}" -s rustavailable >&2 || die "the kernel says Rust is not available with $toolchain_rustc"
log "building $CKPT_KERNEL_PKG $src_version ($variant); a cold build takes about 8-9 min on 2 cores"
start=$SECONDS
"${kmake[@]}" -s >&2 || die "kernel build failed (tree: $build_dir)"
log "built in $((SECONDS - start)) s"
touch "$build_dir/.ckpt-built"
echo "$build_dir"
