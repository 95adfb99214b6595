//! Shared memory objects of the tree: anonymous shared mappings (MAP_SHARED|MAP_ANONYMOUS,
//! which /proc shows as "/dev/zero (deleted)"), memfds, mapped or held as fds, and mapped
//! files that were deleted since (a POSIX semaphore or shm object unlinked once set up, a
//! library replaced by an upgrade), by any number of processes. Each object is recorded once (its content, size, name, seals), found
//! through /proc/PID/map_files or the fd; on restore ckpt makes one memfd per object, with
//! that content, before the first restorer forks, and every process maps it (or holds it)
//! again: the memory is shared as it was. SysV segments are refused (their key and id would
//! be lost); POSIX shared memory under /dev/shm is a file and needs nothing here.

use crate::image::{section_is, ImageWriter, Section, SectionData, SectionKind};
use crate::proc::MapEntry;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// F_SEAL_WRITE | F_SEAL_FUTURE_WRITE.
const WRITE_SEALS: i32 = 0x08 | 0x10;

/// Adds the write seals `o` had to its memfd `fd`, once every process has mapped it.
pub fn late_seals(o: &ShmObject, fd: &OwnedFd) -> io::Result<()> {
    let seals = SealFlag::from_bits_retain(o.seals & WRITE_SEALS);
    if !seals.is_empty() {
        fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    }
    Ok(())
}

/// The content of a shared memory object.
pub const SHMEM_DATA: SectionKind = SectionKind::named("shmem_data");

/// How /proc names a mapping of each kind of object.
const ANON_NAME: &str = "/dev/zero (deleted)";
const MEMFD_PREFIX: &str = "/memfd:";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShmObject {
    /// The object's inode when checkpointed (for humans, and to find it twice).
    pub inode: u64,
    /// A memfd's name (without "memfd:"); None for anonymous shared memory.
    pub memfd_name: Option<String>,
    /// A deleted file's former path (restored as a memfd, for humans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_path: Option<String>,
    pub size: u64,
    /// The parts that hold data (holes, never written, read as zeros), each with its
    /// `SHMEM_DATA` section: most of a large shared buffer is often never touched.
    pub extents: Vec<Extent>,
    /// F_GET_SEALS (memfds).
    #[serde(default)]
    pub seals: i32,
}

/// `len` bytes of an object at `offset`, saved in section `section`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub section: usize,
}

/// Whether mapping `m` is of a shared memory object ckpt carries; an error for a kind it
/// cannot (SysV, deleted files).
pub fn is_object(m: &MapEntry) -> Result<bool, &'static str> {
    if crate::sysv::is_segment(m) {
        Ok(false) // crate::sysv's
    } else {
        Ok(m.name == ANON_NAME || (m.is_file() && m.name.ends_with(" (deleted)")))
    }
}

/// The tree's objects while they are being recorded.
#[derive(Debug, Default)]
pub struct ShmDump {
    pub table: Vec<ShmObject>,
    /// SysV segments, the other kind of shared memory (their table goes separately).
    pub sysv: crate::sysv::SysvDump,
    /// (device, inode) -> index in `table`.
    index: BTreeMap<(u64, u64), usize>,
}

impl ShmDump {
    /// The object behind mapping `m` of `pid`, recorded the first time it is seen.
    pub fn mapped(&mut self, pid: i32, m: &MapEntry, w: &mut ImageWriter) -> io::Result<usize> {
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let name = m
            .name
            .strip_prefix(MEMFD_PREFIX)
            .map(|n| n.trim_end_matches(" (deleted)"));
        let was =
            (name.is_none() && m.name != ANON_NAME).then(|| m.name.trim_end_matches(" (deleted)"));
        self.record(File::open(path)?, (name, was), w)
    }

    /// The memfd held as fd `fd` of `pid` (link target "/memfd:NAME (deleted)").
    pub fn held(
        &mut self,
        pid: i32,
        fd: i32,
        target: &str,
        w: &mut ImageWriter,
    ) -> io::Result<usize> {
        let file = File::open(format!("/proc/{pid}/fd/{fd}"))?;
        let name = target
            .strip_prefix(MEMFD_PREFIX)
            .map(|n| n.trim_end_matches(" (deleted)"));
        self.record(file, (name, None), w)
    }

    fn record(
        &mut self,
        file: File,
        (memfd_name, was): (Option<&str>, Option<&str>),
        w: &mut ImageWriter,
    ) -> io::Result<usize> {
        let meta = file.metadata()?;
        let key = (meta.dev(), meta.ino());
        if let Some(&i) = self.index.get(&key) {
            return Ok(i);
        }
        let size = meta.len();
        let extents = data_extents(&file, size)?
            .into_iter()
            .flat_map(pieces)
            .map(|(offset, len)| {
                let section = w.add_blob_from(SHMEM_DATA, &file, (offset, len))?;
                Ok(Extent {
                    offset,
                    len,
                    section,
                })
            })
            .collect::<io::Result<_>>()?;
        let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).unwrap_or(0);
        self.table.push(ShmObject {
            inode: meta.ino(),
            memfd_name: memfd_name.map(str::to_owned),
            deleted_path: was.map(str::to_owned),
            size,
            extents,
            seals,
        });
        self.index.insert(key, self.table.len() - 1);
        Ok(self.table.len() - 1)
    }
}

impl ShmObject {
    /// A new memfd like the object, holding its content (its sections of `image`), sealed as
    /// it was.
    pub fn make(&self, image: SectionData<'_>) -> io::Result<OwnedFd> {
        let name = match (&self.memfd_name, &self.deleted_path) {
            (Some(n), _) => n.as_str(),
            (None, Some(_)) => "ckpt-deleted-file",
            (None, None) => "ckpt-shared-anon",
        };
        let cname =
            std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = memfd_create(
            cname.as_c_str(),
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let file = File::from(fd);
        file.set_len(self.size)?;
        for e in &self.extents {
            image.copy_to(e.section, &file, e.offset)?;
        }
        // Write seals wait until every process has mapped it (a writable shared mapping of a
        // write-sealed memfd is refused): see `late_seals`.
        let seals = SealFlag::from_bits_retain(self.seals & !WRITE_SEALS);
        if !seals.is_empty() {
            fcntl(file.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        }
        Ok(OwnedFd::from(file))
    }
}

/// The most of an object's content one section holds: its checksum is taken on another
/// thread while the next piece is copied.
const PIECE: u64 = 32 << 20;

/// A data range of an object cut in pieces of at most [`PIECE`] bytes.
fn pieces((offset, len): (u64, u64)) -> impl Iterator<Item = (u64, u64)> {
    (0..len.div_ceil(PIECE)).map(move |k| {
        let at = k * PIECE;
        (offset + at, PIECE.min(len - at))
    })
}

/// The (offset, length) ranges of `file` (`size` bytes) that hold data, by SEEK_DATA and
/// SEEK_HOLE (shmem knows its holes), page-aligned.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut at = 0i64;
    while (at as u64) < size {
        let start = match lseek(file.as_fd(), at, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let end = lseek(file.as_fd(), start, Whence::SeekHole)?.min(size as i64);
        if end > start {
            out.push((start as u64, (end - start) as u64));
        }
        at = end.max(start + 1);
    }
    Ok(out)
}

/// The objects' extents lie inside them, in order, each in a section of the right kind and
/// size.
pub fn validate(table: &[ShmObject], sections: &[Section]) -> Result<(), String> {
    for o in table {
        let mut prev_end = 0u64;
        let ok = o.extents.iter().all(|e| {
            let end = e.offset.checked_add(e.len);
            let fits = e.offset >= prev_end && end.is_some_and(|end| end <= o.size);
            prev_end = end.unwrap_or(u64::MAX);
            fits && section_is(sections, e.section, &SHMEM_DATA) && sections[e.section].len == e.len
        });
        if !ok
            || o.memfd_name
                .as_ref()
                .is_some_and(|n| n.len() > 249 || n.contains('\0'))
        {
            return Err(format!("bad shared memory object (inode {})", o.inode));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ranges_are_cut_in_pieces_that_cover_them_exactly() {
        let got: Vec<_> = pieces((4096, 2 * PIECE + 8192)).collect();
        assert_eq!(
            got,
            [
                (4096, PIECE),
                (4096 + PIECE, PIECE),
                (4096 + 2 * PIECE, 8192)
            ]
        );
        assert_eq!(pieces((0, PIECE)).collect::<Vec<_>>(), [(0, PIECE)]);
        assert_eq!(pieces((0, 0)).count(), 0);
    }
}
