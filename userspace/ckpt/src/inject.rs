//! Making a stopped, traced thread of a restored process run one system call.
//!
//! Some state can only be set by a thread on itself (a new sibling thread, its robust list,
//! alternate signal stack, rseq area). After the restore, the process's own code is in place but
//! ckpt's is gone, so the tracer points the thread at a `syscall` instruction of the process (in
//! its vDSO), lets it execute exactly that, and takes the result at the syscall-exit stop. The
//! thread's final registers are set afterwards, so the detour leaves no trace.

use crate::{proc, sys};
use nix::sys::ptrace;
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;

pub struct Injector {
    pid: i32,
    /// Address of a `syscall` instruction (0f 05) in the tracee.
    gadget: u64,
}

impl Injector {
    /// Finds a `syscall` instruction in the [vdso] of `pid`, or in another executable mapping.
    pub fn find(pid: i32) -> io::Result<Injector> {
        let maps = proc::maps(&pid.to_string())?;
        let mem = OpenOptions::new()
            .read(true)
            .open(format!("/proc/{pid}/mem"))?;
        let mut candidates: Vec<&proc::MapEntry> =
            maps.iter().filter(|m| m.name == "[vdso]").collect();
        candidates.extend(
            maps.iter()
                .filter(|m| m.exec && m.name != "[vdso]" && m.name != "[vsyscall]"),
        );
        for m in candidates {
            let mut buf = vec![0u8; (m.end - m.start).min(1 << 20) as usize];
            if mem.read_exact_at(&mut buf, m.start).is_err() {
                continue;
            }
            if let Some(i) = buf.windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(Injector {
                    pid,
                    gadget: m.start + i as u64,
                });
            }
        }
        Err(io::Error::other(
            "no syscall instruction found in the restored process",
        ))
    }

    /// Writes `data` at `addr` of the tracee.
    pub fn poke(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        let mem = OpenOptions::new()
            .write(true)
            .open(format!("/proc/{}/mem", self.pid))?;
        mem.write_all_at(data, addr)
    }

    /// Runs syscall `nr` with `args` in thread `tid` (which must be in a ptrace stop) and
    /// returns its result (negative: -errno). Returns also the new tid reported by a
    /// PTRACE_EVENT_CLONE on the way, if any. The thread is left at the syscall-exit stop.
    pub fn syscall(&self, tid: i32, nr: i64, args: [u64; 6]) -> io::Result<(i64, Option<i32>)> {
        let mut regs = ptrace::getregs(Pid::from_raw(tid))?;
        regs.rip = self.gadget;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) =
            (args[0], args[1], args[2], args[3], args[4], args[5]);
        ptrace::setregs(Pid::from_raw(tid), regs)?;
        let mut syscall_stops = 0;
        let mut new_tid = None;
        for _ in 0..16 {
            ptrace::syscall(Pid::from_raw(tid), None)?;
            let status = sys::waitpid(tid, libc::__WALL)?;
            if !libc::WIFSTOPPED(status) {
                return Err(io::Error::other(format!(
                    "thread {tid} ended during an injected syscall"
                )));
            }
            if status >> 16 == libc::PTRACE_EVENT_CLONE {
                new_tid = Some(ptrace::getevent(Pid::from_raw(tid))? as i32);
                continue;
            }
            if libc::WSTOPSIG(status) == (libc::SIGTRAP | 0x80) {
                syscall_stops += 1;
                if syscall_stops == 2 {
                    let regs = ptrace::getregs(Pid::from_raw(tid))?;
                    return Ok((regs.rax as i64, new_tid));
                }
            }
        }
        Err(io::Error::other(format!(
            "thread {tid} never finished an injected syscall"
        )))
    }
}

impl Injector {
    /// Reads `len` bytes at `addr` of the tracee.
    pub fn peek(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mem = OpenOptions::new()
            .read(true)
            .open(format!("/proc/{}/mem", self.pid))?;
        let mut buf = vec![0u8; len];
        mem.read_exact_at(&mut buf, addr)?;
        Ok(buf)
    }
}
