//! UNIX sockets of a checkpointed tree, in the guest: file descriptors in flight (SCM_RIGHTS)
//! carried across `--kill` and restore, and each socket's peer credentials (SO_PEERCRED,
//! SO_PEERGROUPS) coming back as they were (tests/progs/scm.c).

mod common;

use common::{restore_root, spawn_ready, Dir};
use std::path::Path;

/// Waits until `cond` holds (30 s at most).
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    common::wait_for(what, 30, cond)
}

fn text(out: &Path) -> String {
    std::fs::read_to_string(out).unwrap_or_default()
}

/// The numbers of the lines "PREFIX N", which must be each number once, in order, from 0.
fn consecutive(out: &Path, prefix: &str) -> usize {
    let (nums, bad) = common::numbered_lines(out, prefix);
    assert!(!bad, "{}", text(out));
    for (i, n) in nums.iter().enumerate() {
        assert_eq!(*n, i as u64, "{prefix}: lost or repeated: {nums:?}");
    }
    nums.len()
}

fn kill_all(pids: &[i32]) {
    for &p in pids {
        // SAFETY: killing the test's own processes.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// A parent passes an open file (offset 7, kept open itself), a pipe's write end, one end of
/// a socket pair, and one end of a seqpacket pair with a memfd and an eventfd in flight in
/// its own queue, to its child over a stream socket pair; the child has not received them
/// when the tree is checkpointed and killed. After the restore it gets them with their tags,
/// reads the file from offset 7, the memfd's bytes and the eventfd's count, and talks to the
/// parent through the pipe and the socket, which are one pipe and one pair with the parent's
/// ends again; the parent sees the child's reads move its own file offset (one open file),
/// and its flock of that file is held again.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn descriptors_in_flight_reach_the_child_after_kill_and_restore() {
    use ckpt::fds::FdKind;
    let d = Dir::new("scm-pass");
    let (dir, out) = (d.path(""), d.path("out"));
    let args = ["pass".as_ref(), dir.as_os_str(), out.as_os_str()];
    let (mut root, parent) = spawn_ready("scm", &args);
    let child = *common::children_of(parent).first().expect("the child");
    wait_for("the child is ready", || text(&out).contains("child ready"));
    let img = d.path("img");
    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    let sh = &image.manifest.shared;
    let kinds: Vec<&str> = sh
        .in_flight
        .iter()
        .map(|f| match &f.kind {
            FdKind::OpenFile(o) if matches!(sh.open_files[o.open_file].kind, FdKind::Path(_)) => {
                "file shared with the parent"
            }
            FdKind::Pipe(p) if p.write_end => "pipe write end",
            FdKind::SocketPairEnd(_) => "socket pair end",
            FdKind::Memfd(_) => "memfd",
            FdKind::EventFd(e) if e.count == 5 => "eventfd",
            _ => "other",
        })
        .collect();
    let want = [
        "file shared with the parent",
        "pipe write end",
        "socket pair end",
        "socket pair end",
        "memfd",
        "eventfd",
    ];
    assert_eq!(kinds, want, "{sh:?}");
    let mut carried: Vec<&[usize]> = (sh.socket_pairs.iter())
        .flat_map(|p| p.ends.iter())
        .flat_map(|e| e.messages.iter().map(|m| m.fds.as_slice()))
        .filter(|f| !f.is_empty())
        .collect();
    carried.sort();
    assert_eq!(
        carried,
        [[0], [1], [2], [3], [4], [5]],
        "one fd per message"
    );
    let summary = common::ok(&common::ckpt(&["inspect", img.to_str().unwrap()]));
    let data = dir.join("data");
    let shown = format!("in flight #0: {} (pos 7", data.display());
    assert!(summary.contains(&shown), "{shown:?} not in {summary}");
    assert!(
        summary.contains("in flight #4: memfd \"ckpt-scm\""),
        "{summary}"
    );
    // The parent's own fd of the file is that open file, not another open of the path.
    let parent_fds = &image.manifest.processes[0].files.fds;
    let shared_with_parent = |f: &ckpt::fds::Fd| f.kind == sh.in_flight[0].kind;
    assert!(parent_fds.iter().any(shared_with_parent), "{parent_fds:?}");

    assert_eq!(restore_root(&img), parent);
    common::signal_until(child, libc::SIGUSR1, "the child gets them", || {
        text(&out).contains("file ")
    });
    wait_for("they talk through the pipe and the socket", || {
        consecutive(&out, "c ") > 10 && consecutive(&out, "p ") > 10
    });
    let t = text(&out);
    assert!(t.contains("file 789ab\n"), "read from offset 7:\n{t}");
    assert!(t.contains("memfd memfd-bytes\n"), "{t}");
    assert!(t.contains("eventfd 5\n"), "{t}");
    assert!(!t.contains("error") && !t.contains("bad"), "{t}");
    // SAFETY: signalling the restored parent.
    unsafe { libc::kill(parent, libc::SIGUSR2) };
    wait_for("the parent says its offset", || text(&out).contains("pos "));
    assert!(text(&out).contains("pos 12\n"), "{}", text(&out));
    // The flock of that open file is held again (through the parent's fd).
    let other = std::fs::File::open(&data).unwrap();
    // SAFETY: flock on a file of ours.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&other),
            libc::LOCK_SH | libc::LOCK_NB,
        )
    };
    assert_eq!(r, -1, "the parent's flock is held");
    kill_all(&[child, parent]);
    drop(all);
}

/// The "cred WHO ..." lines of `out` past its first `from` bytes.
fn creds(out: &Path, from: usize) -> std::collections::BTreeMap<String, String> {
    text(out)
        .get(from..)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("cred "))
        .filter_map(|l| l.split_once(' '))
        .map(|(who, rest)| (who.to_owned(), rest.to_owned()))
        .collect()
}

/// Asks both processes for their sockets' peer credentials; returns them once all four came.
/// (`out` stays: the child, as nobody, could not make it again.)
fn ask_creds(out: &Path, pids: [i32; 2]) -> std::collections::BTreeMap<String, String> {
    let from = text(out).len();
    for p in pids {
        // SAFETY: signalling the test's processes.
        unsafe { libc::kill(p, libc::SIGUSR2) };
    }
    wait_for("each socket's credentials", || creds(out, from).len() == 4);
    creds(out, from)
}

/// A socket pair a root parent made (both ends report the parent) and a seqpacket connection
/// between it and its child running as nobody (the child's end reports the parent, which
/// listened; the parent's reports the child: uid, gid and groups 65534): after `--kill` and
/// restore every socket reports the same pid, ids and groups as before, and a new client of
/// the parent's listener sees the parent as its peer.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn peer_credentials_come_back_after_kill_and_restore() {
    let d = Dir::new("scm-creds");
    let (dir, out) = (d.path(""), d.path("out"));
    let args = ["creds".as_ref(), dir.as_os_str(), out.as_os_str()];
    let (mut root, parent) = spawn_ready("scm", &args);
    let child = *common::children_of(parent).first().expect("the child");
    wait_for("the child is ready", || text(&out).contains("child ready"));
    let before = ask_creds(&out, [parent, child]);
    let want = [
        ("parent-pair", format!("{parent} 0 0 []")),
        ("parent-conn", format!("{child} 65534 65534 [65534]")),
        ("child-pair", format!("{parent} 0 0 []")),
        ("child-conn", format!("{parent} 0 0 []")),
    ];
    for (who, cred) in &want {
        assert_eq!(before.get(*who), Some(cred), "{before:?}");
    }
    let img = d.path("img");
    let (_, _, all) = common::checkpoint_kill(&mut root, &img);
    assert_eq!(restore_root(&img), parent);
    let after = ask_creds(&out, [parent, child]);
    assert_eq!(after, before);
    let (pid, uid) = connect_to(&d.path("l"));
    assert_eq!((pid, uid), (parent, 0), "the listener's peer is the parent");
    kill_all(&[child, parent]);
    drop(all);
}

/// What a new seqpacket client of the listener at `path` reports for its peer (pid, uid).
fn connect_to(path: &Path) -> (i32, u32) {
    use nix::sys::socket::{connect, getsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, UnixAddr};
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    let addr = UnixAddr::new(path).unwrap();
    connect(std::os::fd::AsRawFd::as_raw_fd(&s), &addr).unwrap();
    let c = getsockopt(&s, sockopt::PeerCredentials).unwrap();
    (c.pid(), c.uid())
}

/// The same, restored into a new pid namespace (`--pidns`): inside, each process has its
/// original pid, and each socket reports its peer's pid as the processes there see it.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn peer_credentials_come_back_in_a_new_pid_namespace() {
    let d = Dir::new("scm-creds-pidns");
    let (dir, out) = (d.path(""), d.path("out"));
    let args = ["creds".as_ref(), dir.as_os_str(), out.as_os_str()];
    let (mut root, parent) = spawn_ready("scm", &args);
    let child = *common::children_of(parent).first().expect("the child");
    wait_for("the child is ready", || text(&out).contains("child ready"));
    let before = ask_creds(&out, [parent, child]);
    let img = d.path("img");
    let (_, _, all) = common::checkpoint_kill(&mut root, &img);
    let o = common::ckpt(&["restore", "--pidns", img.to_str().unwrap()]);
    let outer: i32 = common::ok(&o).trim().parse().unwrap();
    let outer_child = *common::children_of(outer).first().expect("the child");
    let after = ask_creds(&out, [outer, outer_child]);
    assert_eq!(after, before);
    // The namespace's init is the root's parent: killing it ends the namespace.
    let init = std::fs::read_to_string(format!("/proc/{outer}/stat")).unwrap();
    let init: i32 = init[init.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kill_all(&[init]);
    wait_for("the namespace is gone", || {
        common::gone(outer) && common::gone(outer_child)
    });
    drop(all);
}

/// A server that gave its listening socket's file another owner and mode after binding it
/// (screen keeps its sessions' state in those bits; a socket others may connect to must stay
/// so): the file comes back with them, not with the umask's mode and the restorer's ids, and
/// clients connect to it again.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_listening_socket_file_keeps_its_owner_and_mode() {
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    let d = Dir::new("listen-mode");
    let path = d.path("s.sock");
    const SERVER: &str = "import os, socket, sys
p = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(p)
os.chown(p, 4242, 4243)
os.chmod(p, 0o640)
s.listen()
print('ready', os.getpid(), flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b'pong')
    c.close()
";
    let mut child = std::process::Command::new("python3")
        .args(["-c", SERVER])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = common::first_line(&mut child);
    assert!(ready.starts_with("ready "), "{ready}");
    let owner_and_mode = || {
        let m = std::fs::symlink_metadata(&path).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner_and_mode(), (4242, 4243, 0o640));
    let ask = || {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let _ = s.flush();
        answer
    };
    assert_eq!(ask(), "pong");
    let img = d.path("img");
    let pids = common::checkpoint_kill(&mut child, &img).2;
    let restored = restore_root(&img);
    assert_eq!(owner_and_mode(), (4242, 4243, 0o640), "the socket file");
    assert_eq!(ask(), "pong");
    kill_all(&pids);
    common::kill_and_reap(restored);
}
