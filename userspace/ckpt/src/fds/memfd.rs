//! memfds held as descriptors: the object is one of the tree's shared memory objects
//! (`crate::shmem`, the same one its mappings use); the fd is opened on it again with its
//! flags and offset.

use super::{place, DumpCtx, DumpError, DumpResult, Fd, FdKind, FdState, Make, MakeCtx};
use super::{RestoreCtx, View};
use crate::proc::FdEntry;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{lseek, Whence};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemfdFd {
    /// Index in the image's shared memory objects.
    pub object: usize,
    pub pos: u64,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if !(e.target.starts_with("/memfd:") && e.target.ends_with(" (deleted)")) {
        return Ok(None);
    }
    let object = ctx
        .shared
        .shm
        .held(ctx.pid, e.fd, &e.target, ctx.image)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => DumpError::Image(err),
            _ => super::io_error("reading a memfd")(err),
        })?;
    Ok(Some(FdKind::Memfd(MemfdFd { object, pos: e.pos })))
}

impl FdState for MemfdFd {
    fn what(&self) -> &'static str {
        "the memfd"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> std::io::Result<()> {
        place(self.make(f.flags, &ctx.making())?, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.object < v.shared.memory.len()
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        let o = v.shared.memory.get(self.object);
        format!(
            "memfd {:?} ({} bytes, shared memory object {}, pos {})",
            o.and_then(|o| o.memfd_name.clone()).unwrap_or_default(),
            o.map_or(0, |o| o.size),
            self.object,
            self.pos
        )
    }
}

impl Make for MemfdFd {
    /// An open file (offset, flags) of its own on the object.
    fn make(&self, flags: u32, ctx: &MakeCtx) -> std::io::Result<OwnedFd> {
        let object = ctx
            .memory
            .get(self.object)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = OFlag::from_bits_retain(flags as i32)
            - (OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_TRUNC);
        let path = format!("/proc/self/fd/{}", object.as_raw_fd());
        let file = open(Path::new(&path), flags, Mode::empty())?;
        lseek(&file, self.pos as i64, Whence::SeekSet)?;
        Ok(file)
    }
}
