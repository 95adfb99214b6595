//! SysV shared memory segments the tree's processes have attached: recorded once (key, id,
//! size, owner, mode, whether it was removed while attached, its content through a read-only
//! attach by ckpt); on restore ckpt creates each again with the same key (in a new IPC
//! namespace with `--ipcns`, with the same id too), fills it, and every process attaches it
//! again at its address (injected shmat, once its address space is the image's); a segment
//! that had been removed is removed again once all are attached.

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
    /// Creates the segment again (same key; same id when `same_id`, in a fresh IPC
    /// namespace), with its content and owner. Returns its id.
    pub fn make(&self, content: &[u8], same_id: bool) -> io::Result<i32> {
        if same_id {
            std::fs::write("/proc/sys/kernel/shm_next_id", self.id.to_string())?;
        }
        let mut made = sys::sysv_shm_create(self.key, self.size, self.mode);
        if matches!(&made, Err(e) if e.raw_os_error() == Some(libc::EEXIST))
            && remove_stale(self.key)
        {
            made = sys::sysv_shm_create(self.key, self.size, self.mode);
        }
        let id = made.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "SysV segment key {:#x}: {e}{}",
                    self.key,
                    if e.raw_os_error() == Some(libc::EEXIST) {
                        " (it exists here: restore with --ipcns)"
                    } else {
                        ""
                    }
                ),
            )
        })?;
        if !content.is_empty() {
            sys::sysv_shm_write(id, content)?;
        }
        sys::sysv_shm_set_owner(id, self.uid, self.gid, self.mode)?;
        Ok(id)
    }
}

/// Removes the segment with `key` if it is a leftover of a program that is gone (nobody
/// attached, its creator and last user dead: a checkpointed program killed with --kill leaves
/// its keyed segments behind, as any crashed program does). Returns whether it did.
fn remove_stale(key: i32) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return false;
    };
    let alive = |pid: i64| pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists();
    for line in text.lines().skip(1) {
        let f: Vec<i64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // key shmid perms size cpid lpid nattch ...; perms is octal but parses as a number.
        let (Some(&k), Some(&id), Some(&cpid), Some(&lpid), Some(&nattch)) =
            (f.first(), f.get(1), f.get(4), f.get(5), f.get(6))
        else {
            continue;
        };
        if k == i64::from(key) && nattch == 0 && !alive(cpid) && !alive(lpid) {
            return sys::sysv_shm_remove(id as i32).is_ok();
        }
    }
    false
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
