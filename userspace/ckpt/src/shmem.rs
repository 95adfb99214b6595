//! Shared memory objects of the tree: anonymous shared mappings (MAP_SHARED|MAP_ANONYMOUS,
//! which /proc shows as "/dev/zero (deleted)"), memfds, mapped or held as fds, and mapped
//! files that were deleted since (a POSIX semaphore or shm object unlinked once set up, a
//! library replaced by an upgrade), by any number of processes. Each object is recorded once (its content, size, name, seals), found
//! through /proc/PID/map_files or the fd; on restore ckpt makes one memfd per object, with
//! that content, before the first restorer forks, and every process maps it (or holds it)
//! again: the memory is shared as it was. SysV segments are refused (their key and id would
//! be lost); POSIX shared memory under /dev/shm is a file and needs nothing here.

use crate::image::{section_is, ImageWriter, Section, SectionKind};
use crate::proc::MapEntry;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

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
    /// Its `SHMEM_DATA` section (the whole object), if it is not empty.
    pub data_section: Option<usize>,
    /// F_GET_SEALS (memfds).
    #[serde(default)]
    pub seals: i32,
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
        let data_section = if size == 0 {
            None
        } else {
            Some(w.add_blob_from(SHMEM_DATA, &file, size)?)
        };
        let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).unwrap_or(0);
        self.table.push(ShmObject {
            inode: meta.ino(),
            memfd_name: memfd_name.map(str::to_owned),
            deleted_path: was.map(str::to_owned),
            size,
            data_section,
            seals,
        });
        self.index.insert(key, self.table.len() - 1);
        Ok(self.table.len() - 1)
    }
}

impl ShmObject {
    /// A new memfd like the object, holding its content (read from the image `file` where its
    /// section lies), sealed as it was.
    pub fn make(&self, image: &File, sections: &[Section]) -> io::Result<OwnedFd> {
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
        if let Some(s) = self.data_section.and_then(|i| sections.get(i)) {
            copy_range(image, s.offset, &file, s.len)?;
        }
        let seals = SealFlag::from_bits_truncate(self.seals);
        if !seals.is_empty() {
            fcntl(file.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        }
        Ok(OwnedFd::from(file))
    }
}

/// Copies `len` bytes at `from_offset` of `from` to the start of `to`.
fn copy_range(from: &File, from_offset: u64, to: &File, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        from.read_exact_at(&mut buf[..n], from_offset + done)?;
        to.write_all_at(&buf[..n], done)?;
        done += n as u64;
    }
    Ok(())
}

/// The objects refer to sections of the right kind and size.
pub fn validate(table: &[ShmObject], sections: &[Section]) -> Result<(), String> {
    for o in table {
        let ok = match o.data_section {
            None => o.size == 0,
            Some(i) => section_is(sections, i, &SHMEM_DATA) && sections[i].len == o.size,
        };
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
