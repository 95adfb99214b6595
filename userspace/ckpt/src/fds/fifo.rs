//! Named pipes (FIFOs) the tree has open, by path. Recorded once per FIFO: its path, mode and
//! owner, capacity and the bytes in it (peeked with tee(2) through a read end ckpt opens
//! itself, so nothing is consumed). On restore ckpt opens the FIFO read-write (made again
//! with its mode and owner if the name is gone), which neither blocks nor lets a reader see
//! end of file, and puts the bytes back unless the FIFO still holds some (a process outside
//! the tree kept it open: those are the same bytes, still there); every fd of the tree is a
//! new open of that FIFO with its own flags.

use super::{DumpCtx, DumpError, DumpResult, Fd, FdKind, FdState, RestoreCtx, View};
use crate::image::{section_is, Section};
use crate::proc::FdEntry;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fifo {
    pub path: String,
    /// Permission bits, owner.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Its capacity (F_GETPIPE_SZ) and the `PIPE_DATA` section with the unread bytes, if any.
    pub capacity: u32,
    pub data_section: Option<usize>,
}

/// An fd of `Shared::fifos[fifo]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FifoEnd {
    pub fifo: usize,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if !e.target.starts_with('/') {
        return Ok(None);
    }
    let link = format!("/proc/{}/fd/{}", ctx.pid, e.fd);
    let Ok(meta) = std::fs::metadata(&link) else {
        return Ok(None);
    };
    if !meta.file_type().is_fifo() {
        return Ok(None);
    }
    if let Some(&fifo) = ctx.shared.fifo_index.get(&meta.ino()) {
        return Ok(Some(FdKind::Fifo(FifoEnd { fifo })));
    }
    if e.target.ends_with(" (deleted)") {
        return Err(super::unsupported(
            "a named pipe whose name was removed (only FIFOs still reachable by path are carried)",
        ));
    }
    // A read end of our own, which neither blocks (O_NONBLOCK) nor takes anything.
    let ours = open(
        link.as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| super::io_error("opening the FIFO")(err.into()))?;
    let data = super::pipe::peek(&ours).map_err(super::io_error("reading FIFO data"))?;
    let capacity = fcntl(&ours, FcntlArg::F_GETPIPE_SZ)
        .map_err(|err| super::io_error("F_GETPIPE_SZ")(err.into()))? as u32;
    let data_section = match data.is_empty() {
        true => None,
        false => Some(
            ctx.image
                .add_blob(super::pipe::PIPE_DATA, &data)
                .map_err(DumpError::Image)?,
        ),
    };
    let fifos = &mut ctx.shared.table.fifos;
    fifos.push(Fifo {
        path: e.target.clone(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        capacity,
        data_section,
    });
    let fifo = fifos.len() - 1;
    ctx.shared.fifo_index.insert(meta.ino(), fifo);
    Ok(Some(FdKind::Fifo(FifoEnd { fifo })))
}

impl Fifo {
    /// Opens the FIFO read-write (made again if its name is gone) with its bytes in it.
    pub fn make(&self, data: &[u8]) -> io::Result<OwnedFd> {
        let exists = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_fifo());
        if !exists {
            nix::unistd::mkfifo(self.path.as_str(), Mode::from_bits_truncate(self.mode))?;
            nix::unistd::chown(
                self.path.as_str(),
                Some(self.uid.into()),
                Some(self.gid.into()),
            )?;
            std::fs::set_permissions(
                &self.path,
                std::os::unix::fs::PermissionsExt::from_mode(self.mode),
            )?;
        }
        let flags = OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = open(self.path.as_str(), flags, Mode::empty()).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("opening the FIFO {}: {e}", self.path),
            )
        })?;
        let _ = fcntl(&fd, FcntlArg::F_SETPIPE_SZ(self.capacity as i32));
        // Bytes already in it: a process outside the tree kept it open, and with it the bytes.
        if crate::sys::bytes_waiting(&fd)? == 0 {
            super::write_all(&fd, data)?;
        }
        Ok(fd)
    }
}

impl FdState for FifoEnd {
    fn what(&self) -> &'static str {
        "the named pipe"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let made = ctx
            .shared
            .fifos
            .get(self.fifo)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // Reopened through ckpt's read-write open, which is there: no open blocks.
        let flags = OFlag::from_bits_retain(f.flags as i32) - (OFlag::O_CREAT | OFlag::O_TRUNC);
        let path = format!("/proc/self/fd/{}", made.as_raw_fd());
        let fd = (ctx.reopen)(std::path::Path::new(&path), flags)?;
        super::place(fd, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        self.fifo < v.shared.fifos.len()
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        match v.shared.fifos.get(self.fifo) {
            Some(p) => format!("named pipe {}", p.path),
            None => "named pipe ?".into(),
        }
    }
}

/// FIFOs have absolute paths and data sections of the right kind (image data is never
/// trusted).
pub fn validate(fifos: &[Fifo], sections: &[Section]) -> Result<(), String> {
    for p in fifos {
        let data_ok = p.data_section.is_none_or(|i| {
            section_is(sections, i, &super::pipe::PIPE_DATA)
                && sections[i].len <= u64::from(p.capacity)
        });
        if !data_ok || !p.path.starts_with('/') || p.path.contains('\0') {
            return Err(format!("bad named pipe {}", p.path));
        }
    }
    Ok(())
}
