//! Files deleted while open: their content is saved, and on restore an unnamed file in the
//! same directory (O_TMPFILE, or a memfd where that is impossible) takes their place.

use super::{place, unsupported, DumpCtx, DumpResult, Fd, FdKind, FdState, Make, MakeCtx};
use super::{RestoreCtx, View};
use crate::image::{section_is, SectionKind};
use crate::proc::FdEntry;
use nix::fcntl::{open, OFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::Mode;
use nix::unistd::{lseek, Whence};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The content of an open file that had been deleted.
pub const FILE_DATA: SectionKind = SectionKind::named("file_data");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeletedFile {
    pub path: String,
    pub pos: u64,
    pub mode: u32,
    pub data_section: usize,
}

pub fn dump(ctx: &mut DumpCtx, e: &FdEntry) -> DumpResult {
    let Some(path) = e
        .target
        .strip_suffix(" (deleted)")
        .filter(|p| p.starts_with('/'))
    else {
        return Ok(None);
    };
    let proc_path = format!("/proc/{}/fd/{}", ctx.pid, e.fd);
    let meta = std::fs::metadata(&proc_path).map_err(super::io_error("stat deleted file"))?;
    if !meta.is_file() {
        return Err(unsupported("only deleted regular files are supported"));
    }
    let data = std::fs::read(&proc_path).map_err(super::io_error("reading a deleted file"))?;
    let data_section = ctx
        .image
        .add_blob(FILE_DATA, &data)
        .map_err(super::DumpError::Image)?;
    Ok(Some(FdKind::Deleted(DeletedFile {
        path: path.to_owned(),
        pos: e.pos,
        mode: meta.permissions().mode(),
        data_section,
    })))
}

/// An unnamed file: O_TMPFILE in `dir`, or a memfd where that is impossible.
fn anonymous_file(dir: &Path, mode: u32) -> nix::Result<OwnedFd> {
    let mode = Mode::from_bits_truncate(mode & 0o7777);
    open(dir, OFlag::O_TMPFILE | OFlag::O_RDWR, mode)
        .or_else(|_| memfd_create(c"ckpt-deleted", MFdFlags::empty()))
}

impl FdState for DeletedFile {
    fn what(&self) -> &'static str {
        "the deleted file"
    }

    fn restore(&self, f: &Fd, ctx: &mut RestoreCtx) -> std::io::Result<()> {
        place(self.make(f.flags, &ctx.making())?, f)
    }

    fn valid(&self, _f: &Fd, v: &View) -> bool {
        section_is(v.sections, self.data_section, &FILE_DATA)
    }

    fn describe(&self, _f: &Fd, v: &View) -> String {
        let saved = v.sections.get(self.data_section).map_or(0, |s| s.len);
        format!(
            "{} (deleted; {saved} bytes saved, pos {})",
            self.path, self.pos
        )
    }
}

impl Make for DeletedFile {
    fn make(&self, flags: u32, ctx: &MakeCtx) -> std::io::Result<OwnedFd> {
        let dir = Path::new(&self.path).parent().unwrap_or(Path::new("/"));
        // Kept above all targets while in use.
        let unnamed = super::above(anonymous_file(dir, self.mode)?, ctx.scratch)?;
        super::write_all(&unnamed, ctx.blob(self.data_section))?;
        // Reopened with the original flags (O_APPEND, access mode, ...).
        let flags = OFlag::from_bits_retain(flags as i32)
            - (OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_TRUNC);
        let proc_path = format!("/proc/self/fd/{}", unnamed.as_raw_fd());
        let file = open(Path::new(&proc_path), flags, Mode::empty())?;
        lseek(&file, self.pos as i64, Whence::SeekSet)?;
        Ok(file)
    }
}
