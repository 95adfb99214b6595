//! Regular files, directories and character devices, reopened by path with their flags and
//! offset.

use super::{place, unsupported, DumpCtx, DumpResult, Fd, FdKind, FdState, RestoreCtx, View};
use crate::proc::FdEntry;
use nix::fcntl::OFlag;
use nix::unistd::{lseek, Whence};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::FileTypeExt;
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
        let flags = OFlag::from_bits_retain(f.flags as i32)
            - (OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_TRUNC);
        let file = (ctx.reopen)(Path::new(&self.path), flags)
            .map_err(|e| std::io::Error::new(e.kind(), format!("reopening {}: {e}", self.path)))?;
        // Directories and devices may not seek; that is fine.
        let _ = lseek(&file, self.pos as i64, Whence::SeekSet);
        place(file, f)
    }

    fn describe(&self, f: &Fd, _v: &View) -> String {
        format!("{} (pos {}, flags {:o})", self.path, self.pos, f.flags)
    }
}
