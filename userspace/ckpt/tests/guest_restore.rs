//! Checkpoint and restore, end to end, in the guest (ignored natively: they need /dev/ckpt).
//!
//! The workhorse is tests/progs/counter.c: it appends 0, 1, 2, ... to a file, checks that
//! ymm0-15/MXCSR, a __thread counter and its brk heap survive, answers SIGUSR1 ("usr1 N") and
//! verifies its buffer on SIGUSR2 ("mem-ok N"). The test process makes itself a child
//! subreaper so that restored processes (children of `ckpt restore`) are reaped here.

mod common;
use common::kill_and_reap;
use common::{ckpt, ok, restore_root, Dir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Once, RwLock};
use std::time::{Duration, Instant};

/// Tests take it shared; the module reload test takes it exclusively.
static MODULE: RwLock<()> = RwLock::new(());

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain prctl on ourselves.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    });
}

/// The start of every test: the module lock (shared unless `exclusive`), subreaping, and a
/// fresh directory with the usual `out` and `img` paths.
fn begin(name: &str, exclusive: bool) -> (Box<dyn std::any::Any>, Dir, PathBuf, PathBuf) {
    let guard: Box<dyn std::any::Any> = if exclusive {
        Box::new(MODULE.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Box::new(MODULE.read().unwrap_or_else(|e| e.into_inner()))
    };
    setup();
    let d = Dir::new(name);
    let (out, img) = (d.path("out"), d.path("img"));
    (guard, d, out, img)
}

/// Starts the counter writing to `out`, with a `mib` MiB buffer; waits until it has written
/// a few lines.
fn start_counter(prog: &str, out: &Path, mib: u32) -> Child {
    start_counter_with(prog, out, mib, &[])
}

fn start_counter_with(prog: &str, out: &Path, mib: u32, extra: &[&str]) -> Child {
    let child = Command::new(common::prog(prog))
        .arg(out)
        .arg(mib.to_string())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_lines(out, 0, 3);
    child
}

/// The counter's numeric lines after byte `from` of `out`.
fn numbers(out: &Path, from: usize) -> Vec<u64> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.get(from..)
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn text_after(out: &Path, from: usize) -> String {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .get(from..)
        .unwrap_or("")
        .to_owned()
}

/// Waits until process `pid` sleeps again (a refused checkpoint lets it go at once, but on a
/// loaded guest it may still be running its restarted call a moment): never left stopped.
fn left_sleeping(pid: u32, what: &str) {
    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rfind(") ").and_then(|i| stat[i + 2..].chars().next())
    };
    common::wait_for(what, 10, || state() == Some('S'));
}

/// Waits until `out` has at least `n` numeric lines after byte `from`.
fn wait_lines(out: &Path, from: usize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while numbers(out, from).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} never got {n} lines",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_text(out: &Path, from: usize, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text_after(out, from).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{} never said {needle:?}: {}",
            out.display(),
            text_after(out, from)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_len(p: &Path) -> usize {
    std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0)
}

/// Checkpoints `pid` into `img` with --kill and reaps it. Returns the last number written.
fn checkpoint_kill(child: &mut Child, img: &Path, out: &Path) -> u64 {
    let pid = child.id().to_string();
    ok(&ckpt(&[
        "checkpoint",
        &pid,
        "-o",
        img.to_str().unwrap(),
        "--kill",
    ]));
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    *numbers(out, 0).last().unwrap()
}

/// Restores `img`; returns the pid printed.
/// After a restore at byte `from` of `out`, checks the counter went on from `last` with no gap
/// and no repeat, that its registers, TLS and brk survived, and that its signal handlers work
/// and its memory is intact.
fn check_continues(pid: i32, out: &Path, from: usize, last: u64) {
    wait_lines(out, from, 10);
    let after = numbers(out, from);
    assert_eq!(after[0], last + 1, "first number after the restore");
    for w in after.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap or repeat after the restore");
    }
    // SAFETY: signalling the restored process.
    unsafe {
        assert_eq!(libc::kill(pid, libc::SIGUSR1), 0);
        assert_eq!(libc::kill(pid, libc::SIGUSR2), 0);
    }
    wait_text(out, from, "usr1 ");
    wait_text(out, from, "mem-");
    let text = text_after(out, from);
    for bad in ["fpu-mismatch", "tls-bad", "brk-bad", "mem-bad"] {
        assert!(!text.contains(bad), "{bad} after the restore:\n{text}");
    }
    assert!(text.contains("mem-ok"));
}

/// Restores `img`, checks that the counter writing to `out` went on from `last` (see
/// `check_continues`), and kills it.
fn restore_and_check(img: &Path, out: &Path, last: u64) {
    let from = file_len(out);
    let pid = restore_root(img);
    check_continues(pid, out, from, last);
    kill_and_reap(pid);
}

/// The rseq registration of thread `tid` (address, length, signature), read through ptrace.
fn rseq_of(tid: i32) -> (u64, u32, u32) {
    use ckpt::sys;
    use nix::sys::ptrace;
    let t = nix::unistd::Pid::from_raw(tid);
    ptrace::seize(t, ptrace::Options::empty()).unwrap();
    ptrace::interrupt(t).unwrap();
    sys::waitpid(tid, libc::__WALL).unwrap();
    let c = sys::ptrace_get_rseq(tid).unwrap();
    ptrace::detach(t, None).unwrap();
    (c.rseq_abi_pointer, c.rseq_abi_size, c.signature)
}

fn maps_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn counter_continues_after_kill_and_restore() {
    let (_m, _d, out, img) = begin("basic", false);
    let mut child = start_counter("counter", &out, 16);
    let orig = child.id() as i32;
    let before_fdinfo = std::fs::read_to_string(format!("/proc/{orig}/fdinfo/3")).unwrap();
    let before_rseq = rseq_of(orig);
    assert_ne!(before_rseq.0, 0, "glibc registers an rseq area");
    let before_maps = maps_of(orig);
    let last = checkpoint_kill(&mut child, &img, &out);
    let from = file_len(&out);
    let pid = restore_root(&img);
    assert_eq!(pid, orig, "the original pid was free, so it is reused");
    check_continues(pid, &out, from, last);
    // O_APPEND and the descriptor survive; the position follows the appends.
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
    let flags = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("flags:"))
            .unwrap()
            .to_owned()
    };
    assert_eq!(flags(&fdinfo), flags(&before_fdinfo));
    assert!(std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .unwrap()
        .ends_with("out"));
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap(),
        "counter\n"
    );
    assert_eq!(rseq_of(pid), before_rseq, "the rseq registration is back");
    let maps = maps_of(pid);
    assert!(
        maps.contains("[heap]") && maps.contains("[stack]") && maps.contains("[vdso]"),
        "{maps}"
    );
    // Exactly the original mappings: libc's RELRO part (read-only, accounted) is not merged
    // with the read-only part before it.
    assert_eq!(maps, before_maps);
    kill_and_reap(pid);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn static_binary_and_large_memory() {
    let (_m, _d, out, img) = begin("static", false);
    let mut child = start_counter("counter_static", &out, 256);
    let last = checkpoint_kill(&mut child, &img, &out);
    let info = ok(&ckpt(&["inspect", img.to_str().unwrap(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let saved: u64 = v["processes"][0]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|vma| {
            vma["pages"]
                .as_array()
                .unwrap()
                .iter()
                // A page run: [addr, len, offset] (or with the chain image after).
                .map(|r| r[1].as_u64().unwrap())
        })
        .sum();
    assert!(
        saved >= 256 << 20,
        "the 256 MiB buffer is in the image ({saved} bytes saved)"
    );
    restore_and_check(&img, &out, last);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn two_restores_from_one_image_and_checkpoint_of_a_restored_process() {
    let (_m, d, out, img) = begin("twice", false);
    let img2 = d.path("img2");
    let mut child = start_counter("counter", &out, 4);
    let last = checkpoint_kill(&mut child, &img, &out);
    for _ in 0..2 {
        let from = file_len(&out);
        let pid = restore_root(&img);
        check_continues(pid, &out, from, last);
        kill_and_reap(pid);
    }
    // Restore, then checkpoint the restored process, and restore that.
    let from = file_len(&out);
    let pid = restore_root(&img);
    wait_lines(&out, from, 5);
    ok(&ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img2.to_str().unwrap(),
        "--kill",
    ]));
    // SAFETY: reaping the killed process, reparented to us.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let last2 = *numbers(&out, 0).last().unwrap();
    let from = file_len(&out);
    let pid = restore_root(&img2);
    check_continues(pid, &out, from, last2);
    kill_and_reap(pid);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn checkpoint_without_kill_is_invisible_to_the_target_and_its_parent() {
    let (_m, _d, out, img) = begin("live", false);
    let mut child = start_counter("counter", &out, 4);
    let pid = child.id() as i32;
    for i in 0..3 {
        let stats = ok(&ckpt(&[
            "checkpoint",
            &pid.to_string(),
            "-o",
            img.to_str().unwrap(),
            "--json",
        ]));
        let s: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert!(
            s["frozen_us"].as_u64().unwrap() > 0 && s["pages_written"].as_u64().unwrap() > 0,
            "{s}"
        );
        // We are the parent: no stop or continue was reported to us.
        let mut status = 0;
        // SAFETY: polling our own child.
        let r = unsafe {
            libc::waitpid(
                pid,
                &mut status,
                libc::WNOHANG | libc::WUNTRACED | libc::WCONTINUED,
            )
        };
        assert_eq!(
            r, 0,
            "checkpoint {i} was reported to the parent (status {status:#x})"
        );
        let n = numbers(&out, 0).len();
        wait_lines(&out, 0, n + 3);
    }
    // It kept counting with no gap, and saw nothing odd.
    let all = numbers(&out, 0);
    for w in all.windows(2) {
        assert_eq!(w[1], w[0] + 1);
    }
    let text = text_after(&out, 0);
    assert!(
        !text.contains("mismatch") && !text.contains("bad"),
        "{text}"
    );
    assert!(std::fs::metadata(&img).unwrap().len() > 4 << 20);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn restore_when_the_original_pid_is_taken() {
    let (_m, _d, out, img) = begin("pidtaken", false);
    let mut child = start_counter("counter", &out, 1);
    let orig = child.id() as i32;
    let pid_s = orig.to_string();
    ok(&ckpt(&["checkpoint", &pid_s, "-o", img.to_str().unwrap()]));
    // The original still runs, so its pid is taken.
    let last_before = *numbers(&out, 0).last().unwrap();
    let out2 = ckpt(&["restore", img.to_str().unwrap()]);
    let text = ok(&out2);
    let pid: i32 = text.trim().parse().unwrap();
    assert_ne!(pid, orig);
    assert!(String::from_utf8_lossy(&out2.stderr).contains("was taken"));
    // The copy runs: it writes again numbers the original already wrote.
    let _ = last_before;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = std::collections::HashSet::new();
        let repeats = numbers(&out, 0)
            .into_iter()
            .filter(|n| !seen.insert(*n))
            .count();
        if repeats >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the copy never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_and_reap(pid);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn restore_after_module_reload() {
    let (_m, _d, out, img) = begin("reload", true);
    let mut child = start_counter("counter", &out, 2);
    let last = checkpoint_kill(&mut child, &img, &out);
    let ko = std::env::var("CKPT_KO").expect("CKPT_KO names the module file");
    assert!(Command::new("rmmod")
        .arg("ckpt")
        .status()
        .unwrap()
        .success());
    assert!(!Path::new("/dev/ckpt").exists());
    assert!(Command::new("insmod").arg(&ko).status().unwrap().success());
    restore_and_check(&img, &out, last);
}

/// A lone process holding a flock (taken by a shell, kept across exec) holds it again after
/// `--kill` and restore; one holding a read lease with its own break signal holds it again,
/// and hears of its break through that signal.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_held_flock_and_a_lease_come_back() {
    let d = Dir::new("lock");
    let lock = d.path("pidfile");
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3>{}; flock 3; exec sleep 1000",
            lock.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = holder.id() as i32;
    wait_for_fd(holder.id(), 3);
    common::wait_for("the shell became sleep", 10, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
    });
    let flock_free = || {
        let mut cmd = Command::new("flock");
        cmd.arg("-n").arg(&lock).arg("true");
        cmd.status().unwrap().success()
    };
    assert!(!flock_free());
    let img = d.path("img");
    common::checkpoint_kill(&mut holder, &img);
    assert!(flock_free(), "the killed process left its lock");
    assert_eq!(restore_root(&img), pid);
    assert!(!flock_free(), "the restored process holds its flock");
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
    assert!(fdinfo.contains("FLOCK  ADVISORY  WRITE"), "{fdinfo}");
    unsafe { libc::kill(pid, libc::SIGKILL) };

    // A read lease with its own break signal (SIGUSR2): back with the restored process as
    // its holder; an open for writing from outside breaks it, and the program hears of it
    // through that signal.
    let (mut leaser, lpid) = common::spawn_ready("locks", &["lease".as_ref(), d.0.as_os_str()]);
    let img = d.path("lease.img");
    let (_, image, _) = common::checkpoint_kill(&mut leaser, &img);
    let leases: Vec<_> = image.manifest.processes[0].files.locks.clone();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].signal, libc::SIGUSR2);
    assert_eq!(restore_root(&img), lpid);
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    assert!(
        locks
            .lines()
            .any(|l| l.contains("LEASE") && l.contains(&format!(" {lpid} "))),
        "{locks}"
    );
    let file = d.path("file");
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&file);
    assert!(
        matches!(&opened, Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK)),
        "the lease holds off a writer: {opened:?}"
    );
    common::wait_for("the program hears of the break", 10, || {
        std::fs::read_to_string(d.path("broken"))
            .is_ok_and(|t| t == format!("broken by signal {}\n", libc::SIGUSR2))
    });
    unsafe { libc::kill(lpid, libc::SIGKILL) };
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn bad_targets_get_clear_errors_and_stay_untouched() {
    let (_m, d, _out, img) = begin("bad", false);
    let imgs = img.to_str().unwrap();
    let fail = |args: &[&str], needle: &str| {
        let o = ckpt(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
    };
    fail(
        &["checkpoint", "999999", "-o", imgs],
        "no such process: 999999",
    );
    fail(&["checkpoint", "2", "-o", imgs], "kernel thread");
    let mut zombie = Command::new("/bin/true").spawn().unwrap();
    let zpid = zombie.id();
    while !std::fs::read_to_string(format!("/proc/{zpid}/stat"))
        .unwrap()
        .contains(") Z")
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    fail(&["checkpoint", &zpid.to_string(), "-o", imgs], "zombie");
    zombie.wait().unwrap();
    // ckpt's own pid: it is the process doing the checkpoint.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {} checkpoint $$ -o {imgs}",
            common::ckpt_bin().display()
        ))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is ckpt itself"));
    assert!(!img.exists(), "no image after failures");

    // A pipe to a process outside the tree (us): refused at checkpoint time, naming who
    // holds the other end; the target is untouched.
    // Close-on-exec: no other test's child may inherit it (they run in parallel).
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut sleeper = sleeper_holding_as_fd_5(std::os::fd::AsRawFd::as_raw_fd(&w));
    drop(w);
    // Exec'd: before, the forked child still holds the read end too (close-on-exec).
    wait_for_fd(sleeper.id(), 5);
    fail(
        &["checkpoint", &sleeper.id().to_string(), "-o", imgs],
        "outside the tree",
    );
    assert!(!img.exists());
    left_sleeping(sleeper.id(), "the target is left sleeping, not stopped");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    drop(r);

    // A device whose open file holds state (/dev/fuse: a mount's channel): a reopen would
    // give a new, unrelated one, so it is refused by name; the target is left running.
    let mut holder = Command::new("sh")
        .args(["-c", "exec sleep 1000 3<>/dev/fuse"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_fd(holder.id(), 3);
    fail(
        &["checkpoint", &holder.id().to_string(), "-o", imgs],
        "/dev/fuse is a character device (10:229) whose state a reopen would lose",
    );
    assert!(!img.exists());
    left_sleeping(holder.id(), "the holder is left sleeping");
    let _ = holder.kill();
    let _ = holder.wait();

    // Another user's process, as an unprivileged user: refused (the device is root-only).
    let mut child = start_counter("counter", &d.path("out"), 1);
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::ckpt_bin())
        .args(["checkpoint", &child.id().to_string(), "-o", "/tmp/never"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{o:?}"
    );
    // The target never noticed.
    let n = numbers(&d.path("out"), 0).len();
    wait_lines(&d.path("out"), 0, n + 3);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn full_disk_leaves_no_image_and_the_target_running() {
    let (_m, d, out, _img) = begin("full", false);
    let small = d.path("small");
    std::fs::create_dir(&small).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success());
    let mut child = start_counter("counter", &out, 16);
    let img = small.join("img");
    let o = ckpt(&[
        "checkpoint",
        &child.id().to_string(),
        "-o",
        img.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        0,
        "nothing left in the full directory"
    );
    let n = numbers(&out, 0).len();
    wait_lines(&out, 0, n + 3);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(Command::new("umount")
        .arg(&small)
        .status()
        .unwrap()
        .success());
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn corrupt_or_foreign_images_are_refused_and_nothing_of_them_runs() {
    let (_m, d, out, img) = begin("corrupt", false);
    let bad = d.path("bad");
    let mut child = start_counter("counter", &out, 1);
    let pid = child.id() as i32;
    common::checkpoint_kill(&mut child, &img);
    let lines = file_len(&out);
    let good = std::fs::read(&img).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..40 {
        let mut data = good.clone();
        if i % 2 == 0 {
            let at = rng.usize(..data.len());
            data[at] ^= rng.u8(1..);
        } else {
            data.truncate(rng.usize(..data.len()));
        }
        std::fs::write(&bad, &data).unwrap();
        let o = ckpt(&["restore", bad.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "variant {i} was restored");
        assert!(o.stdout.is_empty(), "variant {i} printed a pid");
        // Refused while reading the image, or (a plain pages section's checksum, checked
        // while the module copies it) with the processes made but killed before they ran.
        gone_soon(pid);
        assert_eq!(file_len(&out), lines, "variant {i} ran");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            [
                "corrupt",
                "truncated",
                "not a ckpt image",
                "format version",
                "is an image for"
            ]
            .iter()
            .any(|w| err.contains(w)),
            "variant {i}: {err}"
        );
    }
    let mut data = good.clone();
    data[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&bad, &data).unwrap();
    let o = ckpt(&["restore", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("format version 99")
            && err.contains(&format!(
                "versions {} to {}",
                ckpt::image::MIN_FORMAT_VERSION,
                ckpt::image::FORMAT_VERSION
            )),
        "{err}"
    );
}

/// Waits (2 s at most) until no process `pid` is left, not even a zombie.
fn gone_soon(pid: i32) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..200 {
        if !proc.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} is still there");
}

/// A byte changed in a plain pages section is found by the check that runs while the module
/// copies the pages into place: the restore fails naming the section, and the process it
/// made was killed before it ran (its counter file gets no line, its pid is free).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_damaged_plain_pages_section_is_found_before_the_program_runs() {
    let (_m, d, out, img) = begin("pages-damaged", false);
    let bad = d.path("bad");
    let mut child = start_counter("counter", &out, 64);
    let pid = child.id() as i32;
    let last = checkpoint_kill(&mut child, &img, &out);
    let image = ckpt::manifest::Image::open(&img).unwrap();
    let i = common::damage_pages(&image, &img, &bad);
    let lines = file_len(&out);
    let o = ckpt(&["restore", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(o.stdout.is_empty(), "a pid was printed: {err}");
    assert!(
        err.contains(&format!("section {i} (pages) checksum mismatch")),
        "{err}"
    );
    gone_soon(pid);
    assert_eq!(file_len(&out), lines, "the damaged image ran");
    // The undamaged image restores as ever.
    restore_and_check(&img, &out, last);
}

/// Starts the counter with a `mib` MiB buffer filled as `fill` says (COUNTER_FILL: "pattern"
/// or "random").
fn start_filled_counter(out: &Path, mib: u32, fill: &str) -> Child {
    let child = Command::new(common::prog("counter"))
        .arg(out)
        .arg(mib.to_string())
        .env("COUNTER_FILL", fill)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_lines(out, 0, 3);
    child
}

/// A checkpoint with --compress restores the memory exactly (the counter checks its buffer),
/// shrinks a repeated pattern to a small fraction of the uncompressed image, and costs next to
/// nothing on random bytes. 96 MiB of pattern go through the scratch memfd in two pieces.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn compressed_images_of_compressible_and_random_memory_restore() {
    for (fill, mib) in [("pattern", 96), ("random", 24)] {
        let (_m, d, out, img) = begin(&format!("compress-{fill}"), false);
        let plain = d.path("plain");
        let mut child = start_filled_counter(&out, mib, fill);
        let pid = child.id().to_string();
        // The same memory twice: uncompressed (the counter goes on), then compressed.
        ok(&ckpt(&["checkpoint", &pid, "-o", plain.to_str().unwrap()]));
        let last = checkpoint_kill_with(&mut child, &img, &out, &["--compress"]);
        let image = ckpt::manifest::Image::open(&img).unwrap();
        assert!(image.sections.iter().all(|s| s.compressed.is_some()));
        // Its mappings in a section of their own (compressed too): the version that says so.
        assert_eq!(
            image.meta.format_version,
            ckpt::image::TABLES_FORMAT_VERSION
        );
        let largest = image.sections.iter().max_by_key(|s| s.len).unwrap();
        if fill == "pattern" {
            assert_eq!(
                largest.len,
                64 << 20,
                "pages go in pieces of at most 64 MiB"
            );
        }
        // Random pages are kept as they are: zstd would not shrink them.
        let want = match fill {
            "pattern" => ckpt::image::Codec::Zstd,
            _ => ckpt::image::Codec::None,
        };
        assert_eq!(largest.compressed.unwrap().codec, want, "{fill}");
        let (plain_len, packed_len) = (file_len(&plain), file_len(&img));
        eprintln!("{fill}: {plain_len} bytes plain, {packed_len} compressed");
        match fill {
            "pattern" => assert!(
                packed_len * 20 < plain_len,
                "{packed_len} bytes compressed, {plain_len} plain"
            ),
            _ => assert!(
                packed_len * 100 < plain_len * 101 && packed_len * 10 > plain_len * 9,
                "{packed_len} bytes compressed, {plain_len} plain"
            ),
        }
        let info = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
        assert!(info.contains("compressed: "), "{info}");
        restore_and_check(&img, &out, last);
    }
}

/// `checkpoint_kill` with more options.
fn checkpoint_kill_with(child: &mut Child, img: &Path, out: &Path, extra: &[&str]) -> u64 {
    let pid = child.id().to_string();
    let mut args = vec!["checkpoint", &pid, "-o", img.to_str().unwrap(), "--kill"];
    args.extend_from_slice(extra);
    ok(&ckpt(&args));
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    *numbers(out, 0).last().unwrap()
}

/// A byte changed inside a compressed pages section is caught before anything is decompressed
/// or any process exists, and the error names the section; so is a cut inside it.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_corrupted_compressed_image_is_refused_naming_the_section() {
    let (_m, d, out, img) = begin("compress-corrupt", false);
    let bad = d.path("bad");
    let mut child = start_filled_counter(&out, 8, "pattern");
    checkpoint_kill_with(&mut child, &img, &out, &["--compress"]);
    let image = ckpt::manifest::Image::open(&img).unwrap();
    let (i, c) = image
        .sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == ckpt::image::PAGES)
        .filter_map(|(i, s)| Some((i, s.compressed?)))
        .filter(|(_, c)| c.codec == ckpt::image::Codec::Zstd)
        .max_by_key(|(_, c)| c.len)
        .expect("a zstd pages section");
    let good = std::fs::read(&img).unwrap();
    let mut data = good.clone();
    data[(c.offset + c.len / 2) as usize] ^= 0x10;
    std::fs::write(&bad, &data).unwrap();
    for cmd in ["restore", "inspect"] {
        let o = ckpt(&[cmd, bad.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{cmd} took a corrupt image");
        assert!(o.stdout.is_empty(), "{cmd} printed something");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("section {i} (pages) checksum mismatch")),
            "{cmd}: {err}"
        );
    }
    std::fs::write(&bad, &good[..(c.offset + c.len / 2) as usize]).unwrap();
    let o = ckpt(&["restore", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.stdout.is_empty() && err.contains("truncated"), "{err}");
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_blocked_pending_signal_stays_pending() {
    let (_m, _d, out, img) = begin("pending", false);
    let mut child = start_counter_with("counter", &out, 1, &["hold-usr1"]);
    // SAFETY: signalling our child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    wait_text(&out, 0, "pending-usr1");
    let last = checkpoint_kill(&mut child, &img, &out);
    let from = file_len(&out);
    let pid = restore_root(&img);
    wait_lines(&out, from, 5);
    assert_eq!(numbers(&out, from)[0], last + 1);
    let text = text_after(&out, from);
    assert!(
        text.contains("pending-usr1"),
        "the pending SIGUSR1 was lost:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("usr1 ")),
        "the blocked signal was delivered:\n{text}"
    );
    kill_and_reap(pid);
}

/// The lines of `out` (the scribbler's reports).
fn reports(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines().map(String::from).collect()
}

/// Asks the scribbler `pid` to check its memory; returns its report.
fn scribbler_check(pid: i32, out: &Path) -> String {
    let before = reports(out).len();
    common::signal_until(pid, libc::SIGUSR1, "the scribbler reports", || {
        reports(out).len() > before
    });
    reports(out).pop().unwrap()
}

/// A checkpoint that lets the program run on takes its memory as it was at the freeze,
/// although the program rewrites it as fast as it can meanwhile: the pages come from a
/// copy-on-write snapshot (and the original goes on unharmed). A program with a
/// MADV_WIPEONFORK page is not snapshotted (a fork would see that page empty): its pages
/// are all written while it is frozen.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_live_checkpoint_of_a_program_rewriting_its_memory_is_consistent() {
    let (_m, d, _, img) = begin("scribbler", false);
    for (wipe, snapshots) in [(false, 1), (true, 0)] {
        let out = d.path(if wipe { "wipe.out" } else { "out" });
        let mut args = vec![out.as_os_str(), "64".as_ref()];
        if wipe {
            args.push("wipe".as_ref());
        }
        let (mut child, pid) = common::spawn_ready("scribbler", &args);
        let stats = common::checkpoint_json(pid, &img, &[]);
        assert_eq!(stats["snapshots"], snapshots, "wipe {wipe}: {stats}");
        let original = scribbler_check(pid, &out);
        assert!(
            original.starts_with("ok "),
            "the original after the checkpoint: {original}"
        );
        kill_and_reap(pid);
        let _ = child.wait();
        assert_eq!(restore_root(&img), pid);
        let restored = scribbler_check(pid, &out);
        assert!(
            restored.starts_with("ok "),
            "the restored copy (wipe {wipe}): {restored}"
        );
        kill_and_reap(pid);
        std::fs::remove_file(&img).unwrap();
    }
}

/// Two checkpoints of one process at once: the second is refused as busy, naming the first,
/// and the first completes.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_second_checkpoint_while_one_runs_is_refused_as_busy() {
    let (_m, d, out, img) = begin("busy", false);
    let (mut child, pid) = common::spawn_ready("scribbler", &[out.as_os_str(), "256".as_ref()]);
    // Without a snapshot every page is written while frozen: a long window.
    let mut first = Command::new(common::ckpt_bin())
        .args([
            "checkpoint",
            &pid.to_string(),
            "-o",
            img.to_str().unwrap(),
            "--no-snapshot",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Its worker (a child of the `ckpt` we started) is the tracer.
    let worker = || {
        state_and_tracer(pid)
            .map(|(_, t)| t)
            .filter(|&t| t != 0 && proc_ppid(t) == Some(first.id() as i32))
    };
    common::wait_for("the first checkpoint holds the program", 60, || {
        worker().is_some()
    });
    let by = worker().unwrap();
    let second = d.path("second.img");
    let o = ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        second.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the second checkpoint ran");
    let expected = format!("process {pid} is busy: another ckpt (pid {by})");
    assert!(err.contains(&expected), "{err}");
    assert!(!second.exists());
    assert!(
        first.wait().unwrap().success(),
        "the first checkpoint failed"
    );
    assert!(ckpt::manifest::Image::open(&img).is_ok());
    assert!(scribbler_check(pid, &out).starts_with("ok "));
    kill_and_reap(pid);
    let _ = child.wait();
}

/// How long `f` takes, in milliseconds (at least 1).
fn millis_of(f: impl FnOnce()) -> u64 {
    let t = Instant::now();
    f();
    (t.elapsed().as_millis() as u64).max(1)
}

/// The parent of process `pid`.
fn proc_ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(") ")? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// The state letter and tracer of process `pid` (None once it is gone).
fn state_and_tracer(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat
        .rfind(") ")
        .and_then(|i| stat[i + 2..].chars().next())?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())?;
    Some((state, tracer))
}

/// Crash safety: `ckpt checkpoint` killed with SIGKILL at a random moment, 200 times, half of
/// them with --kill. After each: the program runs on, neither stopped nor traced, with no
/// snapshot left under it and no image under the final name, unless the checkpoint was
/// complete; a --kill checkpoint killed the program only once its image was whole (it is
/// restored then, and the loop goes on with it). Every 25 rounds the program's memory is
/// checked whole, and at the end a checkpoint succeeds.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_ckpt_killed_at_random_moments_never_harms_the_program() {
    let (_m, d, out, img) = begin("chaos", false);
    let (mut child, pid) = common::spawn_ready("scribbler", &[out.as_os_str(), "4".as_ref()]);
    let (pid_s, img_s) = (pid.to_string(), img.to_str().unwrap().to_owned());
    let children =
        || std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut rng = fastrand::Rng::with_seed(0x636b_7074);
    // The kills land from the start to a little past the end of a checkpoint as long as one
    // takes here (a loaded machine makes it several times slower).
    let window = millis_of(|| {
        ok(&ckpt(&["checkpoint", &pid_s, "-o", &img_s]));
    }) * 5
        / 4;
    std::fs::remove_file(&img).unwrap();
    let (mut completed, mut restored) = (0, 0);
    for round in 0..200 {
        let kill = round % 2 == 1;
        let mut args = vec!["checkpoint", pid_s.as_str(), "-o", img_s.as_str()];
        if kill {
            args.push("--kill");
        }
        let mut c = Command::new(common::ckpt_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(0..window)));
        let _ = c.kill();
        let _ = c.wait();
        // Its worker, if it outlived it, undoes its work (or completes it) and exits.
        common::reap_orphaned_workers();
        // Done or not is what the image says: it takes the final name only when whole.
        let finished = img.exists();
        completed += finished as u32;
        common::wait_for("the program is let go", 30, || {
            matches!(state_and_tracer(pid), Some((s, 0)) if s != 't' && s != 'T')
                || matches!(state_and_tracer(pid), Some(('Z', _)) | None)
        });
        if matches!(state_and_tracer(pid), Some(('Z', _)) | None) {
            assert!(
                kill && finished,
                "round {round}: the program died (no --kill, or no image)"
            );
            // SAFETY: reaping our child (or the restored program, reparented to us).
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            assert_eq!(restore_root(&img), pid, "round {round}");
            restored += 1;
        }
        common::wait_for("no snapshot is left", 30, || children().trim().is_empty());
        if finished {
            ckpt::manifest::Image::open(&img).unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        for e in std::fs::read_dir(&d.0).unwrap().flatten() {
            if e.file_name().to_string_lossy().contains("ckpt-tmp") || e.path() == img {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        if round % 25 == 24 {
            let report = scribbler_check(pid, &out);
            assert!(report.starts_with("ok "), "round {round}: {report}");
        }
    }
    eprintln!("chaos: {completed} of 200 checkpoints completed, {restored} restores");
    assert!(
        completed > 0 && completed < 200,
        "the kills should land at all moments"
    );
    let stats = common::checkpoint_json(pid, &img, &[]);
    assert_eq!(stats["processes"], 1);
    kill_and_reap(pid);
    let _ = child.wait();
}

/// A process that may not fork (an unprivileged user at its process limit) cannot be
/// snapshotted: the checkpoint says so and writes its memory while it is frozen instead, and
/// the image is whole.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_process_that_may_not_fork_is_dumped_while_frozen() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let (_m, d, out, img) = begin("snapshot-nproc", false);
    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = Command::new(common::prog("scribbler"));
    cmd.arg(&out)
        .arg("16")
        .stdout(Stdio::piped())
        .uid(65534)
        .gid(65534);
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let one = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            match libc::setrlimit(libc::RLIMIT_NPROC, &one) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let line = common::first_line(&mut child);
    assert_eq!(line.trim(), format!("ready {pid}"));
    let o = ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--json",
    ]);
    let stats: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stats["snapshots"], 0, "{stats}");
    assert!(
        err.contains("no copy-on-write snapshot of process"),
        "{err}"
    );
    assert!(scribbler_check(pid, &out).starts_with("ok "));
    kill_and_reap(pid);
    let _ = child.wait();
    assert_eq!(restore_root(&img), pid);
    let restored = scribbler_check(pid, &out);
    assert!(restored.starts_with("ok "), "the restored copy: {restored}");
    kill_and_reap(pid);
}

/// A ckpt killed while it writes a snapshot's pages leaves nothing behind: the snapshot dies
/// with it (no process, no zombie under the target), no image takes the final name, and the
/// program, which ran on meanwhile, is whole and can be checkpointed again.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_ckpt_killed_while_it_holds_a_snapshot_leaves_nothing() {
    let (_m, _d, out, img) = begin("snapshot-kill", false);
    let (mut child, pid) = common::spawn_ready("scribbler", &[out.as_os_str(), "16".as_ref()]);
    let children =
        || std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut c = Command::new(common::ckpt_bin())
        .args(["checkpoint", &pid.to_string(), "-o", img.to_str().unwrap()])
        .env("CKPT_TEST_PAUSE_SNAPSHOT", "60")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for("the snapshot exists", 60, || !children().trim().is_empty());
    let snapshot: i32 = children().trim().parse().unwrap();
    // The program runs while ckpt holds the snapshot.
    assert!(scribbler_check(pid, &out).starts_with("ok "));
    c.kill().unwrap();
    c.wait().unwrap();
    common::reap_orphaned_workers();
    common::wait_for("the snapshot is gone", 30, || common::gone(snapshot));
    assert_eq!(children().trim(), "", "a child left under the target");
    assert!(!img.exists(), "no image under the final name");
    assert!(scribbler_check(pid, &out).starts_with("ok "));
    let stats = common::checkpoint_json(pid, &img, &[]);
    assert_eq!(stats["snapshots"], 1, "{stats}");
    assert_eq!(children().trim(), "");
    kill_and_reap(pid);
    let _ = child.wait();
}

/// A ckpt worker killed outright (SIGKILL, as the OOM killer would) while a thread of the
/// program is lent to it for the snapshot's calls: the thread goes back to the program's own
/// code by itself (`detour.rs`), the program runs on whole, the snapshot dies, no image takes
/// the final name, and the next checkpoint succeeds. Before, the thread ran on from the
/// `syscall` instruction ckpt had pointed it at, with the call's registers, and crashed.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_worker_killed_while_it_holds_a_lent_thread_leaves_the_program_whole() {
    let (_m, _d, out, img) = begin("lent-kill", false);
    let (mut child, pid) = common::spawn_ready("scribbler", &[out.as_os_str(), "16".as_ref()]);
    let children_of = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default()
    };
    let holds_pidfd = || {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
        fds.flatten().any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("pidfd"))
        })
    };
    let mut c = Command::new(common::ckpt_bin())
        .args(["checkpoint", &pid.to_string(), "-o", img.to_str().unwrap()])
        .env("CKPT_TEST_PAUSE_LENT", "60")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Paused after the last lent call (the close of the snapshot's pidfd in the program).
    common::wait_for("the snapshot exists", 60, || {
        !children_of(pid as u32).trim().is_empty()
    });
    common::wait_for("the program's pidfd closed", 60, || !holds_pidfd());
    let worker: i32 = children_of(c.id()).trim().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("TracerPid:\t") && !status.contains("TracerPid:\t0\n"),
        "{status}"
    );
    // SAFETY: signalling ckpt's worker.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    assert!(
        !c.wait().unwrap().success(),
        "ckpt succeeded without its worker"
    );
    common::reap_orphaned_workers();
    common::wait_for("the snapshot is gone", 30, || {
        children_of(pid as u32).trim().is_empty()
    });
    let report = scribbler_check(pid, &out);
    assert!(
        report.starts_with("ok "),
        "after the worker's death: {report}"
    );
    assert!(!img.exists(), "no image under the final name");
    let stats = common::checkpoint_json(pid, &img, &[]);
    assert_eq!(stats["snapshots"], 1, "{stats}");
    assert!(scribbler_check(pid, &out).starts_with("ok "));
    kill_and_reap(pid);
    let _ = child.wait();
}

/// Root restores only an image that root or a user its processes run as owns and that
/// nobody else may write: whoever can write an image could make a root restore run anything.
/// `--trust-image` restores it anyway.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn root_refuses_an_image_others_could_have_written() {
    use std::os::unix::fs::PermissionsExt;
    let (_m, _d, out, img) = begin("trust", false);
    let mut child = start_counter("counter", &out, 1);
    let last = checkpoint_kill(&mut child, &img, &out);
    let img_s = img.to_str().unwrap();
    let refused = |why: &str| {
        let o = ckpt(&["restore", img_s]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "restored an untrusted image");
        assert!(err.contains(why) && err.contains("--trust-image"), "{err}");
    };
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused("writable by everyone (mode 0666)");
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&img, Some(4242), None).unwrap();
    refused("owned by uid 4242, who is neither root nor a user its processes run as (0)");
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o620)).unwrap();
    let from = file_len(&out);
    let o = ckpt(&["restore", img_s, "--trust-image"]);
    let pid: i32 = ok(&o).trim().parse().unwrap();
    check_continues(pid, &out, from, last);
    kill_and_reap(pid);
}

/// A thread waiting in sigsuspend() runs with the call's temporary mask; after the restore the
/// call returns to the thread's own mask (which ptrace does not show; the module reads it).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn sigsuspend_returns_to_the_programs_own_mask() {
    let (_m, _d, out, img) = begin("sigsuspend", false);
    let (mut child, pid) = common::spawn_ready("sigmask", &[out.as_os_str()]);
    let waiting = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks.flatten().any(|t| {
            let sys = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
            sys.split_whitespace().next() == Some("130") // rt_sigsuspend
        })
    };
    common::wait_for("a thread of sigmask waits in sigsuspend", 30, waiting);
    common::checkpoint_kill(&mut child, &img);
    assert_eq!(restore_root(&img), pid);
    common::signal_until(
        pid,
        libc::SIGUSR2,
        "the restored program reports its mask",
        || std::fs::read_to_string(&out).is_ok_and(|t| t.ends_with('\n')),
    );
    let report = std::fs::read_to_string(&out).unwrap();
    assert_eq!(report, "usr1-blocked 1 usr2-blocked 1\n");
    let mut status = 0;
    // SAFETY: reaping the restored program (reparented to us, the subreaper).
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(status, 0, "sigmask exit status");
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn pipes_socket_pairs_eventfd_signalfd_timerfd_and_deleted_files() {
    fd_kinds(&[]);
}

/// The same from a compressed image: the bytes in pipes, sockets and a deleted file are
/// compressed sections.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn pipes_socket_pairs_and_deleted_files_from_a_compressed_image() {
    fd_kinds(&["--compress"]);
}

/// fdkinds checkpointed with `extra` options, inspected and restored.
fn fd_kinds(extra: &[&str]) {
    // Its own directory per variant: the variants run at the same time.
    let (_m, d, out, img) = begin(&format!("fdkinds{}", extra.concat()), false);
    let mut child = Command::new(common::prog("fdkinds"))
        .arg(&out)
        .arg(&d.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut child);
    assert_eq!(line, "ready\n");
    let pid = child.id().to_string();
    let mut args = vec!["checkpoint", &pid, "-o", img.to_str().unwrap(), "--kill"];
    args.extend_from_slice(extra);
    let info = ok(&ckpt(&args));
    assert!(info.contains("checkpointed"));
    child.wait().unwrap();
    let summary = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    assert_eq!(
        summary.contains("compressed: "),
        extra.contains(&"--compress"),
        "{summary}"
    );
    assert!(
        summary.contains("13 bytes unread")
            && summary.contains("(deleted; 21 bytes saved, pos 8)")
            && summary.contains("socket pair 0 end 0 (12 bytes unread)")
            && summary.contains("socket pair 0 end 1 (12 bytes unread)")
            && summary.contains("eventfd (count 7)")
            && summary.contains("signalfd (signals 0x800)")
            && summary.contains("timerfd (clock 1, fires in 9"),
        "{summary}"
    );
    let pid = restore_root(&img);
    // SIGUSR2 is blocked there and goes to its signalfd; SIGUSR1 asks for the report.
    // SAFETY: signalling the restored process.
    unsafe {
        assert_eq!(libc::kill(pid, libc::SIGUSR2), 0);
        assert_eq!(libc::kill(pid, libc::SIGUSR1), 0);
    }
    wait_text(&out, 0, "done");
    let text = text_after(&out, 0);
    for want in [
        "pipe:unread-before\n",
        "deleted:deleted-content-12345\n",
        "deleted-pos:8\n",
        "pipe-again:again\n",
        "sp-a:queued-for-a\n",
        "sp-b:queued-for-b\n",
        "sp-again:again2\n",
        "efd:7\n",
        "sfd:12\n",
        "tfd:armed 3600\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // fds: 3 the output, 4 the deleted file, 5 and 6 the pipe.
    let fd4 = std::fs::read_link(format!("/proc/{pid}/fd/4")).unwrap();
    assert!(fd4.to_string_lossy().ends_with("(deleted)"), "{fd4:?}");
    let fd5 = std::fs::read_link(format!("/proc/{pid}/fd/5")).unwrap();
    let fd6 = std::fs::read_link(format!("/proc/{pid}/fd/6")).unwrap();
    assert!(
        fd5.to_string_lossy().starts_with("pipe:") && fd5 == fd6,
        "{fd5:?} {fd6:?}"
    );
    // 9, the eventfd, kept close-on-exec; 6 (a pipe end) did not have it.
    let cloexec = |fd: i32| {
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        flags & libc::O_CLOEXEC as u32 != 0
    };
    assert!(cloexec(9));
    assert!(!cloexec(6));
    // 7 and 8: the two ends of a socket pair (two sockets).
    let fd7 = std::fs::read_link(format!("/proc/{pid}/fd/7")).unwrap();
    let fd8 = std::fs::read_link(format!("/proc/{pid}/fd/8")).unwrap();
    assert!(
        fd7.to_string_lossy().starts_with("socket:") && fd7 != fd8,
        "{fd7:?} {fd8:?}"
    );
    kill_and_reap(pid);
}

/// (N, TOTAL) lines of mt_counter after byte `from`.
fn mt_lines(out: &Path, from: usize) -> Vec<(u64, u64)> {
    text_after(out, from)
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Starts tests/progs/mt_counter (7 workers) writing to `out`; returns once it has written
/// `lines` lines.
fn start_mt_counter(out: &Path, lines: usize) -> Child {
    let mut child = Command::new(common::prog("mt_counter"))
        .arg(out)
        .arg("7")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(common::first_line(&mut child), "ready\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    while mt_lines(out, 0).len() < lines {
        assert!(Instant::now() < deadline, "mt_counter does not count");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn tasks_of(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| {
            let tid: i32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
            (tid, comm.trim().to_owned())
        })
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn eight_threads_with_mutexes_and_condvars_repeatedly() {
    let (_m, _d, out, img) = begin("threads", false);
    let mut child = start_mt_counter(&out, 5);
    let pid = child.id() as i32;
    let tasks = tasks_of(pid);
    assert_eq!(tasks.len(), 8);
    common::checkpoint_kill(&mut child, &img);
    let mut pid = pid;
    for round in 0..2 {
        let (last_n, last_total) = *mt_lines(&out, 0).last().unwrap();
        let from = file_len(&out);
        let restored = restore_root(&img);
        assert_eq!(restored, pid);
        assert_eq!(
            tasks_of(restored),
            tasks,
            "round {round}: the same tids and thread names"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while mt_lines(&out, from).len() < 10 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the restored process does not count"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let after = mt_lines(&out, from);
        if round == 0 {
            assert_eq!(after[0].0, last_n + 1, "no gap, no repeat");
        }
        for w in after.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1);
            assert!(w[1].1 >= w[0].1);
        }
        assert!(
            after.last().unwrap().1 > last_total.min(after[0].1),
            "the workers work"
        );
        let text = text_after(&out, from);
        assert!(!text.contains("bad"), "round {round}:\n{text}");
        // Checkpoint the restored process again, and restore that in the next round.
        ok(&ckpt(&[
            "checkpoint",
            &restored.to_string(),
            "-o",
            img.to_str().unwrap(),
            "--kill",
        ]));
        // SAFETY: reaping the killed process, reparented to us.
        unsafe { libc::waitpid(restored, std::ptr::null_mut(), 0) };
        pid = restored;
    }
}

/// A threaded process restored while the original runs on: every tid is taken, so each
/// thread is made one by one with another tid (the threads are otherwise made in one batch,
/// each with its tid), and the copy works like the original.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_threaded_process_whose_thread_ids_are_taken_comes_back_with_others() {
    let (_m, _d, out, img) = begin("tidstaken", false);
    let mut child = start_mt_counter(&out, 3);
    let pid = child.id() as i32;
    let original = tasks_of(pid);
    ok(&ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
    ]));
    let from = file_len(&out);
    let restored = ckpt(&["restore", img.to_str().unwrap()]);
    let copy: i32 = ok(&restored).trim().parse().unwrap();
    let said = String::from_utf8_lossy(&restored.stderr);
    assert_eq!(
        said.matches("was taken; the thread was restored with another")
            .count(),
        7,
        "{said}"
    );
    let tasks = tasks_of(copy);
    assert_eq!(tasks.len(), 8);
    let names = |v: &[(i32, String)]| v.iter().map(|t| t.1.clone()).collect::<Vec<_>>();
    let (mut a, mut b) = (names(&tasks), names(&original));
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same thread names");
    assert!(
        tasks.iter().all(|t| !original.iter().any(|o| o.0 == t.0)),
        "new tids"
    );
    // Both write on: the copy's counts repeat the original's.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = std::collections::HashSet::new();
        let repeats = mt_lines(&out, from)
            .iter()
            .filter(|l| !seen.insert(l.0))
            .count();
        if repeats >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the copy does not count");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its threads' tids are not what they saved (gettid tells them: "bad-tid", the known
    // cost of a taken tid outside `ckpt run`); names, masks and TLS are theirs.
    let text = text_after(&out, from);
    let bad: Vec<&str> = text.lines().filter(|l| l.contains("bad")).collect();
    assert!(bad.iter().all(|l| l.starts_with("bad-tid")), "{bad:?}");
    kill_and_reap(copy);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The credential lines of every thread of `pid` (Uid, Gid, Groups, capabilities), by tid.
fn creds_of(pid: i32) -> Vec<(i32, String)> {
    tasks_of(pid)
        .into_iter()
        .map(|(tid, _)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
            let lines: Vec<&str> = status
                .lines()
                .filter(|l| {
                    ["Uid:", "Gid:", "Groups:", "Cap", "NoNewPrivs:"]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .collect();
            (tid, lines.join("\n"))
        })
        .collect()
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn credentials_of_an_unprivileged_threaded_process_come_back() {
    let (_m, _d, out, img) = begin("creds", false);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        out.parent().unwrap(),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let mut cmd = Command::new(common::prog("mt_counter"));
    cmd.arg(&out)
        .arg("2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let groups = [100u32, 65533];
            if libc::setgroups(2, groups.as_ptr()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let line = common::first_line(&mut child);
    assert_eq!(line, "ready\n");
    let pid = child.id() as i32;
    let before = creds_of(pid);
    assert_eq!(before.len(), 3);
    assert!(
        before[0].1.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{}",
        before[0].1
    );
    assert!(
        before[0].1.contains("Groups:\t100 65533"),
        "{}",
        before[0].1
    );
    ok(&ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
    ]));
    child.wait().unwrap();
    let (_, total) = *mt_lines(&out, 0).last().unwrap();
    let from = file_len(&out);
    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    // Every thread has its own credentials back, not the restorer's (root's).
    assert_eq!(creds_of(restored), before);
    // And the process is dumpable again (setresuid had made it not): its /proc is its own.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(format!("/proc/{restored}"))
            .unwrap()
            .uid(),
        65534
    );
    // It goes on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while mt_lines(&out, from).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the restored process does not run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mt_lines(&out, from)[0].1 >= total);
    assert!(
        !text_after(&out, from).contains("bad"),
        "{}",
        text_after(&out, from)
    );
    kill_and_reap(restored);
}

/// Waits until process `pid` has fd `fd` open (it has exec'd past its redirections).
fn wait_for_fd(pid: u32, fd: i32) {
    let link = format!("/proc/{pid}/fd/{fd}");
    let start = Instant::now();
    while std::fs::read_link(&link).is_err() || !comm_is(pid, "sleep") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{link} never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn comm_is(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
}

/// A UNIX socket pair of `kind` ("dgram" or "seqpacket") with 100 messages queued each way
/// (tests/progs/unix_socks.c), checkpointed with --kill and restored: every message is read
/// back in order with its length and bytes, and the options and shutdown state are kept.
fn unix_pair_comes_back(kind: &str, type_name: &str) {
    let (_m, _d, out, img) = begin(&format!("unix-{kind}"), false);
    let args = ["pair".as_ref(), kind.as_ref(), out.as_os_str()];
    let (mut child, pid) = common::spawn_ready("unix_socks", &args);
    let (_, image, _) = common::checkpoint_kill(&mut child, &img);
    let sp = &image.manifest.shared.socket_pairs;
    assert_eq!(sp.len(), 1, "one pair");
    for end in &sp[0].ends {
        assert_eq!(end.messages.len(), 100, "100 messages queued at each end");
    }
    let summary = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    assert!(
        summary.contains(&format!("{type_name} socket pair 0 end 0 (100 messages, ")),
        "{summary}"
    );
    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    common::signal_until(restored, libc::SIGUSR1, "it reads its queue", || {
        text_after(&out, 0).contains("done")
    });
    let text = text_after(&out, 0);
    let line = |p: &str| {
        let l = text.lines().find(|l| l.starts_with(p));
        l.unwrap_or_else(|| panic!("no {p:?} in:\n{text}"))
            .to_owned()
    };
    assert_eq!(
        line("before ").replace("before", "after"),
        line("after "),
        "options kept:\n{text}"
    );
    assert!(line("before ").contains("passcred=1 nonblock=1"), "{text}");
    // b's side was shut down by a's SHUT_WR (seqpacket): its end of file comes after the
    // messages.
    let b_end = if kind == "dgram" { "empty" } else { "eof" };
    assert!(
        text.contains(&format!("at-b 100 of 100 ok, then {b_end}\n")),
        "{text}"
    );
    assert!(text.contains("at-a 100 of 100 ok, then empty\n"), "{text}");
    if kind == "seqpacket" {
        assert!(text.contains("send after shutdown: EPIPE"), "{text}");
    }
    kill_and_reap(restored);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_datagram_socket_pair_keeps_100_queued_messages() {
    unix_pair_comes_back("dgram", "datagram");
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_seqpacket_socket_pair_keeps_its_messages_and_shutdown() {
    unix_pair_comes_back("seqpacket", "seqpacket");
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn unix_sockets_with_a_peer_outside_or_inotify_in_flight_are_refused() {
    let (_m, d, out, img) = begin("unix-refused", false);
    let imgs = img.to_str().unwrap();
    // One end of a stream pair in a sleeping process, the other here (close-on-exec: no other
    // test's child inherits it).
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut sleeper = sleeper_holding_as_fd_5(std::os::fd::AsRawFd::as_raw_fd(&theirs));
    drop(theirs);
    wait_for_fd(sleeper.id(), 5);
    let o = ckpt(&["checkpoint", &sleeper.id().to_string(), "-o", imgs]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    let me = format!("held by process {} ", std::process::id());
    for want in [
        "fd 5 ",
        "UNIX stream socket",
        "is connected to socket:[",
        &me,
        "--external",
    ] {
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
    assert!(!img.exists());
    left_sleeping(sleeper.id(), "the target is left sleeping");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    drop(ours);

    // An inotify instance in flight (SCM_RIGHTS) between two sockets of the process: a kind
    // not carried in flight, named.
    let (mut holder, pid) = common::spawn_ready("unix_socks", &["scm".as_ref(), out.as_os_str()]);
    let o = ckpt(&["checkpoint", &pid.to_string(), "-o", imgs]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    for want in [
        "a descriptor in flight in its queue (SCM_RIGHTS), anon_inode:inotify",
        "only files, pipes, UNIX sockets, memfds, eventfds, timerfds and signalfds in flight",
    ] {
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
    assert!(!img.exists());
    let _ = holder.kill();
    let _ = holder.wait();
    drop(d);
}

/// The number in a "log N" datagram or a "c N" line.
fn number_in(text: &str) -> u64 {
    let n = text.split_whitespace().nth(1);
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {text:?}"))
}

/// The next "log N" datagram at `server`.
fn next_log(server: &std::os::unix::net::UnixDatagram) -> u64 {
    let mut buf = [0u8; 64];
    let n = server.recv(&mut buf).expect("a log line within 30 s");
    number_in(&String::from_utf8_lossy(&buf[..n]))
}

/// A program logging through a datagram socket connected to a named socket outside the tree
/// (the test's, playing /dev/log) is carried without being asked: after --kill and restore
/// its next lines arrive at the test's socket, going on from where it was.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_program_logging_to_a_socket_outside_logs_there_after_restore() {
    let (_m, d, out, img) = begin("unix-ext-log", false);
    let log = d.path("log");
    let server = std::os::unix::net::UnixDatagram::bind(&log).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let args = ["logger".as_ref(), log.as_os_str(), out.as_os_str()];
    let (mut child, pid) = common::spawn_ready("unix_socks", &args);
    let first = next_log(&server);
    let (_, image, _) = common::checkpoint_kill(&mut child, &img);
    let ext = &image.manifest.shared.unix_external;
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(ext[0].reconnect, ckpt::fds::Reconnect::Name);
    assert_eq!(ext[0].sock_type, ckpt::fds::UnixType::Dgram);
    let peer = ext[0].peer.as_ref().map(|p| p.display());
    assert_eq!(peer.as_deref(), log.to_str());
    let summary = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    let want = format!("connected again to {} on restore", log.display());
    assert!(summary.contains(&want), "{summary}");
    // What it sent before it was frozen.
    server.set_nonblocking(true).unwrap();
    let mut last = first;
    let mut buf = [0u8; 64];
    while let Ok(n) = server.recv(&mut buf) {
        last = number_in(&String::from_utf8_lossy(&buf[..n]));
    }
    // Nothing at the path: the restore fails naming it, and leaves nothing behind.
    drop(server);
    std::fs::remove_file(&log).unwrap();
    let o = ckpt(&["restore", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    let want = format!("again to {} (its peer outside the tree", log.display());
    assert!(err.contains(&want), "{want:?} not in {err:?}");
    assert!(common::gone(pid), "no process is left of a failed restore");
    let server = std::os::unix::net::UnixDatagram::bind(&log).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    assert_eq!(next_log(&server), last + 1, "it goes on where it was");
    assert_eq!(next_log(&server), last + 2);
    assert!(
        !text_after(&out, 0).contains("error"),
        "{}",
        text_after(&out, 0)
    );
    kill_and_reap(restored);
}

/// Reads "c N" lines from `conn` until end of file; the last N.
fn last_line_number(conn: std::os::unix::net::UnixStream) -> u64 {
    use std::io::BufRead;
    let lines = std::io::BufReader::new(conn).lines();
    let last = lines.map_while(Result::ok).last().expect("lines");
    number_in(&last)
}

/// A stream client in the tree connected to a server outside (the test): refused without
/// the option, naming the peer and the option; with `--external unix` it is connected to the
/// server's path again on restore (a second connection the server accepts), where its writes
/// go on.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_stream_client_of_a_server_outside_is_reconnected_with_external_unix() {
    use std::io::BufRead;
    let (_m, d, out, img) = begin("unix-ext-stream", false);
    let srv = d.path("srv");
    let listener = std::os::unix::net::UnixListener::bind(&srv).unwrap();
    let args = ["client".as_ref(), srv.as_os_str(), out.as_os_str()];
    let (mut child, pid) = common::spawn_ready("unix_socks", &args);
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "c 0\n");

    let imgs = img.to_str().unwrap();
    let o = ckpt(&["checkpoint", &pid.to_string(), "-o", imgs]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    for want in [
        "UNIX stream socket",
        srv.to_str().unwrap(),
        "--external unix",
    ] {
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
    assert!(!img.exists());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "c 1\n", "the client goes on, untouched");

    let (_, image, _) = common::checkpoint_kill_with(pid, &img, &["--external", "unix"], || {
        child.wait().unwrap();
    });
    let ext = &image.manifest.shared.unix_external;
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(ext[0].reconnect, ckpt::fds::Reconnect::Name);
    let summary = ok(&ckpt(&["inspect", imgs]));
    let want = format!(
        "reconnected to {} on restore (a new connection)",
        srv.display()
    );
    assert!(summary.contains(&want), "{summary}");
    drop(conn);
    let last = last_line_number(reader.into_inner());

    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    listener.set_nonblocking(true).unwrap();
    let (second, _) = listener.accept().expect("the restore connected again");
    // Made by a helper as the client (its pid and ids), not by ckpt restore.
    let peer =
        nix::sys::socket::getsockopt(&second, nix::sys::socket::sockopt::PeerCredentials).unwrap();
    assert_eq!(
        (peer.pid(), peer.uid()),
        (pid, 0),
        "the server sees the client"
    );
    second.set_nonblocking(false).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = std::io::BufReader::new(second);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(
        line,
        format!("c {}\n", last + 1),
        "its writes arrive on the new one"
    );
    assert!(
        !text_after(&out, 0).contains("error"),
        "{}",
        text_after(&out, 0)
    );
    kill_and_reap(restored);
}

/// Starts tests/progs/unix_socks reading its fd 5, which is `theirs` (closed here once it is
/// the child's); waits until it is ready.
fn spawn_socket_reader(theirs: std::os::unix::net::UnixStream, out: &Path) -> Child {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    let mut cmd = Command::new(common::prog("unix_socks"));
    cmd.args(["reader".as_ref(), "5".as_ref(), out.as_os_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: between fork and exec: dup2 and fcntl only.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // dup2 onto itself would leave close-on-exec set: cleared either way.
            if libc::dup2(fd, 5) < 0 || libc::fcntl(5, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(theirs);
    let ready = common::first_line(&mut child);
    assert!(ready.starts_with("ready "), "{ready}");
    child
}

/// With `--external unix`, a socket whose peer outside is unnamed (the other end of a pair
/// the test holds) comes back with its peer gone: what was queued, then end of file.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_socket_whose_unnamed_peer_is_outside_comes_back_with_its_peer_gone() {
    use std::io::Write;
    let (_m, _d, out, img) = begin("unix-ext-gone", false);
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut child = spawn_socket_reader(theirs, &out);
    ours.write_all(b"hello").unwrap();
    let pid = child.id() as i32;
    let (_, image, _) = common::checkpoint_kill_with(pid, &img, &["--external", "unix"], || {
        child.wait().unwrap();
    });
    let ext = &image.manifest.shared.unix_external;
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(ext[0].reconnect, ckpt::fds::Reconnect::Gone);
    let summary = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    assert!(summary.contains("restored with its peer gone"), "{summary}");
    let restored = restore_root(&img);
    common::signal_until(restored, libc::SIGUSR1, "it reads its socket", || {
        text_after(&out, 0).contains("read ")
    });
    // Our end is still open, but the restored socket's peer is not it.
    assert_eq!(text_after(&out, 0), "read hello then eof\n");
    drop(ours);
    kill_and_reap(restored);
}

/// A stream socket whose peer had closed the connection, bytes still queued at it (a JVM
/// holds one): carried without asking, it comes back as it was: the bytes, then end of file.
/// It was refused ("its peer has closed the connection: not supported yet").
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_socket_whose_peer_had_closed_comes_back_with_its_bytes_then_eof() {
    use std::io::Write;
    let (_m, _d, out, img) = begin("unix-peer-closed", false);
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut child = spawn_socket_reader(theirs, &out);
    ours.write_all(b"hello").unwrap();
    drop(ours);
    let pid = child.id() as i32;
    let (_, image, _) = common::checkpoint_kill_with(pid, &img, &[], || {
        child.wait().unwrap();
    });
    let ext = &image.manifest.shared.unix_external;
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(
        (ext[0].reconnect, ext[0].peer_inode),
        (ckpt::fds::Reconnect::Gone, 0)
    );
    let summary = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    assert!(summary.contains("its peer had closed"), "{summary}");
    let restored = restore_root(&img);
    common::signal_until(restored, libc::SIGUSR1, "it reads its socket", || {
        text_after(&out, 0).contains("read ")
    });
    assert_eq!(text_after(&out, 0), "read hello then eof\n");
    kill_and_reap(restored);
}

/// Starts `python3 -c PROG OUT`, which prints "ready PID" once set up; waits for it.
fn spawn_python_ready(prog: &str, out: &Path) -> Child {
    let mut child = Command::new("python3")
        .args(["-c", prog])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = common::first_line(&mut child);
    assert!(ready.starts_with("ready "), "{ready}");
    child
}

/// A program with netlink sockets (dbus-daemon and sshd keep an audit one; this one a route
/// socket subscribed to link events, and an audit socket never bound): both come back with
/// their protocol, port id and groups, and the route socket answers a dump of the links on
/// the same port. Refused before ("connected and unbound sockets are not supported yet").
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn netlink_sockets_come_back_bound_to_their_port_and_groups() {
    const PROG: &str = r#"
import os, signal, socket, struct, sys
out = sys.argv[1]
route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
route.bind((0, 1))  # RTMGRP_LINK
audit = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)  # NETLINK_AUDIT
def report(*_):
    seq = os.getpid()
    # RTM_GETLINK (18), NLM_F_REQUEST | NLM_F_DUMP; an ifinfomsg of AF_UNSPEC.
    route.send(struct.pack("=IHHII", 32, 18, 0x301, seq, 0) + bytes(16))
    links = 0
    while True:
        data = route.recv(65536)
        at, done = 0, False
        while at < len(data):
            length, kind = struct.unpack_from("=IH", data, at)
            if kind == 3:  # NLMSG_DONE
                done = True
            elif kind == 16:  # RTM_NEWLINK
                links += 1
            at += (length + 3) & ~3
        if done:
            break
    port, groups = route.getsockname()
    with open(out, "a") as f:
        f.write("links %d port %d groups %d audit %d\n" % (links, port, groups, audit.getsockname()[0]))
signal.signal(signal.SIGUSR1, report)
print("ready", os.getpid(), flush=True)
while True:
    signal.pause()
"#;
    let (_m, _d, out, img) = begin("netlink", false);
    let mut child = spawn_python_ready(PROG, &out);
    let pid = child.id() as i32;
    let ask = |pid: i32| {
        let before = text_after(&out, 0).lines().count();
        common::signal_until(pid, libc::SIGUSR1, "it reports", || {
            text_after(&out, 0).lines().count() > before
        });
        text_after(&out, 0).lines().last().unwrap().to_owned()
    };
    let before = ask(pid);
    assert!(
        before.starts_with("links ") && !before.starts_with("links 0"),
        "{before}"
    );
    assert!(
        before.contains(&format!("port {pid} groups 1 audit 0")),
        "{before}"
    );
    let (_, image, _) = common::checkpoint_kill_with(pid, &img, &[], || {
        child.wait().unwrap();
    });
    let kinds = format!("{:?}", image.manifest.processes[0].files.fds);
    assert_eq!(kinds.matches("Netlink(").count(), 2, "{kinds}");
    let restored = restore_root(&img);
    assert_eq!(ask(restored), before, "after the restore");
    kill_and_reap(restored);
}

/// A child whose stdin and stdout are one end of a socket pair its parent holds the other
/// end of (socat's SYSTEM and EXEC, libuv's pipes, Python's subprocess given a socket): the
/// pair is the tree's and comes back connected. It was taken for stdio connected outside
/// and replaced by `ckpt restore`'s own, so the parent's next write met a closed socket.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_childs_stdio_on_a_socket_pair_with_its_parent_comes_back_connected() {
    const PROG: &str = r#"
import os, signal, socket, subprocess, sys
out = sys.argv[1]
ours, theirs = socket.socketpair()
child = subprocess.Popen(["cat"], stdin=theirs, stdout=theirs)
theirs.close()
def ask(*_):
    ours.sendall(b"ping\n")
    got = b""
    while not got.endswith(b"\n"):
        got += ours.recv(100)
    with open(out, "a") as f:
        f.write("echoed " + got.decode())
signal.signal(signal.SIGUSR1, ask)
print("ready", os.getpid(), flush=True)
while True:
    signal.pause()
"#;
    let (_m, _d, out, img) = begin("stdio-pair", false);
    let mut child = spawn_python_ready(PROG, &out);
    let pid = child.id() as i32;
    let ask = |pid: i32, n: usize| {
        common::signal_until(pid, libc::SIGUSR1, "the child echoes", || {
            text_after(&out, 0).lines().count() >= n
        });
        text_after(&out, 0)
    };
    assert_eq!(ask(pid, 1), "echoed ping\n");
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let cat: i32 = children.trim().parse().unwrap();
    let (_, image, pids) = common::checkpoint_kill_with(pid, &img, &[], || {
        child.wait().unwrap();
        // Orphaned, it comes to this process (the subreaper).
        // SAFETY: reaping a process of the test.
        unsafe { libc::waitpid(cat, std::ptr::null_mut(), 0) };
    });
    assert_eq!(pids, [pid, cat], "python and cat");
    let cat_fds = &image.manifest.processes[1].files.fds;
    let stdio: Vec<_> = cat_fds.iter().filter(|f| f.fd <= 1).collect();
    assert!(
        stdio
            .iter()
            .all(|f| matches!(f.kind, ckpt::fds::FdKind::SocketPairEnd(_))),
        "{stdio:?}"
    );
    let restored = restore_root(&img);
    assert_eq!(ask(restored, 2), "echoed ping\nechoed ping\n");
    for &p in &pids {
        kill_and_reap(p);
    }
}

/// CLOCK_MONOTONIC in milliseconds, as tests/progs/timers.c reports it.
fn mono_ms() -> i64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() * 1000 + t.tv_nsec() / 1_000_000
}

/// The "st" lines of tests/progs/timers.c after byte `from`: their numeric fields.
fn timer_lines(out: &Path, from: usize) -> Vec<std::collections::BTreeMap<String, i64>> {
    text_after(out, from)
        .lines()
        .filter_map(|l| l.strip_prefix("st "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect()
        })
        .collect()
}

/// Waits until a status line of timers.c after byte `from` satisfies `cond`; returns it.
fn wait_timer_line(
    out: &Path,
    from: usize,
    what: &str,
    cond: impl Fn(&std::collections::BTreeMap<String, i64>) -> bool,
) -> std::collections::BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = timer_lines(out, from).into_iter().find(|l| cond(l)) {
            return l;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A count that goes up every `period_ms` went up at that rate between two status lines
/// (fewer only by a slow guest's coalesced expirations, never more).
fn check_rate(
    name: &str,
    first: &std::collections::BTreeMap<String, i64>,
    last: &std::collections::BTreeMap<String, i64>,
    period_ms: i64,
) {
    let (dt, dn) = (last["t"] - first["t"], last[name] - first[name]);
    let expected = dt / period_ms;
    assert!(
        dn * 2 >= expected - 2 && dn <= expected + expected / 5 + 2,
        "{name}: {dn} expirations in {dt} ms, every {period_ms} ms expected"
    );
}

/// `at` (ms, CLOCK_MONOTONIC) is when a timer armed between `t0` and `t1` with `left_ms` to
/// go fires, give or take what a slow guest adds.
fn fired_on_time(what: &str, at: i64, (t0, t1): (i64, i64), left_ms: i64) {
    assert!(
        at >= t0 + left_ms - 50 && at <= t1 + left_ms + 1500,
        "{what} fired at {at}, expected {left_ms} ms after the restore ({t0}..{t1})"
    );
}

/// The last "left=MS interval=MS" line of tests/progs/itimer.c after byte `from`.
fn itimer_line(out: &Path, from: usize) -> Option<(i64, i64)> {
    let text = text_after(out, from);
    let (left, interval) = text.lines().last()?.split_once(' ')?;
    let left = left.strip_prefix("left=")?.parse().ok()?;
    Some((left, interval.strip_prefix("interval=")?.parse().ok()?))
}

/// A process whose only timer is an ITIMER_VIRTUAL, or an ITIMER_PROF: ckpt lends a thread to
/// read timers only when the module reports one armed (or /proc lists a POSIX timer), so each
/// kind must be reported; checkpointed with --kill and restored, it is still armed, with at
/// most the CPU time it had left and its interval.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_lone_cpu_time_itimer_is_carried() {
    for which in ["virtual", "prof"] {
        let (_m, _d, out, img) = begin(&format!("itimer-{which}"), false);
        let (mut child, pid) = common::spawn_ready("itimer", &[which.as_ref(), out.as_os_str()]);
        let line_after = |from: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(l) = itimer_line(&out, from) {
                    return l;
                }
                assert!(
                    Instant::now() < deadline,
                    "{which}: no line after byte {from}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        line_after(0);
        let (_, image, _) = common::checkpoint_kill(&mut child, &img);
        let (left_before, _) = line_after(0);
        let t = &image.manifest.processes[0].timers;
        let kept = if which == "virtual" { t.virt } else { t.prof };
        let kept = kept.unwrap_or_else(|| panic!("ITIMER_{which} is not in the image: {t:?}"));
        assert_eq!(kept.interval_us, 7_000_000, "{which}");
        let from = file_len(&out);
        assert_eq!(restore_root(&img), pid);
        let (left, interval) = line_after(from);
        // setitimer adds a tick to a CPU-time value (kernel/time/itimer.c), the restore's
        // as the program's own: at most 10 ms more (HZ >= 100).
        assert!(
            left > 290_000 && left <= left_before + 10,
            "{which}: {left} ms of CPU left after the restore, {left_before} before"
        );
        assert_eq!(interval, 7000, "{which}: the interval");
        kill_and_reap(pid);
    }
}

/// POSIX timers (periodic with a value, one-shot, to a thread, SIGEV_NONE), ITIMER_REAL and
/// ITIMER_PROF, and a child's alarm, through a checkpoint with --kill, a pause, a restore
/// and a live checkpoint: same ids, counts go on at their rates, the time left is what was
/// left at the checkpoint (the pause does not count), the one-shot timers fire once on time.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn posix_timers_itimers_and_alarm_go_on_after_kill_and_restore() {
    let (_m, d, out, img) = begin("timers", false);
    let (mut child, pid) = common::spawn_ready("timers", &[out.as_os_str()]);
    let before = wait_timer_line(&out, 0, "5 ticks of timer A", |l| l["a"] >= 5);
    assert_eq!((before["abad"], before["cbad"], before["err"]), (0, 0, 0));
    let listing = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap();
    let proc_before = listing(pid);
    let kid_pid: i32 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    ok(&ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
    ]));
    child.wait().unwrap();
    // Killed with its parent, it is ours to reap (we are a subreaper).
    kill_and_reap(kid_pid);
    let image = ckpt::manifest::Image::open(&img).unwrap();
    let last_before = timer_lines(&out, 0).pop().unwrap();
    assert_eq!(last_before["bn"], 0, "B fired before the checkpoint");

    // The image: every timer with its settings and the time left.
    let (p, kid) = (&image.manifest.processes[0], &image.manifest.processes[1]);
    let t = &p.timers.posix;
    assert_eq!(t.iter().map(|t| t.id).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(
        (t[0].notify, t[0].signo, t[0].value & 0xffff_ffff),
        (0, 10, 0x1234)
    );
    assert_eq!(t[0].interval_ns, 100_000_000);
    assert!(t[1].value_ns > 0 && t[1].value_ns < 8_000_000_000 && t[1].interval_ns == 0);
    assert_eq!((t[2].notify, t[2].thread), (4, Some(p.threads[1].tid)));
    assert_eq!(
        (t[2].value & 0xffff_ffff, t[2].interval_ns),
        (0x5678, 200_000_000)
    );
    assert_eq!(t[3].notify, 1);
    assert!(t[3].value_ns > 990_000_000_000);
    let real = p.timers.real.expect("ITIMER_REAL");
    assert_eq!(real.interval_us, 150_000);
    let prof = p.timers.prof.expect("ITIMER_PROF");
    assert!(prof.value_us > 400_000_000 && prof.value_us <= 500_100_000 && prof.interval_us == 0);
    assert!(p.timers.virt.is_none());
    let alarm = kid.timers.real.expect("the child's alarm");
    assert!(alarm.value_us > 0 && alarm.value_us < 9_000_000 && alarm.interval_us == 0);
    assert!(kid.timers.posix.is_empty());
    let summary = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    assert!(
        summary.contains("POSIX timer 2 (clock 1, signal 36 to thread"),
        "{summary}"
    );
    assert!(summary.contains("itimer real: fires in"), "{summary}");

    // Down for a while: that time must not count.
    std::thread::sleep(Duration::from_millis(1500));
    let from = file_len(&out);
    let t0 = mono_ms();
    assert_eq!(restore_root(&img), pid);
    let t1 = mono_ms();
    assert_eq!(
        listing(pid),
        proc_before,
        "/proc/PID/timers after the restore"
    );

    let first = wait_timer_line(&out, from, "a line", |_| true);
    let ms = |ns: u64| (ns / 1_000_000) as i64;
    // The time left just after the restore: what the image had, less the time since it was
    // armed (between t0 and t1).
    for (name, left) in [("bleft", ms(t[1].value_ns)), ("dleft", ms(t[3].value_ns))] {
        let (lo, hi) = (left - (first["t"] - t0) - 20, left - (first["t"] - t1) + 20);
        assert!(
            first[name] >= lo && first[name] <= hi,
            "{name} {} after the restore, expected {lo}..{hi}",
            first[name]
        );
    }
    assert!(first["a"] >= last_before["a"] && first["alrm"] >= last_before["alrm"]);
    let last = wait_timer_line(&out, from, "2.5 s after the restore", |l| {
        l["t"] >= t1 + 2500
    });
    check_rate("a", &first, &last, 100);
    check_rate("c", &first, &last, 200);
    check_rate("alrm", &first, &last, 150);
    assert_eq!((last["abad"], last["cbad"], last["err"]), (0, 0, 0));
    assert!(last["profleft"] > 0 && last["profleft"] <= ms(prof.value_us * 1000) + 10);

    // The one-shots: B once, on time; the child's alarm, on time.
    let fired = wait_timer_line(&out, from, "B fires", |l| l["bn"] > 0);
    fired_on_time("B", fired["b"], (t0, t1), ms(t[1].value_ns));
    wait_text(&out, from, "child-alarm ");
    let text = text_after(&out, from);
    let alarm_at: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("child-alarm "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    fired_on_time(
        "the child's alarm",
        alarm_at,
        (t0, t1),
        ms(alarm.value_us * 1000),
    );

    // A checkpoint of the live process changes nothing for it: its timers' signals taken
    // while lending a thread come back as they were (si_code SI_TIMER, value, id).
    let from2 = file_len(&out);
    let live = wait_timer_line(&out, from2, "a line", |_| true);
    let img2 = d.path("img2");
    ok(&ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img2.to_str().unwrap(),
    ]));
    let t2 = mono_ms();
    let after = wait_timer_line(&out, from2, "2 s after", |l| l["t"] >= t2 + 2000);
    assert_eq!(
        (
            after["abad"],
            after["cbad"],
            after["err"],
            after["aother"],
            after["bn"]
        ),
        (0, 0, 0, live["aother"], 1)
    );
    check_rate("a", &live, &after, 100);
    assert_eq!(listing(pid), proc_before);
    let again = ckpt::manifest::Image::open(&img2).unwrap();
    assert_eq!(again.manifest.processes[0].timers.posix.len(), 4);
    kill_and_reap(pid);
    kill_and_reap(kid.pid);
}

/// Reading timers at checkpoint lends a frozen thread to injected calls. A signal pending for
/// the process while frozen is taken on the way and must come back as it was (sigqueue's si_code and
/// value), the thread's registers untouched.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_thread_lent_at_checkpoint_gives_its_signals_back() {
    use nix::sys::ptrace;
    use nix::unistd::Pid;
    let (_m, _d, out, _img) = begin("lend", false);
    let (mut child, pid) = common::spawn_ready("timers", &[out.as_os_str()]);
    wait_timer_line(&out, 0, "3 ticks of timer A", |l| l["a"] >= 3);
    let frozen = ckpt::freeze::Frozen::freeze(pid).unwrap();
    // A real-time signal (they queue: a timer's pending SIGUSR1 would swallow a second one).
    let sig = libc::SIGRTMIN() + 3;
    // SAFETY: sigqueue to our child with a plain value.
    let sent = unsafe {
        libc::sigqueue(
            pid,
            sig,
            libc::sigval {
                sival_ptr: 0x1234 as *mut _,
            },
        )
    };
    assert_eq!(sent, 0);
    let bit = 1u64 << (sig - 1);
    let shared = || ckpt::proc::pending_signals(pid).unwrap().1;
    assert_ne!(shared() & bit, 0);
    let regs = |tid: i32| {
        let r = ptrace::getregs(Pid::from_raw(tid)).unwrap();
        (
            r.rip, r.rsp, r.rax, r.orig_rax, r.rcx, r.r11, r.rdi, r.eflags,
        )
    };
    let before: Vec<_> = frozen.tids.iter().map(|&t| regs(t)).collect();
    // The module reports the itimers the program armed, ITIMER_REAL and ITIMER_PROF.
    let dev = ckpt::device::Device::open(Path::new("/dev/ckpt")).unwrap();
    let armed = dev.itimers_armed(pid).unwrap();
    assert_eq!(
        armed,
        ckpt_abi::CKPT_ITIMER_REAL | ckpt_abi::CKPT_ITIMER_PROF,
        "armed itimers"
    );
    let timers = ckpt::timers::dump(&frozen, armed, |t| t).unwrap();
    assert_eq!(timers.posix.len(), 4);
    let after: Vec<_> = frozen.tids.iter().map(|&t| regs(t)).collect();
    assert_eq!(before, after, "registers of the lent thread");
    assert_ne!(
        shared() & bit,
        0,
        "the signal is pending again, for the process"
    );
    frozen.release().unwrap();
    let l = wait_timer_line(&out, 0, "the queued signal", |l| l["q"] + l["qbad"] > 0);
    assert_eq!((l["q"], l["qbad"], l["abad"]), (1, 0, 0));
    let kid: i32 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    kill_and_reap(kid);
}

/// Whether `out` after byte `from` has a fanotify event on `path` with one of `masks`.
fn fan_event(out: &Path, from: usize, path: &Path, masks: &[u32]) -> bool {
    let text = text_after(out, from);
    text.lines().any(|l| {
        let Some(rest) = l.strip_prefix("fan mask=") else {
            return false;
        };
        let (mask, p) = rest.split_once(" path=").unwrap_or(("", ""));
        let mask = u32::from_str_radix(mask, 16).unwrap_or(0);
        Path::new(p) == path && masks.contains(&mask)
    })
}

/// tests/progs/notify.c: inotify watches with gaps in their numbering (wds 3 and 5 left of
/// 1-5) and fanotify marks on an inode and a mount come back: events after the restore are
/// reported with the original wds, and each mark catches what it caught before.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn inotify_and_fanotify_watches_come_back_with_their_wds() {
    let (_m, d, out, img) = begin("notify", false);
    let (mut child, pid) = common::spawn_ready("notify", &[out.as_os_str(), d.0.as_os_str()]);
    ok(&ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
    ]));
    child.wait().unwrap();
    let summary = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    let (w, file, other) = (d.path("w"), d.path("file"), d.path("other"));
    for want in [
        format!(
            "inotify (wd 3 {} mask 0x300, wd 5 {} mask 0x2)",
            w.display(),
            file.display()
        ),
        format!(
            "fanotify (flags 0x1, event flags 0x8000; {} mask 0x2, mount ",
            file.display()
        ),
    ] {
        assert!(summary.contains(&want), "no {want:?} in:\n{summary}");
    }
    let from = file_len(&out);
    let pid = restore_root(&img);
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/4")).unwrap();
    let mut wds: Vec<&str> = (fdinfo.lines())
        .filter_map(|l| l.strip_prefix("inotify ")?.split(' ').next())
        .collect();
    wds.sort();
    assert_eq!(wds, ["wd:3", "wd:5"], "{fdinfo}");
    std::fs::write(w.join("new"), "").unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n"))
        .unwrap();
    std::fs::write(&other, "other\n").unwrap();
    std::fs::remove_file(w.join("new")).unwrap();
    wait_text(&out, from, "ino wd=3 mask=100 name=new\n");
    wait_text(&out, from, "ino wd=5 mask=2 name=\n");
    wait_text(&out, from, "ino wd=3 mask=200 name=new\n");
    // The inode mark (FAN_MODIFY) on file, the mount mark (FAN_CLOSE_WRITE) on other.
    common::wait_for("fanotify events", 30, || {
        fan_event(&out, from, &file, &[0x2, 0xa]) && fan_event(&out, from, &other, &[0x8])
    });
    let text = text_after(&out, from);
    for gone in ["wd=1 ", "wd=2 ", "wd=4 "] {
        assert!(
            !text.contains(gone),
            "an event for removed watch {gone}:\n{text}"
        );
    }
    kill_and_reap(pid);
}

/// A watch on a file deleted while held open is refused by name; the process runs on.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_watch_on_a_deleted_file_is_refused_by_name() {
    let (_m, d, out, img) = begin("notify-deleted", false);
    let args = [out.as_os_str(), d.0.as_os_str(), "deleted".as_ref()];
    let (mut child, pid) = common::spawn_ready("notify", &args);
    let res = ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    let gone = d.path("gone");
    assert!(
        err.contains(&gone.display().to_string()) && err.contains("deleted"),
        "{err}"
    );
    assert!(!common::gone(pid), "the refused process is left running");
    let _ = child.kill();
    let _ = child.wait();
}

/// Events queued and unread at the checkpoint are dropped with a warning (a queue cannot be
/// read without consuming it): `ckpt inspect` says how many bytes; the restored program then
/// sees only the events that come after.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn unread_notify_events_are_dropped_with_a_warning() {
    let (_m, d, out, img) = begin("notify-unread", false);
    let args = [out.as_os_str(), d.0.as_os_str(), "unread".as_ref()];
    let (mut child, pid) = common::spawn_ready("notify", &args);
    let res = ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    ok(&res);
    child.wait().unwrap();
    for what in ["an inotify instance at fd 4", "a fanotify instance at fd 5"] {
        assert!(
            err.contains(what) && err.contains("bytes of unread events"),
            "no warning for {what}: {err}"
        );
    }
    let summary = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    assert!(summary.contains("bytes of events dropped)"), "{summary}");
    let from = file_len(&out);
    let pid = restore_root(&img);
    // SAFETY: signalling the restored process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    std::fs::write(d.path("w/marker"), "").unwrap();
    wait_text(&out, from, "ino wd=3 mask=100 name=marker\n");
    let text = text_after(&out, from);
    assert!(
        text.starts_with("ino wd=3 mask=100 name=marker\n"),
        "an event from before the checkpoint was delivered:\n{text}"
    );
    kill_and_reap(pid);
}

/// `sleep 1000` holding our fd `fd` as its fd 5 (our `fd` is close-on-exec, so that no other
/// test's child inherits it).
fn sleeper_holding_as_fd_5(fd: std::os::fd::RawFd) -> Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("1000").stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: between fork and exec: dup2 and fcntl only.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // dup2 onto itself would leave close-on-exec set: cleared either way.
            if libc::dup2(fd, 5) < 0 || libc::fcntl(5, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// The images of a periodic directory, oldest first.
fn periodic_images(dir: &Path) -> Vec<String> {
    ckpt::periodic::points_in(dir).unwrap()
}

/// What a crontab line runs: `ckpt checkpoint --pidfile P --dir D --keep 2`, again and again.
/// Images are named by time, only the newest two stay, `latest` names the newest, every run
/// logs one line; then the program is killed at a checkpoint, `ckpt restore D --pidfile P`
/// brings back the latest and writes the pid, and the same line goes on working.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn periodic_checkpoints_keep_the_newest_and_restore_dir_brings_back_the_latest() {
    use std::os::unix::fs::PermissionsExt;
    let (_m, d, out, _img) = begin("periodic", false);
    let mut child = start_counter("counter", &out, 8);
    let (pidfile, dir) = (d.path("app.pid"), d.path("points"));
    std::fs::write(&pidfile, format!("{}\n", child.id())).unwrap();
    let (pidfile_s, dir_s) = (pidfile.to_str().unwrap(), dir.to_str().unwrap());
    let line = [
        "checkpoint",
        "--pidfile",
        pidfile_s,
        "--dir",
        dir_s,
        "--keep",
        "2",
    ];
    let mut seen = Vec::new();
    for _ in 0..3 {
        ok(&ckpt(&line));
        let images = periodic_images(&dir);
        seen.push(images.last().unwrap().clone());
        assert_eq!(
            std::fs::read_link(dir.join("latest")).unwrap().to_str(),
            Some(seen.last().unwrap().as_str())
        );
    }
    assert_eq!(
        periodic_images(&dir),
        seen[1..].to_vec(),
        "the oldest of three is gone"
    );
    let shown = ok(&ckpt(&["inspect", dir_s]));
    assert!(
        shown.contains(seen[2].as_str()),
        "inspect DIR shows the latest: {shown}"
    );
    for f in periodic_images(&dir) {
        let mode = std::fs::metadata(dir.join(&f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let log = std::fs::read_to_string(dir.join("ckpt.log")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains(" ok ckpt-")).count(),
        3,
        "{log}"
    );
    assert!(log.contains(&format!("deleted={}", seen[0])), "{log}");

    // Killed at the last point, brought back from the directory.
    let mut last_line = line.to_vec();
    last_line.push("--kill");
    ok(&ckpt(&last_line));
    let _ = child.wait();
    let last = *numbers(&out, 0).last().unwrap();
    std::fs::write(&pidfile, "stale\n").unwrap();
    let from = file_len(&out);
    let o = ckpt(&["restore", dir_s, "--pidfile", pidfile_s]);
    let pid: i32 = ok(&o).trim().parse().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{pid}\n")
    );
    check_continues(pid, &out, from, last);
    // The same crontab line finds the restored process.
    ok(&ckpt(&line));
    assert_eq!(periodic_images(&dir).len(), 2);
    let log = std::fs::read_to_string(dir.join("ckpt.log")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains(" ok ckpt-")).count(),
        5,
        "{log}"
    );
    kill_and_reap(pid);
}

/// A run that starts while the previous one still works skips with a message and a log line
/// (exit 0: cron's next run will do); the one interrupted leaves no image and `latest` as it
/// was, and the program running.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn an_overlapping_periodic_run_skips_and_an_interrupted_one_changes_nothing() {
    let (_m, d, out, _img) = begin("periodic-busy", false);
    let mut child = start_counter("counter", &out, 4);
    let dir = d.path("points");
    let (pid_s, dir_s) = (child.id().to_string(), dir.to_str().unwrap().to_owned());
    let line = ["checkpoint", &pid_s, "--dir", &dir_s];
    ok(&ckpt(&line));
    let first = periodic_images(&dir);
    let mut slow = Command::new(common::ckpt_bin())
        .args(line)
        .env("CKPT_TEST_PAUSE_SNAPSHOT", "60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let children = || common::children_of(child.id() as i32);
    common::wait_for("the slow run holds a snapshot", 60, || {
        !children().is_empty()
    });
    let o = ckpt(&line);
    assert_eq!(o.status.code(), Some(0), "a skipped run is not a failure");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another checkpoint into") && err.contains("is running"),
        "{err}"
    );
    slow.kill().unwrap();
    slow.wait().unwrap();
    common::reap_orphaned_workers();
    let log = std::fs::read_to_string(dir.join("ckpt.log")).unwrap();
    assert!(log.contains("skipped: another checkpoint"), "{log}");
    assert_eq!(
        periodic_images(&dir),
        first,
        "no image from the interrupted run"
    );
    assert_eq!(
        std::fs::read_link(dir.join("latest")).unwrap().to_str(),
        Some(first[0].as_str())
    );
    let n = numbers(&out, 0).len();
    wait_lines(&out, 0, n + 5);
    ok(&ckpt(&line));
    assert_eq!(periodic_images(&dir).len(), 2);
    kill_and_reap(child.id() as i32);
    let _ = child.wait();
}

/// Mounts a tmpfs of `bytes` at `dir` (or resizes the one there).
fn tmpfs_of(dir: &Path, bytes: u64, remount: bool) {
    let opts = match remount {
        true => format!("remount,size={bytes}"),
        false => format!("size={bytes},mode=0700"),
    };
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "mount -o {opts} at {}", dir.display());
}

/// Crash safety: the disk fills at every point of writing an image. A tmpfs that holds the
/// image is shrunk step by step, by 4 KiB near the start and the end of the image (header,
/// small sections, the manifest) and in 24 steps across its pages, half the rounds with
/// --kill. Each checkpoint that does not fit fails with a message saying the disk is full,
/// leaves no file at all, and the program runs on (not killed, not stopped, not traced, no
/// snapshot under it); each that fits leaves a whole image. The program is whole at the end.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_disk_filling_at_every_write_never_harms_the_program() {
    let (_m, d, out, _img) = begin("diskfull", false);
    let (mut child, pid) = common::spawn_ready("scribbler", &[out.as_os_str(), "2".as_ref()]);
    let mnt = d.path("small");
    std::fs::create_dir(&mnt).unwrap();
    tmpfs_of(&mnt, 64 << 20, false);
    let img = mnt.join("img");
    let img_s = img.to_str().unwrap().to_owned();
    let pid_s = pid.to_string();
    ok(&ckpt(&["checkpoint", &pid_s, "-o", &img_s]));
    let size = std::fs::metadata(&img).unwrap().len();
    std::fs::remove_file(&img).unwrap();
    let page = 4096;
    let mut sizes: Vec<u64> = (1..=8).map(|i| i * page).collect();
    sizes.extend((1..24).map(|i| (size * i / 24) & !(page - 1)));
    sizes.extend((0..8).map(|i| size.saturating_sub(i * page) & !(page - 1)));
    sizes.push(size + 256 * 1024);
    sizes.sort();
    sizes.dedup();
    let (mut full, mut fitted) = (0, 0);
    for (round, &bytes) in sizes.iter().enumerate() {
        tmpfs_of(&mnt, bytes.max(page), true);
        let kill = round % 2 == 1;
        let mut args = vec!["checkpoint", pid_s.as_str(), "-o", img_s.as_str()];
        if kill {
            args.push("--kill");
        }
        let o = ckpt(&args);
        if o.status.success() {
            fitted += 1;
            ckpt::manifest::Image::open(&img).unwrap_or_else(|e| panic!("{bytes}: {e}"));
            if kill {
                // SAFETY: reaping the program killed at the checkpoint (ours, or reparented).
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                assert_eq!(restore_root(&img), pid);
            }
        } else {
            full += 1;
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("No space left on device"), "{bytes}: {err}");
            let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().flatten().collect();
            assert!(left.is_empty(), "{bytes}: {left:?} left behind");
            assert!(
                matches!(state_and_tracer(pid), Some((s, 0)) if s != 't' && s != 'T' && s != 'Z'),
                "{bytes}: the program is not running free: {:?}",
                state_and_tracer(pid)
            );
        }
        assert!(
            common::children_of(pid).is_empty(),
            "{bytes}: a snapshot is left"
        );
        let _ = std::fs::remove_file(&img);
    }
    eprintln!("diskfull: {full} checkpoints found the disk full, {fitted} fitted");
    assert!(full > 30 && fitted > 0, "the sizes should span the image");
    let report = scribbler_check(pid, &out);
    assert!(report.starts_with("ok "), "{report}");
    kill_and_reap(pid);
    let _ = child.wait();
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
}

/// Whether process `pid` runs the scribbler (a restorer runs ckpt until its restore).
fn is_program(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|e| e.to_string_lossy().ends_with("/scribbler"))
}

/// Crash safety of restores: `ckpt restore` killed with SIGKILL at a random moment, 60
/// times. After each, the program is either restored and running free (not stopped, not
/// traced), and then whole, or nothing of the restore is left (no process with its pid, no
/// restorer); the image is unchanged, and the next restore succeeds.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_restore_killed_at_random_moments_leaves_all_or_nothing() {
    let (_m, d, out, img) = begin("restore-chaos", false);
    let (mut child, pid) = common::spawn_ready("scribbler", &[out.as_os_str(), "2".as_ref()]);
    ok(&ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
    ]));
    let _ = child.wait();
    let sum = |p: &Path| xxhash_rust::xxh64::xxh64(&std::fs::read(p).unwrap(), 0);
    let before = sum(&img);
    let mut rng = fastrand::Rng::with_seed(0x7265_7374);
    // From the start to a little past the end of a restore as long as one takes here.
    let window = millis_of(|| {
        let pid = restore_root(&img);
        kill_and_reap(pid);
    }) * 5
        / 4;
    let (mut whole, mut nothing) = (0, 0);
    for round in 0..60 {
        let log = std::fs::File::create(d.path("restore.err")).unwrap();
        let mut r = Command::new(common::ckpt_bin())
            .args(["restore", img.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(0..window)));
        let _ = r.kill();
        let _ = r.wait();
        // Restorers die with ckpt (parent-death signal, ptrace's exit-kill); a restored
        // program that was let go is reparented to us and runs on. Until then a restorer may
        // hold the pid a moment, still ckpt or already dying: settled is the pid gone, or
        // the program's, untraced, running, and so twice 100 ms apart.
        let settled = || match state_and_tracer(pid) {
            None | Some(('Z', _)) => Some(false),
            Some((s, 0)) if s != 't' && s != 'T' && is_program(pid) => Some(true),
            _ => None,
        };
        let mut outcome = None;
        common::wait_for("the restore is all or nothing", 30, || {
            // SAFETY: reaping the restorer that had the pid, if it died (reparented to us;
            // only it: other tests' children are theirs to wait for).
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            let now = settled();
            let stable = now.is_some() && now == outcome;
            outcome = now;
            std::thread::sleep(Duration::from_millis(100));
            stable
        });
        if outcome == Some(true) {
            let report = scribbler_check(pid, &out);
            let err = std::fs::read_to_string(d.path("restore.err")).unwrap_or_default();
            assert!(report.starts_with("ok "), "round {round}: {report} ({err})");
            kill_and_reap(pid);
            whole += 1;
        } else {
            nothing += 1;
        }
        assert_eq!(sum(&img), before, "round {round}: the image changed");
    }
    eprintln!("restore chaos: {whole} restores completed, {nothing} left nothing");
    assert!(
        whole > 0 && nothing > 0,
        "the kills should land at all moments"
    );
    let restored = restore_root(&img);
    assert!(scribbler_check(restored, &out).starts_with("ok "));
    kill_and_reap(restored);
}

/// What a ckpt run wrote on a terminal: its stdout (a file), its exit status, and everything
/// that came out of the pseudo-terminal its stderr was.
struct OnTerminal {
    status: std::process::ExitStatus,
    stdout: String,
    terminal: String,
}

/// Runs ckpt with `args`, its stderr a pseudo-terminal (read as it writes, so that it never
/// blocks on a full one) and its stdout the file `stdout`. A restored process inherits the
/// terminal: what it shows is what arrived by the time ckpt exited and went quiet. TERM says
/// what terminal it is (the guest has none set, and without it no bar is drawn).
fn ckpt_on_terminal(args: &[&str], stdout: &Path) -> OnTerminal {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::{Arc, Mutex};
    // Both ends close-on-exec from the start (openpty's are not): the other tests, running
    // at the same time, spawn programs that expect their fds at fixed numbers.
    let flags = nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY;
    let master = nix::pty::posix_openpt(flags | nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    nix::pty::grantpt(&master).unwrap();
    nix::pty::unlockpt(&master).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(nix::pty::ptsname_r(&master).unwrap())
        .unwrap();
    let size = libc::winsize {
        ws_row: 30,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    assert_eq!(
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size) },
        0
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut master = std::fs::File::from(std::os::fd::OwnedFd::from(master));
    let sink = Arc::clone(&seen);
    // Ends when every copy of the other side is closed (EIO); a restored process's copy
    // keeps it reading until the test kills that process.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let status = Command::new(common::ckpt_bin())
        .args(args)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(stdout).unwrap())
        .stderr(slave)
        .status()
        .unwrap();
    let mut last = 0;
    common::wait_for("the terminal goes quiet", 30, || {
        std::thread::sleep(Duration::from_millis(200));
        let now = seen.lock().unwrap().len();
        std::mem::replace(&mut last, now) == now
    });
    let terminal = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    OnTerminal {
        status,
        stdout: std::fs::read_to_string(stdout).unwrap(),
        terminal,
    }
}

/// Whether `text` shows a progress bar of `what`: its name, bytes done of the total, the
/// throughput and the time left.
fn shows_bar(text: &str, what: &str) -> bool {
    [what, " MiB/", " MiB/s", " ETA "]
        .iter()
        .all(|w| text.contains(w))
}

/// A checkpoint of 128 MiB with stderr on a terminal draws a progress bar there (and still
/// prints its report on stdout); with --no-progress, or stderr a file, nothing but the usual
/// output; compressing, a bar too. The pages went in pieces of 64 MiB at most (a pages
/// section each), and the image restores (the counter checks its memory), drawing a bar
/// while it verifies the image.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn long_checkpoints_and_restores_show_progress_on_a_terminal() {
    let (_m, d, out, img) = begin("progress", false);
    let mut child = start_counter("counter", &out, 128);
    let pid = child.id().to_string();
    let (image, report) = (img.to_str().unwrap(), d.path("report"));

    let drawn = ckpt_on_terminal(&["checkpoint", &pid, "-o", image], &report);
    assert!(drawn.status.success(), "{}", drawn.terminal);
    assert!(
        shows_bar(&drawn.terminal, "writing pages"),
        "no bar on the terminal: {:?}",
        drawn.terminal
    );
    let last_draw = drawn.terminal.rsplit('\r').find(|l| l.contains(" MiB/"));
    eprintln!("the checkpoint's bar, last drawn: {last_draw:?}");
    assert!(
        drawn.stdout.starts_with("checkpointed process"),
        "{}",
        drawn.stdout
    );
    let sections = ckpt::manifest::Image::open(&img).unwrap().sections;
    let pages: Vec<u64> = (sections.iter())
        .filter(|s| s.kind == ckpt::image::PAGES)
        .map(|s| s.len)
        .collect();
    assert!(
        pages.len() >= 2 && pages.iter().all(|&l| l <= 64 << 20),
        "pages sections of {pages:?} bytes"
    );

    let quiet = ckpt_on_terminal(&["checkpoint", &pid, "-o", image, "--no-progress"], &report);
    assert!(quiet.status.success(), "{}", quiet.terminal);
    assert_eq!(quiet.terminal, "", "--no-progress drew on the terminal");
    let json = ckpt_on_terminal(&["checkpoint", &pid, "-o", image, "--json"], &report);
    assert!(json.status.success(), "{}", json.terminal);
    assert_eq!(json.terminal, "", "--json drew on the terminal");
    assert!(json.stdout.trim_start().starts_with('{'), "{}", json.stdout);

    // Compressing, the pages go through zstd in the same pieces, under the same bar.
    let packed = d.path("packed");
    let args = [
        "checkpoint",
        &pid,
        "-o",
        packed.to_str().unwrap(),
        "--compress",
    ];
    let compressed = ckpt_on_terminal(&args, &report);
    assert!(compressed.status.success(), "{}", compressed.terminal);
    assert!(
        shows_bar(&compressed.terminal, "writing pages"),
        "no bar on the terminal: {:?}",
        compressed.terminal
    );

    // stderr a pipe: empty, the report on stdout as always.
    let last = {
        let piped = Command::new(common::ckpt_bin())
            .args(["checkpoint", &pid, "-o", image, "--kill"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&piped.stderr), "");
        assert!(ok(&piped).starts_with("checkpointed process"));
        child.wait().unwrap();
        *numbers(&out, 0).last().unwrap()
    };

    let from = file_len(&out);
    let restored = ckpt_on_terminal(&["restore", image], &d.path("restored"));
    assert!(restored.status.success(), "{}", restored.terminal);
    assert!(
        shows_bar(&restored.terminal, "verifying"),
        "no bar on the terminal: {:?}",
        restored.terminal
    );
    let pid: i32 = restored.stdout.trim().parse().unwrap();
    check_continues(pid, &out, from, last);
    kill_and_reap(pid);
}
