//! Ordinary users (docs/design.md, "Permission"): the module loaded with `group=GID` admits
//! that group's members; the module reads only a process its caller traces, so the kernel's
//! ptrace attach (Yama's ptrace_scope included) decides; a user checkpoints only their own
//! dumpable processes, and a restore not run as root refuses an image asking for more than
//! the user has. The guest runs as root: each test drops to test users with setpriv.

mod common;
use ckpt_abi::{CkptQuery, CKPT_IOC_QUERY};
use common::{ckpt_bin, Dir, Target, Traced, NEEDS_MODULE};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

/// The device group the module is loaded with.
const GROUP: u32 = 4242;
/// A user in GROUP.
const USER: u32 = 4243;
/// A user in GROUP too, whose processes USER may not touch.
const OTHER: u32 = 4244;
/// A user not in GROUP.
const OUTSIDER: u32 = 4245;

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests (some change kernel.yama.ptrace_scope, which every test sees) and
/// makes sure the module is loaded with `group=GROUP` (reloading it from $CKPT_KO if not).
fn setup() -> MutexGuard<'static, ()> {
    let _ = NEEDS_MODULE;
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mode = std::fs::metadata("/dev/ckpt").map(|m| m.mode() & 0o777);
    if mode.ok() != Some(0o666) {
        let ko = std::env::var("CKPT_KO")
            .expect("load the module with group=4242, or set CKPT_KO to its path");
        let _ = Command::new("rmmod").arg("ckpt").status();
        let st = Command::new("insmod")
            .args([&ko, &format!("group={GROUP}")])
            .status()
            .unwrap();
        assert!(st.success(), "insmod {ko} group={GROUP}");
    }
    guard
}

/// Runs ckpt as `uid` (its gid the same), with `groups` as its supplementary groups.
fn ckpt_as(uid: u32, groups: &[u32], args: &[&str]) -> Output {
    ckpt_as_with_caps(uid, groups, &[], args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The command for `ckpt_as`, holding the capabilities `caps` (names as setpriv takes them)
/// in its permitted, effective, inheritable and ambient sets: how a user is given
/// CAP_CHECKPOINT_RESTORE without a setuid or file-capability binary.
fn ckpt_as_with_caps(uid: u32, groups: &[u32], caps: &[&str], args: &[&str]) -> Command {
    let mut ids = vec![format!("--reuid={uid}"), format!("--regid={uid}")];
    if !caps.is_empty() {
        let list = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>();
        ids.push(format!("--inh-caps={}", list.join(",")));
        ids.push(format!("--ambient-caps={}", list.join(",")));
    }
    let groups = match groups {
        [] => "--clear-groups".to_string(),
        g => format!(
            "--groups={}",
            g.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        ),
    };
    let mut cmd = Command::new("setpriv");
    cmd.args(&ids)
        .arg(groups)
        .arg(ckpt_bin())
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn refused(o: &Output, what: &[&str]) {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = stderr(o);
    for w in what {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

/// A directory `uid` may write images into.
fn dir_for(name: &str, uid: u32) -> Dir {
    let d = Dir::new(name);
    std::os::unix::fs::chown(&d.0, Some(uid), Some(uid)).unwrap();
    d
}

/// kernel.yama.ptrace_scope set for the guard's life, put back on drop.
struct Scope(String);
const YAMA: &str = "/proc/sys/kernel/yama/ptrace_scope";
impl Scope {
    fn set(v: u32) -> Scope {
        let old = std::fs::read_to_string(YAMA)
            .expect("the guest kernel has Yama (tools/kernel/config.fragment)");
        std::fs::write(YAMA, v.to_string()).unwrap();
        Scope(old.trim().to_string())
    }
}
impl Drop for Scope {
    fn drop(&mut self) {
        std::fs::write(YAMA, &self.0).unwrap();
    }
}

/// In a forked child running as `uid` (keeping our open fd of the device): the errno of
/// QUERY on `pid` before and after a PTRACE_SEIZE of it, and the seize's (0: success).
fn direct_as(uid: u32, dev: &std::fs::File, pid: i32) -> (i32, i32, i32) {
    let fd = dev.as_raw_fd();
    let query = || -> i32 {
        let mut q = CkptQuery {
            pid,
            ..Default::default()
        };
        // SAFETY: an ioctl on an open fd with a valid CkptQuery; async-signal-safe.
        match unsafe { libc::ioctl(fd, CKPT_IOC_QUERY as _, &mut q) } {
            0 => 0,
            _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
        }
    };
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    let mut pipe_r = std::fs::File::from(pipe_r);
    // SAFETY: the child makes only async-signal-safe calls (set*id, ioctl, ptrace, write,
    // _exit).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: plain syscalls in the forked child.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(10);
            }
            let before = query();
            let seize = match libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) {
                0 => 0,
                _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
            };
            let after = query();
            let out = [before, seize, after].map(|v| v as u8);
            libc::write(pipe_w.as_raw_fd(), out.as_ptr().cast(), 3);
            libc::_exit(0);
        }
    }
    drop(pipe_w);
    let mut out = [0u8; 3];
    std::io::Read::read_exact(&mut pipe_r, &mut out).expect("the child's answer");
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    (out[0] as i32, out[1] as i32, out[2] as i32)
}

fn open_dev() -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ckpt")
        .unwrap()
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn the_device_group_opens_the_device_and_nobody_else() {
    let _s = setup();
    assert_eq!(
        std::fs::metadata("/dev/ckpt").unwrap().mode() & 0o777,
        0o666
    );
    let own = Target::spawn_as("static_target", &[], Some(USER));
    let pid = own.pid().to_string();
    let o = ckpt_as(USER, &[GROUP], &["info", &pid]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("threads:"),
        "{o:?}"
    );
    // Not in the group: refused at open, whatever the node's mode says.
    let outsider = Target::spawn_as("static_target", &[], Some(OUTSIDER));
    let o = ckpt_as(OUTSIDER, &[], &["info", &outsider.pid().to_string()]);
    refused(&o, &["permission denied opening /dev/ckpt", "group=GID"]);
    // Root is always admitted.
    let o = Command::new(ckpt_bin())
        .args(["info", &pid])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_user_checkpoints_its_own_process() {
    let _s = setup();
    let d = dir_for("users-own", USER);
    let t = Target::spawn_as("static_target", &[], Some(USER));
    let img = d.path("own.img");
    let o = ckpt_as(
        USER,
        &[GROUP],
        &[
            "checkpoint",
            &t.pid().to_string(),
            "-o",
            img.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&img).unwrap().uid(), USER);
    let o = ckpt_as(USER, &[GROUP], &["inspect", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!common::gone(t.pid()), "the target runs on");
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_user_is_refused_other_users_and_privileged_processes() {
    let _s = setup();
    let d = dir_for("users-refused", USER);
    let img = d.path("never.img");
    let img = img.to_str().unwrap();
    let try_it = |pid: i32| ckpt_as(USER, &[GROUP], &["checkpoint", &pid.to_string(), "-o", img]);

    let other = Target::spawn_as("static_target", &[], Some(OTHER));
    let why = format!("runs as uid {OTHER} {OTHER} {OTHER} {OTHER}");
    refused(
        &try_it(other.pid()),
        &["cannot attach", &why, "another user's"],
    );

    // A set-user-ID root program started by the user: euid 0, not dumpable.
    let suid = d.path("suid_target");
    std::fs::copy(common::prog("static_target"), &suid).unwrap();
    std::os::unix::fs::chown(&suid, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let mut child = Command::new(&suid)
        .uid(USER)
        .gid(USER)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready"), "{line:?}");
    let pid = child.id() as i32;
    let uids = ckpt::proc::status_field(pid, "Uid").unwrap();
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        [&USER.to_string(), "0", "0", "0"],
        "the program runs set-user-ID root"
    );
    refused(
        &try_it(pid),
        &["cannot attach", &format!("uid {USER} 0 0 0")],
    );
    let _ = child.kill();
    let _ = child.wait();

    // The user's own process, made non-dumpable.
    let nd = Target::spawn_as("static_target", &["nondumpable"], Some(USER));
    refused(&try_it(nd.pid()), &["cannot attach", "not dumpable"]);
    assert!(!Path::new(img).exists());
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn the_module_reads_only_what_its_caller_traces() {
    let _s = setup();
    let dev = open_dev();
    let t = Target::spawn("static_target", &[]);
    let query = |pid: i32| {
        let mut q = CkptQuery {
            pid,
            ..Default::default()
        };
        // SAFETY: an ioctl on an open fd with a valid CkptQuery.
        match unsafe { libc::ioctl(dev.as_raw_fd(), CKPT_IOC_QUERY as _, &mut q) } {
            0 => 0,
            _ => std::io::Error::last_os_error().raw_os_error().unwrap(),
        }
    };
    // Root, with CAP_SYS_PTRACE: refused until it traces the process, and again after.
    assert_eq!(query(t.pid()), libc::EPERM, "an untraced process");
    {
        let _traced = Traced::new(t.pid());
        assert_eq!(query(t.pid()), 0, "traced by this thread");
        // Another thread of this process is not the tracer.
        let other_thread = std::thread::scope(|s| s.spawn(|| query(t.pid())).join().unwrap());
        assert_eq!(other_thread, libc::EPERM, "traced by another thread");
    }
    assert_eq!(query(t.pid()), libc::EPERM, "let go");
    // A user, on its own dumpable process: refused untraced, allowed once seized.
    let own = Target::spawn_as("static_target", &[], Some(USER));
    assert_eq!(direct_as(USER, &dev, own.pid()), (libc::EPERM, 0, 0));
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn yama_ptrace_scope_holds_for_the_module() {
    let _s = setup();
    let dev = open_dev();
    let d = dir_for("users-yama", USER);
    let img = d.path("scope.img");
    let img = img.to_str().unwrap();
    // The user's process, started by root (this test): not a descendant of the user's ckpt.
    let own = Target::spawn_as("static_target", &[], Some(USER));
    let pid = own.pid().to_string();
    for scope in [1, 2] {
        let _scope = Scope::set(scope);
        let says = format!("kernel.yama.ptrace_scope is {scope}");
        refused(
            &ckpt_as(USER, &[GROUP], &["checkpoint", &pid, "-o", img]),
            &["cannot attach", &says],
        );
        refused(
            &ckpt_as(USER, &[GROUP], &["info", &pid]),
            &["cannot attach", &says],
        );
        // The module bypasses nothing: the direct ioctl is refused, and so is the seize.
        assert_eq!(
            direct_as(USER, &dev, own.pid()),
            (libc::EPERM, libc::EPERM, libc::EPERM)
        );
        // Root has CAP_SYS_PTRACE, which scopes 1 and 2 let through.
        let o = Command::new(ckpt_bin())
            .args(["info", &pid])
            .output()
            .unwrap();
        assert!(o.status.success(), "root, scope {scope}: {o:?}");
    }
    assert!(!Path::new(img).exists());
}

/// Under ptrace_scope 1 a user's program started by `ckpt run` names the checkpoint's worker
/// its tracer for the time of the checkpoint (PR_SET_PTRACER), so the user checkpoints it; the
/// exception is withdrawn after: another process of the user's still cannot attach, nor can a
/// second `ckpt info`, which does not go through the interceptor.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn under_ptrace_scope_1_a_user_checkpoints_its_ckpt_run_program() {
    let _s = setup();
    let dev = open_dev();
    let d = dir_for("users-yama-run", USER);
    let runtime = d.path("rt");
    let mut program = Command::new("setpriv")
        .args([
            format!("--reuid={USER}"),
            format!("--regid={USER}"),
            "--clear-groups".into(),
        ])
        .arg(ckpt_bin())
        .args(["run", "--id", "sleeper", "--runtime-dir"])
        .arg(&runtime)
        .args(["--", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = program.id() as i32;
    let socket = runtime.join("sleeper").join(format!("{pid}.sock"));
    common::wait_for("the interceptor's socket", 30, || socket.exists());
    let _scope = Scope::set(1);
    let img = d.path("run.img");
    let img_s = img.to_str().unwrap();
    let pid_s = pid.to_string();
    let o = ckpt_as(USER, &[GROUP], &["checkpoint", &pid_s, "-o", img_s]);
    assert!(o.status.success(), "scope 1, ckpt run: {}", stderr(&o));
    assert!(img.exists());
    assert!(!common::gone(pid), "the program runs on");
    // The exception is gone with the checkpoint.
    refused(
        &ckpt_as(USER, &[GROUP], &["info", &pid_s]),
        &["cannot attach", "kernel.yama.ptrace_scope is 1"],
    );
    assert_eq!(
        direct_as(USER, &dev, pid),
        (libc::EPERM, libc::EPERM, libc::EPERM)
    );
    // A second checkpoint works the same way.
    let img2 = d.path("run2.img");
    let o = ckpt_as(
        USER,
        &[GROUP],
        &["checkpoint", &pid_s, "-o", img2.to_str().unwrap()],
    );
    assert!(o.status.success(), "second checkpoint: {}", stderr(&o));
    let _ = program.kill();
    let _ = program.wait();
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn an_unprivileged_restore_asks_for_nothing_the_user_lacks() {
    let _s = setup();
    let d = dir_for("users-restore", USER);
    // Root's process, checkpointed by root; the image then handed to the user.
    let roots = Target::spawn("static_target", &[]);
    let img = d.path("root.img");
    let img_s = img.to_str().unwrap();
    common::ok(&common::ckpt(&[
        "checkpoint",
        &roots.pid().to_string(),
        "-o",
        img_s,
    ]));
    std::os::unix::fs::chown(&img, Some(USER), Some(USER)).unwrap();
    let o = ckpt_as(USER, &[GROUP], &["restore", img_s]);
    refused(
        &o,
        &[
            &format!("refusing to restore {img_s} as uid {USER}"),
            "asks for uid 0 0 0 0",
        ],
    );
    // The user's own process: nothing foreign asked for, but restoring needs
    // CAP_CHECKPOINT_RESTORE, which the user does not have.
    let own = Target::spawn_as("static_target", &[], Some(USER));
    let img = d.path("own.img");
    let img_s = img.to_str().unwrap();
    let o = ckpt_as(
        USER,
        &[GROUP],
        &["checkpoint", &own.pid().to_string(), "-o", img_s],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ckpt_as(USER, &[GROUP], &["restore", img_s]);
    refused(&o, &["CAP_CHECKPOINT_RESTORE"]);
}

/// A user holding CAP_CHECKPOINT_RESTORE (and nothing else) restores their own process tree
/// (sessions, groups, a zombie): every process goes on counting where it was, as the user,
/// and none of them holds the capability the restore needed.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_user_with_cap_checkpoint_restore_restores_their_tree() {
    let _s = setup();
    let d = dir_for("users-cr-restore", USER);
    let mut tree = Command::new(common::prog("tree"))
        .arg(&d.0)
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut tree);
    let pids: Vec<i32> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(pids.len(), 5, "tree said {line:?}");
    let count = |name: &str| {
        let (nums, bad) = common::numbered_lines(&d.path(name), &format!("{name} "));
        assert!(!bad, "{name} wrote bad");
        nums.last().copied()
    };
    let names = ["root", "a", "a1", "b"];
    common::wait_for("every process counts", 30, || {
        names.iter().all(|n| count(n).is_some_and(|c| c > 2))
    });
    let img = d.path("tree.img");
    let img_s = img.to_str().unwrap();
    let root = pids[0].to_string();
    let o = ckpt_as(
        USER,
        &[GROUP],
        &["checkpoint", &root, "--kill", "-o", img_s],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    tree.wait().unwrap();
    common::wait_for("the tree is gone", 30, || {
        pids[..4].iter().all(|&p| common::gone(p))
    });
    let counts: Vec<u64> = names.iter().map(|n| count(n).unwrap()).collect();
    // The restored tree inherits ckpt's stdout and stderr: files, not pipes (which would
    // stay open).
    let (out, err) = (d.path("restore.out"), d.path("restore.err"));
    let status = ckpt_as_with_caps(USER, &[GROUP], &["checkpoint_restore"], &[])
        .args(["restore", img_s])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let o = Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    };
    assert!(o.status.success(), "{}", stderr(&o));
    // The tree had no supplementary group; the user cannot drop the device's group.
    assert!(
        stderr(&o).contains(&format!("keep your supplementary groups [{GROUP}]")),
        "{}",
        stderr(&o)
    );
    let restored: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert_eq!(restored, pids[0]);
    let kill_all = || {
        for &p in &pids[..4] {
            // SAFETY: signalling the restored processes of this test.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    };
    for (name, from) in names.iter().zip(&counts) {
        common::wait_for(&format!("{name} counts on"), 30, || {
            count(name).is_some_and(|n| n > from + 3)
        });
        let (nums, _) = common::numbered_lines(&d.path(name), &format!("{name} "));
        assert!(
            nums.windows(2).all(|w| w[1] == w[0] + 1),
            "{name}: a gap or a repeat: {nums:?}"
        );
    }
    for &p in &pids[..4] {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap()
        };
        assert_eq!(field("Uid:"), format!("{USER} {USER} {USER} {USER}"), "{p}");
        assert_eq!(field("Gid:"), format!("{USER} {USER} {USER} {USER}"), "{p}");
        assert_eq!(field("Groups:"), GROUP.to_string(), "{p}");
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
            assert_eq!(field(caps), "0000000000000000", "{p} {caps}");
        }
    }
    let zombie = std::fs::read_to_string(format!("/proc/{}/stat", pids[4])).unwrap();
    assert!(zombie.contains(") Z "), "z is a zombie again: {zombie}");
    kill_all();
}

/// Root restores an image a user owns only if it asks for no more than that user has: a tree
/// of root's with a child of nobody's, its image handed to nobody, is refused (it was
/// accepted before, since nobody is one of the users its processes run as).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn root_refuses_a_users_image_asking_for_root() {
    const NOBODY: u32 = 65534;
    let _s = setup();
    let d = Dir::new("users-owner");
    let mut bash = Command::new("bash")
        .args([
            "-c",
            "setpriv --reuid=65534 --regid=65534 --clear-groups sleep 1000 & echo ready; wait",
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(common::first_line(&mut bash).trim(), "ready");
    let pid = bash.id() as i32;
    let sleeping = || {
        common::children_of(pid).iter().any(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|s| s == "sleep\n")
        })
    };
    common::wait_for("nobody's sleep runs", 30, sleeping);
    let img = d.path("mixed.img");
    let img_s = img.to_str().unwrap();
    common::ok(&common::ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img_s,
    ]));
    std::os::unix::fs::chown(&img, Some(NOBODY), Some(NOBODY)).unwrap();
    let o = common::ckpt(&["restore", img_s]);
    let why = format!(
        "it is owned by uid {NOBODY}, and process {pid} (thread {pid}) asks for uid 0 0 0 0"
    );
    refused(&o, &[&why, "--trust-image"]);
    for c in common::children_of(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c), nix::sys::signal::SIGKILL);
    }
    let _ = bash.kill();
    let _ = bash.wait();
}

/// How one process fared in `exec_race_as`, summed over its rounds.
#[derive(Debug, Default, Clone, Copy)]
struct RaceOutcome {
    /// QUERYs that read the new image (its ELF header): the leak.
    leaked: u32,
    /// QUERYs that saw the old image (nothing mapped at the address: EIO).
    before: u32,
    /// Rounds whose loop ended refused (EPERM): the new image is not dumpable.
    refused: u32,
    /// Rounds that ended some other way (the last such errno in `other_errno`).
    other: u32,
    other_errno: u32,
}

/// Where the execute-only program (`static_target`, linked static, not PIE) has its first
/// page, the ELF header; nothing of the test's own (PIE) image is there.
const EXEC_BASE: u64 = 0x40_0000;
/// Mappings the racing process makes before its exec: each QUERY walks them, a window of
/// milliseconds in which the exec can land between the permission check and the read.
const RACE_VMAS: usize = 20_000;

/// In a forked child running as `uid`: `rounds` times, forks a process, seizes it, and QUERYs
/// it in a loop (reading 4 bytes at EXEC_BASE) while it execs `exe`, until a QUERY is refused.
/// Everything after the fork is async-signal-safe (raw syscalls on memory prepared before).
fn exec_race_as(uid: u32, dev: &std::fs::File, exe: &Path, rounds: u32) -> RaceOutcome {
    use std::os::unix::ffi::OsStrExt;
    let fd = dev.as_raw_fd();
    let path = std::ffi::CString::new(exe.as_os_str().as_bytes()).unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let devnull = std::fs::File::create("/dev/null").unwrap();
    let (res_r, res_w) = nix::unistd::pipe().unwrap();
    let mut res_r = std::fs::File::from(res_r);
    // SAFETY: the child makes only async-signal-safe calls (see `race_rounds`).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: plain syscalls in the forked child, on memory prepared before the fork.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(10);
            }
            let mut out = RaceOutcome::default();
            for _ in 0..rounds {
                race_round(
                    fd,
                    argv.as_ptr(),
                    envp.as_ptr(),
                    devnull.as_raw_fd(),
                    &mut out,
                );
            }
            let words = [
                out.leaked,
                out.before,
                out.refused,
                out.other,
                out.other_errno,
            ];
            libc::write(res_w.as_raw_fd(), words.as_ptr().cast(), 20);
            libc::_exit(0);
        }
    }
    drop(res_w);
    let mut buf = [0u8; 20];
    std::io::Read::read_exact(&mut res_r, &mut buf).expect("the racing child's answer");
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    let w = |i: usize| u32::from_ne_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap());
    RaceOutcome {
        leaked: w(0),
        before: w(1),
        refused: w(2),
        other: w(3),
        other_errno: w(4),
    }
}

/// One round of `exec_race_as`, in its forked child.
///
/// # Safety
///
/// Only in a child forked from the test: `argv` and `envp` NULL-terminated, `devnull` open.
unsafe fn race_round(
    dev: i32,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    devnull: i32,
    out: &mut RaceOutcome,
) {
    let (mut ready, mut go) = ([0; 2], [0; 2]);
    // SAFETY: async-signal-safe syscalls on valid arguments (the function's contract).
    unsafe {
        if libc::pipe(ready.as_mut_ptr()) != 0 || libc::pipe(go.as_mut_ptr()) != 0 {
            libc::_exit(11);
        }
        let pid = libc::fork();
        if pid == 0 {
            // Dumpable again (the setresuid made this process not), so its parent may seize
            // it; then the mappings, then the exec once the parent says go.
            libc::prctl(libc::PR_SET_DUMPABLE, 1);
            let page = 4096;
            let base = libc::mmap(
                std::ptr::null_mut(),
                2 * RACE_VMAS * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                libc::_exit(12);
            }
            for i in 0..RACE_VMAS {
                libc::mprotect(
                    base.cast::<u8>().add(2 * i * page).cast(),
                    page,
                    libc::PROT_READ,
                );
            }
            let b = 0u8;
            libc::write(ready[1], (&raw const b).cast(), 1);
            let mut g = 0u8;
            libc::read(go[0], (&raw mut g).cast(), 1);
            libc::dup2(devnull, 1);
            libc::execve(*argv, argv, envp);
            libc::_exit(13);
        }
        let mut b = 0u8;
        if pid < 0
            || libc::read(ready[0], (&raw mut b).cast(), 1) != 1
            || libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) != 0
        {
            libc::_exit(14);
        }
        libc::write(go[1], (&raw const b).cast(), 1);
        let mut head = [0u8; 4];
        for _ in 0..100_000 {
            let mut q = CkptQuery {
                pid,
                read_addr: EXEC_BASE,
                read_len: head.len() as u64,
                read_buf: head.as_mut_ptr() as u64,
                ..Default::default()
            };
            if libc::ioctl(dev, CKPT_IOC_QUERY as _, &mut q) == 0 {
                out.leaked += 1;
                continue;
            }
            match *libc::__errno_location() {
                libc::EIO => out.before += 1,
                libc::EPERM => {
                    out.refused += 1;
                    break;
                }
                e => {
                    out.other += 1;
                    out.other_errno = e as u32;
                    break;
                }
            }
        }
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        for f in [ready[0], ready[1], go[0], go[1]] {
            libc::close(f);
        }
    }
}

/// The QUERY exec race (docs/design.md, "Permission"): a process its caller traces execs a
/// program the caller may not read (execute-only, root's: the new image is not dumpable) while
/// the caller QUERYs it in a loop, reading the new image's first page. Each QUERY must see one
/// image: the old one (nothing mapped there: EIO) or the new one (not dumpable: EPERM). The
/// module used to check the old image and then read whatever image the process had by then.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_query_racing_an_exec_reads_nothing_of_the_new_image() {
    const ROUNDS: u32 = 12;
    let _s = setup();
    let dev = open_dev();
    let d = Dir::new("users-execrace");
    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = d.path("execute-only");
    std::fs::copy(common::prog("static_target"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o711)).unwrap();
    let r = exec_race_as(USER, &dev, &exe, ROUNDS);
    eprintln!("exec race: {r:?}");
    assert_eq!(r.leaked, 0, "QUERY read the execute-only image: {r:?}");
    assert_eq!(r.other, 0, "a round ended unexpectedly: {r:?}");
    assert_eq!(r.refused, ROUNDS, "every round ends refused: {r:?}");
    // Some QUERY saw the old image: the loop did overlap the exec.
    assert!(r.before > 0, "no QUERY before the exec: {r:?}");
}
