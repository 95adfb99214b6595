//! Talking to the interceptor library (`interceptors/`) inside an application started by
//! `ckpt run`: finding its control socket, asking it to prepare for a checkpoint, and, after
//! a restore, filling its pid/tid translation table.
//!
//! The socket of process PID is `RUNTIME_DIR/APP/PID.sock`, with RUNTIME_DIR and APP taken
//! from the process's initial environment (/proc/PID/environ). The library answers only root
//! and its own user; ckpt checks that the socket's peer really is PID (SO_PEERCRED).

use ckpt_abi::interceptor::{
    CTL_MAGIC, CTL_MAX_PAIRS, CTL_OFF_ACTIVE, CTL_OFF_COUNT, CTL_OFF_GENERATION, CTL_OFF_MAGIC,
    CTL_OFF_PAIRS, ENV_APP_ID, ENV_RUNTIME_DIR, REQ_DONE, REQ_INFO, REQ_PREPARE, SOCKET_SUFFIX,
};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// The interceptor library's state in a process checkpointed through it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterceptorState {
    /// The application id `ckpt run` gave it.
    pub app_id: String,
    /// Address of the control block (pid/tid translation table) in the process's memory.
    pub ctl_addr: u64,
    /// Offset of the tid in glibc's thread descriptor (at each thread's fs base), if known:
    /// rewritten on restore when a thread gets another kernel tid.
    pub tid_offset: Option<u64>,
    /// Regular files the library fdatasync'ed before the snapshot.
    pub fsynced_files: u32,
}

impl InterceptorState {
    /// Image data is never trusted: the tid offset is used to write into the process.
    pub fn validate(&self) -> Result<(), String> {
        if self.tid_offset.is_some_and(|o| o >= 4096 || o % 4 != 0) {
            return Err("bad interceptor tid offset".into());
        }
        Ok(())
    }
}

/// How long the library may take to flush before ckpt gives up (a thread holding a stdio
/// lock while blocked on a full pipe can hold it up).
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum InterceptorError {
    #[error("the interceptor of process {pid} ({path}): {what}: {source}")]
    Io {
        pid: i32,
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the interceptor of process {pid} answered something unexpected: {answer:?}")]
    Protocol { pid: i32, answer: String },
}

/// Where a process's interceptor lives, from its environment.
#[derive(Debug, Clone)]
pub struct Location {
    pub app_id: String,
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
}

/// The application id and runtime directory `ckpt run` gave `pid`, if it runs under it.
pub fn locate(pid: i32) -> Option<Location> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut app_id = None;
    let mut runtime_dir = None;
    for var in env.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix(&format!("{ENV_APP_ID}=")) {
            app_id = Some(v.to_owned());
        } else if let Some(v) = var.strip_prefix(&format!("{ENV_RUNTIME_DIR}=")) {
            runtime_dir = Some(PathBuf::from(v));
        }
    }
    let (app_id, runtime_dir) = (app_id?, runtime_dir?);
    let socket = runtime_dir
        .join(&app_id)
        .join(format!("{pid}{SOCKET_SUFFIX}"));
    Some(Location {
        app_id,
        runtime_dir,
        socket,
    })
}

/// A connection to one process's interceptor.
pub struct Client {
    pid: i32,
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

/// The answer to PREPARE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    /// Address of the control block in the process.
    pub ctl: u64,
    /// Offset of the tid in glibc's thread descriptor, if found.
    pub tid_offset: Option<u64>,
    /// The control thread's kernel tid.
    pub ctl_tid: i32,
    /// Regular files fdatasync'ed.
    pub fsynced: u32,
    /// (virtual, kernel) id pairs in use.
    pub map: Vec<(i32, i32)>,
    /// How stdio is flushed: "done" (by the library), "infcall" (ckpt makes the frozen main
    /// thread call `flush_addr`), "skipped" or "timeout".
    pub stdio: String,
    /// Address of `ckpt_interceptor_flush` in the process.
    pub flush_addr: u64,
    /// Address of the trampoline's return context.
    pub flush_ctx: u64,
}

impl Ready {
    pub fn to_virtual(&self, kernel: i32) -> i32 {
        self.map
            .iter()
            .find(|&&(_, k)| k == kernel)
            .map_or(kernel, |&(v, _)| v)
    }

    fn parse(line: &str) -> Option<Ready> {
        let mut r = Ready::default();
        let mut words = line.split_whitespace();
        if words.next()? != "READY" {
            return None;
        }
        for w in words {
            let (k, v) = w.split_once('=')?;
            match k {
                "ctl" => r.ctl = u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()?,
                "tidoff" => r.tid_offset = v.parse::<i64>().ok().and_then(|o| o.try_into().ok()),
                "fsynced" => r.fsynced = v.parse().ok()?,
                "ctltid" => r.ctl_tid = v.parse().ok()?,
                "stdio" => r.stdio = v.to_owned(),
                "flush" => r.flush_addr = u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()?,
                "ctx" => r.flush_ctx = u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()?,
                "map" => {
                    for pair in v.split(',').filter(|p| !p.is_empty()) {
                        let (a, b) = pair.split_once(':')?;
                        r.map.push((a.parse().ok()?, b.parse().ok()?));
                    }
                }
                _ => {}
            }
        }
        (r.ctl != 0).then_some(r)
    }
}

impl Client {
    /// Connects to the interceptor of `pid`. None if `pid` does not run under `ckpt run`.
    pub fn connect(pid: i32) -> Option<Result<Client, InterceptorError>> {
        let loc = locate(pid)?;
        let io = |what, source| InterceptorError::Io {
            pid,
            path: loc.socket.clone(),
            what,
            source,
        };
        let stream = match UnixStream::connect(&loc.socket) {
            Ok(s) => s,
            Err(e) => return Some(Err(io("connecting", e))),
        };
        // The peer must be the process itself, not whoever created a file there.
        match peer_pid(&stream) {
            Ok(p) if p == pid => {}
            Ok(p) => {
                return Some(Err(io(
                    "checking the peer",
                    std::io::Error::other(format!("the socket belongs to process {p}")),
                )))
            }
            Err(e) => return Some(Err(io("checking the peer", e))),
        }
        let _ = stream.set_read_timeout(Some(PREPARE_TIMEOUT));
        Some(Ok(Client {
            pid,
            path: loc.socket,
            stream: BufReader::new(stream),
        }))
    }

    fn request(&mut self, req: &str) -> Result<String, InterceptorError> {
        let io = |what, source| InterceptorError::Io {
            pid: self.pid,
            path: self.path.clone(),
            what,
            source,
        };
        self.stream
            .get_mut()
            .write_all(format!("{req}\n").as_bytes())
            .map_err(|e| io("sending a request", e))?;
        let mut line = String::new();
        // An answer is one short line (the id table at most ~20 KiB): bound what is read.
        use std::io::Read;
        match (&mut self.stream).take(64 * 1024).read_line(&mut line) {
            Ok(0) => Err(io(
                "reading the answer",
                std::io::Error::other("connection closed"),
            )),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(io(
                "reading the answer",
                std::io::Error::other(format!(
                    "no answer within {} s (is a thread holding a stdio lock?)",
                    PREPARE_TIMEOUT.as_secs()
                )),
            )),
            Err(e) => Err(io("reading the answer", e)),
        }
    }

    /// Returns (kernel pid, virtual pid, generation).
    pub fn info(&mut self) -> Result<(i32, i32, u64), InterceptorError> {
        let answer = self.request(REQ_INFO)?;
        let field = |k: &str| {
            answer
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<i64>().ok())
        };
        match (field("pid"), field("vpid"), field("generation")) {
            (Some(p), Some(v), Some(g)) if answer.starts_with("INFO ") => {
                Ok((p as i32, v as i32, g as u64))
            }
            _ => Err(InterceptorError::Protocol {
                pid: self.pid,
                answer,
            }),
        }
    }

    /// Asks the library to flush; it then waits for [`Client::done`] (or for this connection
    /// to close).
    pub fn prepare(&mut self) -> Result<Ready, InterceptorError> {
        let answer = self.request(REQ_PREPARE)?;
        Ready::parse(&answer).ok_or(InterceptorError::Protocol {
            pid: self.pid,
            answer,
        })
    }

    /// Lets the library go back to waiting for requests.
    pub fn done(mut self) {
        let _ = self
            .stream
            .get_mut()
            .write_all(format!("{REQ_DONE}\n").as_bytes());
    }
}

fn peer_pid(s: &UnixStream) -> std::io::Result<i32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    Ok(getsockopt(s, PeerCredentials)?.pid())
}

/// After a restore, while every thread is still stopped: fills the control block at `ctl`
/// with the (virtual, kernel) pairs and bumps its generation. `poke`/`peek` access the
/// restored process's memory. Returns an error (and writes nothing) if the magic is not there.
pub fn write_table(
    inj: &crate::inject::Injector,
    ctl: u64,
    pairs: &[(i32, i32)],
) -> std::io::Result<()> {
    let head = inj.peek(ctl, CTL_OFF_PAIRS)?;
    let word = |off: usize| u64::from_le_bytes(head[off..off + 8].try_into().unwrap_or([0; 8]));
    if word(CTL_OFF_MAGIC) != CTL_MAGIC {
        return Err(std::io::Error::other(format!(
            "no interceptor control block at {ctl:#x}"
        )));
    }
    let pairs = &pairs[..pairs.len().min(CTL_MAX_PAIRS)];
    let mut table = Vec::with_capacity(pairs.len() * 8);
    for &(v, k) in pairs {
        table.extend_from_slice(&v.to_le_bytes());
        table.extend_from_slice(&k.to_le_bytes());
    }
    inj.poke(ctl + CTL_OFF_PAIRS as u64, &table)?;
    inj.poke(
        ctl + CTL_OFF_COUNT as u64,
        &(pairs.len() as u32).to_le_bytes(),
    )?;
    let active = pairs.iter().any(|&(v, k)| v != k);
    inj.poke(
        ctl + CTL_OFF_ACTIVE as u64,
        &u32::from(active).to_le_bytes(),
    )?;
    inj.poke(
        ctl + CTL_OFF_GENERATION as u64,
        &word(CTL_OFF_GENERATION).wrapping_add(1).to_le_bytes(),
    )
}

impl InterceptorState {
    /// After a restore, every thread still stopped: tells the process's library which kernel
    /// ids its ids now have (its translation table), and rewrites glibc's copy of each
    /// thread's tid where the kernel gave another, so that none runs with stale ids. The
    /// original parent is not part of the image: getppid reports the real parent (its
    /// virtual id if it is a restored process of ours).
    pub fn restore_ids(
        &self,
        inj: &crate::inject::Injector,
        threads: &[crate::thread::Thread],
        tids: &[i32],
    ) -> std::io::Result<()> {
        let pairs: Vec<(i32, i32)> = threads
            .iter()
            .map(|t| t.tid)
            .zip(tids.iter().copied())
            .collect();
        write_table(inj, self.ctl_addr, &pairs)?;
        let Some(offset) = self.tid_offset else {
            return Ok(());
        };
        for (t, &now) in threads.iter().zip(tids) {
            let was = t.kernel_tid.unwrap_or(t.tid);
            let addr = t.regs.fs_base.checked_add(offset);
            let Some(addr) = addr.filter(|_| was != now && t.regs.fs_base != 0) else {
                continue;
            };
            // Only where glibc's descriptor really holds the old tid.
            if inj.peek(addr, 4)? == was.to_le_bytes() {
                inj.poke(addr, &now.to_le_bytes())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Ready;

    #[test]
    fn ready_lines_parse_and_bad_ones_do_not() {
        let r = Ready::parse(
            "READY ctl=0x7f00dead0000 tidoff=720 ctltid=206 fsynced=3 stdio=infcall \
             flush=0x7f00beef ctx=0x7f00cafe map=100:205,101:206",
        )
        .unwrap();
        assert_eq!(r.ctl, 0x7f00dead0000);
        assert_eq!(r.tid_offset, Some(720));
        assert_eq!(r.ctl_tid, 206);
        assert_eq!(r.flush_ctx, 0x7f00cafe);
        assert_eq!(r.fsynced, 3);
        assert_eq!(r.stdio, "infcall");
        assert_eq!(r.flush_addr, 0x7f00beef);
        assert_eq!(r.map, vec![(100, 205), (101, 206)]);
        assert_eq!(r.to_virtual(206), 101);
        assert_eq!(r.to_virtual(7), 7);
        let r =
            Ready::parse("READY ctl=0x10 tidoff=-1 ctltid=5 fsynced=0 stdio=done flush=0x1 map=")
                .unwrap();
        assert_eq!(r.tid_offset, None);
        assert_eq!(r.ctl_tid, 5);
        assert!(r.map.is_empty());
        for bad in [
            "",
            "INFO pid=1",
            "READY ctl=0x0 ctltid=1",
            "READY ctl=0x10 ctltid=x",
            "READY ctl=zz",
            "READY ctl=0x10 map=1:x",
            "READY ctl=0x10 fsynced=many",
        ] {
            assert_eq!(Ready::parse(bad), None, "{bad:?}");
        }
    }
}
