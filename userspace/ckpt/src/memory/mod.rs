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

mod scan;
pub mod table;

use crate::batch::CallSink;
use crate::device::{Device, DumpHow};
use crate::dirty::Reuse;
use crate::errors::{checkpoint_io, restore_io, CheckpointError, RestoreError};
use crate::image::{ImageWriter, Section, PAGE};
use crate::proc::{self, MapEntry};
use crate::progress::Progress;
use crate::shmem::{self, ShmDump, ShmObject};
use crate::stats::Stats;
use ckpt_abi::{
    CkptRange, CkptRestoreImage, CkptRestoreRun, CkptRestoreVma, CKPT_VMA_FILE, CKPT_VMA_GROWSDOWN,
    CKPT_VMA_IN_PLACE, CKPT_VMA_SHARED,
};
pub use scan::Stored;
use scan::{page_sums, verify_refs, Scan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

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
// Checkpoint

/// The mappings of stopped process `pid`, checked to be ones a restore can recreate.
pub fn mappings(pid: i32) -> Result<Vec<MapEntry>, CheckpointError> {
    let maps = proc::smaps(pid).map_err(checkpoint_io(pid, "reading smaps"))?;
    // A mapping of a file that no longer has a name cannot be mapped again by path: unless it
    // is a shared memory object ckpt carries, refuse now rather than fail at restore.
    for m in &maps {
        if let Err(why) = shmem::is_object(m) {
            return Err(CheckpointError::UnsupportedMapping {
                pid,
                start: m.start,
                name: m.name.clone(),
                why,
            });
        }
    }
    Ok(maps
        .into_iter()
        .filter(|m| m.name != "[vsyscall]")
        .collect())
}

/// The shared memory each of `maps` shows, stored into the image once for the tree (SysV
/// segments, shared memory objects; `None` for the other mappings). Read while the process is
/// frozen: a snapshot (`crate::snapshot`) shares this memory with the running process.
pub fn dump_objects(
    pid: i32,
    maps: &[MapEntry],
    w: &mut ImageWriter,
    (image_path, shm): (&Path, &mut ShmDump),
) -> Result<Vec<Option<Backing>>, CheckpointError> {
    let io_err = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => CheckpointError::Write {
            path: image_path.into(),
            source: e,
        },
        _ => checkpoint_io(pid, "reading a shared memory object")(e),
    };
    let mut objects = Vec::with_capacity(maps.len());
    for m in maps {
        let object = if crate::sysv::is_segment(m) {
            let segment = shm.sysv.attached(m, w).map_err(io_err)?;
            Some(Backing::Sysv { segment })
        } else if shmem::is_object(m) == Ok(true) {
            let object = shm.mapped(pid, m, w).map_err(io_err)?;
            Some(Backing::Shm {
                object,
                offset: m.offset,
            })
        } else {
            None
        };
        objects.push(object);
    }
    Ok(objects)
}

/// Stores the private pages of `maps` into the image (through the module), read from process
/// `source`: the frozen process itself, or its copy-on-write snapshot. Returns the mappings
/// with their page runs and their shared memory (`objects`, from [`dump_objects`]). Pages an
/// earlier process stored are not stored again (`stored`), nor those `reuse` finds in the
/// parent chain (unchanged since the parent image). `image_path` names the image in errors.
/// The module is called for [`DUMP_CHUNK`] bytes of memory at a time, `progress` advanced
/// after each.
pub fn dump_pages(
    source: i32,
    dev: &Device,
    (maps, objects, reuse): (&[MapEntry], Vec<Option<Backing>>, &Reuse),
    w: &mut ImageWriter,
    (image_path, stats, stored, progress): (&Path, &mut Stats, &mut Stored, &Progress),
) -> Result<Vec<Vma>, CheckpointError> {
    let pid = source;
    let wanted = wanted_pages(pid, maps, (stored, reuse), stats)?;
    let Wanted {
        mut anon,
        file,
        frames,
        refs,
        in_parent,
    } = wanted;
    stats.pages_in_parent += in_parent.iter().map(|r| r.len / PAGE).sum::<u64>();
    // A frame is only the same page while its first owner maps it: compare the bytes, and
    // store again whatever differs (migration or KSM may have reused a frame meanwhile).
    let refs = verify_refs(pid, refs, (w, stored), &mut anon)?;
    stats.pages_shared += refs.iter().map(|r| r.len / PAGE).sum::<u64>();
    let limit = w
        .external_pages_limit()
        .map_or(DUMP_CHUNK, |l| l.min(DUMP_CHUNK));
    progress.add_total(bytes_of(&anon) + bytes_of(&file));
    let mut dumper = ChunkDumper {
        pid,
        dev,
        image_path,
        frames: &frames,
        reuse,
    };
    let mut runs: Vec<CkptRestoreRun> = Vec::new();
    for (set, skip_zero) in [(anon, true), (file, false)] {
        for chunk in chunks(&set, limit) {
            runs.extend(dumper.dump(&chunk, skip_zero, (&mut *w, &mut *stored, &mut *stats))?);
            progress.advance(bytes_of(&chunk));
        }
    }
    // Where this process's pages landed, for the processes after it.
    for r in runs.iter().filter(|_| !frames.is_empty()) {
        for i in 0..r.len / PAGE {
            if let Some(&frame) = frames.get(&(r.addr + i * PAGE)) {
                stored.by_frame.insert(frame, r.image_offset + i * PAGE);
            }
        }
    }
    runs.extend(refs);
    let runs = page_runs(&runs, in_parent);
    Ok(maps
        .iter()
        .zip(objects)
        .map(|(m, object)| vma_of(m, &runs, object))
        .collect())
}

/// The image's page runs of a process, by address: those in this image (`runs`), then
/// those in the parent chain.
fn page_runs(runs: &[CkptRestoreRun], in_parent: Vec<PageRun>) -> Vec<PageRun> {
    let here = runs.iter().map(|r| PageRun {
        addr: r.addr,
        len: r.len,
        offset: r.image_offset,
        image: 0,
    });
    let mut all: Vec<PageRun> = here.chain(in_parent).collect();
    all.sort_by_key(|r| r.addr);
    all
}

/// What of a process's memory a dump stores or refers to (`wanted_pages`).
struct Wanted {
    /// Memory to store: of anonymous mappings (zero pages left out), of file mappings.
    anon: Vec<CkptRange>,
    file: Vec<CkptRange>,
    /// Pages to dump: address -> frame, to remember where they land.
    frames: HashMap<u64, u64>,
    /// Pages an earlier process of the tree stored, as runs into the image.
    refs: Vec<CkptRestoreRun>,
    /// Pages an incremental image takes from its parent chain.
    in_parent: Vec<PageRun>,
}

/// Scans process `pid`'s page table for the pages of `maps` to store.
fn wanted_pages(
    pid: i32,
    maps: &[MapEntry],
    (stored, reuse): (&Stored, &Reuse),
    stats: &mut Stats,
) -> Result<Wanted, CheckpointError> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))
        .map_err(checkpoint_io(pid, "opening pagemap"))?;
    let mut scan = Scan {
        pid,
        pagemap,
        stored,
        frames: HashMap::new(),
        refs: Vec::new(),
        reuse,
        in_parent: Vec::new(),
    };
    // Zero pages are left out of anonymous memory only: a zero page of a private file
    // mapping differs from the file's page.
    let (mut anon, mut file) = (Vec::new(), Vec::new());
    for m in maps {
        let out = if m.is_file() { &mut file } else { &mut anon };
        scan.wanted_ranges(m, stats, out)?;
    }
    Ok(Wanted {
        anon,
        file,
        frames: scan.frames,
        refs: scan.refs,
        in_parent: scan.in_parent,
    })
}

/// Dumps a process's pages a chunk at a time (`CKPT_IOC_DUMP_PAGES`), each chunk a pages
/// section of the image.
struct ChunkDumper<'a> {
    pid: i32,
    dev: &'a Device,
    image_path: &'a Path,
    /// Pages a later process of the tree may share (`Wanted::frames`).
    frames: &'a HashMap<u64, u64>,
    reuse: &'a Reuse,
}

impl ChunkDumper<'_> {
    /// Dumps the memory of `chunk` into `w`; returns its runs, placed in the image.
    fn dump(
        &mut self,
        chunk: &[CkptRange],
        skip_zero: bool,
        (w, stored, stats): (&mut ImageWriter, &mut Stored, &mut Stats),
    ) -> Result<Vec<CkptRestoreRun>, CheckpointError> {
        let (pid, reuse) = (self.pid, self.reuse);
        let write_err = |source| CheckpointError::Write {
            path: self.image_path.into(),
            source,
        };
        let compressing = w.external_pages_limit().is_some();
        // Written into the image itself, the pages are checksummed by the writer on another
        // CPU while the module copies the next chunk.
        let checksum = !w.external_pages_checksummed_here();
        let (file, offset) = w.external_pages_target().map_err(write_err)?;
        let how = DumpHow {
            skip_zero,
            checksum,
        };
        let r = (self.dev.dump_pages(pid, file, chunk, offset, how)).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG | libc::EIO) => write_err(e),
                _ => checkpoint_io(pid, "dumping pages")(e),
            }
        })?;
        let sums = match compressing && !stored.lone {
            true => page_sums(file, offset, (&r.runs, self.frames))
                .map_err(checkpoint_io(pid, "reading dumped pages back"))?,
            false => Vec::new(),
        };
        // Compressing, a changed page the chain holds an earlier version of is stored as its
        // difference from it (`image::delta`).
        let start = match r.xxh64 {
            Some(sum) if compressing => {
                let bases = reuse.delta_bases(&r.runs, offset);
                stats.pages_as_differences += bases.iter().map(|b| b[1]).sum::<u64>();
                let written = (r.bytes_written, sum);
                w.external_pages_written_as_delta(written, bases, reuse.bases())
            }
            _ => w.external_pages_written(r.bytes_written, r.xxh64),
        }
        .map_err(write_err)?;
        let placed = sums.into_iter().map(|(at, sum)| (at + start, sum));
        stored.sums.extend(placed);
        stats.pages_written += r.bytes_written / PAGE;
        stats.pages_skipped_zero += r.pages_zero;
        Ok((r.runs.into_iter())
            .map(|mut run| {
                run.image_offset = run.image_offset - offset + start;
                run
            })
            .collect())
    }
}

/// The most memory one `CKPT_IOC_DUMP_PAGES` copies: each call's pages become a pages
/// section of their own (the module checksums what one call writes), and the progress bar
/// moves between calls. Large enough that the calls cost nothing next to the copy.
pub const DUMP_CHUNK: u64 = 64 << 20;

/// Bytes of memory `ranges` cover.
fn bytes_of(ranges: &[CkptRange]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// `ranges` cut in pieces of at most `limit` bytes of memory.
fn chunks(ranges: &[CkptRange], limit: u64) -> Vec<Vec<CkptRange>> {
    let (mut out, mut piece, mut room) = (Vec::new(), Vec::new(), limit);
    for r in ranges {
        let mut start = r.start;
        while start < r.end {
            let end = r.end.min(start + room);
            piece.push(CkptRange { start, end });
            room -= end - start;
            start = end;
            if room == 0 {
                out.push(std::mem::take(&mut piece));
                room = limit;
            }
        }
    }
    if !piece.is_empty() {
        out.push(piece);
    }
    out
}

/// The image's record of mapping `m`, with its part of the page `runs` (sorted by address);
/// `shared`: the shared memory it maps, if it does.
fn vma_of(m: &MapEntry, runs: &[PageRun], shared: Option<Backing>) -> Vma {
    // The module merges pages that follow each other in memory and in the file, also across
    // adjacent mappings: cut the runs at this mapping's bounds. `runs` are sorted by address
    // and disjoint: the first overlapping one is found by bisection (a scan of every run for
    // every mapping was quadratic: most of the dump time of 10,000 mappings).
    let first = runs.partition_point(|r| r.addr + r.len <= m.start);
    let pages = runs[first..]
        .iter()
        .take_while(|r| r.addr < m.end)
        .map(|r| {
            let start = r.addr.max(m.start);
            let end = (r.addr + r.len).min(m.end);
            PageRun {
                addr: start,
                len: end - start,
                offset: r.offset + (start - r.addr),
                image: r.image,
            }
        })
        .collect();
    let backing = if let Some(shared) = shared {
        shared
    } else if m.is_special() {
        Backing::Special {
            name: m.name.clone(),
        }
    } else if m.is_file() {
        Backing::File {
            path: m.name.clone(),
            offset: m.offset,
            dev: m.dev.clone(),
            inode: m.inode,
        }
    } else {
        Backing::Anonymous
    };
    Vma {
        start: m.start,
        end: m.end,
        prot: u32::from(m.read) | u32::from(m.write) << 1 | u32::from(m.exec) << 2,
        shared: m.shared,
        growsdown: m.has_flag("gd"),
        accounted: !m.shared && !m.write && m.has_flag("ac"),
        backing,
        pages,
    }
}

// ---------------------------------------------------------------------------------------------
// Restore

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

    fn r(start: u64, end: u64) -> CkptRange {
        CkptRange { start, end }
    }

    fn pairs(chunks: &[Vec<CkptRange>]) -> Vec<Vec<(u64, u64)>> {
        chunks
            .iter()
            .map(|c| c.iter().map(|r| (r.start, r.end)).collect())
            .collect()
    }

    #[test]
    fn ranges_within_the_limit_are_one_piece() {
        assert!(chunks(&[], DUMP_CHUNK).is_empty());
        let set = [r(0, 10 * PAGE), r(20 * PAGE, 100 * PAGE)];
        assert_eq!(
            pairs(&chunks(&set, DUMP_CHUNK)),
            vec![vec![(0, 10 * PAGE), (20 * PAGE, 100 * PAGE)]]
        );
    }

    /// Pieces hold at most `limit` bytes, ranges are cut where a piece fills, and nothing is
    /// lost or repeated.
    #[test]
    fn pieces_hold_at_most_the_limit() {
        let p = PAGE;
        let set = [r(0, 3 * p), r(10 * p, 15 * p), r(20 * p, 21 * p)];
        assert_eq!(
            pairs(&chunks(&set, 4 * p)),
            vec![
                vec![(0, 3 * p), (10 * p, 11 * p)],
                vec![(11 * p, 15 * p)],
                vec![(20 * p, 21 * p)],
            ]
        );
    }
}
