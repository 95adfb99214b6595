//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Reason string for tests that need the module: natively they are ignored, and the guest runner
/// (tools/guest.sh, via tests/guest/suite.sh) runs them with `--ignored`.
pub const NEEDS_MODULE: &str = "needs /dev/ckpt: runs in the guest (tools/guest.sh)";

pub fn prog(name: &str) -> PathBuf {
    PathBuf::from(env!("CKPT_TEST_PROGS")).join(name)
}

pub fn ckpt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ckpt"))
}

/// A running test program that printed "ready <addr> <len>"; killed and reaped on drop.
pub struct Target {
    pub child: Child,
    pub addr: u64,
    pub len: usize,
}

impl Target {
    pub fn spawn(name: &str, args: &[&str]) -> Target {
        Self::spawn_as(name, args, None)
    }

    /// Spawns the program, as `uid`/`gid` when given.
    pub fn spawn_as(name: &str, args: &[&str], uid: Option<u32>) -> Target {
        let mut cmd = Command::new(prog(name));
        cmd.args(args).stdout(Stdio::piped()).stdin(Stdio::null());
        if let Some(id) = uid {
            cmd.uid(id).gid(id); // std also drops supplementary groups when root sets a uid
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("ready"), "{name} said {line:?}");
        let addr = words
            .next()
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
        let len = words.next().and_then(|l| l.parse().ok());
        Target {
            child,
            addr: addr.expect("address"),
            len: len.expect("length"),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (VMA count, mapped bytes) from /proc/<pid>/maps, leaving out [vsyscall], which /proc shows
/// but which is not a VMA of the process (it is the kernel's gate area).
pub fn proc_maps(pid: i32) -> (u32, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut count = 0;
    let mut bytes = 0;
    for line in maps.lines().filter(|l| !l.ends_with("[vsyscall]")) {
        let range = line.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        bytes += u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
        count += 1;
    }
    (count, bytes)
}

pub fn proc_threads(pid: i32) -> u32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count() as u32
}

/// The byte the test programs store at offset `i` of their buffer.
pub fn static_pattern(i: usize) -> u8 {
    (i * 7 + 3) as u8
}
pub fn threaded_pattern(i: usize) -> u8 {
    (i * 13 + 5) as u8
}

/// Runs ckpt with its output in files, not pipes: a restored process inherits ckpt's stdio
/// (that is what a user at a terminal wants), and would keep a pipe open forever.
pub fn ckpt(args: &[&str]) -> std::process::Output {
    ckpt_env(args, &[])
}

/// `ckpt` with environment variables set.
pub fn ckpt_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("ckpt-out-{}-{n}", std::process::id()));
    let (o, e) = (base.with_extension("out"), base.with_extension("err"));
    let status = Command::new(ckpt_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .status()
        .unwrap();
    let out = std::process::Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    };
    // The files stay: a restored process may have inherited them as its stderr.
    out
}

pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "ckpt failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh directory under the temporary directory, removed on drop.
pub struct Dir(pub PathBuf);
impl Dir {
    pub fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first line the child writes on its (piped) stdout.
pub fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .unwrap();
    line
}

/// Whether process `pid` is gone (a zombie is not).
pub fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err()
}

/// Waits until `cond` holds, `secs` seconds at most; on timeout, fails showing every process.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        if t0.elapsed() > std::time::Duration::from_secs(secs) {
            let ps = Command::new("ps")
                .args(["-eo", "pid,ppid,pgid,sid,stat,wchan:20,comm"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!("timed out: {what}\n{ps}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Spawns a test program with `args`, stdout piped, and reads its "ready PID" line.
pub fn spawn_ready(name: &str, args: &[&std::ffi::OsStr]) -> (Child, i32) {
    let mut child = Command::new(prog(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
    let line = first_line(&mut child);
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} said {line:?}"));
    (child, pid)
}

/// Checkpoints the tree of `root` (our child) with --kill into `img`; returns the statistics,
/// the image and its pids (processes and zombies), once every one of them is gone.
pub fn checkpoint_kill(
    root: &mut Child,
    img: &std::path::Path,
) -> (serde_json::Value, ckpt::manifest::Image, Vec<i32>) {
    let pid = root.id() as i32;
    checkpoint_kill_pid(pid, img, || {
        root.wait().unwrap();
    })
}

/// Checkpoints the tree of `pid` with --kill into `img`, calls `reap` (which reaps the root
/// if it is ours); returns as `checkpoint_kill` does.
pub fn checkpoint_kill_pid(
    pid: i32,
    img: &std::path::Path,
    reap: impl FnOnce(),
) -> (serde_json::Value, ckpt::manifest::Image, Vec<i32>) {
    checkpoint_kill_with(pid, img, &[], reap)
}

/// `checkpoint_kill_pid` with more options for `ckpt checkpoint`.
pub fn checkpoint_kill_with(
    pid: i32,
    img: &std::path::Path,
    extra: &[&str],
    reap: impl FnOnce(),
) -> (serde_json::Value, ckpt::manifest::Image, Vec<i32>) {
    let pid_s = pid.to_string();
    let mut args = vec![
        "checkpoint",
        &pid_s,
        "-o",
        img.to_str().unwrap(),
        "--kill",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = ok(&ckpt(&args));
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    let image = ckpt::manifest::Image::open(img).unwrap();
    let m = &image.manifest;
    assert_eq!(stats["processes"].as_u64(), Some(m.processes.len() as u64));
    reap();
    let pids: Vec<i32> = m
        .processes
        .iter()
        .map(|p| p.pid)
        .chain(m.zombies.iter().map(|z| z.pid))
        .collect();
    wait_for("no process of the tree is left", 30, || {
        pids.iter().all(|&p| gone(p))
    });
    (stats, image, pids)
}

/// Restores `img` and returns the pid `ckpt restore` printed (its root's), failing the test
/// with ckpt's stderr when it did not restore.
pub fn restore_root(img: &std::path::Path) -> i32 {
    let out = ckpt(&["restore", img.to_str().unwrap()]);
    let text = ok(&out);
    text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "restore printed {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Sends `sig` to the restored process `pid` until `cond` holds (30 s at most). A process
/// waiting in pause() or sigsuspend() at the checkpoint is made to redo that call once let
/// go; a signal sent in that instant runs its handler first and the call then waits for
/// another (design.md, Known limits), so a test that wakes it signals again rather than once.
pub fn signal_until(pid: i32, sig: i32, what: &str, mut cond: impl FnMut() -> bool) {
    let mut last = std::time::Instant::now() - std::time::Duration::from_secs(1);
    wait_for(what, 30, || {
        if last.elapsed() >= std::time::Duration::from_millis(500) {
            // SAFETY: signalling a process of the test.
            unsafe { libc::kill(pid, sig) };
            last = std::time::Instant::now();
        }
        cond()
    });
}

/// The numbers N of the lines "PREFIX N" in the file `path` (none while it does not exist),
/// and whether any line says "bad" (the test programs' word for a lost or repeated step).
pub fn numbered_lines(path: &std::path::Path, prefix: &str) -> (Vec<u64>, bool) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let nums = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix)?.parse().ok())
        .collect();
    (nums, text.contains("bad"))
}

/// `ckpt checkpoint PID -o IMG --json EXTRA...` (the process keeps running unless EXTRA has
/// --kill); returns the statistics, failing the test with ckpt's stderr if it failed.
pub fn checkpoint_json(pid: i32, img: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let pid_s = pid.to_string();
    let mut args = vec!["checkpoint", &pid_s, "-o", img.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&ckpt(&args))).unwrap()
}

/// The children /proc lists for `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Waits for and reaps the workers of killed `ckpt checkpoint`s that were reparented to this
/// process (a subreaper): each finishes undoing its work first. Returns how many.
pub fn reap_orphaned_workers() -> usize {
    let me = std::process::id() as i32;
    let mut reaped = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some(rest) = stat.rfind(") ").map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<i32>().ok());
        if stat.contains("(ckpt-worker)") && ppid == Some(me) {
            // SAFETY: reaping a child of ours.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            reaped += 1;
        }
    }
    reaped
}

/// A process traced by the calling thread (seized and stopped), as the module requires of a
/// caller reading it; let go on drop. Only the thread that made it may use the module on it.
pub struct Traced(pub i32);

impl Traced {
    pub fn new(pid: i32) -> Traced {
        use nix::sys::ptrace;
        let p = nix::unistd::Pid::from_raw(pid);
        ptrace::seize(p, ptrace::Options::empty()).unwrap_or_else(|e| panic!("seize {pid}: {e}"));
        ptrace::interrupt(p).unwrap();
        let mut status = 0;
        // SAFETY: waiting for the stop of a process we trace.
        assert_eq!(
            unsafe { libc::waitpid(pid, &mut status, libc::__WALL) },
            pid
        );
        assert!(libc::WIFSTOPPED(status), "{pid} did not stop: {status:#x}");
        Traced(pid)
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = nix::sys::ptrace::detach(nix::unistd::Pid::from_raw(self.0), None);
    }
}

/// SIGKILLs process `pid` (a child of the test, or reparented to it) and reaps it.
pub fn kill_and_reap(pid: i32) {
    // SAFETY: signalling and reaping a process of ours.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Writes to `bad` a copy of `img` (opened as `image`) with one bit of its largest plain pages
/// section flipped; returns that section's index.
pub fn damage_pages(image: &ckpt::manifest::Image, img: &Path, bad: &Path) -> usize {
    let (i, section) = (image.sections.iter().enumerate())
        .filter(|(_, s)| s.kind == ckpt::image::PAGES && s.compressed.is_none())
        .max_by_key(|(_, s)| s.len)
        .expect("a plain pages section");
    let mut data = std::fs::read(img).unwrap();
    data[(section.offset + section.len - 100) as usize] ^= 0x01;
    std::fs::write(bad, &data).unwrap();
    i
}
