//! `ckpt restore FILE`: the sequence of docs/design.md, "Restore".
//!
//! 1. The image is verified completely (every checksum) before any process is created, and
//!    everything the restorers need is prepared (`prepare`): mapped files opened as each
//!    process's user, the kernel mappings checked, the fds' data read.
//! 2. The root's restorer is forked with the original pid; it forks its children's, and so
//!    on down the tree (`restorer`); each reports its kernel pid and stops.
//! 3. We trace every restorer and follow each to the exit of its restore ioctl
//!    (`supervise`); there, every other thread is created and given its state, then the ids,
//!    credentials, registers (`finish_threads`).
//! 4. We detach, children first: the tree continues where it was checkpointed; pending
//!    signals are raised again.
//!
//! Any failure before the detach kills the whole tree: a half-restored process never runs.

mod pidns;
mod restorer;
mod supervise;
mod trust;
pub mod unprivileged;

use crate::batch::{self, Area};

/// A restorer's exit status when the image's vDSO lies where ckpt's own memory is (random,
/// from both address-space layouts): nothing was restored, and a new ckpt process, laid out
/// anew, will do (`ckpt restore` runs itself again, see main.rs).
pub const EXIT_VDSO_COLLISION: i32 = 75;
use crate::chain::Chain;
use crate::creds::as_fs_user;
use crate::errors::{restore_io, RestoreError};
use crate::image::background::{PagesCheck, Unchecked};
use crate::inject::Injector;
use crate::manifest::{Image, Process};
use crate::progress::Progress;
use crate::{fds, memory, sys, thread, vdso};
use nix::sys::ptrace;
use nix::unistd::Pid;
use restorer::{Plan, Restorers};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

/// How to restore.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Into a new pid namespace even if every pid is free here.
    pub pidns: bool,
    /// Into a new IPC namespace, where SysV objects get their ids back.
    pub ipcns: bool,
    /// Restore as root an image that someone other than root or its processes' users could
    /// have written (`--trust-image`).
    pub trust_image: bool,
    /// Check every image's MAC with this key (`--key`): refused if one has none or another.
    pub key: Option<crate::image::MacKey>,
    /// Private anonymous memory placed on demand by a page server (`crate::lazy`).
    pub lazy: bool,
    /// Progress bars on stderr if it is a terminal and the image is large (not with
    /// `--no-progress`): `crate::progress`.
    pub progress: bool,
}

/// Where the restored tree went.
pub struct Restored {
    /// The root's pid, as we see it.
    pub pid: i32,
    pub original_pid: i32,
    /// Live processes restored.
    pub processes: usize,
    /// Our child whose exit status is the root's: the root, or the pid namespace's init.
    pub wait_pid: i32,
    /// Restored into a new pid namespace: (original pid, pid as we see it) per process.
    pub pidns: Option<Vec<(i32, i32)>>,
}

/// Restores the image at `path`. The restored root process (or the pid namespace's init) is
/// our child.
pub fn restore(path: &Path, device: &Path, opts: &Options) -> Result<Restored, RestoreError> {
    // An incremental image's parents too: each verified (compressed pages as they are
    // decompressed below), each the one its child names.
    let verifying = Progress::stderr("verifying", opts.progress);
    let chain = match &opts.key {
        // Plain pages are not read before the processes are made: the page server (lazy)
        // or a thread (`unchecked` below) checks them. A MAC needs every byte in order: with a
        // key, the image is read whole first.
        None => Chain::open_pages_unverified(path)?,
        key => Chain::open_pages_later(path, key.as_ref(), &verifying)?,
    };
    verifying.finish();
    // An image that locked TCP connections has its plain pages checked before anything is
    // made, lazy or not: damaged, it leaves them locked for another try (the lock is lifted
    // once the restorers are ready, before any page would be checked otherwise).
    let checked_first = chain.image().manifest.netlock.is_some() && opts.key.is_none();
    if checked_first {
        PagesCheck::start(chain.unchecked_pages()?)?.wait(&verifying)?;
    }
    // Else they are checked while the module copies them into place; no process runs before
    // the verdict (`restore_tree`). A lazy restore's page server checks them as it serves.
    let unchecked = match (opts.lazy, &opts.key, checked_first) {
        (false, None, false) => Some(chain.unchecked_pages()?),
        _ => None,
    };
    if opts.key.is_none() && chain.images.iter().any(|i| i.has_mac) {
        eprintln!(
            "ckpt: warning: {} carries a MAC, not checked without --key",
            path.display()
        );
    }
    for i in &chain.images {
        trust::check(&i.path, &i.file, &i.manifest, opts.trust_image)?;
    }
    let img = chain.image();
    if !nix::unistd::geteuid().is_root() {
        check_unprivileged(path, &img.manifest)?;
    }
    let xstates = read_xstates(img)?;
    // Compressed pages are decompressed here, before any process exists: each image's
    // page runs are read from its view.
    let decompressing = Progress::stderr("decompressing", opts.progress);
    let views = crate::chain::views(&chain.images, &decompressing)?;
    decompressing.finish();
    let pages: Vec<&std::fs::File> = chain
        .images
        .iter()
        .zip(&views)
        .map(|(i, v)| v.as_ref().unwrap_or(&i.file))
        .collect();
    // Forked before anything of the tree exists: it must hold none of the tree's objects.
    let server = match opts.lazy {
        true => Some(start_page_server(
            &chain,
            &pages,
            opts.key.is_some() || checked_first,
        )?),
        false => None,
    };
    // Opened (and its ABI checked) before anything else; the restorers use this fd.
    let dev = crate::device::Device::open(device)?;
    let m = &img.manifest;
    let groups = m.groups().map_err(RestoreError::Tree)?;
    // Made first: what must be born inside (the tree's socket pairs' helpers) is made there.
    let ns = match pidns::needed(m, &groups, opts.pidns) {
        true => Some(pidns::Namespace::start(m)?),
        false => None,
    };
    let (mut restorers, report_in, go_out) =
        prepare_restorers((&chain, pages), &dev, groups, opts, ns.as_ref())?;
    // The TCP connections are made again: their peers' packets may come through.
    if let Some(table) = &img.manifest.netlock {
        lift_netlock(table);
    }
    let memfds = std::mem::take(&mut restorers.memfds);
    let sysv = std::mem::take(&mut restorers.shared.sysv);
    let alongside = Alongside {
        ns,
        server,
        pages: unchecked.map(|images| (images, &verifying)),
    };
    let result = restore_tree(restorers, &sysv, (report_in, go_out), &xstates, alongside);
    if result.is_ok() {
        for (o, fd) in img.manifest.shared.memory.iter().zip(&memfds) {
            if let Err(e) = crate::shmem::late_seals(o, fd) {
                eprintln!("ckpt: sealing memfd {:?} again: {e}", o.memfd_name);
            }
        }
    }
    if result.is_err() {
        // The SysV objects made for a restore that failed would outlive it.
        sysv.remove_all();
    }
    result
}

/// The lazy restore's page server, with the page sections it is to check in the background
/// (none if they were checked already: `verified`, the chain read whole for its MAC or its
/// pages checked first).
fn start_page_server(
    chain: &Chain,
    pages: &[&std::fs::File],
    verified: bool,
) -> Result<crate::lazy::server::Server, RestoreError> {
    let unverified = chain.images.iter().map(|i| match verified {
        true => (i.path.clone(), Vec::new()),
        false => (i.path.clone(), i.unverified_pages()),
    });
    let processes = &chain.image().manifest.processes;
    crate::lazy::server::Server::start(processes, (pages, unverified.collect()))
}

/// A user other than root restores only what they could give a process of their own
/// (`unprivileged`), and only holding what RESTORE requires.
fn check_unprivileged(path: &Path, m: &crate::manifest::Manifest) -> Result<(), RestoreError> {
    let caller = unprivileged::Caller::current().map_err(restore_io("reading our credentials"))?;
    let refused = |why| RestoreError::NotYours {
        path: path.into(),
        uid: caller.uids[1],
        why,
    };
    if let Some(why) = unprivileged::refusal(m, &caller) {
        return Err(refused(why));
    }
    if !caller.may_restore() {
        return Err(refused(
            "restoring needs CAP_CHECKPOINT_RESTORE (the module's RESTORE and clone3 with \
             chosen pids require it): run ckpt restore as root"
                .into(),
        ));
    }
    Ok(())
}

/// Deletes the table holding back the peers' packets since the checkpoint (gone already if
/// the image was restored before).
fn lift_netlock(table: &str) {
    if crate::netlock::table_exists(table) {
        if let Err(e) = crate::netlock::delete_table(table) {
            eprintln!("ckpt restore: lifting the network lock {table}: {e}");
        }
    }
}

/// What a restore runs beside the tree until it lets it go.
struct Alongside<'a> {
    ns: Option<pidns::Namespace>,
    server: Option<crate::lazy::server::Server>,
    /// The pages sections to check once every restorer is forked (`image::background`),
    /// and the bar that shows it.
    pages: Option<(Vec<Unchecked>, &'a Progress)>,
}

/// Forks the tree's restorers, traces them to their restore ioctls, finishes and releases
/// every process.
fn restore_tree(
    mut restorers: Restorers,
    sysv: &crate::sysv::Made,
    (report_in, go_out): (OwnedFd, OwnedFd),
    xstates: &[Vec<Vec<u8>>],
    Alongside { ns, server, pages }: Alongside,
) -> Result<Restored, RestoreError> {
    let m = restorers.manifest;
    let sysv_ids = &sysv.shm;
    let in_pidns = ns.is_some();
    let roots = launch(&mut restorers, ns)?;
    drop(restorers);
    // Started only now: ckpt forks nothing from here on (its restorers, made with a raw
    // clone3, could not take a lock a second thread held, malloc's included).
    let checking = pages.map(|(images, progress)| (PagesCheck::start(images), progress));
    // From here on, a failure kills the whole tree.
    let tree = Launched {
        manifest: m,
        kernel: {
            let reported = read_reports(report_in);
            let pid_of = |p: &Process| reported.get(&p.pid).copied().unwrap_or(0);
            m.processes.iter().map(pid_of).collect()
        },
        roots,
    };
    tree.all_reported()?;
    for &pid in &tree.kernel {
        supervise::attach(pid).map_err(|e| tree.abort(e))?;
    }
    drop(go_out); // every restorer goes on
    let mut all_tids = Vec::new();
    for (i, ((p, &pid), xstates)) in m
        .processes
        .iter()
        .zip(&tree.kernel)
        .zip(xstates)
        .enumerate()
    {
        supervise::to_restore_exit(pid).map_err(|e| tree.abort(e))?;
        // Before anything reads or writes its memory.
        if let Some(server) = &server {
            let uffd = crate::lazy::take_userfaultfd(pid, p).map_err(|e| tree.abort(e))?;
            server.add(i, pid, uffd).map_err(|e| tree.abort(e))?;
        }
        let done = finish_threads(pid, p, xstates, sysv_ids);
        all_tids.push(done.map_err(|e| tree.abort(e))?);
    }
    // Segments removed while attached go again once every process has them attached.
    for (s, &id) in m.shared.sysv_shm.iter().zip(sysv_ids) {
        if s.removed {
            sys::sysv_shm_remove(id)
                .map_err(|e| tree.abort(restore_io("removing a SysV segment")(e)))?;
        }
    }
    if let Some((check, progress)) = checking {
        let verdict = check.and_then(|c| c.wait(progress));
        verdict.map_err(|e| tree.abort(e.into()))?;
    }
    tree.release(&all_tids)?;
    if let Some(server) = server {
        // Without the server, the tree's absent pages would read as zeros: it goes.
        server.release(&tree.kernel).map_err(|e| tree.abort(e))?;
    }
    Ok(tree.restored(in_pidns))
}

/// Every thread's XSAVE state, per process.
fn read_xstates(img: &Image) -> Result<Vec<Vec<Vec<u8>>>, RestoreError> {
    let m = &img.manifest;
    let of_process = |p: &Process| -> Result<Vec<Vec<u8>>, _> {
        p.threads
            .iter()
            .map(|t| img.read_section(t.xstate_section))
            .collect()
    };
    Ok(m.processes
        .iter()
        .map(of_process)
        .collect::<Result<_, _>>()?)
}

/// Everything the restorers need, made before the first fork: the shared objects, each
/// process's plan, the report and go pipes. Returns them with the pipes' ends ckpt keeps.
/// `pages`: per image of the chain, the file its page runs point into (`Image::pages_view`).
fn prepare_restorers<'a>(
    (chain, pages): (&'a Chain, Vec<&'a std::fs::File>),
    dev: &'a crate::device::Device,
    groups: crate::groups::Plan,
    opts: &Options,
    ns: Option<&pidns::Namespace>,
) -> Result<(Restorers<'a>, OwnedFd, OwnedFd), RestoreError> {
    let img = chain.image();
    let m = &img.manifest;
    if opts.ipcns {
        // Ours, and so every restored process's: SysV objects keep their ids there.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC)
            .map_err(|e| restore_io("entering a new IPC namespace")(e.into()))?;
    }
    // In the tree's pid namespace, if it has one: the helpers of its socket pairs get their
    // pids there.
    if let Some(ns) = ns {
        ns.enter()?;
    }
    let shared = make_shared(img, opts.ipcns);
    if let Some(ns) = ns {
        ns.leave()?;
    }
    let shared = shared?;
    let plans = m
        .processes
        .iter()
        .map(|p| prepare(img, p, &shared.memory, opts.lazy))
        .collect::<Result<_, _>>()
        .inspect_err(|_| shared.sysv.remove_all())?;
    let pipe = || nix::unistd::pipe().map_err(|e| restore_io("pipe")(e.into()));
    let ((report_in, report_out), (go, go_out)) = (pipe()?, pipe()?);
    // Kept open past the restorers (write seals go on once every process has mapped them);
    // made before the restorers' fds are placed above all of ours.
    let memfds: Vec<OwnedFd> = shared
        .memory
        .iter()
        .map(|f| f.try_clone())
        .collect::<Result<_, _>>()
        .map_err(restore_io("keeping the memfds"))?;
    let restorers = Restorers {
        manifest: m,
        plans,
        cow: crate::cow::plan(m),
        images: pages,
        dev,
        report: report_out,
        go,
        go_writer: std::os::fd::AsRawFd::as_raw_fd(&go_out),
        // A lone process whose pid is taken may take another (nothing refers to it), but not
        // one a helper must fork: ckpt would not know its pid.
        any_pid: m.processes.len() == 1
            && m.zombies.is_empty()
            && groups.no_helpers()
            && !opts.pidns,
        groups,
        highest_own_fd: highest_own_fd()?,
        shared,
        memfds,
    };
    Ok((restorers, report_in, go_out))
}

/// Forks our children: the roots' restorers, or the pid namespace's init that forks them.
/// Returns them in the manifest's order of roots (a root forked by a session helper is our
/// child too once the helper has exited).
fn launch(r: &mut Restorers, ns: Option<pidns::Namespace>) -> Result<Vec<i32>, RestoreError> {
    let roots = r.manifest.roots();
    if let Some(ns) = ns {
        return Ok(vec![ns.fork_roots(r, &roots)?]);
    }
    let mut forked = Vec::new();
    if let Err(e) = fork_roots(r, &roots, &mut forked) {
        // The session helpers' roots see ckpt gone (or untraced) and exit by themselves.
        for &(_, pid) in &forked {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        return Err(e);
    }
    let ours = |pid: i32| forked.iter().find(|f| f.0 == pid).map_or(pid, |f| f.1);
    let m = r.manifest;
    Ok(roots.iter().map(|&i| ours(m.processes[i].pid)).collect())
}

/// Forks the roots' restorers (into `forked`: original pid, ours), then the session helpers, which fork the
/// other roots; as a subreaper meanwhile, so that those become our children when their
/// helper exits. Waits for every helper.
fn fork_roots(
    r: &mut Restorers,
    roots: &[usize],
    forked: &mut Vec<(i32, i32)>,
) -> Result<(), RestoreError> {
    for &i in roots {
        let pid = r.manifest.processes[i].pid;
        if r.groups.session_helper_of(pid).is_none() {
            forked.push((pid, fork_root(r, i)?));
        }
    }
    let sessions: Vec<i32> = r.groups.sessions.keys().copied().collect();
    if sessions.is_empty() {
        return Ok(());
    }
    let was = nix::sys::prctl::get_child_subreaper().unwrap_or(false);
    let reaper = |on| {
        nix::sys::prctl::set_child_subreaper(on)
            .map_err(|e| restore_io("PR_SET_CHILD_SUBREAPER")(e.into()))
    };
    reaper(true)?;
    let result = sessions.into_iter().try_for_each(|sid| {
        let pid = restorer::fork_session_helper(r, sid, nix::unistd::getpid())
            .map_err(restore_io(format!("forking the helper of session {sid}")))?;
        let status = sys::waitpid(pid, 0).map_err(restore_io("waiting for a session helper"))?;
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 0) => Ok(()),
            (true, code) => Err(RestoreError::Child(code)),
            _ => Err(RestoreError::Child(128 + libc::WTERMSIG(status))),
        }
    });
    reaper(was)?;
    result
}

/// A tree being restored: its restorers run.
struct Launched<'a> {
    manifest: &'a crate::manifest::Manifest,
    /// Per process of the manifest, its pid as we see it (0: its restorer never reported).
    kernel: Vec<i32>,
    /// Our children (the roots' restorers or the namespace's init).
    roots: Vec<i32>,
}

impl Launched<'_> {
    /// Kills every process of the tree (each restorer also dies with its parent, and every
    /// traced one with us); returns `e`.
    fn abort(&self, e: RestoreError) -> RestoreError {
        for &pid in self.kernel.iter().chain(&self.roots).filter(|&&p| p > 0) {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        // Every child and tracee until none is left: the killed tracees first of all, since
        // only their tracer may reap them, and a pid namespace's init, when it dies, waits
        // for every process of its namespace to be reaped.
        while sys::waitpid(-1, libc::__WALL).is_ok() {}
        e
    }

    /// Every restorer reported (one that failed said why on stderr).
    fn all_reported(&self) -> Result<(), RestoreError> {
        let processes = &self.manifest.processes;
        match processes.iter().zip(&self.kernel).find(|(_, &k)| k == 0) {
            Some((p, _)) => {
                eprintln!(
                    "ckpt restore: the restorer of process {} failed (see above)",
                    p.pid
                );
                Err(self.abort(RestoreError::Child(1)))
            }
            None => Ok(()),
        }
    }

    /// Detaches every thread, children before parents (a parent that runs finds its children
    /// running), and raises each process's pending signals again.
    fn release(&self, all_tids: &[Vec<i32>]) -> Result<(), RestoreError> {
        for tids in all_tids.iter().rev() {
            for &tid in tids {
                ptrace::detach(Pid::from_raw(tid), None)
                    .map_err(|e| self.abort(restore_io("PTRACE_DETACH")(e.into())))?;
            }
        }
        let processes = &self.manifest.processes;
        for ((p, &pid), tids) in processes.iter().zip(&self.kernel).zip(all_tids) {
            let per_thread: Vec<u64> = p.threads.iter().map(|t| t.pending).collect();
            // The tree runs already: a signal that cannot be raised again is said, not fatal.
            if let Err(e) = crate::signals::raise_pending(pid, p.shared_pending, &per_thread, tids)
            {
                eprintln!("ckpt: process {}: re-raising a pending signal: {e}", p.pid);
            }
        }
        Ok(())
    }

    fn restored(&self, in_pidns: bool) -> Restored {
        let m = self.manifest;
        let originals = m.processes.iter().map(|p| p.pid);
        Restored {
            pid: self.kernel[0],
            original_pid: m.processes[0].pid,
            processes: m.processes.len(),
            wait_pid: self.roots[0],
            pidns: in_pidns.then(|| originals.zip(self.kernel.iter().copied()).collect()),
        }
    }
}

/// The tree's pipes and socket pairs with their bytes, above every fd number of the image.
fn make_shared(img: &Image, ipcns: bool) -> Result<fds::SharedFds, RestoreError> {
    let m = &img.manifest;
    let highest = m
        .processes
        .iter()
        .flat_map(|p| &p.files.fds)
        .map(|f| f.fd)
        .max();
    let read = |i| img.read_section(i).map_err(std::io::Error::other);
    let whole = img.data();
    let envs: Vec<fds::HolderEnv> = m
        .processes
        .iter()
        .map(|p| fds::HolderEnv {
            pid: p.pid,
            cwd: &p.attrs.cwd,
            umask: p.attrs.umask,
            creds: p.threads.first().and_then(|t| t.creds.as_ref()),
        })
        .collect();
    let min = highest.unwrap_or(2).max(2) + 1;
    fds::SharedFds::make(&m.shared, read, whole, &envs, (min, ipcns)).map_err(restore_io(
        "recreating the tree's shared objects (pipes, sockets, shared memory)",
    ))
}

/// The highest fd open in ckpt now: the restorers' working fds go above it.
fn highest_own_fd() -> Result<i32, RestoreError> {
    Ok(std::fs::read_dir("/proc/self/fd")
        .map_err(restore_io("listing /proc/self/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .max()
        .unwrap_or(2))
}

/// Forks the restorer of root `index` (which forks the rest of its tree): with the original
/// pid if nobody has it, else (a lone process only) any. Returns its pid.
fn fork_root(r: &mut Restorers, index: usize) -> Result<i32, RestoreError> {
    let want = r.manifest.processes[index].pid;
    let me = nix::unistd::getpid();
    let free = !Path::new(&format!("/proc/{want}")).exists();
    let pid = match sys::fork_with_pid(free.then_some(want)) {
        Ok(pid) => pid,
        Err(e)
            if free
                && r.any_pid
                && matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EPERM)) =>
        {
            sys::fork_with_pid(None).map_err(restore_io("clone3"))?
        }
        Err(e) => return Err(restore_io("clone3")(e)),
    };
    if pid == 0 {
        restorer::run(r, index, restorer::Parent::direct(me));
    }
    if pid != want && !r.any_pid {
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::waitpid(pid, 0);
        return Err(restore_io(format!("pid {want} is taken on this machine"))(
            std::io::Error::other(
                "a process tree needs its original pids (restoring into a new pid namespace is \
                 not supported yet)",
            ),
        ));
    }
    Ok(pid)
}

/// Reads "ORIGINAL KERNEL" lines until every restorer has reported or died (end of file):
/// original pid -> kernel pid.
fn read_reports(report: OwnedFd) -> BTreeMap<i32, i32> {
    let mut text = String::new();
    let _ = std::fs::File::from(report).read_to_string(&mut text);
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Everything the restorer needs, before the fork. Mapped files are opened as the
/// process's user, as it opened them.
fn prepare(img: &Image, p: &Process, shm: &[OwnedFd], lazy: bool) -> Result<Plan, RestoreError> {
    let specials = vdso::check(&p.memory.vmas)?;
    let fs_user = match p.threads[0].creds.as_ref() {
        Some(c) => Some(
            as_fs_user(c.uid[3], c.gid[3], &c.groups).map_err(restore_io(
                "taking the process's filesystem ids to open its files",
            ))?,
        ),
        None => None,
    };
    let memory = memory::plan(&p.memory.vmas, shm, lazy)?;
    drop(fs_user);
    let blobs = fds::blob_sections(&p.files)
        .into_iter()
        .map(|i| Ok((i, img.read_section(i)?)))
        .collect::<Result<_, RestoreError>>()?;
    Ok(Plan {
        memory,
        specials,
        blobs,
        in_place: Vec::new(),
    })
}

/// At the restore ioctl's exit, the address space being the image's: the other threads are
/// created by the main thread itself (clone3 injected through ptrace, with their original
/// tids when free) and given their own state; then the main thread's rseq, names, the
/// interceptor's ids, credentials (last of the injections: from there on the threads may
/// lack the privileges the others needed), and finally registers. Returns the kernel tids.
fn finish_threads(
    pid: i32,
    p: &Process,
    xstates: &[Vec<u8>],
    sysv_ids: &[i32],
) -> Result<Vec<i32>, RestoreError> {
    let inj = Injector::find_in(pid, crate::vdso::place(&p.memory.vmas))
        .map_err(restore_io("finding a syscall instruction"))?;
    memory::attach_sysv(&inj, pid, &p.memory.vmas, sysv_ids)?;
    let giver = crate::creds::Giver::new()?;
    giver.warn_if_groups_stay(p.threads.iter().filter_map(|t| t.creds.as_ref()));
    // Where the threads' and the main thread's own calls run in batches (`crate::batch`).
    let accounted = p.memory.vmas.iter().any(|v| v.accounted);
    let area = (p.threads.len() > 1 || accounted)
        .then(|| Area::map(&inj, pid))
        .flatten();
    let mut tids = vec![pid];
    if p.threads.len() > 1 {
        let made = thread::create_others(&inj, pid, &p.threads, (area.as_ref(), &giver))?;
        tids.extend(made);
    }
    let scratch = thread::scratch_area(&p.threads);
    let main = (pid, scratch);
    batch::run_in_thread(&inj, main, area.as_ref(), |calls| {
        memory::drop_restore_write(calls, &p.memory.vmas)
    })?;
    if let Some(area) = area {
        area.unmap(&inj, pid)?;
    }
    thread::register_rseq(&inj, pid, &p.threads[0])?;
    thread::set_main_name(&inj, pid, &p.threads[0], &p.attrs.comm);
    // The restorer's own traces: its parent-death signal, and signals that came while it
    // had every signal blocked (its children stopping or exiting); the image's pending
    // signals are raised again once it runs.
    thread::call(
        &inj,
        pid,
        "PR_SET_PDEATHSIG",
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
    )?;
    crate::signals::discard_pending(&inj, pid, scratch)?;
    // POSIX locks belong to the process's fd table: taken by the process itself, now that the
    // module has closed the restorer's working fds (closing a file's fd drops them).
    crate::fds::locks::take_posix(&inj, pid, &p.files, scratch)?;
    p.attrs.restore_exe(&inj, pid, scratch, &p.memory.mm);
    if let Some(ic) = &p.interceptor {
        // The ids the process sees (inside a new pid namespace, not ours).
        let seen: Vec<i32> = tids
            .iter()
            .map(|&t| crate::proc::tid_seen_inside(pid, t))
            .collect();
        ic.restore_ids(&inj, &p.threads, &seen)
            .map_err(restore_io("filling the interceptor's id table"))?;
    }
    // Armed as late as possible, but before the credentials drop (alarm clocks need
    // CAP_WAKE_ALARM); a timer firing now leaves its signal pending until the process runs.
    if !p.timers.is_empty() {
        let image_tids: Vec<i32> = p.threads.iter().map(|t| t.tid).collect();
        let seen: Vec<i32> = tids
            .iter()
            .map(|&t| crate::proc::tid_seen_inside(pid, t))
            .collect();
        crate::timers::restore(&inj, pid, &p.timers, (&image_tids, &seen), scratch)?;
    }
    let main = &p.threads[0];
    let (creds, dumpable) = (main.creds.as_ref(), p.attrs.dumpable);
    crate::creds::restore_main(&inj, (pid, main.tid), creds, scratch, dumpable, &giver)?;
    thread::set_final_state((pid, &p.threads), &tids, xstates)?;
    Ok(tids)
}

/// Waits for a restored child; returns a shell-style exit status.
pub fn wait_exit_status(pid: i32) -> Result<i32, RestoreError> {
    let status = sys::waitpid(pid, 0).map_err(restore_io("waiting for the restored process"))?;
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    })
}
