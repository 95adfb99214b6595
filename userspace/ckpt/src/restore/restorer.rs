//! The restorers: one process per process of the image, which becomes it. `ckpt restore`
//! forks the root's; each forks its children's (with their pids, so parent links come back),
//! its zombies, and sets its session and its children's process groups, before it becomes
//! its own process. Groups and sessions whose leader is gone are made by short-lived helper
//! processes with the leader's pid (`crate::groups`): a session's is forked by ckpt (or the
//! pid namespace's init) and forks that session's roots; a group's is a child of the
//! restorer that forks the group's members, gone before that restorer reports. Dying with its parent (PR_SET_PDEATHSIG), signals blocked, it reports its
//! kernel pid to ckpt and stops until ckpt traces it. Then it sets on itself everything that
//! can only be set from inside (fds, directory, umask, limits, personality, handlers, the main
//! thread's per-thread state), moves its vDSO where the image had it, and calls
//! `CKPT_IOC_RESTORE`, in which the module replaces its whole address space with the image's.
//! It never returns: any failure ends it with a message and a non-zero status, before
//! anything of the image runs (its descendants die with it).

use crate::creds::as_fs_user;
use crate::device::Device;
use crate::fds::{Blobs, RestoreCtx, SharedFds};
use crate::manifest::{Manifest, Process};
use crate::memory::MemoryPlan;
use crate::sys;
use crate::tree::Zombie;
use crate::vdso::{MoveError, Specials};
use ckpt_abi::{CkptRange, CkptRestore, CkptRestoreImage, CkptRestoreRun, CKPT_IOC_RESTORE};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{getpid, Pid};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// Everything the restorer needs, prepared (and allocated) by the parent before the fork.
pub struct Plan {
    pub memory: MemoryPlan,
    pub specials: Specials,
    /// The small sections the fds need (pipe and socket data, deleted files).
    pub blobs: Blobs,
    /// The private memory the restorer put in place before forking (`crate::cow`); its
    /// children's restorers read their copy of it to know what they inherited.
    pub in_place: Vec<crate::cow::Range>,
}

/// The original pid of the process this restorer becomes (for messages).
static RESTORING: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    let pid = RESTORING.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("ckpt restore: process {pid}: {what}: {e}");
    sys::exit_now(1);
}

/// Everything every restorer needs, prepared by ckpt before the first fork.
pub struct Restorers<'a> {
    pub manifest: &'a Manifest,
    /// Per process of the manifest.
    pub plans: Vec<Plan>,
    /// Per process: the private memory its restorer puts in place to share it copy-on-write
    /// with its children (`crate::cow::plan`).
    pub cow: Vec<Vec<crate::cow::Range>>,
    /// The image and its parent images (an incremental image's chain), the image first.
    pub images: Vec<&'a File>,
    pub dev: &'a Device,
    /// Where each restorer writes "ORIGINAL_PID KERNEL_PID".
    pub report: OwnedFd,
    /// Each restorer then waits for the end of this pipe: ckpt closes its write end once it
    /// traces every restorer (a read of the pipe, not a stop: a process stopped by a signal
    /// before it is traced stays in that group stop after the tracer detaches).
    pub go: OwnedFd,
    /// The write end, which every restorer closes at once.
    pub go_writer: i32,
    /// Whether a taken pid may be replaced by another (a lone process: nothing refers to
    /// its pid).
    pub any_pid: bool,
    /// How groups and sessions are made: which helpers fork what.
    pub groups: crate::groups::Plan,
    /// The highest fd open in ckpt when it forks.
    pub highest_own_fd: i32,
    /// The tree's pipes and socket pairs, made by ckpt: each restorer takes the ends its fds
    /// need and closes the rest.
    pub shared: SharedFds,
    /// ckpt's own copies of the shared memory objects (not the restorers': taken out before
    /// the first fork), for what it does after the restores.
    pub memfds: Vec<OwnedFd>,
}

/// A restorer's parent: the process that forks it or, for a root that a session helper
/// forks, the process it is reparented to when the helper exits (`helper`).
#[derive(Debug, Clone, Copy)]
pub struct Parent {
    pub pid: Pid,
    pub helper: Option<Pid>,
}

impl Parent {
    pub fn direct(pid: Pid) -> Parent {
        Parent { pid, helper: None }
    }
}

/// The restorer of process `index` (forked with its pid by its parent's restorer, by a
/// session helper, or by ckpt for a root). Never returns.
pub fn run(r: &mut Restorers, index: usize, parent: Parent) -> ! {
    let m = r.manifest;
    let p = &m.processes[index];
    RESTORING.store(p.pid, std::sync::atomic::Ordering::Relaxed);
    dies_with(parent);
    let _ = sys::close_range(r.go_writer as u32, r.go_writer as u32);
    join_session_and_group((p.pid, p.pgid, p.sid), r.groups.makes_group(p.pgid));
    // Before any child is forked: they inherit it.
    if let Some(c) = &p.ctty {
        if let Err(e) = crate::fds::pty::take_as_controlling(c, &r.shared.ptys) {
            fail("taking its controlling terminal", e);
        }
    }
    let inherited = crate::cow::parent_index(m, index)
        .map(|i| r.plans[i].in_place.clone())
        .unwrap_or_default();
    let wanted = (&r.cow[index][..], &inherited[..]);
    r.plans[index].in_place = crate::cow::put_in_place(m, index, wanted, &r.images);
    let me = Parent::direct(getpid());
    fork_children(r, (p.pid, p.pgid), m.children_of(p.pid), me);
    report(&r.report, p.pid);
    // ckpt traces us (PTRACE_SEIZE), then closes the pipe: end of file.
    let mut byte = [0u8; 1];
    match nix::unistd::read(&r.go, &mut byte) {
        // Untraced, ckpt died before it could trace us: nobody would finish the restore.
        Ok(0) if crate::proc::traced() => {}
        Ok(0) => sys::exit_now(1),
        _ => fail("waiting for ckpt", "the pipe did not end"),
    }
    let (images, dev, highest) = (&r.images[..], r.dev, r.highest_own_fd);
    become_process(
        (index, p),
        &mut r.plans[index],
        images,
        dev,
        highest,
        &r.shared,
    )
}

/// Forks the helper of session `sid`, whose leader is gone (see `crate::groups`): with pid
/// `sid`, it makes the session, forks the roots in it and exits; they are reparented to
/// `reaper`: us, a subreaper, or the init of the pid namespace we fork into. Returns its pid.
pub fn fork_session_helper(r: &mut Restorers, sid: i32, reaper: Pid) -> std::io::Result<i32> {
    let outside = getpid();
    let pid = sys::fork_with_pid(Some(sid))?;
    if pid == 0 {
        RESTORING.store(sid, std::sync::atomic::Ordering::Relaxed);
        dies_with(Parent::direct(outside));
        let _ = sys::close_range(r.go_writer as u32, r.go_writer as u32);
        if let Err(e) = nix::unistd::setsid() {
            fail(&format!("making session {sid} (its leader is gone)"), e);
        }
        let m = r.manifest;
        let roots = r.groups.sessions.get(&sid).cloned().unwrap_or_default();
        let roots = (0..m.processes.len())
            .filter(|&i| roots.contains(&m.processes[i].pid))
            .collect();
        let parent = Parent {
            pid: reaper,
            helper: Some(getpid()),
        };
        fork_children(r, (sid, sid), (roots, Vec::new()), parent);
        sys::exit_now(0);
    }
    Ok(pid)
}

/// Our session and process group (`ids`: pid, pgid, sid), before we fork anyone (children
/// inherit them): a session leader makes its session; a group leader its group; a member
/// joins its group, which exists (its leader is an ancestor, or a sibling or helper forked
/// and grouped before us by our parent, who also does this for us: whichever comes first).
/// A group the restore does not make (`made`: a shell job's) is inherited from ckpt restore.
fn join_session_and_group((pid, pgid, sid): (i32, i32, i32), made: bool) {
    use nix::unistd::{getpgrp, setpgid, setsid};
    let me = Pid::from_raw(0);
    let r = if sid == pid {
        setsid().map(drop)
    } else if !made {
        Ok(()) // led from outside the image: inherited (ckpt restore's, for a shell job)
    } else if pgid == pid {
        setpgid(me, me)
    } else if getpgrp().as_raw() != pgid {
        setpgid(me, Pid::from_raw(pgid))
    } else {
        Ok(())
    };
    if let Err(e) = r {
        fail(&format!("joining process group {pgid} (session {sid})"), e);
    }
}

/// Dies if `parent` does (before ckpt traces us with exit-kill, and for our descendants);
/// exits now if it already has. Forked by a session helper, first waits for it to exit (its
/// end would kill us). Blocks every signal.
fn dies_with(parent: Parent) {
    if let Some(helper) = parent.helper {
        wait_reparented(helper);
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        fail("PR_SET_PDEATHSIG", e);
    }
    if nix::unistd::getppid() != parent.pid {
        sys::exit_now(1);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None) {
        fail("blocking signals", e);
    }
}

/// Waits (10 s at most) until our parent is no longer `helper`, which exits once it has
/// forked its session's roots.
fn wait_reparented(helper: Pid) {
    for _ in 0..10_000 {
        if nix::unistd::getppid() != helper {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    fail("waiting for the session helper to exit", "it did not");
}

/// Forks what `host` (pid, pgid: a process of the image or a session helper) forks, in this
/// order: the helpers of groups whose leader is gone, each made its group's leader; the
/// zombies that lead their group or session (each waited for, so that the group exists);
/// the restorers of `children` (group leaders first, each put in its process group here,
/// where the group is sure to exist), which get `parent`; the other zombies. Then the group
/// helpers end (killed and reaped here: nothing of the image sees them); their groups live
/// on with their members.
fn fork_children(
    r: &mut Restorers,
    host: (i32, i32),
    (mut children, zombies): (Vec<usize>, Vec<&Zombie>),
    parent: Parent,
) {
    let m = r.manifest;
    let helpers: Vec<Pid> = r
        .groups
        .group_helpers_of(host.0)
        .into_iter()
        .map(fork_group_helper)
        .collect();
    let (leaders, others): (Vec<&Zombie>, Vec<&Zombie>) = zombies
        .into_iter()
        .partition(|z| z.pgid == z.pid || z.sid == z.pid);
    for z in leaders {
        fork_zombie(z, r.groups.makes_group(z.pgid));
    }
    children.sort_by_key(|&i| m.processes[i].pgid != m.processes[i].pid);
    for i in children {
        fork_child(r, i, host.1, parent);
    }
    for z in others {
        fork_zombie(z, r.groups.makes_group(z.pgid));
    }
    for h in helpers {
        let _ = nix::sys::signal::kill(h, nix::sys::signal::Signal::SIGKILL);
        if let Err(e) = sys::waitpid(h.as_raw(), 0) {
            fail(&format!("reaping the helper of process group {h}"), e);
        }
    }
}

/// Forks the restorer of process `index`, and puts it in its group (unless it inherits
/// it from us, whose group is `own_pgid`, or makes its own session) so that the group
/// exists before the next sibling joins it.
fn fork_child(r: &mut Restorers, index: usize, own_pgid: i32, parent: Parent) {
    let c = &r.manifest.processes[index];
    let pid = fork_as(c.pid, r.any_pid);
    if pid == 0 {
        run(r, index, parent);
    }
    let leads_session = c.sid == c.pid;
    if !leads_session && c.pgid != own_pgid && r.groups.makes_group(c.pgid) {
        let (child, group) = (Pid::from_raw(pid), Pid::from_raw(c.pgid));
        if let Err(e) = nix::unistd::setpgid(child, group) {
            fail(
                &format!("putting process {} in process group {}", c.pid, c.pgid),
                e,
            );
        }
    }
}

/// The helper of a process group whose leader is gone: a child with the leader's pid,
/// made leader of its own group here (so the group exists on return), waiting to be killed.
fn fork_group_helper(pgid: i32) -> Pid {
    let me = getpid();
    let pid = fork_as(pgid, false);
    if pid == 0 {
        dies_with(Parent::direct(me));
        loop {
            nix::unistd::pause(); // every signal is blocked: only SIGKILL ends it
        }
    }
    let helper = Pid::from_raw(pid);
    if let Err(e) = nix::unistd::setpgid(helper, helper) {
        fail(
            &format!("making process group {pgid} (its leader is gone)"),
            e,
        );
    }
    helper
}

/// Forks zombie `z`, which takes its session and group (`made`: as `join_session_and_group`)
/// and exits with its status; waits until it has exited (not reaping it) and checks that it
/// is in the group and session it leads.
fn fork_zombie(z: &Zombie, made: bool) {
    let pid = fork_as(z.pid, false);
    if pid == 0 {
        RESTORING.store(z.pid, std::sync::atomic::Ordering::Relaxed);
        let _ =
            nix::sys::prctl::set_name(&std::ffi::CString::new(z.comm.clone()).unwrap_or_default());
        join_session_and_group((z.pid, z.pgid, z.sid), made);
        exit_like(z);
    }
    if let Err(e) = sys::wait_exit_keep_zombie(pid) {
        fail(&format!("waiting for zombie {} to exit", z.pid), e);
    }
    let child = Pid::from_raw(pid);
    let pgid_ok = !made || nix::unistd::getpgid(Some(child)).is_ok_and(|g| g.as_raw() == z.pgid);
    let sid_ok = z.sid != z.pid || nix::unistd::getsid(Some(child)).is_ok_and(|s| s == child);
    if !pgid_ok || !sid_ok {
        fail(
            &format!("zombie {}", z.pid),
            format!("not in its group {} and session {}", z.pgid, z.sid),
        );
    }
}

/// Forks with pid `pid` (another if taken and `any_pid`). Returns 0 in the child.
pub fn fork_as(pid: i32, any_pid: bool) -> i32 {
    match sys::fork_with_pid(Some(pid)) {
        Ok(n) => n,
        Err(e) if any_pid && matches!(e.raw_os_error(), Some(libc::EEXIST)) => {
            sys::fork_with_pid(None).unwrap_or_else(|e| fail("fork", e))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST)) => fail(
            &format!("pid {pid} is taken on this machine"),
            "a process tree needs its original pids (restoring into a new pid namespace is \
             not supported yet)",
        ),
        Err(e) => fail(&format!("creating process {pid}"), e),
    }
}

/// A zombie's end: exits with its status (or dies of its signal).
fn exit_like(z: &Zombie) -> ! {
    let sig = z.exit_status & 0x7f;
    // Only a terminating signal (not a stop: 0x7f; not one that would stop us), and no core
    // dump blamed on ckpt.
    let stops = [
        libc::SIGSTOP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGCONT,
        libc::SIGCHLD,
    ];
    let terminating = sig != 0 && sig != 0x7f && !stops.contains(&sig);
    let _ = sys::prlimit_set(libc::RLIMIT_CORE, 0, 0);
    if terminating {
        // SAFETY: resets one signal's disposition to the default and unblocks it in this
        // process, which does nothing else before dying of it.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
        let _ = sys::kill(std::process::id() as i32, sig);
    }
    sys::exit_now((z.exit_status >> 8) & 0xff);
}

/// Tells ckpt our kernel pid, then closes our copy of the report pipe (ckpt sees its end once
/// every restorer has reported or died).
fn report(fd: &OwnedFd, original: i32) {
    let Some(seen) = crate::proc::own_pid_seen_by_proc() else {
        fail("reading NSpid from /proc/self/status", "not there");
    };
    let line = format!("{original} {seen}\n");
    if let Err(e) = crate::fds::write_all(fd, line.as_bytes()) {
        fail("reporting to ckpt", e);
    }
    let _ = sys::close_range(fd.as_raw_fd() as u32, fd.as_raw_fd() as u32);
}

/// Becomes process `p`. Never returns.
fn become_process(
    (index, p): (usize, &Process),
    plan: &mut Plan,
    images: &[&File],
    dev: &Device,
    highest_own_fd: i32,
    shared: &SharedFds,
) -> ! {
    let work = WorkFds::take(p, plan, images, dev, highest_own_fd, shared.range());
    // Every process group exists by now (each restorer made its own before reporting).
    if let Some(c) = &p.ctty {
        if let Err(e) = crate::fds::pty::set_foreground(c, &shared.ptys) {
            eprintln!(
                "ckpt restore: process {}: its terminal's foreground group {}: {e}",
                p.pid, c.foreground
            );
        }
    }
    if let Err((what, e)) = p.attrs.restore_cwd_umask() {
        fail(&what, e);
    }
    restore_fds((index, p), plan, &work, shared);
    if let Err((what, e)) = p.attrs.restore_limits() {
        fail(&what, e);
    }
    if let Err((what, e)) = crate::signals::restore(&p.sigactions) {
        fail(&what, e);
    }
    if let Err((what, e)) = crate::thread::restore_main_in_restorer(&p.threads[0]) {
        fail(what, e);
    }
    plan.memory.set_file_fds(&work.files);
    plan.memory.mark_in_place(&plan.in_place);
    // The runs, each image's together, and the image table: alive until the ioctl.
    let (runs, table) = plan.memory.runs_by_image(&work.images);
    let mut req = request(p, plan, &work, (&runs, &table));
    match plan.specials.move_into_place() {
        Ok(()) => {}
        Err(MoveError::Collision(what)) => {
            eprintln!("ckpt restore: {what}");
            sys::exit_now(super::EXIT_VDSO_COLLISION);
        }
        Err(MoveError::Failed(what, e)) => fail(what, e),
    }
    // From here on nothing may call into the vDSO (its old address is gone).
    // Stop #2, then the restore: the parent takes over at the ioctl's exit.
    let _ = sys::kill(std::process::id() as i32, libc::SIGSTOP);
    let r = sys::ioctl_with(work.dev, CKPT_IOC_RESTORE, &mut req);
    // Only reached if the module refused before touching anything.
    let code = r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
    sys::exit_now(100 + code.min(100));
}

/// The restorer's own fds (images, device, mapped files), moved above every fd of the image
/// and of ckpt so that they are consecutive; everything else is closed but inherited stdio.
struct WorkFds {
    base: i32,
    /// The chain's images, the image first.
    images: Vec<i32>,
    dev: i32,
    files: Vec<i32>,
}

impl WorkFds {
    /// `keep`: the range of the tree's shared objects, open until the fds are restored.
    fn take(
        p: &Process,
        plan: &Plan,
        images: &[&File],
        dev: &Device,
        highest_own: i32,
        keep: Option<(i32, i32)>,
    ) -> WorkFds {
        let max_fd = p.files.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
        let base = max_fd.max(highest_own) + 1;
        let mut work = Vec::new();
        let sources = (images.iter().map(|f| f.as_fd()))
            .chain([dev.as_fd()])
            .chain(plan.memory.files.iter().map(|f| f.as_fd()));
        for (i, fd) in sources.enumerate() {
            let want = base + i as i32;
            // Not owned: the module closes the working fds when the restore succeeds.
            match fcntl(fd, FcntlArg::F_DUPFD(want)) {
                Ok(n) if n == want => work.push(n),
                // Consecutive from `base` only if nothing else sits there; check.
                Ok(n) => fail("moving working fds", format!("fd {n} is not {want}")),
                Err(e) => fail("moving working fds", e),
            }
        }
        let last = base + work.len() as i32 - 1;
        // Close everything else: below `base` except inherited stdio, and above our range.
        let _ = sys::close_range(last as u32 + 1, u32::MAX);
        for fd in 0..base {
            let inherited = p
                .files
                .fds
                .iter()
                .any(|f| f.fd == fd && matches!(f.kind, crate::fds::FdKind::InheritStdio(_)));
            let shared = keep.is_some_and(|(lo, hi)| (lo..=hi).contains(&fd));
            if !inherited && !shared {
                let _ = sys::close_range(fd as u32, fd as u32);
            }
        }
        let n = images.len();
        WorkFds {
            base,
            images: work[..n].to_vec(),
            dev: work[n],
            files: work[n + 1..].to_vec(),
        }
    }

    fn count(&self) -> u32 {
        (self.images.len() + 1 + self.files.len()) as u32
    }
}

/// The process's fds, made as its own user: files are created and sockets bound by it, so
/// that they belong to it; existing files are opened as it too, and as root only where it
/// may not (a daemon that opened them before dropping privileges).
fn restore_fds((index, p): (usize, &Process), plan: &Plan, work: &WorkFds, shared: &SharedFds) {
    let fs_user = match p.threads[0].creds.as_ref() {
        Some(c) => match as_fs_user(c.uid[3], c.gid[3], &c.groups) {
            Ok(g) => Some(g),
            Err(e) => fail("taking the process's filesystem ids", e),
        },
        None => None,
    };
    let as_user = fs_user.is_some();
    let reopen = move |path: &Path, flags: OFlag| crate::fds::reopen_as_user(path, flags, as_user);
    let as_root =
        || -> std::io::Result<Box<dyn std::any::Any>> { Ok(Box::new(as_fs_user(0, 0, &[])?)) };
    // Temporary fds (shared objects' ends) live above everything else.
    let scratch = work.base + work.count() as i32;
    let ctx = RestoreCtx {
        process: index,
        table: &p.files,
        shared,
        blobs: &plan.blobs,
        scratch,
        reopen: &reopen,
        as_root: &as_root,
    };
    if let Err((what, e)) = crate::fds::restore(ctx) {
        fail(&what, e);
    }
    // Its flock and OFD locks, on the open files just made (its POSIX locks come after the
    // restore ioctl, which closes files of the process's and would drop them).
    if let Err(why) = crate::fds::locks::take_on_files(&p.files) {
        fail("taking its file locks again", why);
    }
    // The ends of the tree's objects this process did not take must not stay open here (a
    // pipe would never see its end of file).
    if let Some((lo, hi)) = shared.range() {
        let _ = sys::close_range(lo as u32, hi as u32);
    }
    drop(fs_user);
}

/// The module's request: the address space, the page runs and the images they are read
/// from, the kept kernel mappings, the fds to close.
fn request(
    p: &Process,
    plan: &Plan,
    work: &WorkFds,
    (runs, images): (&[CkptRestoreRun], &[CkptRestoreImage]),
) -> CkptRestore {
    let m = &plan.memory;
    let mut req = CkptRestore {
        image_fd: -1,
        vmas: m.vmas.as_ptr() as u64,
        vma_count: m.vmas.len() as u32,
        run_count: runs.len() as u32,
        runs: runs.as_ptr() as u64,
        images: images.as_ptr() as u64,
        image_count: images.len() as u32,
        keep_count: plan.specials.keep.len() as u32,
        cleanup_fd_first: work.base as u32,
        cleanup_fd_count: work.count(),
        mm: p.memory.mm.to_abi(),
        ..Default::default()
    };
    for (slot, &(start, end)) in req.keep.iter_mut().zip(&plan.specials.keep) {
        *slot = CkptRange { start, end };
    }
    req
}
