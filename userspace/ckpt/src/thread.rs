//! Threads: registers, XSAVE state, signal mask, pending signals, alternate signal stack,
//! robust futex list, rseq area, clear_child_tid and name, dump and restore.
//!
//! Dump: ptrace (registers, XSAVE in the portable layout, mask, rseq configuration), the
//! module (sigaltstack, clear_child_tid), get_robust_list and /proc. Restore: the main
//! thread's per-thread state is set by the restorer itself before the address space is
//! replaced ([`restore_main_in_restorer`]); the other threads are created afterwards by the
//! main thread with their original tids (clone3 injected through ptrace) and set their own
//! state the same way ([`create_others`]); registers, XSAVE state and masks go in last,
//! through ptrace, where the kernel validates them ([`set_final_state`]).

use crate::batch::{self, Area, CallSink};
use crate::creds::{Creds, Giver};
use crate::device::Device;
use crate::errors::{checkpoint_io, restore_io, CheckpointError, RestoreError};
use crate::image::{section_is, Section, SectionKind};
use crate::inject::Injector;
use crate::{proc, sys};
use nix::sys::ptrace;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A thread's FPU/SSE/AVX state in the portable XSAVE layout (PTRACE_GETREGSET
/// NT_X86_XSTATE).
pub const XSTATE: SectionKind = SectionKind::named("xstate");

/// The x86-64 general registers (`struct user_regs_struct`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// Conversions between `Regs` and the kernel's `user_regs_struct`, with the field list once.
macro_rules! regs_conversions {
    ($($field:ident),* $(,)?) => {
        impl From<&libc::user_regs_struct> for Regs {
            fn from(r: &libc::user_regs_struct) -> Self {
                Regs { $($field: r.$field,)* }
            }
        }
    };
}
regs_conversions!(
    r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs,
    eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs,
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Thread {
    pub tid: i32,
    pub regs: Regs,
    /// Index of this thread's `XSTATE` section.
    pub xstate_section: usize,
    pub sigmask: u64,
    pub sigaltstack: SigAltStack,
    pub clear_child_tid: u64,
    pub robust_list: RobustList,
    pub rseq: Option<Rseq>,
    /// Signals pending for this thread only (a mask, bit n-1 for signal n).
    #[serde(default)]
    pub pending: u64,
    /// The thread's name (/proc/PID/task/TID/comm).
    #[serde(default)]
    pub comm: String,
    /// The kernel's tid when checkpointed, if it differed from `tid` (a thread of a restored
    /// process that could not get its original tid back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_tid: Option<i32>,
    /// The thread's credentials (absent in images of older versions: then the restored
    /// thread keeps the restorer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds: Option<Creds>,
    /// The thread has its own fd table and fs context (created without CLONE_FILES and
    /// CLONE_FS, like the interceptor's control thread); restored with an empty fd table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_files: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SigAltStack {
    pub sp: u64,
    pub size: u64,
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RobustList {
    pub head: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// SS_AUTODISARM: the only sigaltstack flag that is a setting (SS_ONSTACK and SS_DISABLE are
/// status bits).
const SS_AUTODISARM: u32 = 1 << 31;

// ---------------------------------------------------------------------------------------------
// Checkpoint

/// A frozen thread's state; its XSAVE blob still to be written (see [`Captured::record`]).
pub struct Captured {
    pub thread: Thread,
    pub xstate: Vec<u8>,
}

/// Reads everything of frozen thread `tid` of `pid`.
pub fn capture(dev: &Device, pid: i32, tid: i32) -> Result<Captured, CheckpointError> {
    let io = |what: &str| checkpoint_io(pid, what.to_owned());
    let regs = ptrace::getregs(Pid::from_raw(tid)).map_err(|e| io("PTRACE_GETREGS")(e.into()))?;
    let xstate = sys::ptrace_get_xstate(tid).map_err(io("PTRACE_GETREGSET NT_X86_XSTATE"))?;
    let sigmask = sys::ptrace_get_sigmask(tid).map_err(io("PTRACE_GETSIGMASK"))?;
    let c = sys::ptrace_get_rseq(tid).map_err(io("PTRACE_GET_RSEQ_CONFIGURATION"))?;
    let rseq = (c.rseq_abi_pointer != 0).then_some(Rseq {
        addr: c.rseq_abi_pointer,
        len: c.rseq_abi_size,
        sig: c.signature,
    });
    let (head, len) = sys::get_robust_list(tid).map_err(io("get_robust_list"))?;
    let ts = dev.dump_task(tid)?;
    // One read of the status file for both (a 500-thread dump read it twice per thread).
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .map_err(io("reading the thread's status"))?;
    let (pending, _) = proc::pending_signals_in(&status).map_err(io("reading pending signals"))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_default();
    let creds =
        crate::creds::from_status(&status, (pid, tid)).map_err(io("reading credentials"))?;
    let thread = Thread {
        tid,
        regs: Regs::from(&regs),
        xstate_section: 0,
        sigmask,
        sigaltstack: SigAltStack {
            sp: ts.sas_ss_sp,
            size: ts.sas_ss_size,
            flags: ts.sas_ss_flags,
        },
        clear_child_tid: ts.clear_child_tid,
        robust_list: RobustList { head, len },
        rseq,
        pending,
        comm,
        kernel_tid: None,
        creds: Some(creds),
        own_files: proc::has_own_files(pid, tid),
    };
    Ok(Captured { thread, xstate })
}

impl Captured {
    /// Writes the XSAVE blob into the image and returns the thread's record, with its ids as
    /// the application sees them (`to_virtual`: they differ from the kernel's after a
    /// restore that could not get the original ones back).
    pub fn record(
        self,
        w: &mut crate::image::ImageWriter,
        to_virtual: impl Fn(i32) -> i32,
    ) -> std::io::Result<Thread> {
        let mut t = self.thread;
        t.xstate_section = w.add_blob(XSTATE, &self.xstate)?;
        let kernel = t.tid;
        t.tid = to_virtual(kernel);
        t.kernel_tid = (t.tid != kernel).then_some(kernel);
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------------
// Restore

/// In the restorer, before the address space is replaced: the main thread's sigaltstack,
/// robust list and clear_child_tid; and glibc's rseq registration of the restorer dropped
/// (the kernel would keep writing to that address in the restored memory; the image's area
/// is registered after the restore by the restored thread itself, see [`register_rseq`]).
pub fn restore_main_in_restorer(t: &Thread) -> Result<(), (&'static str, std::io::Error)> {
    // The kernel keeps no flags for "no alternate stack": a zero size means none. ckpt itself
    // has one (Rust's overflow handler), so it is set either way.
    let ss = t.sigaltstack;
    if ss.size == 0 {
        sys::sigaltstack(0, 0, libc::SS_DISABLE as u32)
    } else {
        sys::sigaltstack(ss.sp, ss.size, ss.flags & SS_AUTODISARM)
    }
    .map_err(|e| ("sigaltstack", e))?;
    if t.robust_list.head != 0 {
        sys::set_robust_list(t.robust_list.head, t.robust_list.len)
            .map_err(|e| ("set_robust_list", e))?;
    }
    sys::set_tid_address(t.clear_child_tid);
    sys::unregister_own_rseq().map_err(|e| ("unregistering ckpt's own rseq area", e))?;
    Ok(())
}

/// Scratch memory for injected syscalls' arguments: below the main thread's saved stack
/// pointer, past the red zone; nothing live is there.
pub fn scratch_area(threads: &[Thread]) -> u64 {
    threads
        .first()
        .map_or(0, |t| (t.regs.rsp.wrapping_sub(1024)) & !15)
}

/// Runs injected syscall `nr` in `tid`; a negative result is an error naming `what`.
pub fn call(
    inj: &Injector,
    tid: i32,
    what: &str,
    nr: i64,
    args: [u64; 6],
) -> Result<i64, RestoreError> {
    let (r, _) = inj.syscall(tid, nr, args).map_err(restore_io(what))?;
    if r < 0 {
        return Err(restore_io(what)(std::io::Error::from_raw_os_error(
            -r as i32,
        )));
    }
    Ok(r)
}

/// Creates the process's threads after the first, in order, by making the main thread run
/// clone3 (through `inj`); each new thread then sets its own state (robust list, alternate
/// signal stack, rseq area, name, credentials) in one batch of injected calls
/// (`crate::batch`; one by one where the process may not have the batch's area). Returns
/// their tids; all stay stopped for the caller.
pub fn create_others(
    inj: &Injector,
    pid: i32,
    threads: &[Thread],
    (area, giver): (Option<&Area>, &Giver),
) -> Result<Vec<i32>, RestoreError> {
    ptrace::setoptions(
        Pid::from_raw(pid),
        ptrace::Options::PTRACE_O_TRACESYSGOOD
            | ptrace::Options::PTRACE_O_EXITKILL
            | ptrace::Options::PTRACE_O_TRACECLONE,
    )
    .map_err(|e| restore_io("PTRACE_SETOPTIONS")(e.into()))?;
    let scratch = scratch_area(threads);
    let others = threads.get(1..).unwrap_or_default();
    let mut tids = Vec::new();
    while tids.len() < others.len() {
        let rest = &others[tids.len()..];
        let (made, whole) = match area {
            Some(area) => clone_in_batch(inj, pid, area, rest)?,
            None => (Vec::new(), false),
        };
        tids.extend(made);
        if !whole {
            // One by one: without an area, or the thread whose tid is taken (the batch
            // stopped there; another batch would stop there again).
            tids.push(clone_thread(inj, pid, &others[tids.len()], scratch)?);
        }
    }
    for (t, &tid) in others.iter().zip(&tids) {
        wait_first_stop(tid)?;
        batch::run_in_thread(inj, (tid, scratch), area, |calls| {
            own_state(calls, t, giver)
        })?;
    }
    Ok(tids)
}

/// The most threads one batch makes: each is a clone3 entry and 104 bytes of arguments.
const CLONES_PER_BATCH: usize = 512;

/// Makes the main thread run clone3 for the first threads of `threads` in one batch (one
/// ptrace stop per thread, its clone event, where injecting each call took three), each
/// with its own tid. Stops at the first that fails: returns the tids of those made before
/// it, which may be none, and whether the batch made all it was given (false: the next
/// thread's tid is taken, left to [`clone_thread`]); any other failure is the error. The
/// new threads are stopped, their first stop not yet waited for.
fn clone_in_batch(
    inj: &Injector,
    pid: i32,
    area: &Area,
    threads: &[Thread],
) -> Result<(Vec<i32>, bool), RestoreError> {
    let mut batch = area.batch();
    let some = &threads[..threads.len().min(CLONES_PER_BATCH)];
    for t in some {
        let set_tid = batch.put(&i64::from(t.tid).to_le_bytes(), "writing clone3 arguments")?;
        let args = clone_args(t, set_tid);
        let at = batch.put(&args, "writing clone3 arguments")?;
        batch.call(
            "creating a thread",
            libc::SYS_clone3,
            [at, 88, 0, 0, 0, 0],
            None,
        )?;
    }
    let results = batch.run_until_failure(inj, pid)?;
    let made: Vec<i32> = results
        .iter()
        .take_while(|&&r| r > 0)
        .map(|&r| r as i32)
        .collect();
    match results.get(made.len()) {
        Some(&r) if r != -(libc::EEXIST as i64) => Err(restore_io("creating a thread")(
            std::io::Error::from_raw_os_error(-r as i32),
        )),
        _ => {
            let whole = made.len() == some.len();
            Ok((made, whole))
        }
    }
}

/// clone3's arguments (88 bytes) for thread `t`: a thread of the process, its tid given by
/// the pid_t at `set_tid` (0: any).
fn clone_args(t: &Thread, set_tid: u64) -> Vec<u8> {
    const CLONE_FLAGS: u64 = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_CHILD_CLEARTID) as u64;
    let mut args = [0u64; 11];
    args[0] = if t.own_files {
        CLONE_FLAGS & !((libc::CLONE_FILES | libc::CLONE_FS) as u64)
    } else {
        CLONE_FLAGS
    };
    args[2] = t.clear_child_tid; // child_tid, with CLONE_CHILD_CLEARTID
    if set_tid != 0 {
        args[8] = set_tid;
        args[9] = 1; // set_tid_size
    }
    args.iter().flat_map(|a| a.to_le_bytes()).collect()
}

/// Waits for a new thread's first stop (it was auto-attached, stopped before running).
fn wait_first_stop(tid: i32) -> Result<(), RestoreError> {
    let wait = restore_io("waiting for a new thread");
    match sys::waitpid(tid, libc::__WALL) {
        Ok(status) if libc::WIFSTOPPED(status) => Ok(()),
        Ok(_) => Err(wait(std::io::Error::other("it did not stop"))),
        Err(e) => Err(wait(e)),
    }
}

/// Makes the main thread run clone3 for thread `t` (its original tid when free, else another,
/// with a warning). Returns its tid; its first stop is not waited for.
fn clone_thread(inj: &Injector, pid: i32, t: &Thread, scratch: u64) -> Result<i32, RestoreError> {
    let io = restore_io("creating a thread");
    let mut bytes = clone_args(t, scratch + 96);
    bytes.resize(96, 0);
    bytes.extend_from_slice(&i64::from(t.tid).to_le_bytes());
    inj.poke(scratch, &bytes)
        .map_err(restore_io("writing clone3 arguments"))?;
    let clone3 = [scratch, 88, 0, 0, 0, 0];
    let (mut ret, mut new) = inj.syscall(pid, libc::SYS_clone3, clone3).map_err(io)?;
    if ret == -(libc::EEXIST as i64) {
        // The tid is taken: any tid will do (the program's cached tid will be stale).
        eprintln!(
            "ckpt: thread id {} was taken; the thread was restored with another",
            t.tid
        );
        // Both set_tid (offset 64) and set_tid_size (72): a pointer with size 0 is EINVAL.
        inj.poke(scratch + 64, &[0u8; 16])
            .map_err(restore_io("writing clone3 arguments"))?;
        (ret, new) = inj
            .syscall(pid, libc::SYS_clone3, clone3)
            .map_err(restore_io("creating a thread"))?;
    }
    if ret < 0 {
        return Err(restore_io("creating a thread")(
            std::io::Error::from_raw_os_error(-ret as i32),
        ));
    }
    Ok(new.unwrap_or(ret as i32))
}

/// A new thread's own per-thread state, as calls it makes itself.
fn own_state(sink: &mut dyn CallSink, t: &Thread, giver: &Giver) -> Result<(), RestoreError> {
    if t.own_files {
        // It got a copy of the process's fd table: it had none of those.
        let all = [0, u64::from(u32::MAX), 0, 0, 0, 0];
        let what = "emptying a thread's own fd table";
        sink.call(what, libc::SYS_close_range, all, None)?;
    }
    if t.robust_list.head != 0 {
        let args = [t.robust_list.head, t.robust_list.len, 0, 0, 0, 0];
        let what = "set_robust_list in a thread";
        sink.call(what, libc::SYS_set_robust_list, args, None)?;
    }
    if t.sigaltstack.size != 0 {
        let mut ss = Vec::new();
        ss.extend_from_slice(&t.sigaltstack.sp.to_le_bytes());
        ss.extend_from_slice(&(t.sigaltstack.flags & SS_AUTODISARM).to_le_bytes());
        ss.extend_from_slice(&0u32.to_le_bytes());
        ss.extend_from_slice(&t.sigaltstack.size.to_le_bytes());
        let at = sink.put(&ss, "writing sigaltstack arguments")?;
        let what = "sigaltstack in a thread";
        sink.call(what, libc::SYS_sigaltstack, [at, 0, 0, 0, 0, 0], None)?;
    }
    if let Some(rs) = t.rseq {
        let args = [rs.addr, u64::from(rs.len), 0, u64::from(rs.sig), 0, 0];
        sink.call("registering the rseq area", libc::SYS_rseq, args, None)?;
    }
    if !t.comm.is_empty() {
        let at = sink.put(&name_bytes(&t.comm), "writing the thread's name")?;
        let args = [libc::PR_SET_NAME as u64, at, 0, 0, 0, 0];
        sink.call("naming a thread", libc::SYS_prctl, args, None)?;
    }
    match &t.creds {
        Some(c) => giver.give(sink, t.tid, c),
        None => Ok(()),
    }
}

/// A thread name as PR_SET_NAME takes it: at most 15 bytes and a NUL.
fn name_bytes(comm: &str) -> Vec<u8> {
    let mut name = comm.as_bytes()[..comm.len().min(15)].to_vec();
    name.push(0);
    name
}

/// The thread registers its rseq area (the main thread's only once its memory is back).
pub fn register_rseq(inj: &Injector, tid: i32, t: &Thread) -> Result<(), RestoreError> {
    if let Some(rs) = t.rseq {
        let args = [rs.addr, u64::from(rs.len), 0, u64::from(rs.sig), 0, 0];
        call(inj, tid, "registering the rseq area", libc::SYS_rseq, args)?;
    }
    Ok(())
}

/// The main thread's name: a thread can only rename itself (prctl PR_SET_NAME; the others
/// did in `create_others`). Informational, so a failure here is not worth the process.
/// `main_comm` names a main thread without a name.
pub fn set_main_name(inj: &Injector, pid: i32, main: &Thread, main_comm: &str) {
    let comm = if main.comm.is_empty() {
        main_comm
    } else {
        &main.comm
    };
    let scratch = scratch_area(std::slice::from_ref(main));
    if !comm.is_empty() && inj.poke(scratch, &name_bytes(comm)).is_ok() {
        let args = [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0];
        let _ = inj.syscall(pid, libc::SYS_prctl, args);
    }
}

/// The registers to resume with, and whether the kernel is to decide the restart of the
/// system call the thread was in. A thread stopped inside a call shows the kernel's internal
/// restart code in rax. ERESTARTSYS, ERESTARTNOINTR and ERESTARTNOHAND are left there with
/// the call's number: released from a stop inside get_signal (`set_final_state`), the kernel
/// itself restarts the call, or fails it with EINTR if a signal handler runs first, as it
/// would have without the checkpoint. ERESTART_RESTARTBLOCK (a sleep) needs the kernel's
/// restart block, which a restored task does not have: rewound here to be made again (with
/// its full duration: the remaining time is not saved).
fn resume_regs(r: &Regs, now: &libc::user_regs_struct) -> (libc::user_regs_struct, bool) {
    let mut out = *now;
    let in_call = (r.orig_rax as i64) >= 0;
    let by_kernel = in_call && sys::KERNEL_RESTARTED.contains(&(r.rax as i64));
    let (mut rax, mut rip) = (r.rax, r.rip);
    if in_call && !by_kernel && sys::RESTART_CODES.contains(&(r.rax as i64)) {
        rax = r.orig_rax;
        rip = r.rip - 2;
    }
    (out.r15, out.r14, out.r13, out.r12, out.rbp, out.rbx) =
        (r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx);
    (out.r11, out.r10, out.r9, out.r8) = (r.r11, r.r10, r.r9, r.r8);
    (out.rax, out.rcx, out.rdx, out.rsi, out.rdi) = (rax, r.rcx, r.rdx, r.rsi, r.rdi);
    // No syscall-restart processing on the way out, unless the kernel is to decide it.
    out.orig_rax = if by_kernel { r.orig_rax } else { u64::MAX };
    (out.rip, out.eflags, out.rsp) = (rip, r.eflags, r.rsp);
    (out.fs_base, out.gs_base) = (r.fs_base, r.gs_base);
    // cs, ss and the data segment selectors stay those the kernel gave this task.
    (out, by_kernel)
}

/// Last of all: each thread's registers, XSAVE state and signal mask, through ptrace. A
/// thread whose call the kernel is to restart is first taken to a stop inside get_signal (an
/// interrupt stop), from which its release runs the kernel's restart logic on these
/// registers.
pub fn set_final_state(
    (pid, threads): (i32, &[Thread]),
    tids: &[i32],
    xstates: &[Vec<u8>],
) -> Result<(), RestoreError> {
    for ((t, &tid), xstate) in threads.iter().zip(tids).zip(xstates) {
        let ptid = Pid::from_raw(tid);
        let now = ptrace::getregs(ptid).map_err(|e| restore_io("PTRACE_GETREGS")(e.into()))?;
        let (regs, by_kernel) = resume_regs(&t.regs, &now);
        if by_kernel {
            let mut held = Vec::new();
            ptrace::interrupt(ptid)
                .and_then(|()| ptrace::cont(ptid, None))
                .map_err(std::io::Error::from)
                .and_then(|()| crate::flush::to_interrupt_stop(tid, &mut held))
                .map_err(restore_io("stopping a thread inside get_signal"))?;
            // Signals that came meanwhile: pending again, delivered once it runs.
            for sig in held {
                let _ = sys::tgkill(pid, tid, sig);
            }
        }
        ptrace::setregs(ptid, regs).map_err(|e| restore_io("PTRACE_SETREGS")(e.into()))?;
        sys::ptrace_set_xstate(tid, xstate)
            .map_err(restore_io("PTRACE_SETREGSET NT_X86_XSTATE"))?;
        sys::ptrace_set_sigmask(tid, t.sigmask).map_err(restore_io("PTRACE_SETSIGMASK"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Each thread's XSAVE section exists and is one; credentials are of a sane size.
pub fn validate(threads: &[Thread], sections: &[Section]) -> Result<(), String> {
    if threads.is_empty() {
        return Err("a process has no thread".into());
    }
    for t in threads {
        if t.creds.as_ref().is_some_and(|c| !c.valid()) {
            return Err(format!("thread {}: too many groups", t.tid));
        }
        if !section_is(sections, t.xstate_section, &XSTATE) {
            return Err(format!("thread {}: bad xstate section", t.tid));
        }
    }
    Ok(())
}
