//! Memory at checkpoint: which mappings a restore can make again, which pages to store, and
//! the module's copy of them into the image, a chunk (a pages section) at a time.

use super::scan::{page_sums, verify_refs, Scan, Stored};
use super::*;
use crate::device::{Device, DumpHow};
use crate::dirty::Reuse;
use crate::errors::{checkpoint_io, CheckpointError};
use crate::image::{ImageWriter, PAGE};
use crate::proc::{self, MapEntry};
use crate::progress::Progress;
use crate::shmem::{self, ShmDump};
use crate::stats::Stats;
use ckpt_abi::{CkptRange, CkptRestoreRun};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
