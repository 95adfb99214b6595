//! The processes calls target besides the fuzzer itself: a memory target rewriting its pages
//! and changing its mappings, and a churn of children that exit at once (zombies until
//! reaped), sleep and get killed, or exec a chain of multi-threaded execs; the kernel
//! threads. Their pids are published on the board.

use crate::board::{Board, CHURN_SLOTS};
use crate::fixture::{DATA_BASE, DATA_PAGES, PAGE};
use crate::rng::Rng;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use std::ffi::CString;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Forks the memory target: three threads rewriting the fixture's anonymous pages, dropping
/// them (MADV_DONTNEED) and splitting their mapping (mprotect) while calls read it. Must be
/// called while the process is single-threaded.
pub fn spawn_memory_target(board: &'static Board) -> std::io::Result<Pid> {
    // SAFETY: single-threaded (the caller's contract); the child runs ordinary code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            board.target[0].store(nix::unistd::gettid().as_raw(), Relaxed);
            for k in 1..4 {
                std::thread::spawn(move || {
                    board.target[k].store(nix::unistd::gettid().as_raw(), Relaxed);
                    churn_memory(k as u64)
                });
            }
            churn_memory(0)
        }
        ForkResult::Parent { child } => {
            board.target[0].store(child.as_raw(), Relaxed);
            Ok(child)
        }
    }
}

fn churn_memory(k: u64) -> ! {
    let mut rng = Rng::new(k);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    loop {
        // Thread k works on the pages whose number is k modulo 3 (thread 3 shares thread
        // 0's): writers never meet a page another thread made read-only.
        let page = DATA_BASE + (rng.below(DATA_PAGES / 3) * 3 + k % 3) * PAGE;
        // SAFETY: the fixture's anonymous pages, private to this process since the fork.
        unsafe {
            match k {
                0 | 1 => std::ptr::write_volatile(page as *mut u64, rng.next()),
                2 => {
                    // Split the VMA and merge it back: a VMA walk sees it change.
                    libc::mprotect(page as *mut _, PAGE as usize, libc::PROT_READ);
                    libc::mprotect(page as *mut _, PAGE as usize, rw);
                }
                _ => {
                    libc::madvise(page as *mut _, PAGE as usize, libc::MADV_DONTNEED);
                }
            }
        }
        // Under emulation every wakeup is costly: a few hundred changes a second suffice.
        std::thread::sleep(Duration::from_millis(2 + rng.below(8)));
    }
}

/// Kernel threads: kthreadd (pid 2) and some of its children.
pub fn find_kthreads(board: &Board) {
    let mut found = vec![2];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The ppid is the second field after the parenthesised name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<i32>().ok());
            if ppid == Some(2) && found.len() < board.kthreads.len() {
                found.push(pid);
            }
        }
    }
    for (slot, pid) in board.kthreads.iter().zip(found.iter().cycle()) {
        slot.store(*pid, Relaxed);
    }
}

/// What a churn child does. Everything it runs after the fork is async-signal-safe (the
/// fuzzer is multi-threaded by then).
#[derive(Clone, Copy)]
enum Churn {
    ExitNow,
    SleepThenExit,
    ExecChain,
    SleepUntilKilled,
}

/// The churn thread: replaces a random slot's process every few milliseconds until the stop
/// flag, then kills and reaps them all.
pub fn churn(board: &'static Board, seed: u64) {
    let exe = CString::new("/proc/self/exe").unwrap_or_default();
    let argv0 = CString::new("ckpt-fuzz-ioctl").unwrap_or_default();
    let flag = CString::new("--exec-chain").unwrap_or_default();
    let depth = CString::new("2").unwrap_or_default();
    let argv = [
        argv0.as_ptr(),
        flag.as_ptr(),
        depth.as_ptr(),
        std::ptr::null(),
    ];
    let mut rng = Rng::new(seed ^ 0xc4u64);
    let mut slots: [Option<Pid>; CHURN_SLOTS] = [None; CHURN_SLOTS];
    while !board.stopping() {
        let i = rng.below(CHURN_SLOTS as u64) as usize;
        if let Some(old) = slots[i].take() {
            let _ = kill(old, Signal::SIGKILL);
            let _ = waitpid(old, None);
        }
        let what = [
            Churn::ExitNow,
            Churn::SleepThenExit,
            Churn::ExecChain,
            Churn::SleepUntilKilled,
        ][rng.weighted(&[4, 3, 2, 2])];
        let nap = 1 + rng.below(30) as i64;
        // SAFETY: the child only calls async-signal-safe functions (_exit, nanosleep, execv
        // with arguments prepared before the fork).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => unsafe { churn_child(what, nap, exe.as_ptr(), argv.as_ptr()) },
            Ok(ForkResult::Parent { child }) => {
                board.churn[i].store(child.as_raw(), Relaxed);
                slots[i] = Some(child);
            }
            Err(_) => {}
        }
        // A fork and an exit cost milliseconds of guest CPU, an exec tens (on the debug
        // kernel several times that): a dozen a second keep the pids changing without
        // starving the calls.
        std::thread::sleep(Duration::from_millis(40 + rng.below(120)));
    }
    for pid in slots.iter().flatten() {
        let _ = kill(*pid, Signal::SIGKILL);
        let _ = waitpid(*pid, None);
    }
}

/// # Safety
///
/// Called in a child just forked from a multi-threaded process: `exe` and `argv` must be
/// valid, NULL-terminated, prepared before the fork.
unsafe fn churn_child(
    what: Churn,
    nap_ms: i64,
    exe: *const libc::c_char,
    argv: *const *const libc::c_char,
) -> ! {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: nap_ms * 1_000_000,
    };
    // SAFETY: async-signal-safe calls with valid arguments (see the function's contract).
    unsafe {
        match what {
            Churn::ExitNow => {}
            Churn::SleepThenExit => {
                libc::nanosleep(&ts, std::ptr::null_mut());
            }
            Churn::ExecChain => {
                libc::execv(exe, argv);
            }
            Churn::SleepUntilKilled => loop {
                libc::nanosleep(&ts, std::ptr::null_mut());
            },
        }
        libc::_exit(0)
    }
}

/// `--exec-chain N`: a process in exec, again and again: starts a thread (so each exec must
/// first kill it), then execs itself with N - 1, until 0.
pub fn exec_chain(n: u32) -> ! {
    if n == 0 {
        std::process::exit(0);
    }
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(1));
    });
    let exe = CString::new("/proc/self/exe").unwrap_or_default();
    let args = [
        CString::new("ckpt-fuzz-ioctl").unwrap_or_default(),
        CString::new("--exec-chain").unwrap_or_default(),
        CString::new((n - 1).to_string()).unwrap_or_default(),
    ];
    let _ = nix::unistd::execv(&exe, &args);
    std::process::exit(1)
}
