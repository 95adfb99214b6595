//! `ckpt info`: what the module sees of a process.

use crate::device::{Device, QueryError};
use serde::Serialize;

/// The report `ckpt info` prints.
#[derive(Debug, Serialize)]
pub struct InfoReport {
    pub pid: i32,
    pub threads: u32,
    pub vmas: u32,
    pub mapped_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadReport>,
}

#[derive(Debug, Serialize)]
pub struct ReadReport {
    pub addr: u64,
    pub requested: usize,
    /// Bytes read, hex-encoded.
    pub hex: String,
}

/// The error of a refused attach to `pid`: no such process, a kernel thread, or why not.
fn refused(pid: i32, e: nix::Error) -> QueryError {
    const PF_KTHREAD: u64 = 0x0020_0000;
    match e {
        nix::Error::ESRCH => QueryError::NoSuchProcess { pid },
        _ if crate::proc::stat(pid).is_ok_and(|s| s.flags & PF_KTHREAD != 0) => {
            QueryError::Invalid { pid }
        }
        _ => QueryError::NotTraceable {
            pid,
            why: crate::attach::why_refused(pid, e),
        },
    }
}

/// Queries `pid`, reading `read_len` bytes at `read_addr` when `read_len > 0`.
pub fn info(
    dev: &Device,
    pid: i32,
    read_addr: u64,
    read_len: usize,
) -> Result<InfoReport, QueryError> {
    let mut buf = vec![0u8; read_len];
    // The module reads only a process its caller traces.
    let r = crate::attach::while_traced(pid, || dev.query(pid, read_addr, &mut buf))
        .map_err(|e| refused(pid, e))??;
    let read = (read_len > 0).then(|| ReadReport {
        addr: read_addr,
        requested: read_len,
        hex: buf[..r.bytes_read]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    });
    Ok(InfoReport {
        pid,
        threads: r.threads,
        vmas: r.vmas,
        mapped_bytes: r.mapped_bytes,
        read,
    })
}

impl std::fmt::Display for InfoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pid:          {}", self.pid)?;
        writeln!(f, "threads:      {}", self.threads)?;
        writeln!(f, "vmas:         {}", self.vmas)?;
        writeln!(
            f,
            "mapped:       {} bytes ({:.1} MiB)",
            self.mapped_bytes,
            self.mapped_bytes as f64 / (1024.0 * 1024.0)
        )?;
        if let Some(r) = &self.read {
            writeln!(
                f,
                "read:         {} of {} bytes at {:#x}",
                r.hex.len() / 2,
                r.requested,
                r.addr
            )?;
            for (i, chunk) in r.hex.as_bytes().chunks(32).enumerate() {
                // Hex digits are ASCII, so every 32-byte chunk is valid UTF-8.
                let line = std::str::from_utf8(chunk).unwrap_or_default();
                writeln!(f, "  {:#014x}  {line}", r.addr + (i as u64) * 16)?;
            }
        }
        Ok(())
    }
}
