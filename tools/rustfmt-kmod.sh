#!/usr/bin/env bash
# Formats (or with --check, checks) the module's Rust with the kernel tree's rustfmt settings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
. "$here/versions.env"
src=$("$here/kernel.sh" --fetch-only)
rustfmt=$(rustup which --toolchain "$CKPT_RUST_TOOLCHAIN" rustfmt)
"$rustfmt" --edition 2021 --config-path "$src/.rustfmt.toml" "$@" "$root"/kmod/*.rs
