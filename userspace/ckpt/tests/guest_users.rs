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
    let ids = [format!("--reuid={uid}"), format!("--regid={uid}")];
    let groups = match groups {
        [] => "--clear-groups".to_string(),
        g => format!(
            "--groups={}",
            g.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        ),
    };
    Command::new("setpriv")
        .args(&ids)
        .arg(groups)
        .arg(ckpt_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
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
