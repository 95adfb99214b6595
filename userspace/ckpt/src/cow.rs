//! Private memory a parent and its children shared copy-on-write when checkpointed, shared
//! again after a restore. The image stores such a page once: the children's page runs point
//! at the parent's copy (`memory::dump`). On restore, a restorer puts those private
//! anonymous mappings in place itself, with their content, before it forks its children's
//! restorers: they inherit them copy-on-write, as fork made them. Each child then changes
//! only the pages where its own image differs from its parent's (written, or dropped back
//! to zero) before forking its own children, and the module's RESTORE leaves that memory as
//! it is (`CKPT_VMA_IN_PLACE`).
//!
//! Only mappings with the same bounds in parent and child are shared again (a heap that grew
//! after the fork is not), and never a stack. Anything that goes wrong here (a mapping of the
//! restorer's own where the memory goes, a failed read) only costs the sharing: that memory
//! is then restored as usual, a copy per process.

use crate::manifest::Manifest;
use crate::memory::{Backing, PageRun, Vma};
use nix::sys::mman::{madvise, mmap_anonymous, mprotect, munmap, MapFlags, MmapAdvise, ProtFlags};
use std::collections::BTreeMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

const PAGE: u64 = 4096;

/// A mapping's bounds.
pub type Range = (u64, u64);

/// Whether `v` can be put in place: private anonymous memory, not a stack.
fn candidate(v: &Vma) -> bool {
    matches!(v.backing, Backing::Anonymous) && !v.shared && !v.growsdown
}

/// Page address -> where its bytes are (image of the chain, offset in it), for the pages of
/// `v` that are stored.
fn pages(v: &Vma) -> BTreeMap<u64, (u32, u64)> {
    crate::chain::page_sources(&v.pages)
}

/// Whether page runs `a` and `b` (each sorted by address) store some page at one address in
/// one place, walking both lists once (a map of every page of a lone process's 1 GiB cost
/// its lazy restore 0.1 s before the program ran).
fn share_a_page(a: &[PageRun], b: &[PageRun]) -> bool {
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        let overlap = x.addr.max(y.addr) < (x.addr + x.len).min(y.addr + y.len);
        // Overlapping runs hold the same page at every common address iff they are shifted
        // alike from memory to the image.
        let same_place =
            x.image == y.image && x.offset.wrapping_sub(x.addr) == y.offset.wrapping_sub(y.addr);
        if overlap && same_place {
            return true;
        }
        if x.addr + x.len <= y.addr + y.len {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

fn vma_at(vmas: &[Vma], (start, end): Range) -> Option<&Vma> {
    vmas.iter()
        .find(|v| v.start == start && v.end == end && candidate(v))
}

/// Which mappings each process's restorer should put in place (by index in the manifest):
/// those a child has with the same bounds and at least one page in common, and those its
/// parent puts in place that it has too (it inherits them).
pub fn plan(m: &Manifest) -> Vec<Vec<Range>> {
    let mut wanted = vec![Vec::new(); m.processes.len()];
    for (i, p) in m.processes.iter().enumerate() {
        let (children, _) = m.children_of(p.pid);
        wanted[i] = p
            .memory
            .vmas
            .iter()
            .filter(|v| candidate(v))
            .filter(|v| {
                children.iter().any(|&c| {
                    let theirs = vma_at(&m.processes[c].memory.vmas, (v.start, v.end));
                    theirs.is_some_and(|t| share_a_page(&v.pages, &t.pages))
                })
            })
            .map(|v| (v.start, v.end))
            .collect();
    }
    // What a parent puts in place, its children that have it use too: top-down.
    for i in order(m) {
        let Some(parent) = parent_index(m, i) else {
            continue;
        };
        let inherited: Vec<Range> = wanted[parent]
            .iter()
            .copied()
            .filter(|&r| vma_at(&m.processes[i].memory.vmas, r).is_some())
            .collect();
        for r in inherited {
            if !wanted[i].contains(&r) {
                wanted[i].push(r);
            }
        }
    }
    wanted
}

/// The index of the parent of process `i`, if it is in the image.
pub fn parent_index(m: &Manifest, i: usize) -> Option<usize> {
    let ppid = m.processes.get(i)?.ppid;
    m.processes.iter().position(|q| q.pid == ppid)
}

/// Process indices, parents before their children.
fn order(m: &Manifest) -> Vec<usize> {
    let mut out = Vec::new();
    let mut todo: Vec<usize> = (0..m.processes.len())
        .filter(|&i| parent_index(m, i).is_none())
        .collect();
    while let Some(i) = todo.pop() {
        out.push(i);
        todo.extend(m.children_of(m.processes[i].pid).0);
    }
    out
}

/// In the restorer of process `i`, before it forks: puts the mappings `wanted` in place with
/// the process's content. `inherited`: what its parent's restorer had put in place (and it
/// inherited over fork). Returns what is in place.
pub fn put_in_place(
    m: &Manifest,
    i: usize,
    (wanted, inherited): (&[Range], &[Range]),
    images: &[&File],
) -> Vec<Range> {
    let mine = &m.processes[i].memory.vmas;
    let parents = parent_index(m, i).map(|p| &m.processes[p].memory.vmas[..]);
    for &r in inherited.iter().filter(|r| !wanted.contains(r)) {
        unmap(r);
    }
    let mut done = Vec::new();
    for &r in wanted {
        let Some(v) = vma_at(mine, r) else { continue };
        let from_parent = parents
            .and_then(|p| vma_at(p, r))
            .filter(|_| inherited.contains(&r));
        let ok = match from_parent {
            Some(pv) => adjust(pv, v, images),
            None => map_fresh(v, images),
        };
        if ok.is_ok() {
            done.push(r);
        } else {
            unmap(r);
        }
    }
    done
}

/// Maps `v` where it was, with its stored pages.
fn map_fresh(v: &Vma, images: &[&File]) -> nix::Result<()> {
    let len = NonZeroUsize::new((v.end - v.start) as usize).ok_or(nix::Error::EINVAL)?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED_NOREPLACE;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping: it fails where the restorer
    // has anything of its own.
    let at = unsafe { mmap_anonymous(NonZeroUsize::new(v.start as usize), len, rw, flags)? };
    if at.as_ptr() as u64 != v.start {
        // A kernel that ignores the flag put it elsewhere.
        // SAFETY: the mapping just made, which nothing uses.
        let _ = unsafe { munmap(at, len.get()) };
        return Err(nix::Error::EEXIST);
    }
    let runs = v.pages.iter().map(|r| (r.addr, r.len, (r.image, r.offset)));
    fill(runs, images)?;
    protect(v)
}

/// Turns the parent's copy `pv` of the mapping (inherited) into this process's `v`: writes
/// the pages stored differently, drops those it does not have (zero again).
fn adjust(pv: &Vma, v: &Vma, images: &[&File]) -> nix::Result<()> {
    let (theirs, mine) = (pages(pv), pages(v));
    let differ = mine
        .iter()
        .filter(|(a, o)| theirs.get(a) != Some(o))
        .map(|(&a, &o)| (a, PAGE, o));
    let only_theirs = theirs.keys().filter(|a| !mine.contains_key(a));
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: the mapping is this process's, at an address only the image uses.
    unsafe { mprotect(page_ptr(v.start)?, (v.end - v.start) as usize, rw)? };
    fill(differ, images)?;
    for &a in only_theirs {
        // SAFETY: private anonymous memory of ours: its page reads as zero again.
        unsafe { madvise(page_ptr(a)?, PAGE as usize, MmapAdvise::MADV_DONTNEED)? };
    }
    protect(v)
}

/// Reads each run (address, length, (image of the chain, offset)) from its image into
/// place.
fn fill(runs: impl Iterator<Item = (u64, u64, (u32, u64))>, images: &[&File]) -> nix::Result<()> {
    for (addr, len, (image, offset)) in runs {
        let image = images.get(image as usize).ok_or(nix::Error::EINVAL)?;
        // SAFETY: the run lies in a mapping of ours made writable for this (validated with
        // the image: inside its VMA); no Rust reference points into it.
        let dest = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len as usize) };
        image
            .read_exact_at(dest, offset)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    }
    Ok(())
}

/// Gives the mapping its protection.
fn protect(v: &Vma) -> nix::Result<()> {
    let prot = ProtFlags::from_bits_truncate(v.prot as i32);
    // SAFETY: the mapping is ours, at an address only the image uses.
    unsafe { mprotect(page_ptr(v.start)?, (v.end - v.start) as usize, prot) }
}

fn unmap((start, end): Range) {
    if let Ok(at) = page_ptr(start) {
        // SAFETY: memory put in place for the image, which nothing of the restorer uses.
        let _ = unsafe { munmap(at, (end - start) as usize) };
    }
}

fn page_ptr(addr: u64) -> nix::Result<NonNull<libc::c_void>> {
    NonNull::new(addr as *mut libc::c_void).ok_or(nix::Error::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(addr: u64, len: u64, offset: u64, image: u32) -> PageRun {
        PageRun {
            addr,
            len: len * PAGE,
            offset,
            image,
        }
    }

    #[test]
    fn runs_share_a_page_only_at_one_address_in_one_place() {
        let a = [run(0x1000, 2, 0x10000, 0), run(0x8000, 4, 0x20000, 0)];
        // The second page of a's first run, stored at the same offset.
        assert!(share_a_page(&a, &[run(0x2000, 1, 0x11000, 0)]));
        // Same addresses, another offset or another image of the chain.
        assert!(!share_a_page(&a, &[run(0x2000, 1, 0x12000, 0)]));
        assert!(!share_a_page(&a, &[run(0x1000, 2, 0x10000, 1)]));
        // Same place shifted, no common address; and runs met after a long one.
        assert!(!share_a_page(&a, &[run(0x3000, 1, 0x12000, 0)]));
        let b = [run(0x0, 8, 0x90000, 0), run(0xa000, 1, 0x22000, 0)];
        assert!(share_a_page(&a, &b));
        assert!(share_a_page(&b, &a));
        assert!(!share_a_page(&a, &[]));
    }
}
