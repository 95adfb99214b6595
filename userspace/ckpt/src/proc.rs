//! Reading /proc/PID: what the kernel shows user space about a process.

use std::fs;
use std::io;

/// One line of /proc/PID/smaps (plus its VmFlags).
#[derive(Debug, Clone)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// The path or the [name]; empty for anonymous mappings.
    pub name: String,
    pub vm_flags: Vec<String>,
}

impl MapEntry {
    pub fn is_special(&self) -> bool {
        matches!(
            self.name.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
        )
    }
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.name.starts_with('/')
    }
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
}

fn parse_map_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_owned();
    let inode = it.next()?.parse().ok()?;
    let name = it.next().unwrap_or("").trim_start().to_owned();
    let (a, b) = range.split_once('-')?;
    Some(MapEntry {
        start: u64::from_str_radix(a, 16).ok()?,
        end: u64::from_str_radix(b, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        shared: perms.get(3) == Some(&b's'),
        offset,
        dev,
        inode,
        name,
        vm_flags: Vec::new(),
    })
}

/// The mappings of `pid` with their VmFlags, from /proc/PID/smaps.
pub fn smaps(pid: i32) -> io::Result<Vec<MapEntry>> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_owned).collect();
            }
        } else if line.as_bytes().first().is_some_and(u8::is_ascii_hexdigit) && line.contains('-') {
            if let Some(e) = parse_map_line(line) {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// The mappings of `pid` from /proc/PID/maps (cheaper than smaps; no VmFlags).
pub fn maps(pid: &str) -> io::Result<Vec<MapEntry>> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(text.lines().filter_map(parse_map_line).collect())
}

/// Selected fields of /proc/PID/stat.
#[derive(Debug)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The controlling terminal's device number (0: none) and its foreground process group.
    pub tty_nr: u64,
    pub tpgid: i32,
    pub flags: u64,
    pub threads: u32,
    /// The exit status as wait(2) reports it (a zombie's).
    pub exit_code: i32,
    /// When the process started, in clock ticks since boot (field 22): with the pid, which
    /// process this is.
    pub start_time: u64,
}

pub fn stat(pid: i32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    };
    let open = text.find('(').ok_or_else(bad)?;
    let close = text.rfind(')').ok_or_else(bad)?;
    let comm = text[open + 1..close].to_owned();
    // Fields after the comm, starting with field 3 (state).
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).copied().ok_or_else(bad);
    Ok(Stat {
        comm,
        state: field(3)?.chars().next().ok_or_else(bad)?,
        ppid: field(4)?.parse().map_err(|_| bad())?,
        pgid: field(5)?.parse().map_err(|_| bad())?,
        sid: field(6)?.parse().map_err(|_| bad())?,
        tty_nr: field(7)?.parse::<i64>().map_err(|_| bad())? as u64,
        tpgid: field(8)?.parse().map_err(|_| bad())?,
        flags: field(9)?.parse().map_err(|_| bad())?,
        threads: field(20)?.parse().map_err(|_| bad())?,
        exit_code: field(52).ok().and_then(|v| v.parse().ok()).unwrap_or(0),
        start_time: field(22)?.parse().map_err(|_| bad())?,
    })
}

/// The threads of `pid` (/proc/PID/task).
pub fn tids(pid: i32) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        out.extend(t?.file_name().to_str().and_then(|n| n.parse::<i32>().ok()));
    }
    Ok(out)
}

/// The children of every thread of `pid` (/proc/PID/task/TID/children), in pid order.
pub fn children(pid: i32) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = t?.path().join("children");
        let Ok(text) = fs::read_to_string(path) else {
            continue; // the thread exited meanwhile
        };
        out.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The `Umask:` of /proc/PID/status.
pub fn umask(pid: i32) -> io::Result<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Umask in status"))
}

/// The value of field `name` ("Seccomp", ...) of /proc/PID/status.
pub fn status_field(pid: i32, name: &str) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {name} in status")))
}

/// (SigPnd, ShdPnd) of /proc/PID/status: signals pending for the thread and the process.
pub fn pending_signals(pid: i32) -> io::Result<(u64, u64)> {
    pending_signals_in(&fs::read_to_string(format!("/proc/{pid}/status"))?)
}

/// [`pending_signals`] from the text of a status file.
pub fn pending_signals_in(text: &str) -> io::Result<(u64, u64)> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("no {key} in status"))
            })
    };
    Ok((get("SigPnd:")?, get("ShdPnd:")?))
}

/// An open descriptor as /proc shows it.
#[derive(Debug)]
pub struct FdEntry {
    pub fd: i32,
    pub target: String,
    pub pos: u64,
    pub flags: u32,
    /// The file's mount id and inode number (fdinfo's mnt_id and ino): with the target,
    /// position and flags, what tells open file descriptions apart before kcmp is asked.
    pub mnt_id: i32,
    pub ino: u64,
    /// The file locks taken through this fd, as fdinfo's "lock:" lines show them
    /// ("FLOCK  ADVISORY  WRITE 1234 00:1f:56 0 EOF").
    pub locks: Vec<String>,
    /// A UNIX socket's count of file descriptors in flight in its receive queue (fdinfo's
    /// "scm_fds:"; 0 for anything else).
    pub scm_fds: u32,
}

pub fn fds(pid: i32) -> io::Result<Vec<FdEntry>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        match fd_entry(pid, fd) {
            Ok(e) => out.push(e),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // closed meanwhile
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|e| e.fd);
    Ok(out)
}

/// Descriptor `fd` of process `pid` as /proc shows it.
pub fn fd_entry(pid: i32, fd: i32) -> io::Result<FdEntry> {
    let target = fs::read_link(format!("/proc/{pid}/fd/{fd}"))?
        .to_string_lossy()
        .into_owned();
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let get = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let pos = get("pos:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let flags = get("flags:")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .unwrap_or(0);
    let mnt_id = get("mnt_id:").and_then(|v| v.parse().ok()).unwrap_or(-1);
    let ino = get("ino:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let scm_fds = get("scm_fds:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let locks = info
        .lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .collect();
    Ok(FdEntry {
        fd,
        target,
        pos,
        flags,
        mnt_id,
        ino,
        locks,
        scm_fds,
    })
}

/// Whether thread `tid` of `pid` has an fd table of its own (it was created without
/// CLONE_FILES): kcmp says it is not the thread group leader's. (Comparing their fd
/// directories, as before, read two directories and a link per fd for every thread, most of
/// a 500-thread dump's system calls, and took a copy holding the same files for a share.)
pub fn has_own_files(pid: i32, tid: i32) -> bool {
    tid != pid && crate::sys::same_fd_table(pid, tid).is_ok_and(|same| !same)
}

/// Whether `pid` is dumpable, as /proc shows it: a non-dumpable process's /proc directory
/// belongs to root. (A process whose effective uid is root looks dumpable either way.)
pub fn dumpable(pid: i32, euid: u32) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let owner = fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    Some(!(owner == 0 && euid != 0))
}

/// What epoll instance `fd` of `pid` watches, from its fdinfo: (fd, events, data, inode).
pub fn epoll_watches(pid: i32, fd: i32) -> io::Result<Vec<(i32, u32, u64, u64)>> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/fdinfo/{fd}"),
        )
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        // "tfd:        5 events:       19 data:                5  pos:0 ino:3e8 sdev:d"
        let words: Vec<&str> = line.split_whitespace().collect();
        let value = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
                .or_else(|| {
                    words
                        .iter()
                        .find_map(|w| w.strip_prefix(key))
                        .filter(|v| !v.is_empty())
                })
        };
        let tfd = value("tfd:").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let events = value("events:")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let data = value("data:")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let ino = value("ino:")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        out.push((tfd, events, data, ino));
    }
    Ok(out)
}

/// A field of /proc/PID/fdinfo/FD ("name:" followed by a value).
pub fn fdinfo_field(pid: i32, fd: i32, name: &str) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/fdinfo/{fd} has no {name}"),
            )
        })
}

/// The inode in an fd link target such as "pipe:[1234]" or "socket:[1234]" (`kind` is the
/// part before the bracket).
pub fn bracketed_inode(target: &str, kind: &str) -> Option<u64> {
    target
        .strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Our pid as /proc (and so ckpt) sees it: the first NSpid of /proc/self/status, which
/// differs from getpid() inside a pid namespace /proc was not mounted for.
pub fn own_pid_seen_by_proc() -> Option<i32> {
    fs::read_to_string("/proc/self/status").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    })
}

/// Whether the calling process is traced (TracerPid in /proc/self/status).
pub fn traced() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .is_some_and(|v| v.trim() != "0")
    })
}

/// Thread `tid` of `pid` (as /proc sees them) as the process itself sees it: the last NSpid
/// of its status (its pid namespace's view; the same number outside any namespace). None
/// if the status cannot be read.
pub fn tid_inside(pid: i32, tid: i32) -> Option<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let ids = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    ids.split_whitespace().last()?.parse().ok()
}

/// [`tid_inside`], or `tid` itself if unread.
pub fn tid_seen_inside(pid: i32, tid: i32) -> i32 {
    tid_inside(pid, tid).unwrap_or(tid)
}

#[cfg(test)]
mod own_files_tests {
    /// A thread made by std (CLONE_FILES) shares the process's table; kcmp answers for it.
    /// (One with a table of its own: `tests/cli.rs`, the interceptor's control thread.)
    #[test]
    fn a_plain_thread_shares_the_fd_table() {
        let pid = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, pid);
        assert!(crate::sys::same_fd_table(pid, tid).unwrap());
        assert!(!super::has_own_files(pid, tid));
        assert!(!super::has_own_files(pid, pid));
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
