//! SysV shared memory segments the tree's processes have attached: recorded once (key, id,
//! size, owner, mode, whether it was removed while attached, its content through a read-only
//! attach by ckpt); on restore ckpt creates each again with the same key and id (see
//! `super::create_keyed`), fills it, and every process attaches it
//! again at its address (injected shmat, once its address space is the image's); a segment
//! that had been removed is removed again once all are attached.

use super::Kind;
use crate::image::{section_is, ImageWriter, Section, SectionKind};
use crate::proc::MapEntry;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;

/// The content of a SysV shared memory segment.
pub const SYSV_SHM_DATA: SectionKind = SectionKind::named("sysv_shm_data");

/// SHM_DEST in /proc/sysvipc/shm's perms: removed, alive while attached.
const SHM_DEST: u32 = 0o1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SysvSegment {
    pub key: i32,
    pub id: i32,
    pub size: u64,
    /// Permission bits (0o777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// IPC_RMID was done: it goes once nobody has it attached.
    pub removed: bool,
    pub data_section: Option<usize>,
}

/// Whether mapping `m` attaches a SysV segment (its inode is the segment's id).
pub fn is_segment(m: &MapEntry) -> bool {
    m.name.starts_with("/SYSV")
}

/// The tree's segments while they are being recorded.
#[derive(Debug, Default)]
pub struct SysvDump {
    pub table: Vec<SysvSegment>,
    index: BTreeMap<i32, usize>,
}

impl SysvDump {
    /// The segment mapping `m` attaches, recorded the first time it is seen. A mapping of
    /// part of a segment is refused (it is attached again whole).
    pub fn attached(&mut self, m: &MapEntry, w: &mut ImageWriter) -> io::Result<usize> {
        let id = i32::try_from(m.inode).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if let Some(&i) = self.index.get(&id) {
            return Ok(i);
        }
        let mut seg = find(id)?;
        let pages = seg.size.div_ceil(4096) * 4096;
        if m.offset != 0 || m.end - m.start != pages {
            return Err(io::Error::other(
                "only whole SysV segments can be carried (this maps part of one)",
            ));
        }
        let data = sys::sysv_shm_read(id, seg.size as usize)?;
        if data.iter().any(|&b| b != 0) {
            seg.data_section = Some(w.add_blob(SYSV_SHM_DATA, &data)?);
        }
        self.table.push(seg);
        self.index.insert(id, self.table.len() - 1);
        Ok(self.table.len() - 1)
    }
}

/// Segment `id` as /proc/sysvipc/shm shows it.
fn find(id: i32) -> io::Result<SysvSegment> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm")?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
        if num(1) != Some(i64::from(id)) {
            continue;
        }
        let perms = f.get(2).and_then(|v| u32::from_str_radix(v, 8).ok());
        let (Some(key), Some(perms), Some(size), Some(uid), Some(gid)) =
            (num(0), perms, num(3), num(7), num(8))
        else {
            break;
        };
        return Ok(SysvSegment {
            key: key as i32,
            id,
            size: size as u64,
            mode: perms & 0o777,
            uid: uid as u32,
            gid: gid as u32,
            removed: perms & SHM_DEST != 0,
            data_section: None,
        });
    }
    Err(io::Error::other(format!(
        "SysV segment {id} is not in /proc/sysvipc/shm"
    )))
}

impl SysvSegment {
    /// Creates the segment again (same key and id, `super::create_keyed`; `fresh`: in a new
    /// IPC namespace), with its content and owner. Returns its id.
    pub fn make(&self, content: &[u8], fresh: bool) -> io::Result<i32> {
        let create = || sys::sysv_shm_create(self.key, self.size, self.mode);
        let id = super::create_keyed(Kind::Shm, (self.key, self.id), fresh, create)?;
        let filled = if content.is_empty() {
            Ok(())
        } else {
            sys::sysv_shm_write(id, content)
        };
        if let Err(e) =
            filled.and_then(|()| sys::sysv_shm_set_owner(id, self.uid, self.gid, self.mode))
        {
            let _ = sys::sysv_shm_remove(id);
            return Err(e);
        }
        Ok(id)
    }
}

/// The segment's creator and last user (None while someone has it attached).
pub(super) fn last_users(id: i32) -> io::Result<Option<Vec<i32>>> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm")?;
    for line in text.lines().skip(1) {
        let f: Vec<i64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // key shmid perms size cpid lpid nattch ...; perms is octal but parses as a number.
        let (Some(&shmid), Some(&cpid), Some(&lpid), Some(&nattch)) =
            (f.get(1), f.get(4), f.get(5), f.get(6))
        else {
            continue;
        };
        if shmid == i64::from(id) {
            return Ok((nattch == 0).then_some(vec![cpid as i32, lpid as i32]));
        }
    }
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// Segments refer to sections of the right kind and size.
pub fn validate(table: &[SysvSegment], sections: &[Section]) -> Result<(), String> {
    for s in table {
        let ok = match s.data_section {
            None => true,
            Some(i) => section_is(sections, i, &SYSV_SHM_DATA) && sections[i].len == s.size,
        };
        if !ok || s.size == 0 || s.size > 1 << 40 {
            return Err(format!("bad SysV segment {}", s.id));
        }
    }
    Ok(())
}
