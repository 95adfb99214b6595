// SPDX-License-Identifier: GPL-2.0
//! ckpt's ioctl ABI: ioctl numbers and `#[repr(C)]` argument structs.
//!
//! This one file is compiled twice: into the `ckpt-abi` crate for user space, and into the kernel
//! module (via `#[path]`). It must therefore use nothing but `core`.
//!
//! Rules for extending it (see docs/design.md, "ioctl ABI"):
//! - never change an existing struct's layout; add a new ioctl number or use a reserved field,
//! - every struct has explicit padding (`_reserved`) so that no byte is uninitialised,
//! - every input flag field must be zero unless a flag is defined, and the module rejects
//!   unknown flags with EINVAL, so old modules refuse what they do not understand,
//! - bump [`CKPT_ABI_VERSION`] on any change.

/// Version of this ABI. User space refuses to talk to a module that reports another one.
pub const CKPT_ABI_VERSION: u32 = 1;

/// The ioctl "type" byte. 0xCC is not listed in Documentation/userspace-api/ioctl/ioctl-number.rst.
pub const CKPT_IOC_MAGIC: u32 = 0xCC;

/// Largest number of bytes one `CKPT_IOC_QUERY` may read from the target.
pub const CKPT_QUERY_MAX_READ: u64 = 1 << 20;

/// Reported by `CKPT_IOC_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptVersionInfo {
    /// The module's [`CKPT_ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<CkptVersionInfo>()` as the module was built.
    pub version_info_size: u32,
    /// `size_of::<CkptQuery>()` as the module was built.
    pub query_size: u32,
    /// Must be zero.
    pub _reserved: u32,
}

/// Argument of `CKPT_IOC_QUERY`: facts about a target process, plus a read of its memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptQuery {
    /// In: the target's pid, in the caller's pid namespace. Any thread id of the process works.
    pub pid: i32,
    /// In: must be zero (no flags are defined yet).
    pub flags: u32,
    /// In: address in the target to read from (ignored when `read_len` is zero).
    pub read_addr: u64,
    /// In: how many bytes to read, at most [`CKPT_QUERY_MAX_READ`].
    pub read_len: u64,
    /// In: user pointer receiving the bytes read.
    pub read_buf: u64,
    /// Out: the number of threads in the target's thread group.
    pub thread_count: u32,
    /// Out: the number of VMAs in the target's address space.
    pub vma_count: u32,
    /// Out: the sum of the sizes of those VMAs, in bytes.
    pub mapped_bytes: u64,
    /// Out: how many bytes were read into `read_buf` (may be short at the end of a mapping).
    pub bytes_read: u64,
}

/// `_IOC` encoding for x86-64 (asm-generic/ioctl.h): nr 8 bits, type 8, size 14, dir 2.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Query the module's ABI version: `_IOR(0xCC, 0x01, CkptVersionInfo)`.
pub const CKPT_IOC_VERSION: u32 = ioc(
    IOC_READ,
    CKPT_IOC_MAGIC,
    0x01,
    core::mem::size_of::<CkptVersionInfo>(),
);
/// Query a target process: `_IOWR(0xCC, 0x02, CkptQuery)`.
pub const CKPT_IOC_QUERY: u32 = ioc(
    IOC_READ | IOC_WRITE,
    CKPT_IOC_MAGIC,
    0x02,
    core::mem::size_of::<CkptQuery>(),
);

// The layout is part of the ABI: these fail the build, on either side, if it ever changes.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<CkptVersionInfo>() == 16);
    assert!(offset_of!(CkptVersionInfo, query_size) == 8);
    assert!(size_of::<CkptQuery>() == 56);
    assert!(offset_of!(CkptQuery, flags) == 4);
    assert!(offset_of!(CkptQuery, read_addr) == 8);
    assert!(offset_of!(CkptQuery, read_len) == 16);
    assert!(offset_of!(CkptQuery, read_buf) == 24);
    assert!(offset_of!(CkptQuery, thread_count) == 32);
    assert!(offset_of!(CkptQuery, vma_count) == 36);
    assert!(offset_of!(CkptQuery, mapped_bytes) == 40);
    assert!(offset_of!(CkptQuery, bytes_read) == 48);
    // The ioctl numbers as the C macros compute them (checked against <linux/ioctl.h> by a test).
    assert!(CKPT_IOC_VERSION == 0x8010_CC01);
    assert!(CKPT_IOC_QUERY == 0xC038_CC02);
};
