//! Injected system calls, one by one or in batches.
//!
//! A restored thread sets much of its own state itself (robust list, alternate signal stack,
//! rseq area, name, credentials): about a dozen calls. Injected one by one (`inject.rs`) each
//! costs two ptrace stops, and with hundreds of threads those stops are most of the restore.
//! A batch costs one: ckpt maps a small area into the process for the time of the restore,
//! holding a loop (`CODE`) that runs a table of calls, stores each result next to it, stops
//! at the first failure, and then stops itself with a thread-directed SIGSTOP, which the
//! tracer takes as a signal-delivery stop and drops. Where the area cannot be mapped (a
//! policy refusing writable and executable memory), the calls run one by one: `CallSink`
//! is what both ways look like to the code that decides the calls.
//!
//! The area is anonymous and private, mapped where the kernel chooses and unmapped before
//! the program runs, so the restored layout is the image's.

use crate::errors::{restore_io, RestoreError};
use crate::inject::Injector;
use crate::sys;
use nix::sys::ptrace;
use nix::unistd::Pid;
use std::io;

/// Where a restored thread's calls go: run now, one by one, or queued into a batch.
pub trait CallSink {
    /// Writes `data` (an argument a call points at) into the process; returns its address.
    fn put(&mut self, data: &[u8], what: &str) -> Result<u64, RestoreError>;

    /// The call `nr(args)`. It fails, naming `what`, on an error result, or with `expect` on
    /// any other result than that (setfs*id report the old id, not errors: the caller asks
    /// again with -1 and expects the new one).
    fn call(
        &mut self,
        what: &str,
        nr: i64,
        args: [u64; 6],
        expect: Option<i64>,
    ) -> Result<(), RestoreError>;
}

/// Calls injected one by one into `tid`; arguments are written downwards from `below`
/// (under the thread's saved stack pointer and red zone: nothing live is there).
pub struct OneByOne<'a> {
    pub inj: &'a Injector,
    pub tid: i32,
    pub below: u64,
}

impl CallSink for OneByOne<'_> {
    fn put(&mut self, data: &[u8], what: &str) -> Result<u64, RestoreError> {
        let at = self.below.wrapping_sub(data.len() as u64) & !15;
        self.inj.poke(at, data).map_err(restore_io(what))?;
        self.below = at;
        Ok(at)
    }

    fn call(
        &mut self,
        what: &str,
        nr: i64,
        args: [u64; 6],
        expect: Option<i64>,
    ) -> Result<(), RestoreError> {
        let (r, _) = self
            .inj
            .syscall(self.tid, nr, args)
            .map_err(restore_io(what))?;
        check_result(what, r, expect)
    }
}

fn check_result(what: &str, r: i64, expect: Option<i64>) -> Result<(), RestoreError> {
    let errno = if (-4095..0).contains(&r) {
        -r as i32
    } else if expect.is_some_and(|e| e != r) {
        libc::EPERM
    } else {
        return Ok(());
    };
    Err(restore_io(what)(io::Error::from_raw_os_error(errno)))
}

/// The loop, position-independent x86-64, entered with r12 = the table and r13 = the number
/// of entries (both callee-saved across `syscall`). Each 64-byte entry is the call number,
/// its six arguments and a slot for the result:
///
/// ```text
/// 0:  test r13, r13 ; jz stop
///     mov rax, [r12] ; mov rdi, [r12+8] ; mov rsi, [r12+16] ; mov rdx, [r12+24]
///     mov r10, [r12+32] ; mov r8, [r12+40] ; mov r9, [r12+48]
///     syscall
///     mov [r12+56], rax
///     cmp rax, -4095 ; jae stop          (an error: stop here)
///     add r12, 64 ; dec r13 ; jmp 0
/// stop:
///     tgkill(getpid(), gettid(), SIGSTOP) ; jmp stop
/// ```
///
/// The ids are asked inside: in a new pid namespace they are not the tracer's.
const CODE: [u8; 100] = [
    0x4d, 0x85, 0xed, 0x74, 0x3a, 0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b,
    0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44,
    0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x48, 0x3d,
    0x01, 0xf0, 0xff, 0xff, 0x73, 0x09, 0x49, 0x83, 0xc4, 0x40, 0x49, 0xff, 0xcd, 0xeb, 0xc1, 0xb8,
    0x27, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x49, 0x89, 0xc6, 0xb8, 0xba, 0x00, 0x00, 0x00, 0x0f, 0x05,
    0x48, 0x89, 0xc6, 0x4c, 0x89, 0xf7, 0xb8, 0xea, 0x00, 0x00, 0x00, 0xba, 0x13, 0x00, 0x00, 0x00,
    0x0f, 0x05, 0xeb, 0xdb,
];

const ENTRY: usize = 64;
/// The result slot's offset in an entry.
const RESULT: usize = 56;
/// What a result slot holds before its call ran: no system call returns it (addresses are
/// below 2^47, errors -4095..-1).
const NOT_RUN: u64 = 0x8000_0000_0000_0000;
const TABLE_OFF: u64 = 4096;
const MAX_CALLS: usize = 1024;
const DATA_OFF: u64 = TABLE_OFF + (MAX_CALLS * ENTRY) as u64;
/// Room for the largest argument: a group list of 65536 ids, with the other data.
const AREA_LEN: u64 = DATA_OFF + (1 << 19);

/// The area mapped into a restored process for its batches.
pub struct Area {
    addr: u64,
}

impl Area {
    /// Maps the area in process `pid` through its main thread (which must be stopped) and
    /// writes the loop into it. None if the process may not have writable executable memory.
    pub fn map(inj: &Injector, pid: i32) -> Option<Area> {
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let args = [0, AREA_LEN, prot, flags, u64::MAX, 0];
        let (addr, _) = inj.syscall(pid, libc::SYS_mmap, args).ok()?;
        if (-4095..0).contains(&addr) {
            return None;
        }
        let area = Area { addr: addr as u64 };
        if inj.poke(area.addr, &CODE).is_err() {
            let _ = area.unmap(inj, pid);
            return None;
        }
        Some(area)
    }

    /// Unmaps the area (through the main thread `pid`, stopped).
    pub fn unmap(self, inj: &Injector, pid: i32) -> Result<(), RestoreError> {
        OneByOne {
            inj,
            tid: pid,
            below: 0,
        }
        .call(
            "unmapping ckpt's call area",
            libc::SYS_munmap,
            [self.addr, AREA_LEN, 0, 0, 0, 0],
            None,
        )
    }

    /// An empty batch for one thread.
    pub fn batch(&self) -> Batch {
        Batch {
            area: self.addr,
            entries: Vec::new(),
            data: Vec::new(),
        }
    }
}

/// Makes thread `tid` (stopped) run the calls `fill` decides: as one batch in `area` if there
/// is one, else one by one with their arguments written below `below`.
pub fn run_in_thread(
    inj: &Injector,
    (tid, below): (i32, u64),
    area: Option<&Area>,
    fill: impl FnOnce(&mut dyn CallSink) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    match area {
        Some(area) => {
            let mut batch = area.batch();
            fill(&mut batch)?;
            batch.run(inj, tid)
        }
        None => fill(&mut OneByOne { inj, tid, below }),
    }
}

/// Calls queued for one thread, with the data they point at; `run` runs them.
pub struct Batch {
    area: u64,
    entries: Vec<Entry>,
    data: Vec<u8>,
}

struct Entry {
    what: String,
    nr: i64,
    args: [u64; 6],
    expect: Option<i64>,
}

impl CallSink for Batch {
    fn put(&mut self, data: &[u8], what: &str) -> Result<u64, RestoreError> {
        let offset = self.data.len().next_multiple_of(16);
        if DATA_OFF + (offset + data.len()) as u64 > AREA_LEN {
            return Err(restore_io(what)(io::Error::from_raw_os_error(libc::E2BIG)));
        }
        self.data.resize(offset, 0);
        self.data.extend_from_slice(data);
        Ok(self.area + DATA_OFF + offset as u64)
    }

    fn call(
        &mut self,
        what: &str,
        nr: i64,
        args: [u64; 6],
        expect: Option<i64>,
    ) -> Result<(), RestoreError> {
        if self.entries.len() == MAX_CALLS {
            return Err(restore_io(what)(io::Error::from_raw_os_error(libc::E2BIG)));
        }
        self.entries.push(Entry {
            what: what.to_owned(),
            nr,
            args,
            expect,
        });
        Ok(())
    }
}

impl Batch {
    /// Runs the calls in thread `tid` of `inj`'s process (stopped, traced, every signal
    /// blocked), which is left in the signal-delivery stop of the loop's SIGSTOP. The first
    /// failing call is the error.
    pub fn run(self, inj: &Injector, tid: i32) -> Result<(), RestoreError> {
        let results = self.run_until_failure(inj, tid)?;
        for (i, e) in self.entries.iter().enumerate() {
            let Some(&r) = results.get(i) else {
                return Err(restore_io(&e.what)(io::Error::other("it did not run")));
            };
            check_result(&e.what, r, e.expect)?;
        }
        Ok(())
    }

    /// Runs the calls as [`Batch::run`] does and returns the results of those that ran, in
    /// order: all of them, or up to the first that failed (whose error is the last result).
    /// `expect` is not checked: the results are the caller's to judge.
    pub fn run_until_failure(&self, inj: &Injector, tid: i32) -> Result<Vec<i64>, RestoreError> {
        if self.entries.is_empty() {
            return Ok(Vec::new());
        }
        let io = restore_io(format!("running injected calls in thread {tid}"));
        let table = self.table();
        let write =
            inj.poke(self.area + TABLE_OFF, &table)
                .and_then(|()| match self.data.is_empty() {
                    true => Ok(()),
                    false => inj.poke(self.area + DATA_OFF, &self.data),
                });
        write.and_then(|()| self.resume(tid)).map_err(io)?;
        let done = inj
            .peek(self.area + TABLE_OFF, table.len())
            .map_err(restore_io("reading the injected calls' results"))?;
        let results = done.chunks_exact(ENTRY).map(|entry| {
            let slot = entry.get(RESULT..ENTRY).and_then(|s| s.try_into().ok());
            u64::from_le_bytes(slot.unwrap_or([0; 8]))
        });
        Ok(results
            .take_while(|&r| r != NOT_RUN)
            .map(|r| r as i64)
            .collect())
    }

    fn table(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(self.entries.len() * ENTRY);
        for e in &self.entries {
            t.extend_from_slice(&e.nr.to_le_bytes());
            for a in e.args {
                t.extend_from_slice(&a.to_le_bytes());
            }
            t.extend_from_slice(&NOT_RUN.to_le_bytes());
        }
        t
    }

    /// Points the thread at the loop, lets it run and waits for the loop's SIGSTOP. The
    /// stops on the way are passed over: a clone event for each thread a queued clone3 made
    /// (`thread::create_others`), a signal the thread takes, a group stop.
    fn resume(&self, tid: i32) -> io::Result<()> {
        let t = Pid::from_raw(tid);
        let mut regs = ptrace::getregs(t)?;
        regs.rip = self.area;
        regs.orig_rax = u64::MAX;
        (regs.r12, regs.r13) = (self.area + TABLE_OFF, self.entries.len() as u64);
        ptrace::setregs(t, regs)?;
        // Bounded: at most MAX_CALLS clone events, and a few other stops.
        for _ in 0..MAX_CALLS + 4096 {
            ptrace::cont(t, None)?;
            let status = sys::waitpid(tid, libc::__WALL)?;
            if !libc::WIFSTOPPED(status) {
                return Err(io::Error::other(format!(
                    "thread {tid} ended during injected calls"
                )));
            }
            if status >> 16 == 0 && libc::WSTOPSIG(status) == libc::SIGSTOP {
                return Ok(());
            }
        }
        Err(io::Error::other(format!(
            "thread {tid} never finished its injected calls"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_fails_on_errors_and_on_another_value_than_expected() {
        assert!(check_result("x", 0, None).is_ok());
        assert!(check_result("x", 0x7fff_0000_0000, None).is_ok());
        let e = check_result("setgroups", -1, None).unwrap_err().to_string();
        assert!(e.starts_with("setgroups: Operation not permitted"), "{e}");
        assert!(check_result("setfsuid", 1000, Some(1000)).is_ok());
        let e = check_result("setfsuid", 0, Some(1000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("setfsuid: Operation not permitted"), "{e}");
        // -4096 is no errno: a value (setfsuid of a huge id comes back positive anyway).
        assert!(check_result("x", -4096, None).is_ok());
    }

    /// A child stopped under our ptrace with every signal blocked, as a restored thread is;
    /// killed on drop.
    struct Stopped(i32);

    impl Stopped {
        fn fork() -> Stopped {
            // SAFETY: the child makes only async-signal-safe calls, then stops for good.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: as above.
                unsafe {
                    let mut all: libc::sigset_t = std::mem::zeroed();
                    libc::sigfillset(&mut all);
                    libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
                    libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                    libc::raise(libc::SIGSTOP);
                    loop {
                        libc::pause();
                    }
                }
            }
            assert!(pid > 0);
            let st = sys::waitpid(pid, libc::__WALL).unwrap();
            assert!(libc::WIFSTOPPED(st));
            ptrace::setoptions(
                Pid::from_raw(pid),
                ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_EXITKILL,
            )
            .unwrap();
            Stopped(pid)
        }
    }

    impl Drop for Stopped {
        fn drop(&mut self) {
            // SAFETY: our own child.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
            let _ = sys::waitpid(self.0, libc::__WALL);
        }
    }

    /// The loop itself, in a real stopped process (natively: no module needed): calls run in
    /// order with their data, the first failure stops the batch and is named, a batch runs
    /// again in the same area, and the area goes away.
    #[test]
    fn a_batch_runs_in_a_stopped_process_and_stops_at_the_first_failure() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let child = Stopped::fork();
        let pid = child.0;
        let inj = Injector::find(pid).unwrap();
        let area = Area::map(&inj, pid).expect("an anonymous RWX mapping in the child");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains(&format!("{:x}-", area.addr)), "{maps}");

        let mut b = area.batch();
        b.call("getpid", libc::SYS_getpid, [0; 6], Some(pid.into()))
            .unwrap();
        let at = b.put(b"from the batch", "data").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&w) as u64;
        b.call("write", libc::SYS_write, [fd, at, 14, 0, 0, 0], Some(14))
            .unwrap();
        b.call(
            "closing nothing",
            libc::SYS_close,
            [u64::MAX, 0, 0, 0, 0, 0],
            None,
        )
        .unwrap();
        b.call("after the failure", libc::SYS_getpid, [0; 6], None)
            .unwrap();
        let e = b.run(&inj, pid).unwrap_err().to_string();
        assert!(e.starts_with("closing nothing: Bad file descriptor"), "{e}");
        let mut got = [0u8; 14];
        nix::unistd::read(&r, &mut got).unwrap();
        assert_eq!(&got, b"from the batch");

        let mut again = area.batch();
        again
            .call("gettid", libc::SYS_gettid, [0; 6], Some(pid.into()))
            .unwrap();
        again.run(&inj, pid).unwrap();
        // A result other than the one expected fails too.
        let mut wrong = area.batch();
        wrong
            .call("getppid", libc::SYS_getppid, [0; 6], Some(1))
            .unwrap();
        let e = wrong.run(&inj, pid).unwrap_err().to_string();
        assert!(e.starts_with("getppid: Operation not permitted"), "{e}");

        let addr = area.addr;
        area.unmap(&inj, pid).unwrap();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(!maps.contains(&format!("{addr:x}-")), "{maps}");
    }

    #[test]
    fn a_batch_lays_out_its_table_and_data_in_the_area() {
        let area = Area { addr: 0x10_0000 };
        let mut b = area.batch();
        let first = b.put(&[1, 2, 3], "a").unwrap();
        let second = b.put(&[4; 20], "b").unwrap();
        assert_eq!(first, 0x10_0000 + DATA_OFF);
        assert_eq!(second, first + 16, "16-byte aligned, after the first");
        b.call("c", 39, [1, 2, 3, 4, 5, 6], None).unwrap();
        let t = b.table();
        assert_eq!(t.len(), ENTRY);
        assert_eq!(i64::from_le_bytes(t[..8].try_into().unwrap()), 39);
        assert_eq!(u64::from_le_bytes(t[48..56].try_into().unwrap()), 6);
        assert_eq!(u64::from_le_bytes(t[56..64].try_into().unwrap()), NOT_RUN);
        assert!(b.put(&vec![0; AREA_LEN as usize], "huge").is_err());
        for _ in 1..MAX_CALLS {
            b.call("c", 39, [0; 6], None).unwrap();
        }
        assert!(b.call("one too many", 39, [0; 6], None).is_err());
    }
}
