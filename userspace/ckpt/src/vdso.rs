//! The kernel's own mappings ([vvar], [vvar_vclock], [vdso]): never saved. The restored
//! program's code calls into the vDSO at the addresses it had, so the restorer moves its own
//! kernel mappings there before the module replaces everything else (they are the same
//! kernel's, checked by name and size).

use crate::errors::{restore_io, RestoreError};
use crate::memory::{Backing, Vma};
use crate::proc;
use ckpt_abi::CKPT_RESTORE_MAX_KEEP;
use nix::sys::mman::{mmap_anonymous, mremap, MRemapFlags, MapFlags, ProtFlags};
use std::num::NonZeroUsize;
use std::ptr::NonNull;

/// Where the kernel mappings are in the image and here, in the same order.
#[derive(Debug, Clone)]
pub struct Specials {
    /// The image's (start, end) of each: the module keeps them in place.
    pub keep: Vec<(u64, u64)>,
    /// Ours now.
    pub here: Vec<(u64, u64)>,
}

/// (name, start, end) of each kernel mapping, in address order.
type Named = Vec<(String, u64, u64)>;

fn own_specials() -> Result<Named, RestoreError> {
    Ok(proc::maps("self")
        .map_err(restore_io("reading /proc/self/maps"))?
        .into_iter()
        .filter(|m| m.is_special() && m.name != "[vsyscall]")
        .map(|m| (m.name, m.start, m.end))
        .collect())
}

/// Where the image's vDSO is (start, end), which is where a restored process has it.
pub fn place(vmas: &[Vma]) -> Option<(u64, u64)> {
    vmas.iter().find_map(|v| match &v.backing {
        Backing::Special { name } if name == "[vdso]" => Some((v.start, v.end)),
        _ => None,
    })
}

/// Checks that the image's kernel mappings are this kernel's: same names and sizes, in the
/// same order, or the image is foreign.
pub fn check(vmas: &[Vma]) -> Result<Specials, RestoreError> {
    let image: Named = vmas
        .iter()
        .filter_map(|v| match &v.backing {
            Backing::Special { name } if name != "[vsyscall]" => {
                Some((name.clone(), v.start, v.end))
            }
            _ => None,
        })
        .collect();
    let here = own_specials()?;
    let shape = |v: &Named| -> String {
        v.iter()
            .map(|(n, s, e)| format!("{n} {}K", (e - s) / 1024))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = image.len() == here.len()
        && image
            .iter()
            .zip(&here)
            .all(|(a, b)| a.0 == b.0 && a.2 - a.1 == b.2 - b.1);
    if !same || here.len() > CKPT_RESTORE_MAX_KEEP {
        return Err(RestoreError::Vdso {
            image: shape(&image),
            here: shape(&here),
        });
    }
    Ok(Specials {
        keep: image.iter().map(|s| (s.1, s.2)).collect(),
        here: here.iter().map(|s| (s.1, s.2)).collect(),
    })
}

/// Why the move failed; `Collision` is worth retrying (ckpt's own memory was in the way).
pub enum MoveError {
    Collision(String),
    Failed(&'static str, nix::Error),
}

impl Specials {
    /// In the restorer: moves our kernel mappings where the image had them, first all out of
    /// the way, then into place, so that no move lands on another. After this nothing may call
    /// into the vDSO (its old address is gone).
    pub fn move_into_place(&self) -> Result<(), MoveError> {
        if self.keep == self.here {
            return Ok(());
        }
        let mine = proc::maps("self").unwrap_or_default();
        for &(s, e) in &self.keep {
            if let Some(m) = mine
                .iter()
                .find(|m| !m.is_special() && m.start < e && s < m.end)
            {
                let what = if m.name.is_empty() {
                    "anonymous"
                } else {
                    &m.name
                };
                return Err(MoveError::Collision(format!(
                    "the image's vDSO at {s:#x} collides with ckpt's own memory ({what})"
                )));
            }
        }
        let total: u64 = self.here.iter().map(|(s, e)| e - s).sum();
        let mut at = reserve(total).map_err(|e| MoveError::Failed("reserving address space", e))?;
        let mut moved = Vec::new();
        for &(s, e) in &self.here {
            move_fixed(s, e - s, at).map_err(|err| MoveError::Failed("moving the vDSO", err))?;
            moved.push(at);
            at += e - s;
        }
        for (&(s, e), &from) in self.keep.iter().zip(&moved) {
            move_fixed(from, e - s, s).map_err(|err| MoveError::Failed("moving the vDSO", err))?;
        }
        Ok(())
    }
}

/// Reserves `len` bytes of address space nowhere in particular (PROT_NONE).
fn reserve(len: u64) -> nix::Result<u64> {
    let len = NonZeroUsize::new(len as usize).ok_or(nix::Error::EINVAL)?;
    // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel picks: it
    // overlaps nothing of ours.
    let p = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_NONE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
        )
    }?;
    Ok(p.as_ptr() as u64)
}

/// mremap(old, len, len, MAYMOVE|FIXED, new).
fn move_fixed(old: u64, len: u64, new: u64) -> nix::Result<()> {
    let old = NonNull::new(old as *mut libc::c_void).ok_or(nix::Error::EINVAL)?;
    // SAFETY: moves one of our own kernel mappings onto a range of our reservation or onto
    // the image's addresses, which `move_into_place` checked hold nothing of ours but that
    // reservation and kernel mappings; nothing refers to the vDSO's old address after this.
    unsafe {
        mremap(
            old,
            len as usize,
            len as usize,
            MRemapFlags::MREMAP_MAYMOVE | MRemapFlags::MREMAP_FIXED,
            NonNull::new(new as *mut libc::c_void),
        )
    }?;
    Ok(())
}
