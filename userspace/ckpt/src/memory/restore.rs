//! Memory at restore: the module's request (every mapping, its file opened and checked to be
//! the same inode, the page runs) and what the process does after it.

use super::*;
use crate::batch::CallSink;
use crate::errors::{restore_io, RestoreError};
use ckpt_abi::{
    CkptRestoreImage, CkptRestoreRun, CkptRestoreVma, CKPT_VMA_FILE, CKPT_VMA_GROWSDOWN,
    CKPT_VMA_IN_PLACE, CKPT_VMA_SHARED,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;

const PROT_WRITE: u32 = 2;

/// The process's accounted read-only mappings, made writable by the restore so that the
/// kernel accounted them (`Vma::accounted`), lose write permission again: calls the process
/// makes itself, into `sink`.
pub fn drop_restore_write(sink: &mut dyn CallSink, vmas: &[Vma]) -> Result<(), RestoreError> {
    for v in vmas.iter().filter(|v| v.accounted) {
        let args = [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0];
        let what = format!("mprotect of the mapping at {:#x}", v.start);
        sink.call(&what, libc::SYS_mprotect, args, None)?;
    }
    Ok(())
}

/// The module's restore request for an address space, prepared before the restorer forks.
pub struct MemoryPlan {
    /// Every mapping but the kernel's; a file mapping's `fd` holds the index of its file in
    /// `files` until the restorer knows the fd numbers ([`MemoryPlan::set_file_fds`]).
    pub vmas: Vec<CkptRestoreVma>,
    /// The page runs, per image of the chain (index 0: the image itself).
    pub runs: Vec<Vec<CkptRestoreRun>>,
    /// Distinct mapped files, opened (as the process's user) and checked.
    pub files: Vec<File>,
}

/// Opens each mapped file once (per path and writability) and checks it is the one that was
/// mapped, and lists the mappings and page runs for the module. `shm`: the tree's shared
/// memory objects, made again. `lazy`: the lazy mappings' pages are left to the page server
/// (`crate::lazy`), the module only maps them.
pub fn plan(vmas: &[Vma], shm: &[OwnedFd], lazy: bool) -> Result<MemoryPlan, RestoreError> {
    let mut files: Vec<File> = Vec::new();
    let mut file_index: BTreeMap<(String, bool), usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut runs: Vec<Vec<CkptRestoreRun>> = Vec::new();
    for v in vmas {
        let (mut flags, fd_slot, offset) = match &v.backing {
            // Not mapped by the module: attached after the restore (`attach_sysv`).
            Backing::Special { .. } | Backing::Sysv { .. } => continue,
            Backing::Anonymous => (0, -1, 0),
            Backing::Shm { object, offset } => {
                // One fd per object, however many mappings it has.
                let key = (format!("\0shm{object}"), true);
                let idx = match file_index.get(&key) {
                    Some(&i) => i,
                    None => {
                        let obj = shm.get(*object).ok_or_else(|| RestoreError::MappedFile {
                            path: format!("shared memory object {object}"),
                            why: "not in the image".into(),
                        })?;
                        let dup = obj.try_clone().map_err(restore_io("duplicating a memfd"))?;
                        files.push(File::from(dup));
                        file_index.insert(key, files.len() - 1);
                        files.len() - 1
                    }
                };
                (CKPT_VMA_FILE, idx as i32, *offset)
            }
            Backing::File {
                path,
                offset,
                inode,
                ..
            } => {
                let writable = v.shared && v.prot & 2 != 0;
                let idx = match file_index.get(&(path.clone(), writable)) {
                    Some(&i) => i,
                    None => {
                        files.push(open_mapped_file(path, writable, *inode)?);
                        file_index.insert((path.clone(), writable), files.len() - 1);
                        files.len() - 1
                    }
                };
                (CKPT_VMA_FILE, idx as i32, *offset)
            }
        };
        if v.shared {
            flags |= CKPT_VMA_SHARED;
        }
        if v.growsdown {
            flags |= CKPT_VMA_GROWSDOWN;
        }
        out.push(CkptRestoreVma {
            start: v.start,
            end: v.end,
            // Writable for now, so that the kernel accounts it (see `Vma::accounted`).
            prot: if v.accounted {
                v.prot | PROT_WRITE
            } else {
                v.prot
            },
            flags,
            fd: fd_slot,
            _reserved: 0,
            file_offset: offset,
        });
        if lazy && crate::lazy::is_lazy(v) {
            continue;
        }
        for r in &v.pages {
            let image = r.image as usize;
            if runs.len() <= image {
                runs.resize_with(image + 1, Vec::new);
            }
            runs[image].push(CkptRestoreRun {
                addr: r.addr,
                len: r.len,
                image_offset: r.offset,
            });
        }
    }
    Ok(MemoryPlan {
        vmas: out,
        runs,
        files,
    })
}

fn open_mapped_file(path: &str, writable: bool, inode: u64) -> Result<File, RestoreError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| RestoreError::MappedFile {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().map_err(restore_io(path))?);
    if ino != inode {
        return Err(RestoreError::MappedFile {
            path: path.to_owned(),
            why: format!("it was replaced since the checkpoint (inode {ino}, was {inode})"),
        });
    }
    Ok(f)
}

impl MemoryPlan {
    /// In the restorer, once its files sit at known numbers: `fds[i]` is `files[i]`'s.
    /// Flags the mappings the restorer put in place (`crate::cow`) so that the module leaves
    /// them, and drops their page runs (their content is there).
    pub fn mark_in_place(&mut self, ranges: &[(u64, u64)]) {
        for v in &mut self.vmas {
            if ranges.contains(&(v.start, v.end)) {
                v.flags |= CKPT_VMA_IN_PLACE;
            }
        }
        let inside = |a: u64| ranges.iter().any(|&(s, e)| s <= a && a < e);
        for runs in &mut self.runs {
            runs.retain(|r| !inside(r.addr));
        }
    }

    /// The runs, each image's together in the order of `images` (the fds of the chain's
    /// images, the image first), and the module's image table.
    pub fn runs_by_image(&self, images: &[i32]) -> (Vec<CkptRestoreRun>, Vec<CkptRestoreImage>) {
        let mut runs = Vec::new();
        let mut table = Vec::new();
        for (i, &fd) in images.iter().enumerate() {
            let mine = self.runs.get(i).map_or(&[][..], |r| &r[..]);
            runs.extend_from_slice(mine);
            table.push(CkptRestoreImage {
                fd,
                run_count: mine.len() as u32,
            });
        }
        (runs, table)
    }

    pub fn set_file_fds(&mut self, fds: &[i32]) {
        for v in self.vmas.iter_mut() {
            if v.flags & CKPT_VMA_FILE != 0 {
                if let Some(&fd) = usize::try_from(v.fd).ok().and_then(|i| fds.get(i)) {
                    v.fd = fd;
                }
            }
        }
    }
}
