//! The `/dev/ckpt` ioctl ABI as user space sees it.
//!
//! The definitions live in [`abi.rs`](../abi.rs), which the kernel module includes verbatim
//! (`kmod/ckpt_main.rs`), so the two sides cannot drift apart: both compile the same text, and
//! the const assertions in it pin every size and offset. At run time `CKPT_IOC_VERSION` also
//! reports the sizes the loaded module was built with, which user space compares with its own
//! (see `ckpt::device`).
#![no_std]

#[path = "abi.rs"]
mod shared;
pub use shared::*;

pub mod interceptor;

pub mod xxh64;
