//! Generating one call: the command, its argument struct placed somewhere (good memory
//! mostly, else a bad pointer of some kind), the arrays it points to, pids and fds. Every
//! call is drawn from its own `Rng`, so the same (seed, thread, index) gives the same call.
//!
//! Structure-aware: most requests are valid or one mutation away from valid, so calls get
//! past the first check into the deep paths (page pinning and writes, mapping, copying).

use crate::board::Board;
use crate::fixture::{self as fx, FdKind, Fixture, RegionKind, ARENA, IMAGE_LEN, PAGE};
use crate::rng::Rng;
use ckpt_abi::*;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;

/// Top of the user address space the module accepts.
const USER_TOP: u64 = (1 << 47) - PAGE;
/// Where arrays go in the scratch, and the read/run output buffer (1 MiB, to its end).
pub const ARRAYS: u64 = 64 << 10;
pub const OUTBUF: u64 = 1 << 20;
/// Longest array generated element by element (the big area covers the limits).
const MAX_GEN: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Version,
    Query,
    DumpTask,
    DumpPages,
    Restore,
    Itimers,
    /// An ioctl number the module does not serve (random, or one of ours mangled).
    Unknown,
}

/// Draws the command: the first draw of every call.
pub fn choose(rng: &mut Rng) -> Kind {
    const KINDS: [Kind; 7] = [
        Kind::Version,
        Kind::Query,
        Kind::DumpTask,
        Kind::DumpPages,
        Kind::Restore,
        Kind::Itimers,
        Kind::Unknown,
    ];
    KINDS[rng.weighted(&[4, 24, 18, 22, 14, 8, 14])]
}

/// What to check in the reply of a call that succeeded (its struct was in good memory).
#[derive(Clone, Copy, Debug)]
pub enum Check {
    None,
    Version(u64),
    Query { at: u64, read_len: u64 },
    DumpPages { at: u64, max_runs: u32 },
}

pub struct Call {
    pub kind: Kind,
    pub fd: RawFd,
    pub cmd: u32,
    pub arg: u64,
    pub what: String,
    pub check: Check,
    /// Whether the call reaches the module's permission check: every input the module
    /// validates before it (the struct, its flags and limits, the ranges) is valid and
    /// readable. Then a result other than the early ones (see `stats::past_check`) shows the
    /// call got past the check.
    pub gate: bool,
    /// Whose the pid it names is (None for the commands naming none).
    pub whose: Option<Whose>,
}

pub struct Ctx<'a> {
    pub fx: &'a Fixture,
    pub board: &'a Board,
    pub thread: u32,
    /// Whether to describe calls (`Call::what`): formatting costs more than most calls under
    /// emulation, so it is done only when printed (a report regenerates the calls it shows).
    pub describe: bool,
}

fn describe(c: &Ctx, f: impl FnOnce() -> String) -> String {
    if c.describe {
        f()
    } else {
        String::new()
    }
}

/// Where a struct argument was put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Good,
    Misaligned,
    /// Running off the end of the scratch into unmapped memory.
    Straddle,
    ReadOnly,
    ProtNone,
    Unmapped,
    Null,
    Kernel,
    Sigbus,
}

impl Place {
    /// Whether the module can read a struct placed here (writing it back may still fail).
    fn readable(self) -> bool {
        matches!(self, Place::Good | Place::Misaligned | Place::ReadOnly)
    }
}

pub fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: used on the ABI's `repr(C)` structs, which have no padding (abi.rs asserts the
    // sizes), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

pub fn slice_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: as `bytes_of`, for a slice of them.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn kernel_addr(rng: &mut Rng) -> u64 {
    rng.pick(&[
        0xffff_8880_0000_0000,
        0xffff_ffff_8100_0000,
        u64::MAX - 7,
        1 << 47,
        (1 << 47) - 8,
        0xffff_ffff_ff60_0000,
    ])
}

fn sigbus_addr(c: &Ctx) -> u64 {
    region_start(c, RegionKind::Sigbus)
}

fn region_start(c: &Ctx, kind: RegionKind) -> u64 {
    c.fx.regions
        .iter()
        .find(|r| r.kind == kind)
        .map_or(0, |r| r.start)
}

/// Copies `bytes` to `addr` of the thread's scratch (only as much as fits before its end).
pub fn write_scratch(c: &Ctx, addr: u64, bytes: &[u8]) {
    let end = fx::scratch_end(c.thread);
    let start = fx::slot(c.thread);
    if addr < start || addr >= end {
        return;
    }
    let n = bytes.len().min((end - addr) as usize);
    // SAFETY: `addr..addr + n` lies in this thread's scratch, which only it writes.
    unsafe { fx::bytes_at(addr, n as u64) }.copy_from_slice(&bytes[..n]);
}

/// Puts a struct argument somewhere and returns its address and where that is.
fn place(rng: &mut Rng, c: &Ctx, bytes: &[u8]) -> (u64, Place) {
    const PLACES: [Place; 9] = [
        Place::Good,
        Place::Misaligned,
        Place::Straddle,
        Place::ReadOnly,
        Place::ProtNone,
        Place::Unmapped,
        Place::Null,
        Place::Kernel,
        Place::Sigbus,
    ];
    let p = PLACES[rng.weighted(&[82, 3, 4, 3, 2, 2, 1, 2, 1])];
    let base = fx::slot(c.thread);
    let addr = match p {
        Place::Good => base,
        Place::Misaligned => base + 1 + rng.below(7),
        Place::Straddle => fx::scratch_end(c.thread) - (bytes.len() as u64 / 2).max(1),
        Place::ReadOnly => {
            fx::fill_readonly(c.thread, bytes);
            return (fx::readonly_page(c.thread), p);
        }
        Place::ProtNone => fx::protnone_page(c.thread),
        Place::Unmapped => fx::unmapped(c.thread),
        Place::Null => 0,
        Place::Kernel => kernel_addr(rng),
        Place::Sigbus => sigbus_addr(c),
    };
    write_scratch(c, addr, bytes);
    (addr, p)
}

/// Puts an array of input records somewhere (they are only read) and returns the pointer and
/// whether all of `items` can be read there.
fn place_array<T: Copy>(rng: &mut Rng, c: &Ctx, items: &[T]) -> (u64, bool) {
    let bytes = slice_bytes(items);
    let base = fx::slot(c.thread) + ARRAYS;
    match rng.weighted(&[85, 3, 3, 2, 2, 2, 2, 1]) {
        0 => {
            write_scratch(c, base, bytes);
            (base, true)
        }
        1 => {
            let a = base + 1 + rng.below(7);
            write_scratch(c, a, bytes);
            (a, true)
        }
        2 => {
            // Only the first element fits before the unmapped gap.
            let a = fx::scratch_end(c.thread) - (std::mem::size_of::<T>() as u64).max(1);
            write_scratch(c, a, bytes);
            (a, items.len() <= 1)
        }
        3 => (region_start(c, RegionKind::ReadOnly), items.is_empty()),
        4 => (fx::unmapped(c.thread), items.is_empty()),
        5 => (kernel_addr(rng), items.is_empty()),
        6 => (0, items.is_empty()),
        _ => (sigbus_addr(c), items.is_empty()),
    }
}

/// Room for output records: the scratch's output half, or a bad pointer.
fn out_buffer(rng: &mut Rng, c: &Ctx, len: u64) -> u64 {
    let out = fx::slot(c.thread) + OUTBUF;
    match rng.weighted(&[80, 4, 4, 3, 3, 2, 2, 2]) {
        0 => out,
        1 => out + 1 + rng.below(7),
        2 => fx::scratch_end(c.thread).saturating_sub((len / 2).max(1)),
        3 => fx::readonly_page(c.thread),
        4 => fx::unmapped(c.thread),
        5 => kernel_addr(rng),
        6 => 0,
        _ => sigbus_addr(c),
    }
}

/// Whose a generated pid is, for the summary: calls past the permission check are counted by
/// it, which shows each kind of seized target is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Whose {
    /// 0, negative, past pid_max, or any number at all.
    Junk,
    /// This process or one of its threads (the module allows its own thread group).
    Itself,
    /// A thread of this thread's memory target, which it traces.
    OwnTarget,
    /// One of this thread's own churn, which it forked and seized.
    OwnChurn,
    /// Another thread's target or churn: traced, but not by the caller.
    OthersTraced,
    /// Nobody traces it: init, the fork servers, restore children, the shared churn.
    Untraced,
    KernelThread,
}

/// A pid of some kind: ourselves, processes this thread traces (its memory target's threads,
/// its own churn: being born, exec'ing, exiting or zombies), the same kinds traced by another
/// thread or by nobody, kernel threads, init, a restore child mid-restore, or junk. About
/// half are ones the module lets this thread read: the rest exercise the refusals.
pub fn pid(rng: &mut Rng, c: &Ctx) -> (i32, Whose) {
    let b = c.board;
    let t = c.thread as usize;
    let threads = c.fx.threads as usize;
    let slot = |rng: &mut Rng, xs: &[std::sync::atomic::AtomicI32]| {
        xs[rng.below(xs.len() as u64) as usize].load(Relaxed)
    };
    // Another fuzzing thread (itself when there is only one).
    let other = (t + 1 + rng.below(threads.max(2) as u64 - 1) as usize) % threads;
    let others = if other == t {
        Whose::OwnTarget
    } else {
        Whose::OthersTraced
    };
    match rng.below(32) {
        0 => (0, Whose::Junk),
        1 => (-1, Whose::Junk),
        2 => (rng.pick(&[i32::MIN, i32::MAX]), Whose::Junk),
        3 => (4_194_304 + rng.below(2) as i32, Whose::Junk),
        4 => (1 + rng.below(32768) as i32, Whose::Junk),
        5 => (std::process::id() as i32, Whose::Itself),
        6 | 7 => (slot(rng, &b.fuzz_tids[..threads]), Whose::Itself),
        8 => (1, Whose::Untraced),
        9 | 10 => (slot(rng, &b.kthreads), Whose::KernelThread),
        11 => (slot(rng, &b.servers[..threads]), Whose::Untraced),
        12 => (slot(rng, &b.restoring[..threads]), Whose::Untraced),
        13..=15 => (slot(rng, &b.churn), Whose::Untraced),
        16 => (slot(rng, &b.target[other]), others),
        17 => (
            slot(rng, &b.seized[other]),
            if other == t {
                Whose::OwnChurn
            } else {
                Whose::OthersTraced
            },
        ),
        18..=25 => (slot(rng, &b.target[t]), Whose::OwnTarget),
        _ => (slot(rng, &b.seized[t]), Whose::OwnChurn),
    }
}

fn flags(rng: &mut Rng, known: u32) -> u32 {
    match rng.below(20) {
        0 => 1 << rng.below(32),
        1 => rng.next() as u32,
        2 => !known,
        _ => known & rng.next() as u32,
    }
}

fn fd_of(rng: &mut Rng, c: &Ctx, likely: FdKind, percent: u64) -> (RawFd, FdKind) {
    let kind = if rng.chance(percent, 100) {
        likely
    } else {
        rng.pick(fx::FD_KINDS)
    };
    (c.fx.fd(kind, c.thread), kind)
}

/// An address to read at: in one of the fixture's regions, the scratch, the vDSO, or junk.
fn address(rng: &mut Rng, c: &Ctx) -> u64 {
    match rng.below(10) {
        0..=4 => {
            let r = rng.pick(&c.fx.regions);
            r.start + rng.below(r.pages * PAGE + 1)
        }
        5 => fx::slot(c.thread) + rng.below(fx::SCRATCH_LEN),
        6 => c.fx.vdso + rng.below(2 * PAGE),
        7 => fx::BIG_BASE + rng.below(fx::BIG_LEN),
        8 => kernel_addr(rng),
        _ => rng.wild_u64(),
    }
}

fn device(rng: &mut Rng, c: &Ctx) -> RawFd {
    if rng.chance(1, 20) {
        c.fx.fd(FdKind::DevCkpt, c.thread)
    } else {
        c.fx.dev
    }
}

pub fn generate(kind: Kind, rng: &mut Rng, c: &Ctx) -> Call {
    match kind {
        Kind::Version => version(rng, c),
        Kind::Query => query(rng, c),
        Kind::DumpTask => dump_task(rng, c),
        Kind::DumpPages => dump_pages(rng, c),
        Kind::Restore => restore(rng, c),
        Kind::Itimers => itimers(rng, c),
        Kind::Unknown => unknown(rng, c),
    }
}

fn version(rng: &mut Rng, c: &Ctx) -> Call {
    let junk = [0xa5u8; 32];
    let (arg, p) = place(rng, c, &junk);
    Call {
        kind: Kind::Version,
        fd: device(rng, c),
        cmd: CKPT_IOC_VERSION,
        arg,
        what: describe(c, || format!("VERSION arg {arg:#x} ({p:?})")),
        check: if p == Place::Good {
            Check::Version(arg)
        } else {
            Check::None
        },
        gate: false,
        whose: None,
    }
}

fn query(rng: &mut Rng, c: &Ctx) -> Call {
    // Large reads cost milliseconds under emulation: mostly small ones.
    let read_len = match rng.below(64) {
        0..=15 => 0,
        16..=47 => 1 + rng.below(8192),
        48 => CKPT_QUERY_MAX_READ,
        49 => CKPT_QUERY_MAX_READ + 1,
        50..=55 => PAGE * (1 + rng.below(64)),
        _ => rng.wild_u64(),
    };
    let (target, whose) = pid(rng, c);
    let q = CkptQuery {
        pid: target,
        flags: flags(rng, 0),
        read_addr: address(rng, c),
        read_len,
        read_buf: out_buffer(rng, c, read_len),
        thread_count: rng.next() as u32,
        vma_count: rng.next() as u32,
        mapped_bytes: rng.next(),
        bytes_read: rng.next(),
    };
    let (arg, p) = place(rng, c, bytes_of(&q));
    Call {
        kind: Kind::Query,
        fd: device(rng, c),
        cmd: CKPT_IOC_QUERY,
        arg,
        what: describe(c, || format!("QUERY {q:x?} at {arg:#x} ({p:?})")),
        check: if p == Place::Good && q.read_buf == fx::slot(c.thread) + OUTBUF {
            Check::Query { at: arg, read_len }
        } else {
            Check::None
        },
        gate: p.readable() && q.flags == 0 && read_len <= CKPT_QUERY_MAX_READ,
        whose: Some(whose),
    }
}

fn dump_task(rng: &mut Rng, c: &Ctx) -> Call {
    let (target, whose) = pid(rng, c);
    let mut st = CkptTaskState {
        pid: target,
        flags: flags(rng, 0),
        ..Default::default()
    };
    st.mm.brk = rng.next();
    st.personality = rng.next() as u32;
    let (arg, p) = place(rng, c, bytes_of(&st));
    Call {
        kind: Kind::DumpTask,
        fd: device(rng, c),
        cmd: CKPT_IOC_DUMP_TASK,
        arg,
        what: describe(c, || {
            format!(
                "DUMP_TASK pid {} flags {:#x} at {arg:#x} ({p:?})",
                st.pid, st.flags
            )
        }),
        check: Check::None,
        gate: p.readable() && st.flags == 0,
        whose: Some(whose),
    }
}

fn itimers(rng: &mut Rng, c: &Ctx) -> Call {
    let (target, whose) = pid(rng, c);
    let req = CkptItimers {
        pid: target,
        flags: flags(rng, 0),
        armed: rng.next() as u32,
        _reserved: if rng.chance(1, 16) {
            rng.next() as u32
        } else {
            0
        },
    };
    let (arg, p) = place(rng, c, bytes_of(&req));
    Call {
        kind: Kind::Itimers,
        fd: device(rng, c),
        cmd: CKPT_IOC_ITIMERS,
        arg,
        what: describe(c, || {
            format!(
                "ITIMERS pid {} flags {:#x} reserved {:#x} at {arg:#x} ({p:?})",
                req.pid, req.flags, req._reserved
            )
        }),
        check: Check::None,
        gate: p.readable() && req.flags == 0 && req._reserved == 0,
        whose: Some(whose),
    }
}

/// Page ranges to dump: sorted runs over the fixture's regions (anonymous, read-only,
/// PROT_NONE, SIGBUS, file pages, holes) or the big area, then maybe one mutation.
fn ranges(rng: &mut Rng) -> Vec<CkptRange> {
    // Every page dumped costs a pin and a write (a lot under emulation): few, short ranges
    // mostly; the count's extremes now and then.
    let n = if rng.chance(1, 8) {
        rng.count(16).min(MAX_GEN)
    } else {
        rng.below(5) as u32
    };
    let mut out = Vec::with_capacity(n as usize);
    // The big area and long ranges make dumps of many pages (slow): rarely.
    let mut at = if rng.chance(1, 40) {
        fx::BIG_BASE
    } else {
        fx::DATA_BASE
    };
    for _ in 0..n {
        let start = at + rng.below(4) * PAGE;
        let most = if rng.chance(1, 200) { 40_000 } else { 8 };
        let end = start + (1 + rng.below(most)) * PAGE;
        out.push(CkptRange { start, end });
        at = end;
    }
    if !out.is_empty() && rng.chance(1, 3) {
        let i = rng.below(out.len() as u64) as usize;
        let r = &mut out[i];
        match rng.below(7) {
            0 => r.start += 1 + rng.below(PAGE - 1),
            1 => r.end = r.start,
            2 => r.end = USER_TOP + PAGE * rng.below(2),
            3 => std::mem::swap(&mut r.start, &mut r.end),
            4 => {
                *r = CkptRange {
                    start: 0,
                    end: USER_TOP,
                }
            }
            5 => r.start = r.start.saturating_sub(PAGE * 200),
            _ => r.end = rng.wild_u64(),
        }
    }
    out
}

fn dump_pages(rng: &mut Rng, c: &Ctx) -> Call {
    let big = c.fx.limit_arrays && rng.chance(1, 4000);
    let rs = if big { Vec::new() } else { ranges(rng) };
    let range_count = if big {
        CKPT_DUMP_MAX_RANGES
    } else if rng.chance(6, 7) {
        rs.len() as u32
    } else {
        rng.count(CKPT_DUMP_MAX_RANGES)
    };
    let (ranges, ranges_readable) = if big {
        (fx::BIG_RANGES, c.fx.limit_arrays)
    } else {
        place_array(rng, c, &rs)
    };
    let max_runs = match rng.below(8) {
        0 => 0,
        1 => 1,
        2 => 1 << 22,
        3 => (1 << 22) + 1,
        4 => u32::MAX,
        _ => (OUTBUF / 24) as u32,
    };
    let file_offset = match rng.below(10) {
        0..=5 => PAGE * rng.below(64),
        6 => 1 + rng.below(PAGE),
        7 => (i64::MAX as u64) & !(PAGE - 1),
        8 => 1 << (30 + rng.below(30)),
        _ => rng.wild_u64(),
    };
    let (image_fd, fdk) = fd_of(rng, c, FdKind::Dump, 70);
    let (target, whose) = pid(rng, c);
    let req = CkptDumpPages {
        pid: target,
        image_fd,
        flags: flags(rng, CKPT_DUMP_SKIP_ZERO | CKPT_DUMP_NO_HASH),
        range_count,
        ranges,
        file_offset,
        runs: out_buffer(rng, c, max_runs as u64 * 24),
        max_runs,
        run_count: rng.next() as u32,
        bytes_written: rng.next(),
        pages_zero: rng.next(),
        xxh64: rng.next(),
    };
    let (arg, p) = place(rng, c, bytes_of(&req));
    Call {
        kind: Kind::DumpPages,
        fd: device(rng, c),
        cmd: CKPT_IOC_DUMP_PAGES,
        arg,
        what: describe(c, || {
            format!(
            "DUMP_PAGES pid {} fd {image_fd} ({fdk:?}) flags {:#x} ranges {:x?}{} count {range_count} \
             offset {file_offset:#x} runs {:#x} max {max_runs} at {arg:#x} ({p:?})",
            req.pid,
            req.flags,
            &rs[..rs.len().min(4)],
            if big { " (the big array)" } else { "" },
            req.runs
        )
        }),
        check: if p == Place::Good && req.runs == fx::slot(c.thread) + OUTBUF {
            Check::DumpPages { at: arg, max_runs }
        } else {
            Check::None
        },
        gate: p.readable()
            && dump_request_valid(&req)
            && ranges_readable
            // The big array holds valid ranges when it is filled at all.
            && (big || (range_count as usize == rs.len() && ranges_valid(&rs))),
        whose: Some(whose),
    }
}

/// Whether DUMP_PAGES's checks before the permission check accept `req`'s scalars (as
/// kmod/dump_pages.rs makes them).
fn dump_request_valid(req: &CkptDumpPages) -> bool {
    req.flags & !(CKPT_DUMP_SKIP_ZERO | CKPT_DUMP_NO_HASH) == 0
        && req.range_count <= CKPT_DUMP_MAX_RANGES
        && req.max_runs <= 1 << 22
        && req.file_offset.is_multiple_of(PAGE)
        && i64::try_from(req.file_offset).is_ok()
}

/// Whether DUMP_PAGES accepts `rs`: page-aligned, non-empty, in order, below the top.
fn ranges_valid(rs: &[CkptRange]) -> bool {
    let mut prev_end = 0;
    rs.iter().all(|r| {
        let ok = r.start.is_multiple_of(PAGE)
            && r.end.is_multiple_of(PAGE)
            && r.start < r.end
            && r.end <= USER_TOP
            && r.start >= prev_end;
        prev_end = r.end;
        ok
    })
}

fn unknown(rng: &mut Rng, c: &Ctx) -> Call {
    const OURS: [u32; 6] = [
        CKPT_IOC_VERSION,
        CKPT_IOC_QUERY,
        CKPT_IOC_DUMP_TASK,
        CKPT_IOC_DUMP_PAGES,
        CKPT_IOC_RESTORE,
        CKPT_IOC_ITIMERS,
    ];
    // Generic ioctls the VFS answers itself, read-only or harmless ones only (never
    // FS_IOC_SETFLAGS and the like, which would change /dev/ckpt's inode).
    const GENERIC: [u32; 8] = [
        0x541B,      // FIONREAD
        0x5421,      // FIONBIO
        0x5451,      // FIOCLEX
        0x5450,      // FIONCLEX
        0x5460,      // FIOQSIZE
        2,           // FIGETBSZ
        0x5401,      // TCGETS
        0x8008_6601, // FS_IOC_GETFLAGS
    ];
    let mut cmd = match rng.below(6) {
        0 => rng.next() as u32,
        1 => ckpt_abi::ioc(
            rng.below(4) as u32,
            CKPT_IOC_MAGIC,
            rng.below(256) as u32,
            0,
        ),
        2 => {
            // One of ours with another size or direction.
            let ours = rng.pick(&OURS);
            ours ^ (1 << (16 + rng.below(16)))
        }
        3 => rng.pick(&OURS) & 0xffff,
        4 => rng.pick(&GENERIC),
        _ => ckpt_abi::ioc(
            rng.below(4) as u32,
            CKPT_IOC_MAGIC,
            6 + rng.below(250) as u32,
            rng.below(1 << 14) as usize,
        ),
    };
    if OURS.contains(&cmd) {
        // Mangled into one of ours after all: make it unknown again.
        cmd ^= 0x80;
    }
    let junk = [0u8; 64];
    let (arg, p) = place(rng, c, &junk);
    Call {
        kind: Kind::Unknown,
        fd: device(rng, c),
        cmd,
        arg,
        what: describe(c, || format!("ioctl {cmd:#010x} arg {arg:#x} ({p:?})")),
        check: Check::None,
        gate: false,
        whose: None,
    }
}

/// The restore request: VMAs in the arena (anonymous, files of every fd kind, shared,
/// growsdown), maybe memory in place, page runs into them, kept ranges, cleanup fds, a
/// layout; then maybe mutations. Run in a fork server's child.
fn restore(rng: &mut Rng, c: &Ctx) -> Call {
    let mut req = CkptRestore::default();
    let (image_fd, fdk) = fd_of(rng, c, FdKind::Image, 60);
    req.image_fd = image_fd;
    req.flags = flags(rng, 0);
    // The limit cases take seconds (the runs one until its time limit): rarely.
    let limit = c.fx.limit_arrays && rng.chance(1, 3000);
    let (vmas, runs) = if limit {
        limit_case(rng, &mut req)
    } else {
        let vmas = restore_vmas(rng, c);
        let runs = restore_runs(rng, &vmas);
        req.vma_count = if rng.chance(9, 10) {
            vmas.len() as u32
        } else {
            rng.count(CKPT_RESTORE_MAX_VMAS)
        };
        req.run_count = if rng.chance(9, 10) {
            runs.len() as u32
        } else {
            rng.count(CKPT_RESTORE_MAX_RUNS)
        };
        req.vmas = place_array(rng, c, &vmas).0;
        req.runs = fx::slot(c.thread) + (768 << 10);
        write_scratch(c, req.runs, slice_bytes(&runs));
        (vmas, runs)
    };
    keep_ranges(rng, c, &mut req);
    cleanup_and_layout(rng, &mut req);
    let (arg, p) = place(rng, c, bytes_of(&req));
    Call {
        kind: Kind::Restore,
        fd: device(rng, c),
        cmd: CKPT_IOC_RESTORE,
        arg,
        what: describe(c, || {
            format!(
            "RESTORE image fd {image_fd} ({fdk:?}) flags {:#x} vmas {} {:x?} runs {} {:x?} keep {} \
             cleanup {}+{} at {arg:#x} ({p:?}){}",
            req.flags,
            req.vma_count,
            &vmas[..vmas.len().min(3)],
            req.run_count,
            &runs[..runs.len().min(3)],
            req.keep_count,
            req.cleanup_fd_first,
            req.cleanup_fd_count,
            if limit { " (limit case)" } else { "" }
        )
        }),
        check: Check::None,
        gate: false,
        whose: None,
    }
}

/// Counts at the limits, with valid entries from the big area: 65536 one-page VMAs (more
/// than max_map_count: the mapping fails part-way), or 4M one-page runs (a copy of 16 GiB
/// that must stay killable).
fn limit_case(rng: &mut Rng, req: &mut CkptRestore) -> (Vec<CkptRestoreVma>, Vec<CkptRestoreRun>) {
    if rng.chance(4, 5) {
        req.vma_count = CKPT_RESTORE_MAX_VMAS;
        req.vmas = fx::BIG_VMAS;
        (Vec::new(), Vec::new())
    } else {
        req.vma_count = 1;
        req.vmas = fx::BIG_VMAS;
        req.run_count = CKPT_RESTORE_MAX_RUNS;
        req.runs = fx::BIG_RUNS;
        (Vec::new(), Vec::new())
    }
}

fn restore_vmas(rng: &mut Rng, c: &Ctx) -> Vec<CkptRestoreVma> {
    let n = rng.count(6).min(MAX_GEN);
    let mut out = Vec::with_capacity(n as usize);
    let mut at = ARENA;
    for _ in 0..n {
        let start = at + rng.below(3) * PAGE;
        let end = start + (1 + rng.below(16)) * PAGE;
        at = end;
        let mut v = CkptRestoreVma {
            start,
            end,
            prot: rng.pick(&[3, 3, 1, 5, 0, 7]),
            flags: 0,
            fd: -1,
            _reserved: 0,
            file_offset: 0,
        };
        if rng.chance(1, 3) {
            v.flags |= CKPT_VMA_FILE;
            v.fd = fd_of(rng, c, FdKind::Image, 70).0;
            v.file_offset = match rng.below(6) {
                0 => IMAGE_LEN,
                1 => 1 << 40,
                2 => 1 + rng.below(PAGE),
                _ => PAGE * rng.below(IMAGE_LEN / PAGE),
            };
        }
        if rng.chance(1, 6) {
            v.flags |= CKPT_VMA_SHARED;
        }
        if rng.chance(1, 10) {
            v.flags |= CKPT_VMA_GROWSDOWN;
        }
        out.push(v);
    }
    if rng.chance(1, 5) {
        // Memory in place: the fixture's private anonymous pages (or, wrongly, its file pages).
        let kind = if rng.chance(4, 5) {
            RegionKind::Anon
        } else {
            RegionKind::File
        };
        let base = region_start(c, kind);
        let first = rng.below(8);
        out.push(CkptRestoreVma {
            start: base + first * PAGE,
            end: base + (first + 1 + rng.below(8)) * PAGE,
            prot: 3,
            flags: CKPT_VMA_IN_PLACE,
            fd: -1,
            ..Default::default()
        });
    }
    if !out.is_empty() && rng.chance(1, 3) {
        mutate_vma(rng, &mut out);
    }
    out
}

fn mutate_vma(rng: &mut Rng, vmas: &mut [CkptRestoreVma]) {
    let len = vmas.len();
    let i = rng.below(len as u64) as usize;
    let prev_start = if i > 0 { vmas[i - 1].start } else { 0 };
    let v = &mut vmas[i];
    match rng.below(12) {
        0 => v.start += 1 + rng.below(PAGE - 1),
        1 => v.end = v.start,
        2 => v.end = USER_TOP + PAGE,
        3 => v.start = prev_start, // overlaps the previous one
        4 => v.prot |= 1 << (3 + rng.below(29)),
        5 => v.flags |= 1 << (4 + rng.below(28)),
        6 => v._reserved = 1,
        7 => v.fd = 3 + rng.below(40) as i32, // an fd without CKPT_VMA_FILE
        8 => v.file_offset = PAGE,
        9 => {
            // Over the child's own code: mapping succeeds, then there is nothing to return to.
            let code = mutate_vma as *const () as u64 & !(PAGE - 1);
            v.start = code;
            v.end = code + PAGE;
        }
        10 => {
            v.start = 0;
            v.end = USER_TOP;
        }
        _ => v.flags = CKPT_VMA_IN_PLACE | CKPT_VMA_SHARED,
    }
}

fn restore_runs(rng: &mut Rng, vmas: &[CkptRestoreVma]) -> Vec<CkptRestoreRun> {
    let mut out = Vec::new();
    for v in vmas {
        if v.end <= v.start || rng.chance(1, 3) {
            continue;
        }
        let pages = (v.end - v.start) / PAGE;
        let first = rng.below(pages);
        let len = (1 + rng.below(pages - first)) * PAGE;
        out.push(CkptRestoreRun {
            addr: v.start + first * PAGE,
            len,
            image_offset: PAGE * rng.below((IMAGE_LEN - len.min(IMAGE_LEN)) / PAGE + 1),
        });
    }
    if !out.is_empty() && rng.chance(1, 3) {
        let i = rng.below(out.len() as u64) as usize;
        let r = &mut out[i];
        match rng.below(8) {
            0 => r.len += PAGE * (1 + rng.below(32)), // past the VMA's end
            1 => r.image_offset = IMAGE_LEN + PAGE * rng.below(4), // past the image's end
            2 => r.addr = !(PAGE - 1),                // addr + len wraps
            3 => r.len = 0,
            4 => r.image_offset += 1,
            5 => r.len = !(PAGE - 1),
            6 => r.addr = ARENA - PAGE, // before every VMA
            _ => {
                let dup = *r;
                out.push(dup); // the same pages twice
            }
        }
    }
    out
}

fn keep_ranges(rng: &mut Rng, c: &Ctx, req: &mut CkptRestore) {
    let n = match rng.below(10) {
        0..=5 => 0,
        6 => 1,
        7 => 2,
        8 => CKPT_RESTORE_MAX_KEEP as u32,
        _ => CKPT_RESTORE_MAX_KEEP as u32 + 1 + rng.below(4) as u32,
    };
    req.keep_count = n;
    for k in 0..(n as usize).min(CKPT_RESTORE_MAX_KEEP) {
        req.keep[k] = match rng.below(5) {
            0 => CkptRange {
                start: c.fx.vdso,
                end: c.fx.vdso + 2 * PAGE,
            },
            1 => CkptRange {
                // Everything: nothing of the child is unmapped, and it goes on after success.
                start: 0,
                end: USER_TOP,
            },
            2 => CkptRange {
                start: ARENA,
                end: ARENA + 4 * PAGE,
            },
            3 => CkptRange {
                start: rng.wild_u64(),
                end: rng.wild_u64(),
            },
            _ => CkptRange {
                start: fx::DATA_BASE,
                end: fx::DATA_BASE + PAGE * (1 + rng.below(70)),
            },
        };
    }
}

fn cleanup_and_layout(rng: &mut Rng, req: &mut CkptRestore) {
    (req.cleanup_fd_first, req.cleanup_fd_count) = match rng.below(8) {
        0..=3 => (0, 0),
        4 => (3, 1 + rng.below(20) as u32),
        5 => (0, 4096),
        6 => (0, 4097),
        _ => (u32::MAX - 1, 4096),
    };
    if rng.chance(1, 30) {
        req._reserved = 1 + rng.next() as u32;
    }
    let m = &mut req.mm;
    match rng.below(6) {
        0..=2 => {}
        3 => {
            m.start_code = ARENA;
            m.end_code = ARENA + PAGE;
            m.start_brk = ARENA + 16 * PAGE;
            m.brk = m.start_brk + PAGE * rng.below(4);
            m.arg_start = ARENA;
            m.arg_end = ARENA + 8;
            m.env_start = m.arg_end;
            m.env_end = m.env_start + 8;
            m.auxv[0] = 6; // AT_PAGESZ
            m.auxv[1] = PAGE;
        }
        4 => {
            // Out of order, or past the top.
            m.start_brk = ARENA + PAGE;
            m.brk = ARENA;
            m.env_end = USER_TOP + PAGE * rng.below(2);
        }
        _ => {
            for w in m.auxv.iter_mut() {
                *w = rng.next();
            }
            m.start_stack = rng.wild_u64();
        }
    }
}
