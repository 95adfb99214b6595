//! `ckpt checkpoint PID`: the sequence of docs/design.md, "Checkpoint".
//!
//! 1. Check what can be checked without stopping anything (`precheck`).
//! 2. Under `ckpt run`, each process's interceptor prepares (flushes, syncs) and waits
//!    (`interceptor`).
//! 3. Freeze the whole tree (`crate::tree`, every thread of every process through
//!    `crate::freeze`); flush single-threaded programs' stdio.
//! 4. Dump each resource of each process into the image (`dump_process`): threads,
//!    attributes, signals, memory, fds. Without `--kill`, each process's private memory is
//!    only snapshotted (`crate::snapshot`).
//! 5. Let the tree go (or, with `--kill`, kill it once the image is durable), write the
//!    snapshots' pages (`LatePages`) and finish the image (checksums, manifest, fsync,
//!    rename).
//!
//! Any failure detaches and leaves every process running and untouched, and no file under
//! the final name.

mod interceptor;
mod parent;

use crate::device::Device;
use crate::dirty::Reuse;
use crate::errors::{checkpoint_io, CheckpointError};
use crate::fds::{DumpError, SharedDump};
use crate::freeze::Frozen;
use crate::image::codec;
use crate::image::ImageWriter;
use crate::manifest::{Manifest, Process};
use crate::memory::{Backing, Memory};
use crate::netlock::NetLock;
use crate::proc::{FdEntry, MapEntry};
use crate::progress::Progress;
use crate::snapshot::Snapshot;
use crate::stats::Stats;
use crate::tree::FrozenTree;
use crate::{attrs, fds, memory, proc, signals, thread, tree, worker};
use interceptor::Prepared;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Options<'a> {
    pub pid: i32,
    pub output: &'a Path,
    pub kill: bool,
    /// Record TCP connections as closed (`--tcp-close`): nothing is locked.
    pub tcp_close: bool,
    /// Write private pages from copy-on-write snapshots once the tree runs again
    /// (`crate::snapshot`), rather than while it is frozen. Not with `kill`.
    pub snapshot: bool,
    pub device: &'a Path,
    /// Do not use the interceptor even if the process runs under `ckpt run`.
    pub plain: bool,
    /// Only the process itself, not its descendants.
    pub single: bool,
    /// More processes to take with their descendants (an application's, `--app`).
    pub also: Vec<i32>,
    /// How long a single-threaded program's main thread may take to flush its stdio.
    pub flush_timeout: Duration,
    /// Carry UNIX stream and seqpacket sockets whose peer is outside the tree (reconnected
    /// on restore, or with their peer gone) instead of refusing them: `--external unix`.
    pub external_unix: bool,
    /// Store only the pages changed since this image (`--parent`), the last checkpoint of
    /// the same tree.
    pub parent: Option<&'a Path>,
    /// Compress every section with zstd at this level (`--compress`).
    pub compress: Option<i32>,
    /// Give the image a MAC with this key (`--key`).
    pub key: Option<&'a crate::image::MacKey>,
    /// A progress bar on stderr if it is a terminal and the pages are many (not with
    /// `--json` or `--no-progress`): `crate::progress`.
    pub progress: bool,
}

/// Takes the checkpoint. Returns the statistics (also stored in the image).
pub fn checkpoint(opts: &Options) -> Result<Stats, CheckpointError> {
    let t0 = Instant::now();
    let pid = opts.pid;
    let dev = Device::open(opts.device).map_err(|e| {
        checkpoint_io(pid, "opening the ckpt device")(std::io::Error::other(e.to_string()))
    })?;
    precheck(pid)?;
    let base = match opts.parent {
        // With a key, changed pages are stored whole (see below): no bases to read.
        Some(p) => Some(parent::Base::open(p, opts.output, pid, opts.key.is_none())?),
        None => None,
    };
    let image_id = crate::chain::new_id().map_err(checkpoint_io(pid, "making an image id"))?;
    let flush_t0 = Instant::now();
    let mut prepared = prepare_all(pid, opts);
    let flush_us = flush_t0.elapsed().as_micros() as u64;

    let mut frozen_at = Instant::now();
    let roots: Vec<i32> = std::iter::once(pid)
        .chain(opts.also.iter().copied())
        .collect();
    let mut tree = FrozenTree::freeze(&roots, opts.single)?;
    worker::check()?;
    tree.check_groups()?;
    // SysV objects are read where the tree's processes see them.
    crate::sysv::enter_namespace(&tree.pids()).map_err(CheckpointError::Tree)?;
    let stdio_flushed = settle(&dev, &mut tree, &prepared, &mut frozen_at, opts)?;
    let lock = match opts.tcp_close {
        true => NetLock::none(),
        false => lock_connections(&tree)?,
    };

    let write_err = |source| CheckpointError::Write {
        path: opts.output.into(),
        source,
    };
    let mut w = ImageWriter::create(opts.output).map_err(write_err)?;
    // An incremental image is compressed even unasked: its changed pages are stored as their
    // differences from the parent's (`image::delta`), which zstd keeps in a few bytes each.
    let delta_level = (base.is_some() && opts.key.is_none()).then_some(codec::DEFAULT_LEVEL);
    if let Some(level) = opts.compress.or(delta_level) {
        w.compress(level).map_err(write_err)?;
    }
    if let Some(key) = opts.key {
        w.sign(key);
    }
    let mut stats = Stats {
        interceptor: !prepared.is_empty(),
        stdio_flushed,
        flush_us: if prepared.is_empty() { 0 } else { flush_us },
        processes: tree.members.len() as u32,
        ..Stats::default()
    };
    let (mut manifest, late) = dump_tree(
        &dev,
        &tree,
        (&prepared, base.as_ref()),
        (&mut w, opts),
        &mut stats,
    )?;
    // Killed, the tree's connections stay locked until the restore lifts the lock.
    manifest.netlock = lock.table().filter(|_| opts.kill).map(String::from);
    manifest.image_id = Some(image_id.clone());
    manifest.parent = base.map(|b| b.reference);

    // Everything of the tree is captured: unless it is to be killed, let it go now and
    // finish the image (checksums, manifest, fsync) while it runs.
    let (tree, lock) = if opts.kill {
        (Some(tree), Some(lock))
    } else {
        // The cut: every page is read or snapshotted. From here the next checkpoint's
        // dirty pages are those written after this point.
        reset_tracking(&manifest, &image_id);
        lock.release();
        tree.release()?;
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
        for p in std::mem::take(&mut prepared).into_values() {
            p.client.done();
        }
        (None, None)
    };
    late.write(&dev, &mut manifest, (&mut w, opts.output), &mut stats)?;
    if opts.kill {
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
    }
    stats.total_us = t0.elapsed().as_micros() as u64;
    stats.dump_mib_per_s = stats.throughput();
    manifest.stats = Some(stats);
    worker::check()?;
    stats.image_bytes = manifest.write_to(w).map_err(write_err)?;
    if let Some(tree) = tree {
        if let Some(lock) = &lock {
            lock.arm_for_kill().map_err(|e| {
                CheckpointError::Tree(format!("putting its TCP connections in repair mode: {e}"))
            })?;
        }
        tree.kill()?;
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
    }
    // Killed in repair mode, the connections ended silently; their peers' packets are held
    // back until the restore.
    if let Some(lock) = lock {
        lock.keep();
    }
    stats.total_us = t0.elapsed().as_micros() as u64;
    Ok(stats)
}

/// Resets the soft-dirty tracking of every process of the (still frozen) tree, relative to
/// the image being written (`crate::dirty`). A failure only makes the next incremental
/// image larger (the bits stay set), so it is a warning.
fn reset_tracking(manifest: &Manifest, image_id: &str) {
    crate::dirty::forget_gone();
    for id in manifest
        .processes
        .iter()
        .filter_map(|p| p.identity.as_ref())
    {
        if let Err(e) = crate::dirty::reset(id, image_id) {
            eprintln!("ckpt: warning: resetting the change tracking of {id}: {e}");
        }
    }
}

/// Holds back the packets to the tree's established TCP connections (`crate::netlock`).
fn lock_connections(tree: &FrozenTree) -> Result<NetLock, CheckpointError> {
    let locking =
        |e: std::io::Error| CheckpointError::Tree(format!("locking its TCP connections: {e}"));
    let (sockets, endpoints) = fds::tcp::connections_in(&tree.pids()).map_err(locking)?;
    let lock = NetLock::take(sockets, &endpoints).map_err(locking)?;
    // For the test of a ckpt killed while the lock is on.
    if lock.table().is_some() {
        worker::pause_for_test("CKPT_TEST_PAUSE_LOCKED");
    }
    worker::check()?;
    Ok(lock)
}

/// Once frozen: stdio flushed where the interceptor needs ckpt to do it (a single-threaded
/// program may be let run a moment to reach a safe point: `frozen_at` restarts), and calls
/// the kernel never restarts pointed back. Returns whether every prepared process's stdio is
/// flushed.
fn settle(
    dev: &Device,
    tree: &mut FrozenTree,
    prepared: &BTreeMap<i32, Prepared>,
    frozen_at: &mut Instant,
    opts: &Options,
) -> Result<bool, CheckpointError> {
    let mut stdio_flushed = !prepared.is_empty();
    for m in &mut tree.members {
        if let Some(p) = prepared.get(&m.frozen.pid) {
            let timeout = opts.flush_timeout;
            stdio_flushed &= p.flush_stdio(dev, &mut m.frozen, frozen_at, timeout)?;
        }
        m.frozen.redo_interrupted_calls()?;
    }
    Ok(stdio_flushed)
}

/// Dumps every process of the frozen tree into the image; returns the manifest (without
/// statistics) and the pages still to write from snapshots once the tree runs again.
fn dump_tree(
    dev: &Device,
    tree: &FrozenTree,
    (prepared, base): (&BTreeMap<i32, Prepared>, Option<&parent::Base>),
    (w, opts): (&mut ImageWriter, &Options),
    stats: &mut Stats,
) -> Result<(Manifest, LatePages), CheckpointError> {
    let path = opts.output;
    // Every process's fds first: which pipes and sockets are the tree's.
    let mut fd_entries = Vec::new();
    let mut shared = SharedDump {
        external_unix: opts.external_unix,
        tcp_close: opts.tcp_close,
        ..SharedDump::default()
    };
    for m in &tree.members {
        let pid = m.frozen.pid;
        let entries = proc::fds(pid).map_err(checkpoint_io(pid, "listing fds"))?;
        shared.census.add(pid, &entries);
        fd_entries.push(entries);
    }
    // Then the descriptors in flight in their queues, which the census counts too.
    let holders = in_flight_holders(tree, &fd_entries);
    fds::in_flight::collect(&holders, &mut shared).map_err(fd_failure(path))?;
    // Which fds are one open file description (fork, dup, in flight): recorded once, made
    // once.
    let root = tree.members.first().map_or(0, |m| m.frozen.pid);
    (shared.census.descriptions.group()).map_err(checkpoint_io(
        root,
        "comparing the tree's open files (kcmp)",
    ))?;
    fds::in_flight::record(&mut shared, w).map_err(fd_failure(path))?;
    // Semaphore sets and message queues (found through their users' pids) before the long
    // part, so that one shared with a process outside the tree is refused early.
    let pids = (tree.members.iter().map(|m| m.frozen.pid))
        .chain(tree.zombies.iter().map(|z| z.pid))
        .collect();
    let (sysv_sem, sysv_msg) = crate::sysv::dump(&pids, w).map_err(CheckpointError::Tree)?;
    let mut late = LatePages {
        stored: memory::Stored::for_tree(tree.members.len()),
        progress: Progress::stderr("writing pages", opts.progress),
        ..LatePages::default()
    };
    let mut dump = Dump {
        dev,
        w: &mut *w,
        path,
        stats: &mut *stats,
        shared: &mut shared,
        late: &mut late,
        snapshot: opts.snapshot,
        base,
    };
    let mut processes = Vec::new();
    for (i, (m, entries)) in tree.members.iter().zip(&fd_entries).enumerate() {
        let p = prepared.get(&m.frozen.pid);
        worker::check()?;
        processes.push(dump.process((i, &m.frozen), &m.stat, entries, p)?);
    }
    // Once every pty is recorded: the sessions whose controlling terminal is one of them.
    for (p, m) in processes.iter_mut().zip(&tree.members) {
        p.ctty = fds::controlling_terminal(&m.stat, m.frozen.pid, &shared);
    }
    late.snapshot(tree, &mut processes, (dev, w, path), stats)?;
    let manifest = Manifest {
        processes,
        zombies: tree.zombies.clone(),
        gone_leaders: tree.gone_leaders.clone(),
        netlock: None,
        shared: fds::Shared {
            sysv_sem,
            sysv_msg,
            ..shared.finish().map_err(CheckpointError::Tree)?
        },
        stats: None,
        image_id: None,
        parent: None,
    };
    Ok((manifest, late))
}

/// The private pages of the processes whose memory was snapshotted, written once the tree
/// runs again; which frames the image holds already (a child's pages still shared
/// copy-on-write with its parent are stored once); and the progress of writing pages, over
/// the whole tree.
#[derive(Default)]
struct LatePages {
    /// Waiting for their snapshot (`LatePages::snapshot`).
    pending: Vec<Pending>,
    /// Snapshotted: their pages are read from it (`LatePages::write`).
    taken: Vec<(Pending, Snapshot)>,
    stored: memory::Stored,
    progress: Progress,
}

/// A process whose private pages are still to be read from its snapshot.
struct Pending {
    /// Its place in the manifest's processes.
    index: usize,
    maps: Vec<MapEntry>,
    objects: Vec<Option<Backing>>,
    /// Its pages unchanged since the parent image, found at the cut.
    reuse: Reuse,
}

impl LatePages {
    /// Snapshots the processes waiting for it, last thing before the tree is let go: a
    /// snapshot holds what its process holds (its fds), which would look like a process
    /// outside the tree to the dump of later processes. A process that cannot be cloned
    /// (its user's process limit, a full pids cgroup, a kernel without CLONE_AUTOREAP) has
    /// its pages written now, while frozen, with a warning.
    fn snapshot(
        &mut self,
        tree: &FrozenTree,
        processes: &mut [Process],
        (dev, w, image_path): (&Device, &mut ImageWriter, &Path),
        stats: &mut Stats,
    ) -> Result<(), CheckpointError> {
        for p in std::mem::take(&mut self.pending) {
            worker::check()?;
            let frozen = &tree.members[p.index].frozen;
            match Snapshot::take(frozen) {
                Ok(snapshot) => {
                    stats.snapshots += 1;
                    self.taken.push((p, snapshot));
                }
                Err(e) => {
                    eprintln!(
                        "ckpt: warning: no copy-on-write snapshot of process {} ({e}): its \
                         memory is written while the tree is frozen",
                        frozen.pid
                    );
                    let ctx = (image_path, &mut *stats, &mut self.stored, &self.progress);
                    let pages = (&p.maps[..], p.objects, &p.reuse);
                    let vmas = memory::dump_pages(frozen.pid, dev, pages, w, ctx)?;
                    processes[p.index].memory.vmas = vmas;
                }
            }
        }
        Ok(())
    }

    /// Writes every snapshot's pages into the image and completes the process records
    /// with their mappings; each snapshot is killed once read.
    fn write(
        self,
        dev: &Device,
        manifest: &mut Manifest,
        (w, image_path): (&mut ImageWriter, &Path),
        stats: &mut Stats,
    ) -> Result<(), CheckpointError> {
        let (mut stored, progress) = (self.stored, self.progress);
        // For the test of a ckpt killed while it holds snapshots.
        if !self.taken.is_empty() {
            worker::pause_for_test("CKPT_TEST_PAUSE_SNAPSHOT");
        }
        for (p, snapshot) in self.taken {
            worker::check()?;
            let t0 = Instant::now();
            let source = snapshot.pid();
            let ctx = (image_path, &mut *stats, &mut stored, &progress);
            let vmas = memory::dump_pages(source, dev, (&p.maps, p.objects, &p.reuse), w, ctx)?;
            let process = manifest.processes.get_mut(p.index).ok_or_else(|| {
                CheckpointError::Tree(format!("no process record {} for a snapshot", p.index))
            })?;
            process.memory.vmas = vmas;
            stats.memdump_us += t0.elapsed().as_micros() as u64;
        }
        progress.finish();
        Ok(())
    }
}

/// Each process's index in the image, pid and fds, where descriptors in flight are looked
/// for (`fds::in_flight`).
fn in_flight_holders<'a>(
    tree: &FrozenTree,
    fd_entries: &'a [Vec<FdEntry>],
) -> Vec<(usize, i32, &'a [FdEntry])> {
    (tree.members.iter().zip(fd_entries))
        .enumerate()
        .map(|(i, (m, e))| (i, m.frozen.pid, e.as_slice()))
        .collect()
}

/// The error of a descriptor that cannot be recorded (pid, fd, its target, why): a process's
/// own, or one in flight, named by the process fd whose queue holds it.
fn fd_failure(path: &Path) -> impl Fn(fds::in_flight::Failure) -> CheckpointError + '_ {
    move |(pid, fd, target, e)| match e {
        DumpError::Unsupported(why) => CheckpointError::UnsupportedFd {
            pid,
            fd,
            target,
            why,
        },
        DumpError::Io { what, source } => CheckpointError::Io { pid, what, source },
        DumpError::Image(source) => CheckpointError::Write {
            path: path.into(),
            source,
        },
    }
}

/// PREPARE for every process of the tree (as it is now) that runs under `ckpt run`.
fn prepare_all(pid: i32, opts: &Options) -> BTreeMap<i32, Prepared> {
    if opts.plain {
        return BTreeMap::new();
    }
    let roots = std::iter::once(pid).chain(opts.also.iter().copied());
    let pids: Vec<i32> = if opts.single {
        roots.collect()
    } else {
        roots.flat_map(tree::list).collect()
    };
    let mut seen = std::collections::BTreeSet::new();
    pids.into_iter()
        .filter(|&p| seen.insert(p))
        .filter_map(|p| Some((p, interceptor::prepare(p)?)))
        .collect()
}

/// Checks everything that can be checked without stopping the target.
fn precheck(pid: i32) -> Result<(), CheckpointError> {
    if worker::is_ckpt(pid) {
        return Err(CheckpointError::IsSelf(pid));
    }
    let st = proc::stat(pid).map_err(|_| CheckpointError::NoSuchProcess(pid))?;
    const PF_KTHREAD: u64 = 0x0020_0000;
    if st.flags & PF_KTHREAD != 0 {
        return Err(CheckpointError::KernelThread(pid));
    }
    if st.state == 'Z' || st.state == 'X' {
        return Err(CheckpointError::Zombie(pid));
    }
    // The permission check is the attach (the module reads only what ckpt traces): a
    // refused one fails at the first seize, before anything is stopped.
    Ok(())
}

/// What each process's dump writes to.
struct Dump<'a> {
    dev: &'a Device,
    w: &'a mut ImageWriter,
    /// The image's name, for errors.
    path: &'a Path,
    stats: &'a mut Stats,
    shared: &'a mut SharedDump,
    /// Where snapshotted processes go, and the frames stored already.
    late: &'a mut LatePages,
    /// Snapshot private memory (else every page is written while frozen).
    snapshot: bool,
    /// The parent image of an incremental checkpoint.
    base: Option<&'a parent::Base>,
}

impl Dump<'_> {
    /// Dumps every resource of a frozen process (its fds: `entries`) into the image; returns
    /// its record.
    fn process(
        &mut self,
        (index, frozen): (usize, &Frozen),
        st: &proc::Stat,
        entries: &[FdEntry],
        prepared: Option<&Prepared>,
    ) -> Result<Process, CheckpointError> {
        let (dev, w, stats) = (self.dev, &mut *self.w, &mut *self.stats);
        let image_path = self.path;
        let pid = frozen.pid;
        let write_err = |source| CheckpointError::Write {
            path: image_path.into(),
            source,
        };
        // Ids as the application sees them (they differ from the kernel's after a restore that
        // could not get the original ones back).
        let to_virtual = |k: i32| prepared.map_or(k, |p| p.ready.to_virtual(k));
        // First: reading them lends a thread, which is then put back exactly as it was (its
        // registers, FPU state and pending signals, captured below).
        let timers = crate::timers::dump(frozen, dev.itimers_armed(pid)?, to_virtual)?;
        let captured = frozen
            .tids
            .iter()
            .map(|&tid| thread::capture(dev, pid, tid))
            .collect::<Result<Vec<_>, _>>()?;
        let euid = captured
            .first()
            .and_then(|c| c.thread.creds.as_ref())
            .map_or(0, |c| c.uid[1]);
        let ts = dev.dump_task(pid)?;
        let (_, shared_pending) =
            proc::pending_signals(pid).map_err(checkpoint_io(pid, "reading pending signals"))?;
        let attrs = attrs::dump(pid, &st.comm, ts.personality, euid)?;
        let maps = memory::mappings(pid)?;

        let mem_t0 = Instant::now();
        let objects = memory::dump_objects(pid, &maps, w, (image_path, &mut self.shared.shm))?;
        // The dirty bits are the frozen process's, read now (a snapshot has its own).
        let reuse = match self.base {
            Some(base) => base.reuse(pid, st, &maps)?,
            None => Reuse::default(),
        };
        let vmas = if self.snapshot && Snapshot::can_copy(&maps) {
            self.late.pending.push(Pending {
                index,
                maps,
                objects,
                reuse,
            });
            Vec::new() // completed by `LatePages::write`
        } else {
            let late = &mut *self.late;
            let ctx = (image_path, &mut *stats, &mut late.stored, &late.progress);
            memory::dump_pages(pid, dev, (&maps, objects, &reuse), w, ctx)?
        };
        stats.memdump_us += mem_t0.elapsed().as_micros() as u64;
        let threads = captured
            .into_iter()
            .map(|c| c.record(w, to_virtual))
            .collect::<Result<Vec<_>, _>>()
            .map_err(write_err)?;
        let files = fds::dump((pid, index), entries, w, self.shared)
            .map_err(|(fd, target, e)| fd_failure(image_path)((pid, fd, target, e)))?;
        Ok(Process {
            pid: to_virtual(pid),
            ppid: to_virtual(st.ppid),
            pgid: st.pgid,
            sid: st.sid,
            attrs,
            memory: Memory {
                mm: memory::MmLayout::from(&ts.mm),
                vmas,
                table: None,
            },
            sigactions: signals::dump(&ts),
            files,
            threads,
            shared_pending,
            interceptor: prepared.map(Prepared::state),
            ctty: None,
            timers,
            identity: Some(crate::dirty::Identity::of(pid, st)),
        })
    }
}
