#!/usr/bin/env bash
# libFuzzer over the image reader (fuzz/fuzz_targets/reader.rs), natively, for SECS seconds:
#   tools/fuzz-reader.sh [--secs N]
# Needs the nightly toolchain and cargo-fuzz (installed here if missing). The corpus grows in
# fuzz/corpus/reader (seeded with ckpt's seed images); crashes land in fuzz/artifacts/reader,
# each replayable with `cargo +nightly fuzz run reader FILE`. The short, deterministic form of
# the same harness runs with every `cargo test` (userspace/ckpt/tests/reader_fuzz.rs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=600
while [[ $# -gt 0 ]]; do
  case $1 in
    --secs) secs=$2; shift 2 ;;
    *) echo "usage: tools/fuzz-reader.sh [--secs N]" >&2; exit 2 ;;
  esac
done
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked
cd "$root"
mkdir -p fuzz/corpus/reader
# The target's scratch directory (seeds and the input being read) goes here, and away after.
export TMPDIR=$root/fuzz/scratch
mkdir -p "$TMPDIR"
trap 'rm -rf "$TMPDIR"' EXIT
# No allocation may be near the image's size times anything large: the seeds are ~20 KiB;
# 64 MiB leaves room for libFuzzer's own. One job: the machine is shared.
CKPT_FUZZ_CORPUS=$root/fuzz/corpus/reader \
  cargo +nightly fuzz run reader fuzz/corpus/reader -- \
  -max_total_time="$secs" -malloc_limit_mb=64 -rss_limit_mb=2048 -max_len=262144 -timeout=20
