//! Regression cases: fixed calls, each once a bug the fuzzer found, made at the start of
//! every run (the short CI form too) with the result the fixed module gives. Each case's
//! comment says what the module did before.

use crate::fixture::{self as fx, FdKind, RegionKind, ARENA, IMAGE_LEN, PAGE};
use crate::forkserver::{pidfd_open, wait_readable};
use crate::gen::{self, Call, Check, Ctx, Kind};
use ckpt_abi::{
    CkptDumpPages, CkptRange, CkptRestore, CkptRestoreRun, CkptRestoreVma, CKPT_IOC_DUMP_PAGES,
    CKPT_IOC_RESTORE,
};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How many killable-restore cases `run` makes besides `CASES`.
pub const KILLABLE: usize = 3;

pub struct Case {
    pub name: &'static str,
    pub make: fn(&Ctx) -> Call,
    pub expect: Result<i32, Errno>,
}

pub const CASES: &[Case] = &[Case {
    // Before: accepted. kernel_write() put every page at the end of the file, while the
    // runs recorded the position asked for: an image whose pages are not where it says.
    name: "DUMP_PAGES into a file open with O_APPEND is refused",
    make: dump_into_append_file,
    expect: Err(Errno::EBADF),
}];

/// A DUMP_PAGES request of this process's nonzero data page 1 into `fd` at `file_offset`,
/// placed at the start of the scratch.
fn dump_request(c: &Ctx, fd: i32, file_offset: u64) -> Call {
    let data = c.fx.regions.iter().find(|r| r.kind == RegionKind::Anon);
    let start = data.map_or(0, |r| r.start) + PAGE;
    let ranges = [CkptRange {
        start,
        end: start + PAGE,
    }];
    let at_ranges = fx::slot(c.thread) + gen::ARRAYS;
    gen::write_scratch(c, at_ranges, gen::slice_bytes(&ranges));
    let req = CkptDumpPages {
        pid: std::process::id() as i32,
        image_fd: fd,
        range_count: 1,
        ranges: at_ranges,
        file_offset,
        runs: fx::slot(c.thread) + gen::OUTBUF,
        max_runs: 16,
        ..Default::default()
    };
    let arg = fx::slot(c.thread);
    gen::write_scratch(c, arg, gen::bytes_of(&req));
    Call {
        kind: Kind::DumpPages,
        fd: c.fx.dev,
        cmd: CKPT_IOC_DUMP_PAGES,
        arg,
        what: format!("DUMP_PAGES {req:x?}"),
        check: Check::DumpPages {
            at: arg,
            max_runs: 16,
        },
        gate: true,
        whose: Some(gen::Whose::Itself),
    }
}

fn dump_into_append_file(c: &Ctx) -> Call {
    // At 8 pages in: the end of the (shorter) file, where O_APPEND writes, is elsewhere.
    dump_request(c, c.fx.fd(FdKind::Append, c.thread), 8 * PAGE)
}

/// A RESTORE in a child, killed a second into its work: it must be gone within 10 s.
fn killable_restore(
    c: &Ctx,
    vmas: &[CkptRestoreVma],
    runs: &[CkptRestoreRun],
    image: FdKind,
) -> Result<Duration, String> {
    let req = CkptRestore {
        image_fd: c.fx.fd(image, c.thread),
        vmas: vmas.as_ptr() as u64,
        vma_count: vmas.len() as u32,
        runs: runs.as_ptr() as u64,
        run_count: runs.len() as u32,
        ..Default::default()
    };
    c.board.corpus_started.store(0, Relaxed);
    // SAFETY: the child only stores to the board, makes the ioctl and exits, all
    // async-signal-safe; everything it uses was prepared before the fork.
    let child = match unsafe { fork() } {
        // SAFETY: as above; `req` and the arrays live on in the child's copy.
        Ok(ForkResult::Child) => unsafe {
            c.board.corpus_started.store(1, Relaxed);
            let r = libc::ioctl(c.fx.dev, CKPT_IOC_RESTORE as libc::c_ulong, &req);
            libc::_exit(if r == 0 { 0 } else { 1 })
        },
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("fork: {e}")),
    };
    let pidfd = pidfd_open(child).ok_or("pidfd_open failed")?;
    let t0 = Instant::now();
    while c.board.corpus_started.load(Relaxed) == 0 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = kill(child, Signal::SIGKILL);
    let killed = Instant::now();
    let died = wait_readable(&pidfd, Duration::from_secs(10));
    let _ = waitpid(child, None);
    let took = killed.elapsed();
    if died {
        Ok(took)
    } else {
        Err(format!(
            "still ran 10 s after SIGKILL (died {:.0} s after it)",
            took.as_secs_f64()
        ))
    }
}

/// The restore's long loops, each of which once ran on after SIGKILL. Now each stops at a
/// fatal signal.
fn killable_restores(c: &Ctx) -> Vec<String> {
    let page_vma = |i: u64, len: u64| CkptRestoreVma {
        start: ARENA + 2 * i * IMAGE_LEN,
        end: ARENA + 2 * i * IMAGE_LEN + len,
        prot: 3,
        fd: -1,
        ..Default::default()
    };
    let run = |len: u64| CkptRestoreRun {
        addr: ARENA,
        len,
        image_offset: 0,
    };
    let max_vmas = ckpt_abi::CKPT_RESTORE_MAX_VMAS as u64;
    let cases: [(&str, Vec<CkptRestoreVma>, Vec<CkptRestoreRun>); 3] = [
        // 16 GiB of copying (the copy itself stops: GUP sees the signal).
        (
            "65536 runs of the same 256 KiB",
            vec![page_vma(0, IMAGE_LEN)],
            vec![run(IMAGE_LEN); 65536],
        ),
        // Reading 96 MiB of run records, one by one.
        (
            "4M one-page runs",
            vec![page_vma(0, PAGE)],
            vec![run(PAGE); 1 << 22],
        ),
        // Mapping them one by one, until max_map_count.
        (
            "65536 VMAs",
            (0..max_vmas).map(|i| page_vma(i, PAGE)).collect(),
            Vec::new(),
        ),
    ];
    let mut failed = Vec::new();
    for (name, vmas, runs) in cases {
        match killable_restore(c, &vmas, &runs, FdKind::Image) {
            Ok(took) => println!("fuzz-ioctl: RESTORE of {name} died {took:.1?} after SIGKILL"),
            Err(e) => failed.push(format!(
                "regression case \"RESTORE of {name} stops when killed\": {e}"
            )),
        }
    }
    failed
}

/// Makes every case; returns the failures.
pub fn run(c: &Ctx) -> Vec<String> {
    let mut failed = killable_restores(c);
    for case in CASES {
        let call = (case.make)(c);
        let got = crate::raw_ioctl(call.fd, call.cmd, call.arg);
        let checked = crate::stats::check_reply(&call, got);
        if got != case.expect || checked.is_err() {
            failed.push(format!(
                "regression case \"{}\": {} gave {got:?}, not {:?}{}",
                case.name,
                call.what,
                case.expect,
                checked.err().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
    }
    failed
}
