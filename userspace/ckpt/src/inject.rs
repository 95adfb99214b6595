//! Making a stopped, traced thread of a restored process run one system call.
//!
//! Some state can only be set by a thread on itself (a new sibling thread, its robust list,
//! alternate signal stack, rseq area). After the restore, the process's own code is in place but
//! ckpt's is gone, so the tracer points the thread at a `syscall` instruction of the process (in
//! its vDSO), lets it execute exactly that, and takes the result at the syscall-exit stop. The
//! thread's final registers are set afterwards, so the detour leaves no trace.

use crate::detour::Detour;
use crate::{proc, sys};
use nix::sys::ptrace;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;

pub struct Injector {
    pid: i32,
    /// Address of a `syscall` instruction (0f 05) in the tracee.
    gadget: u64,
}

/// The address of the first `syscall` instruction (0f 05) in the first MiB of `start..end`
/// of the process whose /proc/PID/mem `mem` is, if it can be read.
fn syscall_in(mem: &std::fs::File, (start, end): (u64, u64)) -> Option<u64> {
    let mut buf = vec![0u8; end.saturating_sub(start).min(1 << 20) as usize];
    mem.read_exact_at(&mut buf, start).ok()?;
    let i = buf.windows(2).position(|w| w == [0x0f, 0x05])?;
    Some(start + i as u64)
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
        candidates
            .into_iter()
            .find_map(|m| syscall_in(&mem, (m.start, m.end)))
            .map(|gadget| Injector { pid, gadget })
            .ok_or_else(|| io::Error::other("no syscall instruction found in the restored process"))
    }

    /// As [`Injector::find`], looking first in `vdso` (start, end): where a restore has just
    /// put the vDSO (the image's place, `crate::vdso`), so that /proc/PID/maps is read only
    /// if it holds none. That file is read a page at a time, each read walking the mappings:
    /// 50-80 ms for a process with 10,000 of them, in the emulated guest.
    pub fn find_in(pid: i32, vdso: Option<(u64, u64)>) -> io::Result<Injector> {
        if let Some(range) = vdso {
            let mem = OpenOptions::new()
                .read(true)
                .open(format!("/proc/{pid}/mem"))?;
            if let Some(gadget) = syscall_in(&mem, range) {
                return Ok(Injector { pid, gadget });
            }
        }
        Injector::find(pid)
    }

    /// Writes `data` at `addr` of the tracee: by process_vm_writev, whose faults may wait
    /// (a lazy restore's absent pages arrive from the page server, where /proc/PID/mem
    /// would fail with EIO), else through /proc/PID/mem, which also writes read-only pages.
    pub fn poke(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        let local = [std::io::IoSlice::new(data)];
        let remote = [RemoteIoVec {
            base: addr as usize,
            len: data.len(),
        }];
        let pid = Pid::from_raw(self.pid);
        if process_vm_writev(pid, &local, &remote).ok() == Some(data.len()) {
            return Ok(());
        }
        let mem = OpenOptions::new()
            .write(true)
            .open(format!("/proc/{}/mem", self.pid))?;
        mem.write_all_at(data, addr)
    }

    /// Runs syscall `nr` with `args` in thread `tid` (which must be in a ptrace stop) and
    /// returns its result (negative: -errno). Returns also the new tid reported by a
    /// PTRACE_EVENT_CLONE on the way, if any. The thread is left at the syscall-exit stop.
    /// A signal the thread would take on the way is suppressed (a restored process has all
    /// of them blocked until it is let go).
    pub fn syscall(&self, tid: i32, nr: i64, args: [u64; 6]) -> io::Result<(i64, Option<i32>)> {
        self.run((tid, self.gadget), nr, args, None)
    }

    /// `syscall` for a live process: the signals the thread takes on the way are kept in
    /// `held` with their siginfo (for the caller to queue again), not lost.
    pub fn syscall_holding(
        &self,
        tid: i32,
        nr: i64,
        args: [u64; 6],
        held: &mut Vec<libc::siginfo_t>,
    ) -> io::Result<i64> {
        Ok(self.run((tid, self.gadget), nr, args, Some(held))?.0)
    }

    /// `syscall` through the `syscall` instruction at `site`, for a live process: the
    /// signals the thread takes on the way are kept in `held` with their siginfo (for the
    /// caller to queue again), not lost.
    fn run(
        &self,
        (tid, site): (i32, u64),
        nr: i64,
        args: [u64; 6],
        mut held: Option<&mut Vec<libc::siginfo_t>>,
    ) -> io::Result<(i64, Option<i32>)> {
        let t = Pid::from_raw(tid);
        let mut regs = ptrace::getregs(t)?;
        regs.rip = site;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) =
            (args[0], args[1], args[2], args[3], args[4], args[5]);
        ptrace::setregs(t, regs)?;
        // Two stops (entry, exit) per call. Single-stepping the `syscall` instruction would
        // take one, but its trap is a forced SIGTRAP: with every signal blocked (a restored
        // thread), the kernel resets the program's SIGTRAP handler to the default (tried:
        // 500 threads restored 15 % faster, and the interceptor tests' handlers lost).
        let mut syscall_stops = 0;
        let mut new_tid = None;
        // Bounded: each pending signal costs a stop (real-time ones queue).
        for _ in 0..4096 {
            ptrace::syscall(t, None)?;
            let status = sys::waitpid(tid, libc::__WALL)?;
            if !libc::WIFSTOPPED(status) {
                return Err(io::Error::other(format!(
                    "thread {tid} ended during an injected syscall"
                )));
            }
            if status >> 16 == libc::PTRACE_EVENT_CLONE {
                new_tid = Some(ptrace::getevent(t)? as i32);
                continue;
            }
            if libc::WSTOPSIG(status) == (libc::SIGTRAP | 0x80) {
                syscall_stops += 1;
                if syscall_stops == 2 {
                    let regs = ptrace::getregs(t)?;
                    return Ok((regs.rax as i64, new_tid));
                }
            } else if status >> 16 == 0 {
                // A signal-delivery stop: resuming with no signal suppresses it.
                if let Some(held) = held.as_deref_mut() {
                    held.push(ptrace::getsiginfo(t)?);
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
    /// As `poke` does, by process_vm_readv first.
    pub fn peek(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let remote = [RemoteIoVec {
            base: addr as usize,
            len,
        }];
        let pid = Pid::from_raw(self.pid);
        let mut local = [std::io::IoSliceMut::new(&mut buf)];
        if process_vm_readv(pid, &mut local, &remote).ok() == Some(len) {
            return Ok(buf);
        }
        let mem = OpenOptions::new()
            .read(true)
            .open(format!("/proc/{}/mem", self.pid))?;
        mem.read_exact_at(&mut buf, addr)?;
        Ok(buf)
    }
}

/// A frozen thread of a live process, lent to ckpt at checkpoint to run system calls that
/// read state only the process itself can ask for (its timers). Taken, it has its registers,
/// FPU state and the stack memory the arguments use saved; given back, all of that is put
/// back and the thread re-enters an interrupt stop (`flush::put_back`), so that the kernel's
/// restart handling applies when it is let go, as if nothing had happened. Signals it takes
/// meanwhile are queued again as they came (siginfo kept when the kernel allows it). A
/// process with a seccomp filter has it suspended for the thread while lent: an injected
/// call must not be judged (or killed) by it. The calls go through a [`Detour`], so that the
/// thread finds its own way back should ckpt die while it holds it.
pub struct Borrowed {
    inj: Injector,
    tid: i32,
    regs: libc::user_regs_struct,
    xstate: Vec<u8>,
    /// Argument memory below the thread's stack pointer (below the red zone), and what was
    /// there.
    scratch: u64,
    saved: Vec<u8>,
    /// Signals pending for the whole process before: those taken are queued to it again.
    shared_before: u64,
    held: Vec<libc::siginfo_t>,
    /// The ptrace options set while lent.
    options: libc::c_int,
    /// None where it could not be mapped: then the program dies with ckpt (EXITKILL).
    detour: Option<Detour>,
    returned: bool,
}

/// Bytes of argument memory a borrowed thread offers.
pub const SCRATCH_LEN: usize = 256;

impl Borrowed {
    /// Borrows thread `tid` of `pid`, which must be at the interrupt stop of a freeze.
    pub fn take(pid: i32, tid: i32) -> io::Result<Borrowed> {
        let inj = Injector::find(pid)?;
        let regs = ptrace::getregs(Pid::from_raw(tid))?;
        let xstate = sys::ptrace_get_xstate(tid)?;
        let scratch = (regs.rsp.wrapping_sub(1024) & !15).wrapping_sub(SCRATCH_LEN as u64);
        let saved = inj.peek(scratch, SCRATCH_LEN)?;
        let (_, shared_before) = proc::pending_signals(pid)?;
        let seccomp = proc::status_field(pid, "Seccomp").is_ok_and(|v| v.trim() != "0");
        let mut options = libc::PTRACE_O_TRACESYSGOOD;
        if seccomp {
            options |= libc::PTRACE_O_SUSPEND_SECCOMP;
        }
        sys::ptrace_set_options_raw(tid, options | libc::PTRACE_O_EXITKILL).map_err(|e| {
            match seccomp {
                true => io::Error::new(
                    e.kind(),
                    format!("suspending its seccomp filter for ckpt's calls: {e}"),
                ),
                false => e,
            }
        })?;
        let mut lent = Borrowed {
            inj,
            tid,
            regs,
            xstate,
            scratch,
            saved,
            shared_before,
            held: Vec::new(),
            options,
            detour: None,
            returned: false,
        };
        // From here a failure puts the thread back (drop).
        lent.detour = Detour::map(&lent.inj, (pid, tid), &lent.regs, &mut lent.held)?;
        if lent.detour.is_some() {
            sys::ptrace_set_options_raw(tid, options)?;
        }
        Ok(lent)
    }

    /// The `syscall` instruction the calls go through.
    fn site(&self) -> u64 {
        self.detour.as_ref().map_or(self.inj.gadget, Detour::entry)
    }

    /// Where arguments may go: `SCRATCH_LEN` bytes.
    pub fn scratch(&self) -> u64 {
        self.scratch
    }

    pub fn poke(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        self.inj.poke(addr, data)
    }

    pub fn peek(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inj.peek(addr, len)
    }

    /// Runs syscall `nr` in the thread; its result (negative: -errno).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> io::Result<i64> {
        let at = (self.tid, self.site());
        let (r, _) = self.inj.run(at, nr, args, Some(&mut self.held))?;
        Ok(r)
    }

    /// Runs a clone-like syscall `nr` in the thread with the new process traced from its
    /// birth (PTRACE_O_TRACECLONE for the call only: it is stopped before it runs any code,
    /// and the option is not left on the program's thread). Returns the call's result and
    /// the new process's pid, reported by the kernel.
    pub fn syscall_tracing_clone(
        &mut self,
        nr: i64,
        args: [u64; 6],
    ) -> io::Result<(i64, Option<i32>)> {
        let options = self.options | (self.detour.is_none() as i32 * libc::PTRACE_O_EXITKILL);
        sys::ptrace_set_options_raw(self.tid, options | libc::PTRACE_O_TRACECLONE)?;
        let at = (self.tid, self.site());
        let r = self.inj.run(at, nr, args, Some(&mut self.held));
        sys::ptrace_set_options_raw(self.tid, options)?;
        r
    }

    /// Puts everything back (see the type's comment).
    pub fn give_back(mut self) -> io::Result<()> {
        self.put_back()
    }

    fn put_back(&mut self) -> io::Result<()> {
        self.returned = true;
        let tid = self.tid;
        // Until its registers are back, the program dies with ckpt.
        sys::ptrace_set_options_raw(tid, self.options | libc::PTRACE_O_EXITKILL)?;
        // Not unmapped (the error is reported last), it stays: the thread still goes back.
        let unmapped = self
            .detour
            .take()
            .map(|d| d.unmap(&self.inj, tid, &mut self.held));
        crate::flush::put_back(tid, &self.regs, &self.xstate, &mut Vec::new())?;
        sys::ptrace_set_options_raw(tid, libc::PTRACE_O_TRACESYSGOOD)?;
        self.inj.poke(self.scratch, &self.saved)?;
        for info in self.held.drain(..) {
            let sig = info.si_signo;
            let to_process = sig > 0 && sig <= 64 && self.shared_before & (1 << (sig - 1)) != 0;
            let thread = (!to_process).then_some(tid);
            let pid = self.inj.pid;
            if sys::sigqueueinfo(pid, thread, sig, &info).is_err() {
                // Made by the kernel or by kill: the kernel will not take its siginfo back.
                let _ = match thread {
                    Some(tid) => sys::tgkill(pid, tid, sig),
                    None => sys::kill(pid, sig),
                };
            }
        }
        unmapped.unwrap_or(Ok(()))
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if !self.returned {
            let _ = self.put_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own vDSO has a `syscall` instruction (its fallbacks); a range that cannot be read
    /// sends the search to /proc/PID/maps, which finds one all the same.
    #[test]
    fn a_syscall_instruction_is_found_in_the_vdso_given_or_else_by_the_maps() {
        let pid = std::process::id() as i32;
        let maps = proc::maps("self").unwrap();
        let vdso = maps.iter().find(|m| m.name == "[vdso]").expect("a vDSO");
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let at = syscall_in(&mem, (vdso.start, vdso.end)).expect("a syscall in the vDSO");
        assert!((vdso.start..vdso.end - 1).contains(&at));
        let mut two = [0u8; 2];
        mem.read_exact_at(&mut two, at).unwrap();
        assert_eq!(two, [0x0f, 0x05]);
        let inj = Injector::find_in(pid, Some((vdso.start, vdso.end))).unwrap();
        assert_eq!(inj.gadget, at);
        // Page zero is never mapped: the hint fails, the maps are read.
        assert_eq!(syscall_in(&mem, (0, 4096)), None);
        let found = Injector::find_in(pid, Some((0, 4096))).unwrap();
        assert_eq!(found.gadget, Injector::find(pid).unwrap().gadget);
    }
}
