//! Regular files, directories and the character devices that hold no state of their own,
//! reopened by path with their flags and offset.

use super::{place, unsupported, DumpCtx, DumpResult, Fd, FdKind, FdState, Make, MakeCtx};
use super::{RestoreCtx, View};
use crate::proc::FdEntry;
use nix::fcntl::OFlag;
use nix::unistd::{lseek, Whence};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathFile {
    pub path: String,
    pub pos: u64,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    if !e.target.starts_with('/') {
        return Ok(None);
    }
    let meta = std::fs::metadata(format!("/proc/{}/fd/{}", ctx.pid, e.fd))
        .map_err(super::io_error("stat fd"))?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_dir() || ft.is_char_device()) {
        return Err(unsupported(
            "only regular files, directories and character devices are supported",
        ));
    }
    if ft.is_char_device() {
        stateless_device(meta.rdev(), &e.target)?;
    }
    Ok(Some(FdKind::Path(PathFile {
        path: e.target.clone(),
        pos: e.pos,
    })))
}

impl FdState for PathFile {
    fn what(&self) -> &'static str {
        "the file"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> std::io::Result<()> {
        place(self.make(f.flags, &ctx.making())?, f)
    }

    fn describe(&self, f: &Fd, _v: &View) -> String {
        format!("{} (pos {}, flags {:o})", self.path, self.pos, f.flags)
    }
}

impl Make for PathFile {
    fn make(&self, flags: u32, ctx: &MakeCtx) -> std::io::Result<OwnedFd> {
        let flags = OFlag::from_bits_retain(flags as i32)
            - (OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_TRUNC);
        let file = (ctx.reopen)(Path::new(&self.path), flags)
            .map_err(|e| std::io::Error::new(e.kind(), format!("reopening {}: {e}", self.path)))?;
        // Directories and devices may not seek; that is fine.
        let _ = lseek(&file, self.pos as i64, Whence::SeekSet);
        Ok(file)
    }
}

/// Refuses a character device whose open file holds state that reopening its path would lose
/// (a pty master reopened is a new, unrelated terminal; a tun device, a GPU, a sound card
/// would lose their setup). Those a reopen gives back as they were: the memory devices
/// (null, zero, full, random, urandom, kmsg), terminals (a pty slave or console whose other
/// side is outside the tree stays there).
fn stateless_device(rdev: u64, path: &str) -> Result<(), super::DumpError> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    const TTY: u32 = 4;
    const TTYAUX: u32 = 5;
    const PTMX: u32 = 2;
    const PTY_SLAVES: std::ops::RangeInclusive<u32> = 136..=143;
    let carried = match major {
        1 => [3, 5, 7, 8, 9, 11].contains(&minor),
        TTY => true,
        TTYAUX => minor != PTMX,
        m => PTY_SLAVES.contains(&m),
    };
    if carried {
        return Ok(());
    }
    Err(unsupported(if major == TTYAUX {
        format!("{path} is a terminal device ({major}:{minor}) ckpt cannot reopen")
    } else {
        format!(
            "{path} is a character device ({major}:{minor}) whose state a reopen would lose: \
             only memory devices (null, zero, random...) and terminals are carried"
        )
    }))
}
