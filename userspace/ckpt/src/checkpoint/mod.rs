//! `ckpt checkpoint PID`: the sequence of docs/design.md, "Checkpoint".
//!
//! 1. Check what can be checked without stopping anything (`precheck`).
//! 2. Under `ckpt run`, the interceptor prepares (flushes, syncs) and waits (`interceptor`).
//! 3. Freeze every thread (`crate::freeze`); flush a single-threaded program's stdio.
//! 4. Dump each resource into the image (`dump_process`): threads, attributes, signals,
//!    memory, fds.
//! 5. Let the target go (or, with `--kill`, kill it once the image is durable) and finish the
//!    image (checksums, manifest, fsync, rename).
//!
//! Any failure detaches and leaves the target running and untouched, and no file under the
//! final name.

mod interceptor;

use crate::device::Device;
use crate::errors::{checkpoint_io, CheckpointError};
use crate::fds::DumpError;
use crate::freeze::Frozen;
use crate::image::ImageWriter;
use crate::manifest::{Manifest, Process};
use crate::memory::Memory;
use crate::stats::Stats;
use crate::{attrs, fds, memory, proc, signals, thread};
use interceptor::Prepared;
use std::path::Path;
use std::time::Instant;

pub struct Options<'a> {
    pub pid: i32,
    pub output: &'a Path,
    pub kill: bool,
    pub device: &'a Path,
    /// Do not use the interceptor even if the process runs under `ckpt run`.
    pub plain: bool,
    /// How long a single-threaded program's main thread may take to flush its stdio.
    pub flush_timeout: std::time::Duration,
}

/// Takes the checkpoint. Returns the statistics (also stored in the image).
pub fn checkpoint(opts: &Options) -> Result<Stats, CheckpointError> {
    let t0 = Instant::now();
    let pid = opts.pid;
    let dev = Device::open(opts.device).map_err(|e| {
        checkpoint_io(pid, "opening the ckpt device")(std::io::Error::other(e.to_string()))
    })?;
    let st = precheck(pid, &dev)?;
    let mut prepared = if opts.plain {
        None
    } else {
        interceptor::prepare(pid)
    };

    let mut frozen = Frozen::freeze(pid)?;
    let mut frozen_at = Instant::now();
    let stdio_flushed = match &prepared {
        Some(p) => p.flush_stdio(&dev, &mut frozen, &mut frozen_at, opts.flush_timeout)?,
        None => false,
    };
    frozen.redo_interrupted_calls()?;

    let write_err = |source| CheckpointError::Write {
        path: opts.output.into(),
        source,
    };
    let mut w = ImageWriter::create(opts.output).map_err(write_err)?;
    let mut stats = Stats {
        interceptor: prepared.is_some(),
        stdio_flushed,
        flush_us: prepared.as_ref().map_or(0, |p| p.flush_us),
        ..Stats::default()
    };
    let process = dump_process(
        &dev,
        &frozen,
        &st,
        prepared.as_ref(),
        &mut w,
        opts.output,
        &mut stats,
    )?;

    // Everything of the target is captured: unless it is to be killed, let it go now and
    // finish the image (checksums, manifest, fsync) while it runs.
    let frozen = if opts.kill {
        Some(frozen)
    } else {
        frozen.release()?;
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
        if let Some(p) = prepared.take() {
            p.client.done();
        }
        None
    };
    w.checksum_external().map_err(write_err)?;
    if opts.kill {
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
    }
    stats.total_us = t0.elapsed().as_micros() as u64;
    let manifest = Manifest {
        processes: vec![process],
        stats: Some(stats),
    };
    stats.image_bytes = w.finish(&manifest).map_err(write_err)?;
    if let Some(frozen) = frozen {
        frozen.kill()?;
        stats.frozen_us = frozen_at.elapsed().as_micros() as u64;
    }
    stats.total_us = t0.elapsed().as_micros() as u64;
    Ok(stats)
}

/// Checks everything that can be checked without stopping the target.
fn precheck(pid: i32, dev: &Device) -> Result<proc::Stat, CheckpointError> {
    if pid == std::process::id() as i32 {
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
    // The module applies ptrace's permission rule: fail here, before stopping anything.
    dev.query(pid, 0, &mut [])?;
    Ok(st)
}

/// Dumps every resource of the frozen process into the image; returns its record.
fn dump_process(
    dev: &Device,
    frozen: &Frozen,
    st: &proc::Stat,
    prepared: Option<&Prepared>,
    w: &mut ImageWriter,
    image_path: &Path,
    stats: &mut Stats,
) -> Result<Process, CheckpointError> {
    let pid = frozen.pid;
    let write_err = |source| CheckpointError::Write {
        path: image_path.into(),
        source,
    };
    // Ids as the application sees them (they differ from the kernel's after a restore that
    // could not get the original ones back).
    let to_virtual = |k: i32| prepared.map_or(k, |p| p.ready.to_virtual(k));
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
    let fd_entries = proc::fds(pid).map_err(checkpoint_io(pid, "listing fds"))?;
    let maps = memory::mappings(pid)?;

    let mem_t0 = Instant::now();
    let vmas = memory::dump(pid, dev, &maps, w, image_path, stats)?;
    stats.memdump_us = mem_t0.elapsed().as_micros() as u64;
    let threads = captured
        .into_iter()
        .map(|c| c.record(w, to_virtual))
        .collect::<Result<Vec<_>, _>>()
        .map_err(write_err)?;
    let files = fds::dump(pid, &fd_entries, w).map_err(|(fd, target, e)| match e {
        DumpError::Unsupported(why) => CheckpointError::UnsupportedFd {
            pid,
            fd,
            target,
            why,
        },
        DumpError::Io { what, source } => CheckpointError::Io { pid, what, source },
        DumpError::Image(source) => write_err(source),
    })?;
    Ok(Process {
        pid: to_virtual(pid),
        ppid: to_virtual(st.ppid),
        attrs,
        memory: Memory {
            mm: memory::MmLayout::from(&ts.mm),
            vmas,
        },
        sigactions: signals::dump(&ts),
        files,
        threads,
        shared_pending,
        interceptor: prepared.map(Prepared::state),
    })
}
