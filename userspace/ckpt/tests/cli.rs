//! The CLI's behaviour where no module is needed (runs natively).

mod common;
use std::process::Command;

#[test]
fn info_without_module_explains_how_to_load_it() {
    let out = Command::new(common::ckpt_bin())
        .args(["info", "1", "--device", "/nonexistent/ckpt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("module is not loaded") && err.contains("insmod ckpt.ko"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn info_rejects_a_read_without_length() {
    let out = Command::new(common::ckpt_bin())
        .args(["info", "1", "--read", "0x1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--len"));
}

#[test]
fn info_rejects_a_bad_address() {
    let out = Command::new(common::ckpt_bin())
        .args(["info", "1", "--read", "0xzz", "--len", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a number: 0xzz"));
}

/// `ckpt run` in a fresh runtime directory; returns the directory's guard path.
/// `--compress` takes its level with `=` (a following number is the pid), within zstd's
/// range.
#[test]
fn compress_levels_outside_zstds_range_are_refused() {
    for bad in ["--compress=0", "--compress=23", "--compress=fast"] {
        let out = Command::new(common::ckpt_bin())
            .args(["checkpoint", "1", bad, "--device", "/nonexistent/ckpt"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: clap usage error");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--compress"));
    }
    // A level in range and the bare flag get past the arguments (to the missing device).
    for good in [&["--compress=19", "1"][..], &["--compress", "1"]] {
        let out = Command::new(common::ckpt_bin())
            .arg("checkpoint")
            .args(good)
            .args(["--device", "/nonexistent/ckpt"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{good:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("module is not loaded"));
    }
}

fn runtime_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ckpt-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn list_json(rt: &std::path::Path) -> serde_json::Value {
    let out = Command::new(common::ckpt_bin())
        .args(["list", "--json", "--runtime-dir"])
        .arg(rt)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn run_is_inherited_across_fork_and_exec_and_list_shows_every_process() {
    let rt = runtime_dir("fork");
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--id", "shell", "--runtime-dir"])
        .arg(&rt)
        .args(["--", "sh", "-c", "sleep 30 & exec sleep 31"])
        .spawn()
        .unwrap();
    // sh forks a child that execs sleep, then execs sleep itself: two intercepted processes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let list = loop {
        let list = list_json(&rt);
        if list[0]["processes"].as_array().map_or(0, Vec::len) == 2 {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(list[0]["id"], "shell");
    assert_eq!(list[0]["root_pid"], child.id());
    assert_eq!(list[0]["intercepted"], true);
    let procs = list[0]["processes"].as_array().unwrap();
    assert!(procs.iter().any(|p| p["pid"] == child.id()));
    for p in procs {
        assert_eq!(p["comm"], "sleep");
        assert_eq!(p["pid"], p["vpid"]);
        assert_eq!(p["intercepted"], true);
    }
    // The control thread is the library's only thread.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .count();
    assert_eq!(tasks, 2, "sleep and the control thread");
    let other = procs
        .iter()
        .map(|p| p["pid"].as_i64().unwrap() as i32)
        .find(|&p| p != child.id() as i32)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // SAFETY: signalling the background sleep (reparented to init).
    unsafe { libc::kill(other, libc::SIGKILL) };
    // Once its processes are gone, the application's registration goes too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while list_json(&rt).as_array().map_or(0, Vec::len) != 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&rt);
}

#[test]
fn run_of_a_static_program_says_so_and_runs_it_without_the_library() {
    let rt = runtime_dir("static");
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--runtime-dir"])
        .arg(&rt)
        .arg("--")
        .arg(common::prog("static_target"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut child);
    assert!(line.starts_with("ready "), "the program runs: {line:?}");
    let mut err = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.take().unwrap()),
        &mut err,
    )
    .unwrap();
    assert!(
        err.contains("is statically linked") && err.contains("plain path"),
        "{err}"
    );
    // Listed, as a process without the library.
    let list = list_json(&rt);
    assert_eq!(list[0]["intercepted"], false);
    assert_eq!(list[0]["processes"][0]["pid"], child.id());
    assert_eq!(list[0]["processes"][0]["intercepted"], false);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&rt);
}

#[test]
fn run_errors_are_clear() {
    let rt = runtime_dir("errors");
    let run = |args: &[&str]| {
        Command::new(common::ckpt_bin())
            .args(["run", "--runtime-dir"])
            .arg(&rt)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--", "/nonexistent/prog"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/prog: no such program"));
    let out = run(&["--id", "../evil", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("application id"));
    let out = Command::new(common::ckpt_bin())
        .args(["run", "--", "true"])
        .env("CKPT_INTERCEPTOR", "/nonexistent/lib.so")
        .env("CKPT_RUNTIME_DIR", &rt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interceptor library"));
    // A program's exit status is its own (ckpt run replaces itself with it).
    let out = run(&["--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let _ = std::fs::remove_dir_all(&rt);
}

#[test]
fn the_interceptor_prepares_keeps_its_fds_out_of_the_program_and_serves_again() {
    let rt = runtime_dir("prepare");
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--id", "prep", "--runtime-dir"])
        .arg(&rt)
        .args(["--", "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut client = loop {
        if let Some(Ok(c)) = ckpt::interceptor::Client::connect(pid) {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no endpoint");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let ready = client.prepare().unwrap();
    // sleep is single-threaded: ckpt is to flush it from its own thread once frozen.
    assert_eq!(ready.stdio, "infcall");
    assert_ne!(ready.flush_addr, 0);
    assert_ne!(ready.flush_ctx, 0);
    assert_ne!(ready.ctl, 0);
    assert!(ready.tid_offset.is_some());
    assert!(
        ready.map.is_empty(),
        "nothing to translate before a restore"
    );
    // The control thread's sockets are in its own fd table, not in the program's.
    let sockets = |dir: String| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                std::fs::read_link(e.as_ref().unwrap().path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
            .count()
    };
    assert_eq!(sockets(format!("/proc/{pid}/fd")), 0);
    assert_ne!(ready.ctl_tid, pid);
    assert_eq!(
        sockets(format!("/proc/{pid}/task/{}/fd", ready.ctl_tid)),
        2,
        "the listening socket and this connection"
    );
    assert!(ckpt::proc::has_own_files(pid, ready.ctl_tid));
    client.done();
    // Back to serving: a second request is answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let info = loop {
        if let Some(Ok(mut c)) = ckpt::interceptor::Client::connect(pid) {
            if let Ok(i) = c.info() {
                break i;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no second answer");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(info, (pid, pid, 0));
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&rt);
}

#[test]
#[ignore = "needs root (it drops privileges): runs in the guest (tools/guest.sh)"]
fn the_control_thread_follows_the_program_when_it_drops_privileges() {
    let rt = runtime_dir("dropper");
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--id", "dropper", "--runtime-dir"])
        .arg(&rt)
        .arg("--")
        .arg(common::prog("dropper"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut child);
    assert_eq!(line, "dropped\n");
    let pid = child.id();
    let status_of =
        |tid: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    let ctl = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|t| status_of(t).contains("Name:\tckpt-ctl"))
        .expect("the control thread");
    // It follows a moment after the program's own threads (on a loaded machine, a while).
    let follows = || status_of(&ctl).contains("Uid:\t65534\t65534\t65534\t65534");
    common::wait_for("the control thread drops its uids too", 10, follows);
    let status = status_of(&ctl);
    assert!(
        status.contains("Gid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    // And ckpt (root) still reaches it.
    let mut c = ckpt::interceptor::Client::connect(pid as i32)
        .unwrap()
        .unwrap();
    assert_eq!(c.info().unwrap().0, pid as i32);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&rt);
}

#[test]
fn a_fork_child_without_exec_gets_its_own_control_thread() {
    let rt = runtime_dir("forker");
    let mut child = Command::new(common::ckpt_bin())
        .args(["run", "--id", "forker", "--runtime-dir"])
        .arg(&rt)
        .arg("--")
        .arg(common::prog("forker"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut child);
    let forked: i32 = line
        .strip_prefix("forked ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    // Both answer, each on its own endpoint, each with its own pid.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let info = loop {
        if let Some(Ok(mut c)) = ckpt::interceptor::Client::connect(forked) {
            if let Ok(i) = c.info() {
                break i;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child has no endpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(info.0, forked);
    let mut c = ckpt::interceptor::Client::connect(forked).unwrap().unwrap();
    let ready = c.prepare().unwrap();
    assert_eq!(ready.stdio, "infcall");
    assert_ne!(ready.ctl_tid, forked);
    assert!(ckpt::proc::has_own_files(forked, ready.ctl_tid));
    c.done();
    let list = list_json(&rt);
    let pids: Vec<i64> = list[0]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    assert!(
        pids.contains(&i64::from(forked)) && pids.contains(&i64::from(child.id())),
        "{list}"
    );
    // SAFETY: signalling our grandchild.
    unsafe { libc::kill(forked, libc::SIGKILL) };
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&rt);
}

fn ckpt_in(
    dir: &std::path::Path,
    args: &[&str],
    path: Option<&std::ffi::OsStr>,
) -> std::process::Output {
    let mut cmd = Command::new(common::ckpt_bin());
    cmd.args(args).current_dir(dir);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.output().unwrap()
}

#[test]
fn schedule_prints_a_crontab_line_with_absolute_paths() {
    let d = common::Dir::new("sched-print");
    let out = ckpt_in(
        &d.0,
        &[
            "schedule", "--every", "10m", "--", "--app", "job", "--dir", "imgs", "--keep", "5",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let exe = common::ckpt_bin();
    let want = format!(
        "*/10 * * * * {} checkpoint --app job --dir {} --keep 5 # ckpt-schedule:job",
        exe.display(),
        d.path("imgs").display()
    );
    assert_eq!(line, want);
    // A bare pid works until a restore gives it another: said, not refused.
    let out = ckpt_in(
        &d.0,
        &["schedule", "--every", "1h", "--", "42", "--dir", "/x/y"],
        None,
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pidfile"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("0 * * * * "));
}

#[test]
fn schedule_refuses_what_cron_cannot_run_and_a_missing_dir() {
    let d = common::Dir::new("sched-refuse");
    let out = ckpt_in(
        &d.0,
        &[
            "schedule", "--every", "7m", "--", "--app", "a", "--dir", "/x",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cron cannot run every 7m") && err.contains("--systemd"),
        "{err}"
    );
    let out = ckpt_in(
        &d.0,
        &["schedule", "--every", "10m", "--", "--app", "a"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --dir DIR"));
    let out = ckpt_in(
        &d.0,
        &["schedule", "--every", "10m", "--", "--bogus", "--dir", "/x"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
    // systemd timers run at any interval.
    let out = ckpt_in(
        &d.0,
        &[
            "schedule",
            "--systemd",
            "--every",
            "7m",
            "--",
            "--app",
            "a",
            "--dir",
            "/x",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("# ckpt-a.timer") && text.contains("OnUnitActiveSec=7m"),
        "{text}"
    );
}

/// A directory with fake `crontab` and `systemctl` commands that keep what they are given in
/// files beside them, so that installing is tested without touching the machine's.
fn fake_commands(d: &common::Dir) -> std::ffi::OsString {
    use std::os::unix::fs::PermissionsExt;
    let bin = d.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tab = d.path("crontab.txt");
    let calls = d.path("systemctl.txt");
    let scripts = [
        (
            "crontab",
            format!(
                "#!/bin/sh\ncase \"$1\" in\n-l) [ -f {t} ] || {{ echo 'no crontab' >&2; exit 1; }}; cat {t};;\n-) cat > {t};;\nesac\n",
                t = tab.display()
            ),
        ),
        ("systemctl", format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display())),
    ];
    for (name, text) in scripts {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut path = bin.into_os_string();
    path.push(":/usr/bin:/bin");
    path
}

#[test]
fn schedule_install_replaces_its_own_crontab_line_and_keeps_the_others() {
    let d = common::Dir::new("sched-cron");
    let path = fake_commands(&d);
    std::fs::write(d.path("crontab.txt"), "MAILTO=ops\n5 4 * * * backup\n").unwrap();
    for every in ["10m", "30m"] {
        let out = ckpt_in(
            &d.0,
            &[
                "schedule",
                "--install",
                "--every",
                every,
                "--",
                "--app",
                "job",
                "--dir",
                "/srv/c",
            ],
            Some(&path),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tab = std::fs::read_to_string(d.path("crontab.txt")).unwrap();
    let lines: Vec<&str> = tab.lines().collect();
    assert_eq!(lines.len(), 3, "{tab}");
    assert_eq!(&lines[..2], &["MAILTO=ops", "5 4 * * * backup"]);
    assert!(lines[2].starts_with("*/30 * * * * ") && lines[2].ends_with("# ckpt-schedule:job"));
    // With no crontab yet, one is started.
    std::fs::remove_file(d.path("crontab.txt")).unwrap();
    let out = ckpt_in(
        &d.0,
        &[
            "schedule",
            "--install",
            "--every",
            "1h",
            "--name",
            "n1",
            "--",
            "--app",
            "j",
            "--dir",
            "/x",
        ],
        Some(&path),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tab = std::fs::read_to_string(d.path("crontab.txt")).unwrap();
    assert!(
        tab.ends_with("# ckpt-schedule:n1\n") && tab.lines().count() == 1,
        "{tab}"
    );
}

#[test]
fn schedule_install_writes_systemd_units_and_enables_the_timer() {
    let d = common::Dir::new("sched-systemd");
    let path = fake_commands(&d);
    let units = d.path("units");
    let out = ckpt_in(
        &d.0,
        &[
            "schedule",
            "--systemd",
            "--install",
            "--unit-dir",
            units.to_str().unwrap(),
            "--every",
            "90s",
            "--",
            "--pidfile",
            "run/app.pid",
            "--dir",
            "/srv/c",
        ],
        Some(&path),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = std::fs::read_to_string(units.join("ckpt-c.service")).unwrap();
    let pidfile = d.path("run/app.pid");
    assert!(
        service.contains(&format!(
            "checkpoint --pidfile {} --dir /srv/c\n",
            pidfile.display()
        )),
        "{service}"
    );
    let timer = std::fs::read_to_string(units.join("ckpt-c.timer")).unwrap();
    assert!(timer.contains("OnUnitActiveSec=1m 30s"), "{timer}");
    let calls = std::fs::read_to_string(d.path("systemctl.txt")).unwrap();
    assert!(
        calls.contains("daemon-reload") && calls.contains("enable --now ckpt-c.timer"),
        "{calls}"
    );
}

#[test]
fn checkpoint_pidfile_and_restore_dir_errors_name_what_is_wrong() {
    let d = common::Dir::new("pidfile");
    std::fs::write(d.path("bad.pid"), "not a pid\n").unwrap();
    std::fs::write(d.path("dead.pid"), "999999999\n").unwrap();
    for (file, want) in [
        ("bad.pid", "holds no process id"),
        ("dead.pid", "names process 999999999, which is not running"),
        ("none.pid", "reading the pidfile"),
    ] {
        let out = ckpt_in(
            &d.0,
            &["checkpoint", "--pidfile", file, "--dir", "imgs"],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{file}: {err}");
    }
    assert!(
        !d.path("imgs").exists(),
        "nothing is made for a bad pidfile"
    );
    std::fs::create_dir(d.path("empty")).unwrap();
    for cmd in ["restore", "inspect"] {
        let out = ckpt_in(&d.0, &[cmd, "empty"], None);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("empty holds no checkpoint (empty/latest is missing)"),
            "{cmd}: {err}"
        );
    }
}

/// `ckpt inspect --key` (natively: the seeds are written by the library): an image signed
/// with the key is shown; another key, a changed image, an unsigned image or a key file
/// others may read are refused, saying so. Without --key the MAC is not checked.
#[test]
fn inspect_checks_the_mac_with_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let d = common::Dir::new("inspect-key");
    ckpt::fuzzing::write_seeds(&d.0).unwrap();
    let (signed, plain) = (d.path("kbase.img"), d.path("base.img"));
    let key = d.path("key").to_string_lossy().into_owned();
    let inspect = |img: &std::path::Path, key: &str| {
        common::ckpt(&["inspect", img.to_str().unwrap(), "--key", key])
    };
    let out = common::ok(&inspect(&signed, &key));
    assert!(out.contains("format 5"), "{out}");
    common::ok(&common::ckpt(&["inspect", signed.to_str().unwrap()]));
    let err = |o: std::process::Output| {
        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // Restored without --key: a warning that the MAC was not checked (before the restore
    // fails here for want of the module).
    let o = common::ckpt(&[
        "restore",
        signed.to_str().unwrap(),
        "--device",
        "/nonexistent/ckpt",
    ]);
    let e = err(o);
    assert!(
        e.contains("kbase.img carries a MAC, not checked without --key"),
        "{e}"
    );
    let e = err(inspect(&plain, &key));
    assert!(
        e.contains("base.img carries no MAC but a key was given"),
        "{e}"
    );
    let other = d.path("other");
    std::fs::write(&other, [5u8; 32]).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = err(inspect(&signed, other.to_str().unwrap()));
    assert!(e.contains("its MAC does not match the key"), "{e}");
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = err(inspect(&signed, other.to_str().unwrap()));
    assert!(
        e.contains("group or others may read or write it (mode 644)"),
        "{e}"
    );
    // A byte of the compressed pages changed: refused, naming the image (the changes whose
    // checksums were made right, which only the MAC catches, are image::tests').
    let img = ckpt::manifest::Image::open(&signed).unwrap();
    let c = img.sections[0].compressed.unwrap();
    drop(img);
    let mut data = std::fs::read(&signed).unwrap();
    let at = c.offset as usize + c.len as usize / 2;
    data[at] ^= 0x10;
    std::fs::write(&signed, &data).unwrap();
    let e = err(inspect(&signed, &key));
    assert!(e.contains("kbase.img"), "{e}");
}

/// A key file others may read is refused before anything else (no device needed), for
/// checkpoint and restore alike.
#[test]
fn a_key_file_others_may_read_is_refused_first() {
    use std::os::unix::fs::PermissionsExt;
    let d = common::Dir::new("key-perms");
    let key = d.path("key");
    std::fs::write(&key, [1u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key = key.to_str().unwrap();
    let img = d.path("x.img");
    let img = img.to_str().unwrap();
    for args in [
        &["checkpoint", "1", "-o", img, "--key", key][..],
        &["restore", img, "--key", key],
    ] {
        let out = common::ckpt(&[args, &["--device", "/nonexistent/ckpt"]].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("group or others may read or write it (mode 644)"),
            "{args:?}: {err}"
        );
    }
}
