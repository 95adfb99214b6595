//! The interceptor's part of a checkpoint (a process started by `ckpt run`): PREPARE before
//! the freeze (it flushes stdio where it can and fdatasyncs written files), and for a
//! single-threaded program, its stdio flushed from its own main thread once frozen at a
//! safe point (see `crate::flush`).

use crate::device::Device;
use crate::errors::{checkpoint_io, CheckpointError};
use crate::flush::{self, Flushed};
use crate::freeze::Frozen;
use crate::interceptor::{locate, Client, InterceptorState, Ready};
use nix::sys::ptrace;
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// A process's interceptor during a checkpoint: the connection (kept open until the dump is
/// over) and its answer. Its fds are not the program's: they are in the control thread's own
/// fd table.
pub struct Prepared {
    pub client: Client,
    pub ready: Ready,
    pub app_id: String,
}

/// Asks `pid`'s interceptor, if it has one, to prepare. A failing PREPARE is not fatal: the
/// checkpoint takes the plain path, with a message.
pub fn prepare(pid: i32) -> Option<Prepared> {
    let location = locate(pid);
    let conn = Client::connect(pid)?;
    match conn.and_then(|mut c| c.prepare().map(|r| (c, r))) {
        Ok((client, ready)) => Some(Prepared {
            client,
            ready,
            app_id: location.map(|l| l.app_id).unwrap_or_default(),
        }),
        Err(e) => {
            eprintln!("ckpt: {e}; taking the plain path (nothing flushed)");
            None
        }
    }
}

impl Prepared {
    /// What the image keeps of the interceptor.
    pub fn state(&self) -> InterceptorState {
        InterceptorState {
            app_id: self.app_id.clone(),
            ctl_addr: self.ready.ctl,
            tid_offset: self.ready.tid_offset,
            fsynced_files: self.ready.fsynced,
        }
    }

    /// Makes sure stdio is flushed, once `frozen`: already done by the library, or done now
    /// from the main thread of a single-threaded program. Returns whether it was flushed (and
    /// says why not on stderr). `frozen_at` restarts whenever the process is let run a
    /// moment to reach a safe point.
    pub fn flush_stdio(
        &self,
        dev: &Device,
        frozen: &mut Frozen,
        frozen_at: &mut Instant,
        timeout: Duration,
    ) -> Result<bool, CheckpointError> {
        let pid = frozen.pid;
        let r = &self.ready;
        if r.stdio == "done" {
            return Ok(true);
        }
        if r.stdio != "infcall" || r.flush_addr == 0 || r.flush_ctx == 0 {
            eprintln!(
                "ckpt: stdio of process {pid} not flushed ({}): its buffers are in the image \
                 and get written after a restore",
                r.stdio
            );
            return Ok(false);
        }
        if let Err(why) = self.reach_safe_point(dev, frozen, frozen_at)? {
            eprintln!(
                "ckpt: stdio of process {pid} not flushed: {why} (its buffers are in the image \
                 and get written after a restore)"
            );
            return Ok(false);
        }
        match flush::call_flush(pid, r.flush_addr, r.flush_ctx, timeout) {
            Ok(Flushed::Done(_)) => Ok(true),
            Ok(Flushed::Stuck) => {
                eprintln!(
                    "ckpt: stdio of process {pid} not flushed within {:.1} s (is its output \
                     blocked?); it is saved in the middle of the flush and finishes it when it \
                     runs",
                    timeout.as_secs_f64()
                );
                Ok(false)
            }
            Err(e) => Err(checkpoint_io(pid, "flushing stdio")(e)),
        }
    }

    /// Lets the single-threaded program run a little between freezes until its main thread
    /// is at a safe point (up to 100 tries). `Ok(Err(why))` when it never was.
    fn reach_safe_point(
        &self,
        dev: &Device,
        frozen: &mut Frozen,
        frozen_at: &mut Instant,
    ) -> Result<Result<(), &'static str>, CheckpointError> {
        let pid = frozen.pid;
        for _ in 0..100 {
            // Still the program's one thread (plus the control thread)? If it made another
            // since PREPARE, stdio is locked and the main thread must not flush.
            if frozen.tids.len() != 2 || !frozen.tids.contains(&self.ready.ctl_tid) {
                return Ok(Err("it has started threads"));
            }
            let r = ptrace::getregs(Pid::from_raw(pid))
                .map_err(|e| checkpoint_io(pid, "PTRACE_GETREGS")(e.into()))?;
            // Not while it runs a signal handler on its alternate stack (it may have
            // interrupted stdio code; with SS_AUTODISARM this cannot be seen).
            let ts = dev.dump_task(pid)?;
            let on_altstack = ts.sas_ss_size != 0
                && r.rsp >= ts.sas_ss_sp
                && r.rsp < ts.sas_ss_sp + ts.sas_ss_size;
            if !on_altstack && flush::at_safe_point(pid, &r) {
                return Ok(Ok(()));
            }
            frozen.release_quietly();
            std::thread::sleep(Duration::from_millis(2));
            *frozen_at = Instant::now();
            frozen.stop_all()?;
        }
        Ok(Err("it never stopped at a safe point"))
    }
}
