//! The interceptor path, end to end, in the guest (ignored natively: they need /dev/ckpt).
//!
//! The target is tests/progs/app.c run under `ckpt run`: eight threads sitting in accept, epoll_wait,
//! read on a pipe, poll, nanosleep, a condition variable and a mutex; handlers on every
//! catchable signal; stdout through a fully buffered FILE*; and self-checks of its ids
//! (getpid, gettid, kill, tgkill, raise, sched_getaffinity, /proc/<getpid()>) written to
//! DIR/bad if anything is off. Counters go to DIR/progress.

mod common;
use ckpt::fds::FdKind;
use ckpt::manifest::Image;
use common::{ckpt, ok, restore_root, Dir};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn setup() {
    // Restored processes are children of `ckpt restore`, which exits: reap them here.
    // SAFETY: plain prctl on ourselves.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
}

/// Starts app under `ckpt run` (stdout to DIR/stdout) and waits until it has run its first
/// self-checks.
fn start_app(d: &Dir, id: &str, port: u16) -> Child {
    let child = Command::new(common::ckpt_bin())
        .args(["run", "--id", id, "--runtime-dir"])
        .arg(d.path("rt"))
        .arg("--")
        .arg(common::prog("app"))
        .arg(&d.0)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(d.path("stdout")).unwrap())
        .stderr(std::fs::File::create(d.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    wait_progress(d, "tick", 60);
    child
}

/// The app's counters. It rewrites the file (truncate, write) every tick: a read that
/// catches it empty is repeated.
fn progress(d: &Dir) -> HashMap<String, String> {
    for _ in 0..200 {
        let m: HashMap<String, String> = std::fs::read_to_string(d.path("progress"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if m.contains_key("tick") {
            return m;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    HashMap::new()
}

fn counter(d: &Dir, key: &str) -> u64 {
    progress(d)
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until counter `key` reaches `min`; returns it.
fn wait_progress(d: &Dir, key: &str, min: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = counter(d, key);
        if v >= min {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never reached {min}: {:?}; bad: {}",
            progress(d),
            bad(d)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bad(d: &Dir) -> String {
    std::fs::read_to_string(d.path("bad")).unwrap_or_default()
}

/// The app's own view of its pid, from its progress file.
fn app_pid(d: &Dir) -> i32 {
    progress(d)["pid"].parse().unwrap()
}

/// `ckpt list --json` for the test's runtime directory.
fn list_json(d: &Dir) -> serde_json::Value {
    let rt = d.path("rt");
    serde_json::from_str(&ok(&ckpt(&[
        "list",
        "--json",
        "--runtime-dir",
        rt.to_str().unwrap(),
    ])))
    .unwrap()
}

/// Connects to the app's acceptor; returns its answer "pong VPID N".
fn pong(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// The "line N" numbers the app printed to DIR/stdout.
fn stdout_lines(d: &Dir) -> Vec<u64> {
    std::fs::read_to_string(d.path("stdout"))
        .unwrap()
        .lines()
        .map(|l| {
            l.strip_prefix("line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected stdout line {l:?}"))
        })
        .collect()
}

fn assert_consecutive(lines: &[u64]) {
    for (i, &n) in lines.iter().enumerate() {
        assert_eq!(n, i as u64 + 1, "line {} of stdout is {n}", i + 1);
    }
}

fn checkpoint_json(pid: i32, img: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "checkpoint".to_owned(),
        pid.to_string(),
        "-o".into(),
        img.to_str().unwrap().into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serde_json::from_str(&ok(&ckpt(&args))).unwrap()
}

fn restore(img: &Path) -> (i32, String) {
    let out = ckpt(&["restore", img.to_str().unwrap()]);
    // The pid is a line of its own; a restored process that inherited this stdout may have
    // written around it.
    let pid = ok(&out)
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("ckpt restore printed a pid");
    (pid, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: reaping a process of ours (a child, or reparented to this subreaper).
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: signalling a process of ours.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Checks what the image of an intercepted app holds: its virtual pid, the interceptor's
/// state, its one listening socket, and none of the interceptor's fds.
fn check_image(img: &Path, vpid: i32, port: u16, intercepted: bool) -> Image {
    let image = Image::open(img).unwrap();
    let p = &image.manifest.processes[0];
    assert_eq!(p.pid, vpid, "the image keeps the pid the app sees");
    assert_eq!(
        p.threads.len(),
        11,
        "main + 8 threads + the control thread + the flush helper"
    );
    assert_eq!(p.interceptor.is_some(), intercepted);
    // The control thread, with an fd table of its own, is restored with one.
    let own: Vec<&str> = p
        .threads
        .iter()
        .filter(|t| t.own_files)
        .map(|t| t.comm.as_str())
        .collect();
    assert_eq!(own, ["ckpt-ctl"]);
    let listeners: Vec<_> = p
        .files
        .fds
        .iter()
        .filter(|f| matches!(f.kind, FdKind::Listen(_)))
        .collect();
    assert_eq!(listeners.len(), 1, "{:?}", p.files.fds);
    if let FdKind::Listen(l) = &listeners[0].kind {
        let display = &image.manifest.shared.listeners[l.listener].socket.display;
        assert_eq!(display, &format!("127.0.0.1:{port}"));
    }
    assert!(
        p.files.fds.iter().all(|f| f.fd < 900),
        "the interceptor's fds are not in the image: {:?}",
        p.files.fds.iter().map(|f| f.fd).collect::<Vec<_>>()
    );
    image
}

/// Checks the app after a restore: it runs on, its threads keep working, no EINTR, no
/// signal it did not send itself, no failed self-check, and it answers on its socket with
/// the pid it started with.
fn check_running(d: &Dir, port: u16, vpid: i32, accepted_before: u64) {
    let t = counter(d, "tick");
    // Past two rounds of the app's self-checks (every 50 ticks).
    wait_progress(d, "tick", t + 120);
    for key in ["pipe", "poll", "sleep", "cond", "work", "epoll"] {
        let v = counter(d, key);
        wait_progress(d, key, v + 1);
    }
    let answer = pong(port);
    assert_eq!(
        answer.trim(),
        format!("pong {vpid} {}", accepted_before + 1),
        "the acceptor answers, with the original pid"
    );
    let p = progress(d);
    assert_eq!(p["eintr"], "0", "a thread saw EINTR: {p:?}");
    assert_eq!(p["sigs"], "0", "the app received a signal: {p:?}");
    assert_eq!(app_pid(d), vpid);
    assert_eq!(bad(d), "", "the app's self-checks failed");
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn blocked_threads_flushed_stdio_and_two_restores_through_the_interceptor() {
    setup();
    let d = Dir::new("ic-flow");
    let port = 7301;
    let mut child = start_app(&d, "flow", port);
    let pid = child.id() as i32;
    assert_eq!(pong(port).trim(), format!("pong {pid} 1"));

    // 1. Checkpoint through the interceptor and kill: everything printed so far is flushed.
    let before = counter(&d, "tick");
    let img = d.path("img1");
    let stats = checkpoint_json(pid, &img, &["--kill"]);
    assert_eq!(stats["interceptor"], true, "{stats}");
    assert_eq!(stats["stdio_flushed"], true, "{stats}");
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let lines = stdout_lines(&d);
    assert_consecutive(&lines);
    assert!(
        lines.len() as u64 >= before,
        "stdout was flushed before the snapshot: {} lines on disk, {before} printed before \
         the checkpoint",
        lines.len()
    );
    let image = check_image(&img, pid, port, true);
    assert!(image.manifest.processes[0]
        .interceptor
        .as_ref()
        .unwrap()
        .tid_offset
        .is_some());

    // 2. Restore: same pid (it is free), the threads go on where they were blocked.
    let (rpid, _) = restore(&img);
    assert_eq!(rpid, pid);
    check_running(&d, port, pid, 1);
    // Its interceptor made a new endpoint: `ckpt list` finds it, one restore later.
    let list = list_json(&d);
    let procs = &list[0]["processes"];
    assert_eq!(list[0]["id"], "flow");
    assert_eq!(procs[0]["pid"], rpid);
    assert_eq!(procs[0]["generation"], 1);

    // 3. Checkpoint the restored app (through its new endpoint) and restore again.
    let img2 = d.path("img2");
    let stats = checkpoint_json(rpid, &img2, &["--kill"]);
    assert_eq!(stats["interceptor"], true);
    reap(rpid);
    check_image(&img2, pid, port, true);
    let (rpid2, _) = restore(&img2);
    check_running(&d, port, pid, 2);

    // 4. The plain path still works on an intercepted app, and leaves the endpoint out too.
    let img3 = d.path("img3");
    let stats = checkpoint_json(rpid2, &img3, &["--plain"]);
    assert_eq!(stats["interceptor"], false);
    check_image(&img3, pid, port, false);
    check_running(&d, port, pid, 3);

    // 5. A normal exit flushes the rest: every line exactly once, in order.
    kill(rpid2, libc::SIGTERM);
    let status = reap(rpid2);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let lines = stdout_lines(&d);
    assert_consecutive(&lines);
    assert_eq!(lines.len() as u64, counter(&d, "tick"));
    assert_eq!(bad(&d), "");
}

/// A process sitting on `pid` (created with clone3 set_tid) until killed.
fn occupy(pid: i32) -> i32 {
    let got =
        ckpt::sys::fork_with_pid(Some(pid)).unwrap_or_else(|e| panic!("taking pid {pid}: {e}"));
    if got == 0 {
        loop {
            // SAFETY: pause is async-signal-safe; this child of a threaded process does
            // nothing else.
            unsafe { libc::pause() };
        }
    }
    assert_eq!(got, pid);
    got
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn restore_while_the_original_ids_are_taken_keeps_them_for_the_app() {
    setup();
    let d = Dir::new("ic-taken");
    let port = 7302;
    let mut child = start_app(&d, "taken", port);
    let pid = child.id() as i32;
    let img = d.path("img1");
    checkpoint_json(pid, &img, &["--kill"]);
    child.wait().unwrap();
    let image = check_image(&img, pid, port, true);
    // Every id of the app is taken by someone else now.
    let tids: Vec<i32> = image.manifest.processes[0]
        .threads
        .iter()
        .map(|t| t.tid)
        .collect();
    let squatters: Vec<i32> = tids.iter().map(|&t| occupy(t)).collect();

    let (rpid, err) = restore(&img);
    assert_ne!(rpid, pid);
    assert!(err.contains("was taken"), "{err}");
    // getpid, gettid, kill, tgkill, raise, sched_getaffinity and /proc/<pid> all use the
    // original ids (the app checks them and writes failures to DIR/bad).
    check_running(&d, port, pid, 0);
    let list = list_json(&d);
    assert_eq!(list[0]["processes"][0]["pid"], rpid);
    assert_eq!(list[0]["processes"][0]["vpid"], pid);

    // Checkpoint the restored app: the image keeps the virtual ids, and the kernel's too.
    let img2 = d.path("img2");
    checkpoint_json(rpid, &img2, &["--kill"]);
    reap(rpid);
    let image2 = check_image(&img2, pid, port, true);
    let p2 = &image2.manifest.processes[0];
    assert_eq!(
        p2.threads.iter().map(|t| t.tid).collect::<Vec<_>>(),
        tids,
        "the same virtual tids"
    );
    assert_eq!(p2.threads[0].kernel_tid, Some(rpid));
    // Restored again, still with the originals taken.
    let (rpid2, _) = restore(&img2);
    assert_ne!(rpid2, pid);
    check_running(&d, port, pid, 1);
    kill(rpid2, libc::SIGTERM);
    reap(rpid2);
    for s in squatters {
        kill(s, libc::SIGKILL);
        reap(s);
    }
    assert_eq!(bad(&d), "");
    assert_consecutive(&stdout_lines(&d));
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_static_program_under_ckpt_run_is_checkpointed_on_the_plain_path() {
    setup();
    let d = Dir::new("ic-static");
    let out = d.path("out");
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--id", "st", "--runtime-dir"])
        .arg(d.path("rt"))
        .arg("--")
        .arg(common::prog("counter_static"))
        .arg(&out)
        .arg("1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The warning comes before the program starts.
    let mut err = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.take().unwrap()),
        &mut err,
    )
    .unwrap();
    assert!(err.contains("statically linked"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "the static program does not run");
        std::thread::sleep(Duration::from_millis(20));
    }
    let img = d.path("img");
    let stats = checkpoint_json(child.id() as i32, &img, &["--kill"]);
    assert_eq!(stats["interceptor"], false);
    child.wait().unwrap();
    let (rpid, _) = restore(&img);
    let len = std::fs::metadata(&out).unwrap().len();
    while std::fs::metadata(&out).unwrap().len() <= len {
        assert!(
            Instant::now() < deadline,
            "the restored program does not run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(rpid, libc::SIGKILL);
    reap(rpid);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_single_threaded_program_is_flushed_from_its_own_thread_at_a_safe_point() {
    setup();
    let d = Dir::new("ic-single");
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--id", "printer", "--runtime-dir"])
        .arg(d.path("rt"))
        .arg("--")
        .arg(common::prog("printer"))
        .arg(&d.0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(d.path("stdout")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_progress(&d, "tick", 50);
    // glibc sees one thread: the control thread is not one of its own.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert_eq!(tasks, 2, "the program and the control thread");
    for round in 0..3 {
        let before = counter(&d, "tick");
        let img = d.path(&format!("img{round}"));
        let stats = checkpoint_json(pid, &img, &[]);
        assert_eq!(stats["interceptor"], true, "{stats}");
        assert_eq!(stats["stdio_flushed"], true, "{stats}");
        let lines = stdout_lines(&d);
        assert_consecutive(&lines);
        assert!(
            lines.len() as u64 >= before,
            "round {round}: {} lines on disk, {before} printed before the checkpoint",
            lines.len()
        );
        // The program runs on undisturbed.
        wait_progress(&d, "tick", before + 20);
    }
    let before = counter(&d, "tick");
    let img = d.path("img");
    checkpoint_json(pid, &img, &["--kill"]);
    child.wait().unwrap();
    assert!(stdout_lines(&d).len() as u64 >= before);
    let (rpid, _) = restore(&img);
    let t = counter(&d, "tick");
    wait_progress(&d, "tick", t + 50);
    kill(rpid, libc::SIGTERM);
    let status = reap(rpid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let lines = stdout_lines(&d);
    assert_consecutive(&lines);
    assert_eq!(
        lines.len() as u64,
        counter(&d, "tick"),
        "every line exactly once"
    );
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_flush_blocked_on_a_full_pipe_is_saved_midway_and_finishes_by_itself() {
    setup();
    let d = Dir::new("ic-stuck");
    // stdout: a one-page pipe, already full.
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two fds; F_SETPIPE_SZ on our own pipe.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert_eq!(libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096), 4096);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: the fds were just made and are owned here.
    let (mut rd, wr) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let filler = vec![b'#'; 4096];
    use std::io::Write;
    std::fs::File::from(wr.try_clone().unwrap())
        .write_all(&filler)
        .unwrap();
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--id", "stuck", "--runtime-dir"])
        .arg(d.path("rt"))
        .arg("--")
        .arg(common::prog("printer"))
        .arg(&d.0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(wr))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_progress(&d, "tick", 20);
    // Its buffer holds lines; fflush cannot write them: ckpt gives up after 1 s and saves it
    // in the middle of the flush.
    let img = d.path("img");
    let stats = checkpoint_json(pid, &img, &["--flush-timeout", "1"]);
    assert_eq!(stats["interceptor"], true, "{stats}");
    assert_eq!(stats["stdio_flushed"], false, "{stats}");
    // Still inside the flush, blocked on the pipe: no progress.
    let t0 = counter(&d, "tick");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&d, "tick"), t0, "blocked in the flush");
    // Draining the pipe lets the flush finish; the program goes back to its own code.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        rd.read_to_end(&mut all).unwrap();
        all
    });
    wait_progress(&d, "tick", t0 + 50);
    kill(pid, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let all = reader.join().unwrap();
    assert_eq!(&all[..4096], &filler[..]);
    let text = String::from_utf8(all[4096..].to_vec()).unwrap();
    let lines: Vec<u64> = text
        .lines()
        .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    assert_consecutive(&lines);
    assert_eq!(
        lines.len() as u64,
        counter(&d, "tick"),
        "every line exactly once"
    );
    // The image holds it mid-flush too: restored (stdout is then ckpt restore's), it finishes
    // the flush and goes on.
    let (rpid, _) = restore(&img);
    wait_progress(&d, "tick", t0 + 20);
    let t = counter(&d, "tick");
    wait_progress(&d, "tick", t + 20);
    kill(rpid, libc::SIGKILL);
    reap(rpid);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_daemon_that_dropped_privileges_restores_and_keeps_its_endpoint() {
    setup();
    let d = Dir::new("ic-dropper");
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--id", "dropper", "--runtime-dir"])
        .arg(d.path("rt"))
        .arg("--")
        .arg(common::prog("dropper"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut child);
    assert_eq!(line, "dropped\n");
    let pid = child.id() as i32;
    let img = d.path("img");
    let stats = checkpoint_json(pid, &img, &["--kill"]);
    assert_eq!(stats["interceptor"], true, "{stats}");
    child.wait().unwrap();
    // It holds /etc/shadow, opened as root before it dropped to nobody: restored all the same.
    let (rpid, _) = restore(&img);
    assert_eq!(rpid, pid);
    let fd3 = std::fs::read_link(format!("/proc/{rpid}/fd/3")).unwrap();
    assert_eq!(fd3, Path::new("/etc/shadow"));
    let status = std::fs::read_to_string(format!("/proc/{rpid}/status")).unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    // Its control thread, as nobody too, made a new endpoint: checkpointed through it again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while list_json(&d)[0]["processes"][0]["generation"] != 1 {
        assert!(Instant::now() < deadline, "{}", list_json(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = checkpoint_json(rpid, &d.path("img2"), &[]);
    assert_eq!(stats["interceptor"], true, "{stats}");
    kill(rpid, libc::SIGKILL);
    reap(rpid);
}

/// The processes `ckpt list` shows for the test's application, by kernel pid: (pid,
/// generation).
fn app_processes(d: &Dir) -> Vec<(i64, i64)> {
    let list = list_json(d);
    let procs = list[0]["processes"].as_array().cloned().unwrap_or_default();
    procs
        .iter()
        .map(|p| {
            (
                p["pid"].as_i64().unwrap(),
                p["generation"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// An application whose program forked (both processes with their own control thread) is
/// taken whole with --app: both prepared, frozen, killed, restored with their pids, and both
/// answer on their endpoints again.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn an_application_of_two_processes_is_taken_whole_with_app() {
    setup();
    let d = Dir::new("ic-app");
    let mut parent = Command::new(common::ckpt_bin())
        .args(["run", "--id", "fk", "--runtime-dir"])
        .arg(d.path("rt"))
        .arg("--")
        .arg(common::prog("forker"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    let pid = parent.id() as i32;
    let line = common::first_line(&mut parent);
    let child: i32 = line
        .trim()
        .strip_prefix("forked ")
        .unwrap()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app_processes(&d).len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", list_json(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    let img = d.path("app.img");
    let rt = d.path("rt");
    let out = ok(&ckpt(&[
        "checkpoint",
        "--app",
        "fk",
        "--runtime-dir",
        rt.to_str().unwrap(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
        "--json",
    ]));
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["processes"], 2, "{out}");
    assert_eq!(stats["interceptor"], true, "{out}");
    parent.wait().unwrap();
    // The child was reparented to us (subreaper): reap it.
    // SAFETY: waits for one child of ours.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    let image = Image::open(&img).unwrap();
    let pids: Vec<i32> = image.manifest.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [pid, child]);
    assert!(image
        .manifest
        .processes
        .iter()
        .all(|p| p.interceptor.is_some()));

    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    // Both control threads make their endpoints again, one restore later.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut procs = app_processes(&d);
        procs.sort();
        if procs == [(pid as i64, 1), (child as i64, 1)] {
            break;
        }
        assert!(Instant::now() < deadline, "{procs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in [child, pid] {
        // SAFETY: kill and reap our (subreaped) children.
        unsafe {
            libc::kill(p, libc::SIGKILL);
            libc::waitpid(p, std::ptr::null_mut(), 0);
        }
    }
}

/// Data in flight between two processes of an application under `ckpt run` is taken
/// consistently: a writer's lines sit in its stdio buffer and in a full pipe to a reader of
/// the same application when it is checkpointed (once without --kill, then with --kill and
/// restored); the reader still gets every line exactly once and in order, from the original
/// after the first checkpoint and from the restored copy after the second.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn lines_in_flight_between_two_processes_arrive_once() {
    setup();
    let d = Dir::new("ic-relay");
    let lines = 1_000_000;
    let mut writer = Command::new(common::ckpt_bin())
        .args(["run", "--id", "relay", "--runtime-dir"])
        .arg(d.path("rt"))
        .arg("--")
        .arg(common::prog("relay"))
        .arg(&d.0)
        .arg(lines.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    let pid = writer.id() as i32;
    let line = common::first_line(&mut writer);
    let reader: i32 = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
    let progress = || -> u64 {
        let text = std::fs::read_to_string(d.path("progress")).unwrap_or_default();
        text.trim().parse().unwrap_or(0)
    };
    let wait_progress =
        |min: u64| common::wait_for("the reader gets lines", 120, || progress() >= min);
    wait_progress(20_000);
    while app_processes(&d).len() < 2 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let img = d.path("img");
    let stats = checkpoint_json(pid, &img, &[]);
    assert_eq!(stats["processes"], 2, "{stats}");
    assert_eq!(stats["interceptor"], true, "{stats}");
    // The original goes on.
    let after_first = progress();
    wait_progress(after_first + 10_000);
    std::fs::remove_file(&img).unwrap();
    let stats = checkpoint_json(pid, &img, &["--kill"]);
    assert_eq!(stats["interceptor"], true, "{stats}");
    writer.wait().unwrap();
    // SAFETY: reaps the reader, reparented to us (subreaper).
    unsafe { libc::waitpid(reader, std::ptr::null_mut(), 0) };
    assert!(
        !d.path("result").exists(),
        "the relay finished before the checkpoint: make it longer"
    );
    let at_kill = progress();
    assert_eq!(restore_root(&img), pid);
    common::wait_for("the restored relay finishes", 300, || {
        d.path("result").exists()
    });
    let result = std::fs::read_to_string(d.path("result")).unwrap();
    assert_eq!(
        result,
        format!("done {lines}\n"),
        "progress at the kill: {at_kill}"
    );
    assert_eq!(reap(pid), 0, "the writer's exit status");
}
