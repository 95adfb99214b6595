//! Watches the kernel log while the run goes on: the first report (BUG, WARNING, lockdep,
//! KFENCE, an RCU stall...) stops the run, so the calls just made are still the last ones in
//! each thread's history, which the report then prints.

use crate::board::Board;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

/// What marks a kernel report (tools/guest.sh fails a run on the same, and more).
const REPORT: &[&str] = &[
    "BUG:",
    "WARNING:",
    "Oops",
    "general protection fault",
    "KASAN",
    "KFENCE",
    "UBSAN",
    "kernel BUG",
    "Call Trace:",
    "possible circular locking",
    "possible recursive locking",
    "lockdep",
    "INFO: task",
    "rcu_preempt detected stalls",
    "self-detected stall",
    "soft lockup",
    "hard LOCKUP",
];

pub fn is_report(line: &str) -> bool {
    REPORT.iter().any(|p| line.contains(p))
}

/// Starts the watcher: report lines go to `reports`, and the first one sets the stop flag.
pub fn watch(board: &'static Board, reports: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
    let mut f = std::fs::File::open("/dev/kmsg")?;
    // Only what is logged from now on.
    f.seek(SeekFrom::End(0))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    // "prio,seq,time,flags;message"
                    let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m).trim_end();
                    if is_report(msg) {
                        board.stop.store(1, Relaxed);
                        if let Ok(mut r) = reports.lock() {
                            r.push(msg.to_string());
                        }
                    }
                }
                // EPIPE: records were overwritten before we read them; go on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => return,
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_are_told_from_ordinary_lines() {
        assert!(super::is_report("WARNING: CPU: 1 PID: 5 at mm/gup.c:1 foo"));
        assert!(super::is_report("BUG: KFENCE: use-after-free read in bar"));
        assert!(!super::is_report(
            "ckpt-fuzz-ioctl[9]: segfault at 0 ip 0 sp 0 error 4"
        ));
        assert!(!super::is_report(
            "kernel read not supported for file /proc/self/mem"
        ));
    }
}
