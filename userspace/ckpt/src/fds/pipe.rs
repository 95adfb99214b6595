//! Pipes whose both ends the process holds, with the bytes in them. The bytes are peeked with
//! tee(2) through a copy of the read end (pidfd_getfd), so the target loses nothing; on
//! restore a new pipe of the same capacity is filled with them, and every fd of the pipe is
//! an end of that one pipe again. (Pipes to other processes come with process trees.)

use super::{DumpCtx, DumpError, DumpResult, Fd, FdKind, FdState, FdTable, RestoreCtx};
use crate::image::{section_is, Section, SectionKind};
use crate::proc::FdEntry;
use nix::fcntl::{fcntl, tee, FcntlArg, SpliceFFlags};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// Bytes that were in a pipe, unread.
pub const PIPE_DATA: SectionKind = SectionKind::named("pipe_data");

/// A pipe inside the process, with what was in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pipe {
    /// The pipe's inode number when checkpointed (for humans).
    pub inode: u64,
    /// Its capacity (F_GETPIPE_SZ).
    pub capacity: u32,
    /// Index of the `PIPE_DATA` section with the unread bytes, if any.
    pub data_section: Option<usize>,
}

/// One end of a pipe of the process's table; `pipe` indexes `FdTable::pipes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PipeEnd {
    pub pipe: usize,
    pub write_end: bool,
}

fn is_read_end(e: &FdEntry) -> bool {
    e.flags as i32 & libc::O_ACCMODE == libc::O_RDONLY
}

/// Whether `entries` hold both a read and a write end of pipe `ino`.
pub fn both_ends_inside(entries: &[FdEntry], ino: u64) -> bool {
    let ends = entries
        .iter()
        .filter(|o| crate::proc::bracketed_inode(&o.target, "pipe") == Some(ino));
    let (mut read, mut write) = (false, false);
    for e in ends {
        (read, write) = (read || is_read_end(e), write || !is_read_end(e));
    }
    read && write
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    let Some(ino) = crate::proc::bracketed_inode(&e.target, "pipe") else {
        return Ok(None);
    };
    let end = PipeEnd {
        pipe: 0,
        write_end: !is_read_end(e),
    };
    if let Some(&pipe) = ctx.pipe_index.get(&ino) {
        return Ok(Some(FdKind::Pipe(PipeEnd { pipe, ..end })));
    }
    let of_this_pipe = |o: &&FdEntry| crate::proc::bracketed_inode(&o.target, "pipe") == Some(ino);
    let read_end = ctx
        .entries
        .iter()
        .filter(of_this_pipe)
        .find(|o| is_read_end(o));
    let has_write_end = ctx
        .entries
        .iter()
        .filter(of_this_pipe)
        .any(|o| !is_read_end(o));
    let (Some(read_end), true) = (read_end, has_write_end) else {
        return Err(super::unsupported(
            "pipes, sockets and other special files are not supported yet",
        ));
    };
    let ours =
        crate::sys::steal_fd(ctx.pid, read_end.fd).map_err(super::io_error("pidfd_getfd"))?;
    let capacity = pipe_size(&ours).map_err(super::io_error("F_GETPIPE_SZ"))?;
    let data = peek(&ours).map_err(super::io_error("reading pipe data"))?;
    let data_section = if data.is_empty() {
        None
    } else {
        Some(
            ctx.image
                .add_blob(PIPE_DATA, &data)
                .map_err(DumpError::Image)?,
        )
    };
    ctx.table.pipes.push(Pipe {
        inode: ino,
        capacity,
        data_section,
    });
    let pipe = ctx.table.pipes.len() - 1;
    ctx.pipe_index.insert(ino, pipe);
    Ok(Some(FdKind::Pipe(PipeEnd { pipe, ..end })))
}

fn pipe_size(fd: impl AsFd) -> io::Result<u32> {
    Ok(fcntl(fd.as_fd(), FcntlArg::F_GETPIPE_SZ)? as u32)
}

/// The bytes in the pipe whose read end is `read_end`, without consuming them (tee(2) into a
/// pipe of ours of the same capacity, then read from that).
fn peek(read_end: &OwnedFd) -> io::Result<Vec<u8>> {
    let cap = pipe_size(read_end)?;
    let (r, w) = nix::unistd::pipe()?;
    fcntl(&w, FcntlArg::F_SETPIPE_SZ(cap as i32))?;
    let n = match tee(read_end, &w, cap as usize, SpliceFFlags::SPLICE_F_NONBLOCK) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0, // empty
        Err(e) => return Err(e.into()),
    };
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match nix::unistd::read(&r, &mut buf[got..])? {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            k => got += k,
        }
    }
    Ok(buf)
}

/// A new pipe like `p`, holding `data`: [read end, write end].
fn make(p: &Pipe, data: &[u8]) -> io::Result<[OwnedFd; 2]> {
    let (r, w) = nix::unistd::pipe()?;
    // The original capacity, at least enough for the saved bytes.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(p.capacity as i32));
    super::write_all(&w, data)?;
    Ok([r, w])
}

impl FdState for PipeEnd {
    fn what(&self) -> &'static str {
        "the pipe"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> io::Result<()> {
        let table = ctx.table;
        let p = table
            .pipes
            .get(self.pipe)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let data_section = p.data_section;
        let ends = ctx.shared_ends(("pipe", self.pipe), |c| make(p, c.blob(data_section)))?;
        super::place_copy(&ends[usize::from(self.write_end)], f)
    }

    fn valid(&self, _f: &Fd, t: &FdTable, _s: &[Section]) -> bool {
        self.pipe < t.pipes.len()
    }

    fn describe(&self, _f: &Fd, t: &FdTable, sections: &[Section]) -> String {
        let bytes = t
            .pipes
            .get(self.pipe)
            .and_then(|p| p.data_section)
            .and_then(|i| sections.get(i))
            .map_or(0, |s| s.len);
        format!(
            "pipe #{} {} end ({bytes} bytes unread)",
            self.pipe,
            if self.write_end { "write" } else { "read" }
        )
    }
}

/// The table's pipes refer to sections of the right kind.
pub fn validate(pipes: &[Pipe], sections: &[Section]) -> Result<(), String> {
    if pipes
        .iter()
        .filter_map(|p| p.data_section)
        .any(|i| !section_is(sections, i, &PIPE_DATA))
    {
        return Err("bad pipe data section".into());
    }
    Ok(())
}
