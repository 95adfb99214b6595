//! Memory: the mappings of a process and the pages worth keeping, dump and restore.
//!
//! Dump: mappings and their flags come from /proc/PID/smaps, page presence from
//! /proc/PID/pagemap; the module copies the wanted pages straight into the image file
//! (`CKPT_IOC_DUMP_PAGES`, zero pages of anonymous memory skipped). Clean pages of private
//! file mappings are not stored (they come from the file), nor anything of shared file
//! mappings or kernel mappings.
//!
//! Restore: the restorer prepares the module's request (every mapping with its file opened
//! and checked to be the same inode, and the page runs); the module replaces the restorer's
//! whole address space with it (`CKPT_IOC_RESTORE`, see restore/).
//!
//! Here the state types and their checks; `dump` and `restore` the two halves; `scan` the
//! page table walk of the dump; `table` the mappings' binary section in the image.

mod dump;
mod restore;
mod scan;
pub mod table;

pub use dump::*;
pub use restore::*;

use crate::errors::{restore_io, RestoreError};
use crate::image::{Section, PAGE};
use crate::shmem::ShmObject;
pub use scan::Stored;
use serde::{Deserialize, Serialize};

/// A process's address space as the image holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Memory {
    pub mm: MmLayout,
    /// Empty in the JSON when the mappings are in a section of their own (`table`), and
    /// filled from it when the image is read.
    #[serde(default)]
    pub vmas: Vec<Vma>,
    /// The section holding the mappings (`table::MAPPINGS`), in images from version 7 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<usize>,
}

/// The image's form of the ABI's `CkptMmLayout`: kept apart (serde, an auxv of any length)
/// so that the image format does not change whenever the ioctl struct does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u64>,
}

/// Conversions between the image's mm layout and the ioctl ABI's, with the field list once.
macro_rules! mm_layout_conversions {
    ($($field:ident),* $(,)?) => {
        impl From<&ckpt_abi::CkptMmLayout> for MmLayout {
            fn from(m: &ckpt_abi::CkptMmLayout) -> Self {
                MmLayout { $($field: m.$field,)* auxv: m.auxv.to_vec() }
            }
        }

        impl MmLayout {
            /// The ABI form; auxv words beyond the ABI's room are dropped (the kernel keeps
            /// fewer).
            pub fn to_abi(&self) -> ckpt_abi::CkptMmLayout {
                let mut auxv = [0u64; ckpt_abi::CKPT_AUXV_WORDS];
                for (d, s) in auxv.iter_mut().zip(&self.auxv) {
                    *d = *s;
                }
                ckpt_abi::CkptMmLayout { $($field: self.$field,)* auxv }
            }
        }
    };
}
mm_layout_conversions!(
    start_code,
    end_code,
    start_data,
    end_data,
    start_brk,
    brk,
    start_stack,
    arg_start,
    arg_end,
    env_start,
    env_end,
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC.
    pub prot: u32,
    pub shared: bool,
    pub growsdown: bool,
    /// A private mapping without write permission that has its memory accounted all the
    /// same (VM_ACCOUNT, smaps' `ac`: it was writable once, as a library's RELRO part is).
    /// The kernel merges it with a neighbour that is not, so it is made writable (which
    /// accounts it) and made read-only again after the restore. Absent in older images.
    #[serde(default, skip_serializing_if = "is_false")]
    pub accounted: bool,
    pub backing: Backing,
    /// Saved page contents, sorted by address.
    pub pages: Vec<PageRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Backing {
    Anonymous,
    /// A file mapping: clean pages come from the file, so the file must be there on restore.
    File {
        path: String,
        offset: u64,
        dev: String,
        inode: u64,
    },
    /// A kernel-provided mapping ([vdso], [vvar], [vvar_vclock], [vsyscall]): never saved; the
    /// restorer moves its own to the same place.
    Special {
        name: String,
    },
    /// A shared memory object of the tree (anonymous shared memory, a memfd): `object`
    /// indexes the image's table of them, `offset` is where in it the mapping starts.
    Shm {
        object: usize,
        offset: u64,
    },
    /// A SysV segment, attached again whole after the restore (`segment` indexes the image's
    /// table of them).
    Sysv {
        segment: usize,
    },
}

/// `len` bytes of memory at `addr`, stored at `offset` of an image of the chain (inside a
/// pages section of that image). Written as an array, `[addr, len, offset]` or `[addr, len,
/// offset, image]`: a large process has thousands of runs, and as objects their keys were
/// half of a manifest's bytes (a 256 MiB process: 607 KB of manifest). Read in either form
/// (serde's derived struct reading takes a sequence too), so images written as objects
/// still restore.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct PageRun {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
    /// Which image of the chain holds the bytes: 0 this one, 1 its parent, 2 the parent's
    /// parent... (an incremental checkpoint's unchanged pages, `crate::chain`). Absent (0)
    /// in images from before incremental checkpoints.
    #[serde(default)]
    pub image: u32,
}

impl Serialize for PageRun {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let fields = [self.addr, self.len, self.offset, u64::from(self.image)];
        let n = if self.image == 0 { 3 } else { 4 };
        let mut seq = s.serialize_seq(Some(n))?;
        for f in &fields[..n] {
            seq.serialize_element(f)?;
        }
        seq.end()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------------------------
// Checks

impl Memory {
    /// VMAs sorted and page-aligned, page runs inside their VMA and (those of this image)
    /// inside a pages section, shared memory objects in `shm` (the image's table). Runs in
    /// an ancestor image are checked against it by `crate::chain`.
    pub fn validate(
        &self,
        sections: &[Section],
        (shm, sysv): (&[ShmObject], &[crate::sysv::SysvSegment]),
    ) -> Result<(), String> {
        let mut prev_end = 0;
        for v in &self.vmas {
            let bad_object = match v.backing {
                Backing::Shm { object, offset } => object >= shm.len() || offset % PAGE != 0,
                Backing::Sysv { segment } => segment >= sysv.len(),
                _ => false,
            };
            if v.start % PAGE != 0
                || v.end % PAGE != 0
                || v.start >= v.end
                || v.start < prev_end
                || bad_object
            {
                return Err(format!("bad VMA {:#x}-{:#x}", v.start, v.end));
            }
            prev_end = v.end;
            let mut prev_run_end = v.start;
            for r in &v.pages {
                let end = r.addr.saturating_add(r.len);
                if r.addr % PAGE != 0
                    || r.len % PAGE != 0
                    || r.offset % PAGE != 0
                    || r.len == 0
                    || r.addr < prev_run_end
                    || end > v.end
                    || (r.image == 0 && !in_pages_section(r, sections))
                {
                    return Err(format!("bad page run at {:#x}", r.addr));
                }
                prev_run_end = end;
            }
        }
        Ok(())
    }

    /// Bytes of page contents stored in this image (not in an ancestor).
    pub fn saved_bytes(&self) -> u64 {
        let runs = self.vmas.iter().flat_map(|v| &v.pages);
        runs.filter(|r| r.image == 0).map(|r| r.len).sum()
    }

    /// Bytes of page contents the restore reads, from this image and its ancestors.
    pub fn restored_bytes(&self) -> u64 {
        self.vmas.iter().flat_map(|v| &v.pages).map(|r| r.len).sum()
    }
}

pub fn in_pages_section(r: &PageRun, sections: &[Section]) -> bool {
    sections.iter().any(|s| s.holds_pages(r.offset, r.len))
}

/// In the restored process `pid` (its address space the image's): attaches every SysV segment
/// it had at its address (injected shmat), `ids[segment]` being each one's id now.
pub fn attach_sysv(
    inj: &crate::inject::Injector,
    pid: i32,
    vmas: &[Vma],
    ids: &[i32],
) -> Result<(), RestoreError> {
    let what = "attaching a SysV segment";
    for v in vmas {
        let Backing::Sysv { segment } = v.backing else {
            continue;
        };
        let einval = || restore_io(what)(std::io::Error::from_raw_os_error(libc::EINVAL));
        let id = *ids.get(segment).ok_or_else(einval)?;
        let mut flags = 0u64;
        if v.prot & 2 == 0 {
            flags |= libc::SHM_RDONLY as u64;
        }
        if v.prot & 4 != 0 {
            flags |= libc::SHM_EXEC as u64;
        }
        let args = [id as u64, v.start, flags, 0, 0, 0];
        let at = crate::thread::call(inj, pid, what, libc::SYS_shmat, args)?;
        if at as u64 != v.start {
            let e = std::io::Error::other(format!("at {at:#x}, not {:#x}", v.start));
            return Err(restore_io(what)(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page runs are written as arrays (the image only when not 0) and read back in that form
    /// and in the object form older images hold.
    #[test]
    fn page_runs_are_arrays_and_objects_still_read() {
        let run = |image| PageRun {
            addr: 0x7000_0000,
            len: 3 * PAGE,
            offset: 0x5000,
            image,
        };
        for (r, text) in [
            (run(0), "[1879048192,12288,20480]"),
            (run(2), "[1879048192,12288,20480,2]"),
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), text);
            assert_eq!(serde_json::from_str::<PageRun>(text).unwrap(), r);
        }
        let old = r#"{"addr":1879048192,"len":12288,"offset":20480}"#;
        assert_eq!(serde_json::from_str::<PageRun>(old).unwrap(), run(0));
        let old = r#"{"addr":1879048192,"len":12288,"offset":20480,"image":2}"#;
        assert_eq!(serde_json::from_str::<PageRun>(old).unwrap(), run(2));
        assert!(serde_json::from_str::<PageRun>("[1879048192,12288]").is_err());
        assert!(serde_json::from_str::<PageRun>("[1,2,3,4,5]").is_err());
    }
}
