//! Process trees, in the guest: a whole tree checkpointed, killed and restored (parent links,
//! pids, a session, two process groups, a zombie), twice from one image; `--single`; a
//! process that forks all the time; file locks (POSIX with a waiter, flock, OFD) carried, and
//! refused while the original holds them; open file descriptions a parent and child share
//! (a file's offset, an eventfd, a timerfd, a flock, an epoll instance) one again.

mod common;

use common::{children_of, ckpt, gone, ok, prog, restore_root, spawn_ready, Dir};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// (state, ppid, pgid, sid) from /proc/PID/stat; None when the process is gone.
fn stat_of(pid: i32) -> Option<(char, i32, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    Some((
        f[0].chars().next()?,
        f[1].parse().ok()?,
        f[2].parse().ok()?,
        f[3].parse().ok()?,
    ))
}

/// The last number NAME wrote into DIR/NAME.
fn last_count(dir: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

/// Waits until `cond` holds (10 s at most).
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    common::wait_for(what, 10, cond)
}

/// Each process's lines in DIR/NAME count 0, 1, 2, ... with no gap and no repeat.
fn assert_counts_without_gaps(dir: &Path, name: &str) {
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    let nums: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
        .collect();
    for (i, n) in nums.iter().enumerate() {
        assert_eq!(*n, i as u64, "{name}: line {i} says {n}: {text}");
    }
}

struct Tree {
    root: Child,
    /// root, a, a1, b, z
    pids: Vec<i32>,
}

/// The test tree, once each of its counting processes has counted a few times.
fn spawn_counting_tree(dir: &Path) -> Tree {
    let t = spawn_tree(dir);
    wait_for("every process counts", || {
        ["root", "a", "a1", "b"]
            .iter()
            .all(|n| last_count(dir, n).is_some_and(|c| c > 2))
    });
    t
}

fn spawn_tree(dir: &Path) -> Tree {
    let mut root = Command::new(prog("tree"))
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut root);
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("ready"), "tree said {line:?}");
    let pids: Vec<i32> = words.map(|w| w.parse().unwrap()).collect();
    assert_eq!(pids.len(), 5, "{line}");
    Tree { root, pids }
}

/// What the tree looks like: each process's (state, ppid, pgid, sid), and the shape the test
/// program promises.
fn shape(pids: &[i32]) -> Vec<(char, i32, i32, i32)> {
    let s: Vec<_> = pids.iter().map(|&p| stat_of(p).unwrap()).collect();
    let [root, a, b] = [pids[0], pids[1], pids[3]];
    assert_eq!(
        (s[0].2, s[0].3),
        (root, root),
        "root leads its session and group"
    );
    assert_eq!((s[1].1, s[1].2, s[1].3), (root, a, root), "a leads a group");
    assert_eq!((s[2].1, s[2].2, s[2].3), (a, a, root), "a1 is in a's group");
    assert_eq!(
        (s[3].1, s[3].2, s[3].3),
        (root, root, root),
        "b is in the root's group"
    );
    assert_eq!((s[4].0, s[4].1), ('Z', b), "z is b's zombie");
    s.into_iter()
        .map(|(st, pp, pg, si)| (if st == 'Z' { 'Z' } else { 'L' }, pp, pg, si))
        .collect()
}

fn restore_and_check(img: &Path, dir: &Path, pids: &[i32], before: &[(char, i32, i32, i32)]) {
    let counts: Vec<u64> = ["root", "a", "a1", "b"]
        .iter()
        .map(|n| last_count(dir, n).unwrap())
        .collect();
    let root = restore_root(img);
    assert_eq!(root, pids[0]);
    // As it was, but for the root's parent: ckpt restore, gone by now (the root was the
    // child of whoever started it, outside the tree).
    let mut now = shape(pids);
    now[0].1 = before[0].1;
    assert_eq!(now, before, "the tree came back as it was");
    // Every process goes on counting where it was, in its own file.
    for (name, from) in ["root", "a", "a1", "b"].iter().zip(&counts) {
        wait_for(&format!("{name} counts on"), || {
            last_count(dir, name).is_some_and(|n| n > from + 3)
        });
        assert_counts_without_gaps(dir, name);
    }
    // /proc/PID/exe names the program, not ckpt.
    for &p in &pids[..4] {
        let exe = std::fs::read_link(format!("/proc/{p}/exe")).unwrap();
        assert_eq!(exe, prog("tree"), "exe of {p}");
    }
    // The zombie is still b's to reap, with its status.
    assert_eq!(unsafe { libc::kill(pids[3], libc::SIGUSR1) }, 0);
    let reaped = format!("b reaped {} 7", pids[4]);
    wait_for("b reaps z", || {
        std::fs::read_to_string(dir.join("b")).is_ok_and(|t| t.contains(&reaped))
    });
    assert!(gone(pids[4]), "z was reaped");
}

fn kill_tree(pids: &[i32]) {
    for &p in pids.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for("the tree is gone", || pids.iter().all(|&p| gone(p)));
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_tree_with_a_zombie_a_session_and_two_groups_comes_back_twice() {
    let d = Dir::new("tree");
    let mut t = spawn_counting_tree(&d.0);
    let pids = t.pids.clone();
    let before = shape(&pids);
    let img = d.path("tree.img");
    let out = ok(&ckpt(&[
        "checkpoint",
        &pids[0].to_string(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
        "--json",
    ]));
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["processes"], 4, "{out}");
    t.root.wait().unwrap();
    // --kill took the whole tree, not only its root.
    wait_for("no process of the tree is left", || {
        pids.iter().all(|&p| gone(p))
    });
    let inspect = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    for p in &pids[..4] {
        assert!(inspect.contains(&format!("process {p} ")), "{inspect}");
    }
    assert!(
        inspect.contains(&format!("zombie {}", pids[4])),
        "{inspect}"
    );

    // What the files held when the image was taken: put back before the second restore, so
    // that it continues them without a gap too.
    let names = ["root", "a", "a1", "b"];
    let at_checkpoint: Vec<String> = names
        .iter()
        .map(|n| std::fs::read_to_string(d.path(n)).unwrap())
        .collect();
    restore_and_check(&img, &d.0, &pids, &before);
    kill_tree(&pids[..4]);
    for (n, text) in names.iter().zip(&at_checkpoint) {
        std::fs::write(d.path(n), text).unwrap();
    }
    restore_and_check(&img, &d.0, &pids, &before);
    kill_tree(&pids[..4]);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn single_takes_only_the_process_and_leaves_its_children_alone() {
    let d = Dir::new("tree-single");
    let mut t = spawn_tree(&d.0);
    let pids = t.pids.clone();
    let img = d.path("single.img");
    let out = ckpt(&[
        "checkpoint",
        &pids[0].to_string(),
        "-o",
        img.to_str().unwrap(),
        "--single",
        "--json",
    ]);
    let stats: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(stats["processes"], 1);
    // Nothing was killed, and everyone still counts.
    let count_a = last_count(&d.0, "a").unwrap();
    wait_for("a counts on", || {
        last_count(&d.0, "a").is_some_and(|n| n > count_a)
    });
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    t.root.wait().unwrap();
    kill_tree(&pids[1..4]);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_process_forking_all_the_time_is_caught_whole() {
    let d = Dir::new("tree-churn");
    let mut root = Command::new(prog("tree"))
        .arg(&d.0)
        .arg("churn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = root.id() as i32;
    wait_for("it counts", || {
        last_count(&d.0, "root").is_some_and(|n| n > 20)
    });
    let img = d.path("churn.img");
    for round in 0..3 {
        let out = ckpt(&[
            "checkpoint",
            &pid.to_string(),
            "-o",
            img.to_str().unwrap(),
            "--json",
        ]);
        let stats: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        let n = stats["processes"].as_u64().unwrap();
        assert!(n >= 1, "round {round}: {stats}");
        let image = ckpt::manifest::Image::open(&img).unwrap();
        let m = &image.manifest;
        // Every process taken is the root or its child; each child's parent is the root.
        assert_eq!(m.processes[0].pid, pid);
        assert!(m.processes[1..].iter().all(|p| p.ppid == pid));
        assert!(m.zombies.iter().all(|z| z.ppid == pid));
    }
    let from = last_count(&d.0, "root").unwrap();
    wait_for("it goes on", || {
        last_count(&d.0, "root").is_some_and(|n| n > from + 5)
    });
    // Killed with --kill and restored: it goes on forking and counting.
    common::checkpoint_kill(&mut root, &img);
    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    let from = last_count(&d.0, "root").unwrap();
    wait_for("it counts after the restore", || {
        last_count(&d.0, "root").is_some_and(|n| n > from + 5)
    });
    assert_counts_without_gaps(&d.0, "root");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("it is gone", || gone(pid));
}

/// A real shell pipeline (bash, its subshell, sleep and cat from Debian): the pipe between
/// the processes is one pipe again after the restore, with what was in it.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_shell_pipeline_goes_on_after_kill_and_restore() {
    let d = Dir::new("tree-pipeline");
    let out = d.path("out");
    let script = format!(
        "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done | cat >> {}",
        out.display()
    );
    let mut sh = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = sh.id() as i32;
    let numbers = || -> Vec<u64> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    wait_for("the pipeline runs", || numbers().len() > 10);
    let img = d.path("pipeline.img");
    let (stats, image, all) = common::checkpoint_kill(&mut sh, &img);
    assert!(stats["processes"].as_u64().unwrap() >= 3, "{stats}");
    assert!(
        !image.manifest.shared.pipes.is_empty(),
        "the pipe is the tree's"
    );
    let before = numbers().len();
    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    wait_for("the pipeline goes on", || numbers().len() > before + 10);
    let n = numbers();
    for (i, v) in n.iter().enumerate() {
        assert_eq!(*v, i as u64, "line {i} of {n:?}");
    }
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// The numbers of the last line of DIR/root that starts with "root".
fn root_view(dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("root")).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|l| {
            let v: Vec<u64> = l
                .strip_prefix("root ")?
                .split(' ')
                .filter_map(|w| w.parse().ok())
                .collect();
            (v.len() == 5).then_some(v)
        })
        .unwrap_or_default()
}

/// Anonymous shared memory and a memfd shared by a parent and two children: stored once,
/// shared again after a restore (the parent sees its children count), with the memfd's name,
/// size and seals.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn shared_memory_stays_shared_after_kill_and_restore() {
    shared_memory_tree(&[]);
}

/// The same from a compressed image: each object's content is a compressed section,
/// streamed into its memfd.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn shared_memory_stays_shared_after_a_compressed_checkpoint() {
    shared_memory_tree(&["--compress"]);
}

/// The shm tree checkpointed with `extra` options and restored.
fn shared_memory_tree(extra: &[&str]) {
    // Its own directory per variant: the variants run at the same time.
    let d = Dir::new(&format!("tree-shm{}", extra.concat()));
    let (mut root, pid) = spawn_ready("shm", &[d.0.as_os_str()]);
    wait_for("the children count, seen by the root", || {
        root_view(&d.0)
            .get(1..)
            .is_some_and(|v| v.iter().all(|&n| n > 5))
    });
    let img = d.path("shm.img");
    let (stats, image, all) = common::checkpoint_kill_with(pid, &img, extra, || {
        root.wait().unwrap();
    });
    assert_eq!(
        image.sections.iter().all(|s| s.compressed.is_some()),
        extra.contains(&"--compress")
    );
    let at_checkpoint = root_view(&d.0);
    assert_eq!(stats["processes"], 3, "{stats}");
    let m = &image.manifest;
    let mut sizes: Vec<u64> = m.shared.memory.iter().map(|o| o.size).collect();
    sizes.sort();
    assert_eq!(sizes, [64 << 10, 1 << 20], "each object once");
    let memfd = m.shared.memory.iter().find(|o| o.size == 64 << 10).unwrap();
    assert_eq!(memfd.memfd_name.as_deref(), Some("ckpt-shm-test"));
    assert_eq!(memfd.seals, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    // Stored once: the image holds about one copy of each object, not one per process.
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(len < 3 << 20, "image of {len} bytes");

    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    // The root sees its children go on counting: the memory is shared again.
    wait_for("the root sees the children count on", || {
        let v = root_view(&d.0);
        v.len() == 5 && (1..5).all(|i| v[i] > at_checkpoint[i] + 5)
    });
    let text = std::fs::read_to_string(d.path("root")).unwrap();
    assert!(!text.contains("bad"), "the patterns survived: {text}");
    assert!(std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains("memfd:ckpt-shm-test"));
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let want = format!(
        "seals {} size 65536",
        libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
    );
    wait_for("the memfd is sealed as it was", || {
        std::fs::read_to_string(d.path("root")).is_ok_and(|t| t.contains(&want))
    });
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// NSpid of a process: its pid in each namespace, outermost first.
fn nspid(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A tree restored while the original still runs: its pids are taken, so it goes into a new
/// pid namespace where every process has its original pid, under an init that is its parent.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_tree_whose_pids_are_taken_goes_into_a_new_pid_namespace() {
    let d = Dir::new("tree-pidns");
    let mut t = spawn_counting_tree(&d.0);
    let pids = t.pids.clone();
    let img = d.path("tree.img");
    ok(&ckpt(&[
        "checkpoint",
        &pids[0].to_string(),
        "-o",
        img.to_str().unwrap(),
    ]));
    // The original keeps running: every pid of the image is taken.
    let out = ckpt(&["restore", img.to_str().unwrap()]);
    let outer: i32 = ok(&out).trim().parse().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("new pid namespace"), "{err}");
    assert_ne!(outer, pids[0]);
    assert_eq!(
        nspid(outer),
        [outer, pids[0]],
        "the root has its pid inside"
    );
    // Its parent is the namespace's init (pid 1 inside); its children have their pids.
    let (_, init, _, _) = stat_of(outer).unwrap();
    assert_eq!(nspid(init).last(), Some(&1));
    let kids: Vec<i32> = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
        .unwrap()
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let mut inner: Vec<i32> = kids
        .iter()
        .filter_map(|&k| nspid(k).last().copied())
        .collect();
    inner.sort();
    let mut want = vec![pids[1], pids[3]];
    want.sort();
    assert_eq!(inner, want, "a and b have their pids inside");
    // It runs: the root's counter goes on (both copies append to the same files).
    let lines = || {
        std::fs::read_to_string(d.path("root"))
            .unwrap()
            .lines()
            .count()
    };
    let n = lines();
    wait_for("both copies count", || lines() > n + 10);
    assert!(matches!(stat_of(outer).map(|s| s.0), Some('S' | 'R')));
    // Killing the init ends the whole namespace.
    unsafe { libc::kill(init, libc::SIGKILL) };
    wait_for("the restored tree is gone", || {
        gone(outer) && kids.iter().all(|&k| gone(k))
    });
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    t.root.wait().unwrap();
    kill_tree(&pids[1..4]);
}

/// The physical frame of the page at `addr` of `pid` (None if not present), from
/// /proc/PID/pagemap (frames are shown to root).
fn frame(pid: i32, addr: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, addr / 4096 * 8).unwrap();
    let e = u64::from_ne_bytes(entry);
    (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
}

/// Private memory a parent and its children still share copy-on-write is stored once: the
/// image of four processes with 32 MiB each holds about 32 MiB. Every process gets its own
/// pages back, the one it changed included, and the pages they shared are shared again (the
/// same physical frames in all four).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn copy_on_write_pages_are_stored_once_and_shared_again() {
    copy_on_write_tree(&[]);
}

/// Compressed, where stored pages cannot be read back, the pages a child shares are checked
/// to be the same by checksum instead.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn copy_on_write_pages_are_stored_once_and_shared_again_when_compressed() {
    copy_on_write_tree(&["--compress"]);
}

/// The cowtree checkpointed with `extra` options and restored: each page stored once,
/// shared again after the restore.
fn copy_on_write_tree(extra: &[&str]) {
    // Its own directory per variant: the variants run at the same time.
    let d = Dir::new(&format!("tree-cow{}", extra.concat()));
    let (mut root, pid) = spawn_ready("cowtree", &[d.0.as_os_str()]);
    let names = ["p", "c0", "c1", "c2"];
    wait_for("all count", || {
        names
            .iter()
            .all(|n| last_count(&d.0, n).is_some_and(|c| c > 2))
    });
    let img = d.path("cow.img");
    let (stats, image, all) = common::checkpoint_kill_with(pid, &img, extra, || {
        root.wait().unwrap();
    });
    assert_eq!(stats["processes"], 4, "{stats}");
    let compressed = image.sections.iter().all(|s| s.compressed.is_some());
    assert_eq!(compressed, extra.contains(&"--compress"));
    let region = image.manifest.processes[0]
        .memory
        .vmas
        .iter()
        .find(|v| v.end - v.start == 32 << 20)
        .expect("the 32 MiB mapping")
        .start;
    let shared = stats["pages_shared"].as_u64().unwrap();
    assert!(shared >= 3 * (8192 - 8), "pages stored once: {stats}");
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(
        len < 48 << 20,
        "the image holds one copy of the 32 MiB, not four: {len} bytes"
    );
    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    let counts: Vec<u64> = names.iter().map(|n| last_count(&d.0, n).unwrap()).collect();
    for (n, c) in names.iter().zip(&counts) {
        wait_for(&format!("{n} counts on"), || {
            last_count(&d.0, n).is_some_and(|x| x > c + 3)
        });
        let text = std::fs::read_to_string(d.path(n)).unwrap();
        assert!(
            !text.contains("bad"),
            "{n}'s memory came back wrong: {text}"
        );
        assert_counts_without_gaps(&d.0, n);
    }
    // Pages 0-2 each belong to one child; the rest are the parent's, shared by all.
    let children = &all[1..4];
    for page in (3..8192).step_by(211) {
        let addr = region + page * 4096;
        let parents = frame(pid, addr).expect("present in the parent");
        for &c in children {
            assert_eq!(
                frame(c, addr),
                Some(parents),
                "page {page} of {c} is shared"
            );
        }
    }
    for &c in children {
        let own = (0..3)
            .filter(|k| frame(c, region + k * 4096) != frame(pid, region + k * 4096))
            .count();
        assert_eq!(
            own, 1,
            "process {c} has its own copy of the page it changed"
        );
    }
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// The "p N" counts in DIR/p, and whether any line says "bad".
fn turns(dir: &Path) -> (Vec<u64>, bool) {
    common::numbered_lines(&dir.join("p"), "p ")
}

/// The id of the SysV object of `kind` ("sem", "msg") with `key` in our IPC namespace.
fn sysv_id(kind: &str, key: i32) -> Option<i32> {
    let list = std::fs::read_to_string(format!("/proc/sysvipc/{kind}")).unwrap();
    list.lines().skip(1).find_map(|l| {
        let mut f = l.split_whitespace().map(|v| v.parse::<i32>().ok());
        (f.next()?? == key).then_some(f.next()??)
    })
}

/// A parent and child taking turns through a SysV semaphore set and passing counts through a
/// message queue that also holds 100 unread messages. A process outside the tree that uses
/// the set refuses the checkpoint (naming it). Killed and restored: the set and queue come
/// back with their key, id, values and messages (the leftovers of the killed tree are replaced),
/// the turns go on with no count lost or repeated, the backlog reads back in order. A second
/// restore while the first runs is refused (the key is in use); with --ipcns the objects get
/// their ids back, and a checkpoint of that tree finds them in its namespace.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn sysv_semaphores_and_message_queues_come_back_with_their_state() {
    let d = Dir::new("tree-sysv-ipc");
    let key = 0x5150_0000 + (std::process::id() & 0xffff) as i32;
    let key_arg = key.to_string();
    let (mut root, pid) = spawn_ready("sysv_ipc", &[d.0.as_os_str(), key_arg.as_ref()]);
    wait_for("the turns go", || turns(&d.0).0.len() > 5);

    let mut toucher = Command::new(prog("sysv_ipc"))
        .args(["--touch", &key_arg])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(toucher.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "touched");
    let img = d.path("ipc.img");
    let out = ckpt(&["checkpoint", &pid.to_string(), "-o", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a set used outside the tree is refused"
    );
    assert!(
        err.contains("semaphore set") && err.contains(&format!("process {}", toucher.id())),
        "the refusal names the set and the process: {err}"
    );
    assert!(!img.exists());
    toucher.kill().unwrap();
    toucher.wait().unwrap();
    let before = turns(&d.0).0.len();
    wait_for("the tree went on", || turns(&d.0).0.len() > before + 3);

    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    let m = &image.manifest;
    assert_eq!(m.shared.sysv_sem.len(), 1, "{:?}", m.shared.sysv_sem);
    let set = &m.shared.sysv_sem[0];
    assert_eq!(set.key, key);
    assert_eq!(set.values.len(), 3);
    assert!(
        set.values[0] + set.values[1] <= 1,
        "one turn: {:?}",
        set.values
    );
    assert_eq!(set.values[2], 6, "the toucher's +1 is kept");
    assert_eq!(m.shared.sysv_msg.len(), 1);
    let q = &m.shared.sysv_msg[0];
    let backlog: Vec<_> = q.messages.iter().filter(|m| m.mtype == 2).collect();
    assert_eq!(backlog.len(), 100, "every queued message: {:?}", q.messages);
    let texts = image.read_section(q.data_section.unwrap()).unwrap();
    assert!(texts.starts_with(b"backlog 1\0backlog 2\0"));
    let at_checkpoint = turns(&d.0).0.len();
    let shown = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    assert!(
        shown.contains("SysV semaphore set key")
            && shown.contains("values [")
            && shown.contains("SysV message queue key"),
        "{shown}"
    );

    // The killed tree's set and queue are still here (SysV objects outlive their users).
    assert_eq!(sysv_id("sem", key), Some(set.id));
    assert_eq!(restore_root(&img), pid);
    let new_set = sysv_id("sem", key).expect("the set is back");
    assert_eq!(
        new_set, set.id,
        "with its id (free again: the leftover was removed)"
    );
    assert_eq!(sysv_id("msg", key), Some(q.id));
    let value = unsafe { libc::semctl(new_set, 2, libc::GETVAL) };
    assert_eq!(value, 6, "semaphore values come back");
    wait_for("the turns go on", || {
        turns(&d.0).0.len() > at_checkpoint + 5
    });
    std::fs::write(d.path("drain"), "").unwrap();
    wait_for("the backlog is read", || {
        std::fs::read_to_string(d.path("p")).is_ok_and(|t| t.contains("backlog "))
    });
    let text = std::fs::read_to_string(d.path("p")).unwrap();
    assert!(text.contains("backlog ok 100"), "{text}");
    let (counts, bad) = turns(&d.0);
    assert!(!bad, "no count lost or repeated: {text}");
    assert!(counts.windows(2).all(|w| w[1] == w[0] + 1), "{counts:?}");

    let out = ckpt(&["restore", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the key is in use");
    assert!(err.contains("--ipcns"), "the error says what to do: {err}");
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for("the restored tree is gone", || all.iter().all(|&p| gone(p)));
    // Its leftovers here, removed: the checkpoint below must find the objects in the tree's
    // namespace, not these.
    unsafe {
        libc::semctl(new_set, 0, libc::IPC_RMID);
        libc::msgctl(
            sysv_id("msg", key).unwrap_or(-1),
            libc::IPC_RMID,
            std::ptr::null_mut(),
        );
    }

    let out = ckpt(&["restore", "--ipcns", img.to_str().unwrap()]);
    assert_eq!(ok(&out).trim(), pid.to_string());
    for (kind, id) in [("sem", set.id), ("msg", q.id)] {
        let inside = Command::new("nsenter")
            .args(["--ipc", "--target", &pid.to_string(), "cat"])
            .arg(format!("/proc/sysvipc/{kind}"))
            .output()
            .unwrap();
        let inside = String::from_utf8_lossy(&inside.stdout);
        let id = id.to_string();
        assert!(
            inside
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&id)),
            "the {kind} keeps its id {id}: {inside}"
        );
    }
    // A checkpoint of it reads its objects in its namespace.
    let again = d.path("again.img");
    ok(&ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        again.to_str().unwrap(),
        "--kill",
    ]));
    let m2 = ckpt::manifest::Image::open(&again).unwrap().manifest;
    assert_eq!(m2.shared.sysv_sem.len(), 1, "found in the tree's namespace");
    assert_eq!(
        (m2.shared.sysv_sem[0].id, m2.shared.sysv_msg.len()),
        (set.id, 1)
    );
    wait_for("the second restored tree is gone", || {
        all.iter().all(|&p| gone(p))
    });
}

/// The numbers of the last line of DIR/p.
fn sysv_view(dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("p")).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with("p "))
        .unwrap_or("");
    last.split(' ').filter_map(|w| w.parse().ok()).collect()
}

/// SysV shared memory a parent and child attach (one with a key, one removed while attached):
/// recreated with the same key, filled, attached again at the same address by both; the
/// parent sees the child count on.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn sysv_shared_memory_stays_shared_after_kill_and_restore() {
    let d = Dir::new("tree-sysv");
    let key = format!("{:#x}", 0x4c00_0000 + (std::process::id() & 0xffff));
    let (mut root, pid) = spawn_ready("sysv_target", &[d.0.as_os_str(), key.as_ref()]);
    wait_for("the parent sees the child count", || {
        sysv_view(&d.0)
            .get(1..)
            .is_some_and(|v| v.iter().all(|&n| n > 5))
    });
    let img = d.path("sysv.img");
    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    let at_checkpoint = sysv_view(&d.0);
    let m = &image.manifest;
    assert_eq!(m.shared.sysv_shm.len(), 2, "each segment once");
    assert!(m.shared.sysv_shm.iter().any(|s| s.removed));
    // The keyed segment is gone with its last process (the test removes it: nobody else does).
    let keyed = m.shared.sysv_shm.iter().find(|s| !s.removed).unwrap();
    unsafe { libc::shmctl(keyed.id, libc::IPC_RMID, std::ptr::null_mut()) };

    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    wait_for("the parent sees the child count on", || {
        let v = sysv_view(&d.0);
        v.len() == 3 && (1..3).all(|i| v[i] > at_checkpoint[i] + 5)
    });
    let text = std::fs::read_to_string(d.path("p")).unwrap();
    assert!(!text.contains("bad"), "the patterns survived: {text}");
    let list = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let want = format!(
        "{:>10}",
        i64::from_str_radix(key.trim_start_matches("0x"), 16).unwrap()
    );
    assert!(
        list.lines().any(|l| l.starts_with(&want)),
        "the key is back: {list}"
    );
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for("the restored tree is gone", || all.iter().all(|&p| gone(p)));
    for l in list.lines().filter(|l| l.starts_with(&want)) {
        let id: i32 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
    // With --ipcns: a new IPC namespace, where the segments have their ids back too.
    let out = ckpt(&["restore", "--ipcns", img.to_str().unwrap()]);
    assert_eq!(ok(&out).trim(), pid.to_string());
    let inside = Command::new("nsenter")
        .args([
            "--ipc",
            "--target",
            &pid.to_string(),
            "cat",
            "/proc/sysvipc/shm",
        ])
        .output()
        .unwrap();
    let inside = String::from_utf8_lossy(&inside.stdout);
    for s in &m.shared.sysv_shm {
        let id = s.id.to_string();
        assert!(
            inside
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(id.as_str())),
            "segment {} keeps its id: {inside}",
            s.id
        );
    }
    assert!(!list.is_empty());
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for("the second restored tree is gone", || {
        all.iter().all(|&p| gone(p))
    });
}

/// (ppid, pgid, sid) of each of `pids`, as /proc shows them now.
fn ids_of(pids: &[i32]) -> Vec<(i32, i32, i32)> {
    pids.iter()
        .map(|&p| {
            let (_, ppid, pgid, sid) = stat_of(p).unwrap_or_else(|| panic!("{p} is gone"));
            (ppid, pgid, sid)
        })
        .collect()
}

/// No process of `m` has a child that is one of the restore's helpers (a fork of ckpt, or
/// one with a helper's pid): they are gone before the tree runs. (Other children may be
/// new: the bash loops start a sleep every 50 ms.)
fn no_helper_children(m: &ckpt::manifest::Manifest) {
    for p in &m.processes {
        for c in children_of(p.pid) {
            let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            assert_ne!(
                comm.trim(),
                "ckpt",
                "process {} has a child {c} of ckpt's",
                p.pid
            );
            assert!(!m.gone_leaders.contains(&c), "{c} is a helper's pid");
        }
    }
}

/// A bash loop writing "NAME N" lines to DIR/NAME every 50 ms.
fn bash_counter(dir: &Path, name: &str) -> String {
    format!(
        "i=0; while :; do echo {name} $i >> {}/{name}; i=$((i+1)); sleep 0.05; done",
        dir.display()
    )
}

/// The pid a bash process wrote into DIR/NAME.pid.
fn pid_file(dir: &Path, name: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A double-fork daemon (util-linux setsid -f, bash): the session leader exited, its child
/// d (reparented to init) counts and has a counting child e of its own. Killed and restored,
/// both come back with their pids, parents, group and session (made again by a helper with
/// the leader's pid, which is gone again) and count on without a gap; restored again into a
/// new pid namespace, they are still in one session and group led by nobody.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_daemon_whose_session_leader_exited_comes_back_in_its_session() {
    let d = Dir::new("tree-daemon");
    let dir = d.0.display();
    let daemon = format!(
        "echo $BASHPID > {dir}/d.pid; (echo $BASHPID > {dir}/e.pid; {}) & {}",
        bash_counter(&d.0, "e"),
        bash_counter(&d.0, "d")
    );
    // setsid forks (its own process exits at once); the child leads a new session and runs
    // bash, which starts the daemon in the background and exits.
    let status = Command::new("setsid")
        .args(["-f", "bash", "-c", &format!("({daemon}) & exit 0")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("d and e count", || {
        ["d", "e"]
            .iter()
            .all(|n| last_count(&d.0, n).is_some_and(|c| c > 2) && pid_file(&d.0, n).is_some())
    });
    let pids = [pid_file(&d.0, "d").unwrap(), pid_file(&d.0, "e").unwrap()];
    let before = ids_of(&pids);
    let leader = before[0].2;
    wait_for("the session leader exits", || gone(leader));
    assert_eq!(before[1].0, pids[0], "e is d's child");
    assert_eq!((before[0].1, before[1].1), (leader, leader), "group");
    assert_eq!(before[1].2, leader, "e in the session");

    let img = d.path("daemon.img");
    let (_, image, all) = common::checkpoint_kill_pid(pids[0], &img, || {});
    let m = &image.manifest;
    // Shown if the test fails.
    println!("{}", ok(&ckpt(&["inspect", img.to_str().unwrap()])));
    assert_eq!(m.gone_leaders, [leader], "the leader is recorded as gone");
    let names = ["d", "e"];
    let at_checkpoint: Vec<String> = names
        .iter()
        .map(|n| std::fs::read_to_string(d.path(n)).unwrap())
        .collect();
    let counts: Vec<u64> = names.iter().map(|n| last_count(&d.0, n).unwrap()).collect();

    assert_eq!(restore_root(&img), pids[0]);
    assert_eq!(
        ids_of(&pids),
        before,
        "parents, group and session as they were"
    );
    assert!(gone(leader), "the session helper is gone");
    no_helper_children(m);
    for (name, from) in names.iter().zip(&counts) {
        wait_for(&format!("{name} counts on"), || {
            last_count(&d.0, name).is_some_and(|n| n > from + 3)
        });
        assert_counts_without_gaps(&d.0, name);
    }
    kill_all(&all);

    // Into a new pid namespace: the helper is forked by the namespace's init.
    for (n, text) in names.iter().zip(&at_checkpoint) {
        std::fs::write(d.path(n), text).unwrap();
    }
    let out = ckpt(&["restore", "--pidns", img.to_str().unwrap()]);
    let outer: i32 = ok(&out).trim().parse().unwrap();
    assert_eq!(nspid(outer).last(), Some(&pids[0]));
    let e_outer = children_of(outer)
        .into_iter()
        .find(|&c| nspid(c).last() == Some(&pids[1]))
        .expect("e is d's child inside");
    let inside = ids_of(&[outer, e_outer]);
    let (group, session) = (inside[0].1, inside[0].2);
    assert_eq!(group, session, "the helper's setsid made both");
    assert_eq!((inside[1].1, inside[1].2), (group, session), "e is in them");
    assert!(gone(session), "led by nobody: the helper is gone");
    for (name, from) in names.iter().zip(&counts) {
        wait_for(&format!("{name} counts on in the namespace"), || {
            last_count(&d.0, name).is_some_and(|n| n > from + 3)
        });
        assert_counts_without_gaps(&d.0, name);
    }
    let init = inside[0].0;
    unsafe { libc::kill(init, libc::SIGKILL) };
    wait_for("the namespace is gone", || gone(outer) && gone(e_outer));
}

fn kill_all(pids: &[i32]) {
    for &p in pids.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for("the restored tree is gone", || {
        pids.iter().all(|&p| gone(p))
    });
}

/// A real bash with job control: a pipeline whose first command has exited, its two other
/// members still running in the pipeline's process group, led by nobody. Killed and
/// restored, they are back in that group (made by a helper child of bash, reaped before
/// bash runs: bash never sees it) and count on.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_pipeline_whose_first_command_exited_keeps_its_group() {
    let d = Dir::new("tree-pgrp");
    let dir = d.0.display();
    let script = format!(
        "set -m; : | {{ echo $BASHPID > {dir}/a.pid; {}; }} | {{ echo $BASHPID > {dir}/b.pid; {}; }}",
        bash_counter(&d.0, "a"),
        bash_counter(&d.0, "b")
    );
    let mut sh = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bash = sh.id() as i32;
    wait_for("a and b count", || {
        ["a", "b"]
            .iter()
            .all(|n| last_count(&d.0, n).is_some_and(|c| c > 2) && pid_file(&d.0, n).is_some())
    });
    let pids = [
        bash,
        pid_file(&d.0, "a").unwrap(),
        pid_file(&d.0, "b").unwrap(),
    ];
    let before = ids_of(&pids);
    let group = before[1].1;
    assert_ne!(group, before[0].1, "the pipeline has its own group");
    assert_eq!(before[2].1, group, "a and b share it");
    wait_for("the pipeline's first command is reaped", || gone(group));

    let img = d.path("pgrp.img");
    let (_, image, all) = common::checkpoint_kill(&mut sh, &img);
    let m = &image.manifest;
    assert!(m.gone_leaders.contains(&group), "{:?}", m.gone_leaders);
    let counts: Vec<u64> = ["a", "b"]
        .iter()
        .map(|n| last_count(&d.0, n).unwrap())
        .collect();
    assert_eq!(restore_root(&img), bash);
    // bash's own ids come from ckpt restore (ours, as at checkpoint), its parent is init now.
    let mut now = ids_of(&pids);
    now[0].0 = before[0].0;
    assert_eq!(now, before, "group, session and parents as they were");
    assert!(gone(group), "the group's helper is gone");
    no_helper_children(m);
    for (name, from) in ["a", "b"].iter().zip(&counts) {
        wait_for(&format!("{name} counts on"), || {
            last_count(&d.0, name).is_some_and(|n| n > from + 3)
        });
        assert_counts_without_gaps(&d.0, name);
    }
    kill_all(&all);
}

/// Zombies that led their own group (with a live member) and their own session come back
/// as such: the group's member is in the zombie's group again, and their parent reaps them
/// with their statuses.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn zombies_that_led_a_group_or_a_session_come_back_leading_them() {
    let d = Dir::new("tree-zombie-leaders");
    let mut root = Command::new(prog("tree"))
        .arg(&d.0)
        .arg("zombies")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut root);
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"ready"), "tree said {line:?}");
    let ids: Vec<i32> = words[1..].iter().map(|w| w.parse().unwrap()).collect();
    let [pid, z1, m, z2] = ids[..] else {
        panic!("tree said {line:?}")
    };
    let state = |p: i32| stat_of(p).unwrap().0;
    wait_for("m and the root count", || {
        ["m", "root"]
            .iter()
            .all(|n| last_count(&d.0, n).is_some_and(|c| c > 2))
    });
    let pids = [pid, z1, m, z2];
    let before = ids_of(&pids);
    assert_eq!(before[2].1, z1, "m is in z1's group");
    assert_eq!((before[3].1, before[3].2), (z2, z2), "z2 leads its session");

    let img = d.path("zombies.img");
    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    assert_eq!(image.manifest.zombies.len(), 2);
    let counts: Vec<u64> = ["m", "root"]
        .iter()
        .map(|n| last_count(&d.0, n).unwrap())
        .collect();
    assert_eq!(restore_root(&img), pid);
    let mut now = ids_of(&pids);
    now[0].0 = before[0].0;
    assert_eq!(now, before, "groups and sessions as they were");
    assert_eq!((state(z1), state(z2)), ('Z', 'Z'));
    for (name, from) in ["m", "root"].iter().zip(&counts) {
        wait_for(&format!("{name} counts on"), || {
            last_count(&d.0, name).is_some_and(|n| n > from + 3)
        });
        assert_counts_without_gaps(&d.0, name);
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    for want in [format!("root reaped {z1} 3"), format!("root reaped {z2} 5")] {
        wait_for(&want, || {
            std::fs::read_to_string(d.path("root")).is_ok_and(|t| t.contains(&want))
        });
    }
    let live: Vec<i32> = image.manifest.processes.iter().map(|p| p.pid).collect();
    assert!(all.starts_with(&live));
    kill_all(&live);
}

/// The numbers of the lines "PREFIX N" in `out`.
fn numbered(out: &Path, prefix: &str) -> Vec<u64> {
    common::numbered_lines(out, prefix).0
}

/// Each number once, in order, from `first`.
fn assert_consecutive(nums: &[u64], first: u64, what: &str) {
    for (i, n) in nums.iter().enumerate() {
        assert_eq!(
            *n,
            first + i as u64,
            "{what}: a message lost or repeated: {nums:?}"
        );
    }
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_unix_stream_server_and_its_client_keep_talking_after_kill_and_restore() {
    let d = Dir::new("unix-stream");
    let (sock, out) = (d.path("srv.sock"), d.path("out"));
    let args = ["stream".as_ref(), sock.as_os_str(), out.as_os_str()];
    let (mut root, client) = spawn_ready("unix_socks", &args);
    wait_for("they talk", || numbered(&out, "c ").len() > 5);
    let img = d.path("img");
    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    let sh = &image.manifest.shared;
    assert_eq!(
        (sh.listeners.len(), sh.socket_pairs.len()),
        (1, 1),
        "{sh:?}"
    );
    let names: Vec<String> = (sh.socket_pairs[0].ends.iter())
        .filter_map(|e| Some(e.name.as_ref()?.display()))
        .collect();
    assert_eq!(
        names,
        [sock.to_string_lossy()],
        "the accepted end has the server's name"
    );
    let seen = numbered(&out, "c ").len();

    let restored = restore_root(&img);
    wait_for("they talk on", || numbered(&out, "c ").len() > seen + 10);
    // SAFETY: signalling the restored processes.
    unsafe {
        libc::kill(restored, libc::SIGUSR2);
        libc::kill(client, libc::SIGUSR2);
    }
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_for("both say their names", || {
        text().matches("names ").count() == 2
    });
    let t = text();
    let s = sock.to_string_lossy();
    assert!(
        t.contains(&format!("names server local={s} peer=(unnamed)\n")),
        "{t}"
    );
    assert!(
        t.contains(&format!("names client local=(unnamed) peer={s}\n")),
        "{t}"
    );
    assert!(!t.contains("bad") && !t.contains("error"), "{t}");
    assert_consecutive(&numbered(&out, "c "), 0, "client");
    assert_consecutive(&numbered(&out, "s "), 0, "server");
    // The listening socket is back at its path.
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
    kill_tree(&[restored, client]);
    drop(all);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_named_unix_datagram_server_and_its_client_come_back_with_queued_messages() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let d = Dir::new("unix-dgram");
    let (sock, out) = (d.path("dgram.sock"), d.path("out"));
    let args = ["dgram".as_ref(), sock.as_os_str(), out.as_os_str()];
    let (mut root, client) = spawn_ready("unix_socks", &args);
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_for("the client queued its messages", || {
        text().contains("c-sent")
    });
    let img = d.path("img");
    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    let dg = &image.manifest.shared.unix_dgram;
    assert_eq!(dg.len(), 2, "server and client: {dg:?}");
    let server = dg
        .iter()
        .find(|s| !s.messages.is_empty())
        .expect("the server's queue");
    assert_eq!(server.messages.len(), 5);
    let client_name = format!("@ckpt-dgc-{client}");
    let client_sock = dg
        .iter()
        .find(|s| s.peer.is_some())
        .expect("the connected client");
    assert_eq!(
        client_sock.name.as_ref().map(|n| n.display()),
        Some(client_name.clone())
    );

    let restored = restore_root(&img);
    let m = std::fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 65534, 65534));
    common::signal_until(restored, libc::SIGUSR1, "they talk on", || {
        numbered(&out, "c ").len() > 10
    });
    let t = text();
    for k in 0..5 {
        let q = format!("q{k}{}", ".".repeat(k * 3));
        let want = format!("s-queued {q} from={client_name}\n");
        assert!(t.contains(&want), "{want:?} not in\n{t}");
        assert!(t.contains(&format!("c-reply r{k}\n")), "{t}");
    }
    assert!(!t.contains("bad") && !t.contains("error"), "{t}");
    assert_consecutive(&numbered(&out, "c "), 5, "client");
    assert_consecutive(&numbered(&out, "s "), 5, "server");
    kill_tree(&[restored, client]);
    drop(all);
}

/// A lock /proc/locks shows (or a request waiting for one: `waiting`).
#[derive(Debug)]
struct Held {
    waiting: bool,
    kind: String,
    write: bool,
    pid: i32,
    start: String,
    end: String,
}

/// What /proc/locks shows on the file whose inode is `ino`.
fn locks_on(ino: u64) -> Vec<Held> {
    let text = std::fs::read_to_string("/proc/locks").unwrap();
    text.lines()
        .filter_map(|line| {
            let mut w: Vec<&str> = line.split_whitespace().skip(1).collect();
            let waiting = w.first() == Some(&"->");
            if waiting {
                w.remove(0);
            }
            let [kind, _, mode, pid, inode, start, end] = w[..] else {
                return None;
            };
            (inode.rsplit(':').next()?.parse::<u64>().ok()? == ino).then(|| Held {
                waiting,
                kind: kind.to_owned(),
                write: mode == "WRITE",
                pid: pid.parse().unwrap_or(0),
                start: start.to_owned(),
                end: end.to_owned(),
            })
        })
        .collect()
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Tries, from this process (outside the tree), a lock on `len` bytes from `start` of `path`
/// with fcntl `cmd` (F_SETLK, F_OFD_SETLK); the errno when refused. Dropped with the fd.
fn try_lock(path: &Path, cmd: i32, write: bool, start: i64, len: i64) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: a plain C struct; all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    (fl.l_start, fl.l_len) = (start, len);
    // SAFETY: `fl` is a valid struct flock for the call.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

/// Every lock of the image with the pid of the process that takes it again.
fn image_locks(m: &ckpt::manifest::Manifest) -> Vec<(i32, ckpt::fds::FileLock)> {
    m.processes
        .iter()
        .flat_map(|p| p.files.locks.iter().map(|l| (p.pid, l.clone())))
        .collect()
}

/// The only child of `pid`.
fn only_child(pid: i32) -> i32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let kids: Vec<i32> = text
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 1, "children of {pid}: {kids:?}");
    kids[0]
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_posix_lock_and_the_process_waiting_for_it_come_back_after_kill_and_restore() {
    use ckpt::fds::LockKind;
    let d = Dir::new("locks-posix");
    let (mut root, pid) = spawn_ready("locks", &["posix".as_ref(), d.0.as_os_str()]);
    let waiter = only_child(pid);
    let file = d.path("file");
    let ino = inode(&file);
    wait_for("the child waits for byte 15", || {
        locks_on(ino).iter().any(|l| l.waiting && l.pid == waiter)
    });
    let img = d.path("posix.img");
    let (_, image, pids) = common::checkpoint_kill(&mut root, &img);
    let recorded = image_locks(&image.manifest);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (holder, l) = &recorded[0];
    assert_eq!(*holder, pid);
    assert!(l.kind == LockKind::Posix && l.write, "{l:?}");
    assert_eq!((l.start, l.end), (10, Some(19)));
    assert_eq!(restore_root(&img), pid);
    wait_for(
        "the holder holds bytes 10-19 and the child waits for byte 15",
        || {
            let now = locks_on(ino);
            let held = now.iter().any(|l| {
                !l.waiting && l.kind == "POSIX" && l.write && l.pid == pid && l.start == "10"
            });
            held && now
                .iter()
                .any(|l| l.waiting && l.pid == waiter && l.start == "15")
        },
    );
    assert_eq!(
        try_lock(&file, libc::F_SETLK, false, 12, 1),
        Err(libc::EAGAIN),
        "a process outside takes a byte the restored process holds"
    );
    assert!(!d.path("child-locked").exists());
    std::fs::write(d.path("release"), "").unwrap();
    wait_for("the child gets byte 15 once the holder lets go", || {
        d.path("child-locked").exists()
    });
    let now = locks_on(ino);
    assert!(
        now.iter()
            .any(|l| !l.waiting && l.pid == waiter && l.start == "15" && l.end == "15"),
        "{now:?}"
    );
    kill_tree(&pids);
}

/// Runs `flock -n PATH true` (util-linux): whether it got the lock.
fn flock_free(path: &Path) -> bool {
    Command::new("flock")
        .arg("-n")
        .arg(path)
        .arg("true")
        .status()
        .unwrap()
        .success()
}

/// Starts `locks ofd` in `d` and waits until its flock child holds DIR/flocked; returns it
/// and the pids of the tree (locks, flock, sleep).
fn spawn_ofd_tree(d: &Dir) -> (Child, [i32; 3]) {
    let (root, pid) = spawn_ready("locks", &["ofd".as_ref(), d.0.as_os_str()]);
    let flock = only_child(pid);
    let mut sleep = 0;
    wait_for("flock runs sleep", || {
        std::fs::read_to_string(format!("/proc/{flock}/task/{flock}/children"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .is_some_and(|s| {
                sleep = s;
                std::fs::read_to_string(format!("/proc/{s}/comm")).unwrap_or_default() == "sleep\n"
            })
    });
    (root, [pid, flock, sleep])
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn flock_and_ofd_locks_come_back_after_kill_and_restore() {
    use ckpt::fds::LockKind;
    let d = Dir::new("locks-ofd");
    let (mut root, [pid, flock, _]) = spawn_ofd_tree(&d);
    let (file, flocked) = (d.path("file"), d.path("flocked"));
    assert!(!flock_free(&flocked));
    let img = d.path("ofd.img");
    let (_, image, pids) = common::checkpoint_kill(&mut root, &img);
    // Each lock once, though three processes share the OFD locks' file and two the flock's.
    let mut recorded: Vec<(i32, LockKind, bool)> = image_locks(&image.manifest)
        .into_iter()
        .map(|(p, l)| (p, l.kind, l.write))
        .collect();
    recorded.sort_by_key(|r| (r.0, r.2));
    let want = [
        (pid, LockKind::Ofd, false),
        (pid, LockKind::Ofd, true),
        (flock, LockKind::Flock, true),
    ];
    let mut want = want.to_vec();
    want.sort_by_key(|r| (r.0, r.2));
    assert_eq!(recorded, want);
    assert!(flock_free(&flocked), "the killed tree left the flock");
    assert_eq!(restore_root(&img), pid);
    let flocks = locks_on(inode(&flocked));
    assert!(
        flocks
            .iter()
            .any(|l| l.kind == "FLOCK" && l.write && l.pid == flock && !l.waiting),
        "{flocks:?}"
    );
    assert!(!flock_free(&flocked), "flock -n took the restored flock");
    // The OFD locks are the restored process's open file's, with their ranges and modes.
    let ofd = locks_on(inode(&file));
    let has = |write: bool, start: &str, end: &str| {
        ofd.iter()
            .any(|l| l.kind == "OFDLCK" && l.write == write && l.start == start && l.end == end)
    };
    assert!(has(false, "0", "99") && has(true, "200", "EOF"), "{ofd:?}");
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
    assert_eq!(fdinfo.matches("OFDLCK").count(), 2, "{fdinfo}");
    let ofd_lock = |write, start, len| try_lock(&file, libc::F_OFD_SETLK, write, start, len);
    assert_eq!(ofd_lock(false, 50, 1), Ok(()), "a read lock shares");
    assert_eq!(
        ofd_lock(true, 50, 1),
        Err(libc::EAGAIN),
        "a write lock does not"
    );
    assert_eq!(
        ofd_lock(true, 300, 1),
        Err(libc::EAGAIN),
        "200 to EOF is held"
    );
    assert_eq!(ofd_lock(true, 150, 1), Ok(()), "the gap is free");
    kill_tree(&pids);
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn restore_is_refused_while_the_original_holds_its_locks() {
    // OFD and flock locks (taken by the restorer) and a POSIX lock (taken by the restored
    // process after its restore ioctl): two trees, checkpointed without --kill.
    let d = Dir::new("locks-refused");
    let (mut ofd_root, ofd_pids) = spawn_ofd_tree(&d);
    let pd = Dir::new("locks-refused-posix");
    let (mut posix_root, posix_pid) = spawn_ready("locks", &["posix".as_ref(), pd.0.as_os_str()]);
    let waiter = only_child(posix_pid);
    for (dir, root) in [(&d, ofd_pids[0]), (&pd, posix_pid)] {
        let img = dir.path("live.img");
        ok(&ckpt(&[
            "checkpoint",
            &root.to_string(),
            "-o",
            img.to_str().unwrap(),
        ]));
        let out = ckpt(&["restore", img.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "restored while the original holds: {err}"
        );
        let file = dir.path("file");
        let holder = format!("is locked by process {root} (locks)");
        assert!(
            err.contains(&format!("{} {holder}", file.display())),
            "the message names the file and its holder: {err}"
        );
    }
    // The originals kept theirs.
    assert!(!flock_free(&d.path("flocked")));
    assert_eq!(
        try_lock(&pd.path("file"), libc::F_SETLK, true, 10, 1),
        Err(libc::EAGAIN)
    );
    // Our children first (a zombie is not gone until reaped), then the rest.
    for (root, rest) in [
        (&mut ofd_root, &ofd_pids[1..]),
        (&mut posix_root, &[waiter][..]),
    ] {
        unsafe { libc::kill(root.id() as i32, libc::SIGKILL) };
        root.wait().unwrap();
        kill_tree(rest);
    }
}

/// The "c N" numbers in DIR/c.
fn fifo_counts(dir: &Path) -> Vec<u64> {
    let (nums, bad) = common::numbered_lines(&dir.join("c"), "c ");
    let text = || std::fs::read_to_string(dir.join("c")).unwrap_or_default();
    assert!(!bad, "a line was lost or repeated: {}", text());
    nums
}

/// Named pipes (tests/progs/fifo.c): a writer and a reader of the tree on a FIFO with bytes
/// waiting in it, and a control FIFO the parent holds read-write. Killed, the data FIFO's
/// name removed, and restored: the FIFO is made again (its mode too), the waiting bytes are
/// back and the reader goes on with no line lost or repeated; a line written into the control
/// FIFO from outside reaches the restored process.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn named_pipes_come_back_with_their_bytes() {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let d = Dir::new("tree-fifo");
    let (mut root, pid) = spawn_ready("fifo", &[d.0.as_os_str()]);
    wait_for("the reader counts", || fifo_counts(&d.0).len() > 10);
    let img = d.path("fifo.img");
    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    let fifos = &image.manifest.shared.fifos;
    assert_eq!(fifos.len(), 2, "each FIFO once: {fifos:?}");
    let data = fifos.iter().find(|f| f.path.ends_with("/f")).unwrap();
    assert!(data.data_section.is_some(), "bytes were waiting in it");
    assert_eq!(data.mode, 0o600);
    let at_checkpoint = fifo_counts(&d.0).len();
    std::fs::remove_file(d.path("f")).unwrap();

    assert_eq!(restore_root(&img), pid);
    let meta = std::fs::metadata(d.path("f")).unwrap();
    assert!(meta.file_type().is_fifo(), "made again");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    wait_for("the reader counts on", || {
        fifo_counts(&d.0).len() > at_checkpoint + 10
    });
    let nums = fifo_counts(&d.0);
    assert!(
        nums.iter().enumerate().all(|(i, &n)| n == i as u64 + 1),
        "every line once, in order"
    );
    let mut ctl = std::fs::OpenOptions::new()
        .write(true)
        .open(d.path("ctl"))
        .unwrap();
    ctl.write_all(b"hello from outside\n").unwrap();
    wait_for("the control line arrives", || {
        std::fs::read_to_string(d.path("ctl.out")).is_ok_and(|t| t.contains("hello from outside"))
    });
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// Starts `shared_fds MODE` (tests/progs/shared_fds.c) in a new directory: the directory, the
/// parent (our child) and the pids of the parent and its child.
fn spawn_shared(mode: &str) -> (Dir, Child, i32, i32) {
    let d = Dir::new(&format!("shared-{mode}"));
    let mut root = Command::new(prog("shared_fds"))
        .arg(mode)
        .arg(&d.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut root);
    let pids: Vec<i32> = line
        .strip_prefix("ready ")
        .map(|w| {
            w.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(pids.len(), 2, "shared_fds said {line:?}");
    (d, root, pids[0], pids[1])
}

/// The numbers N of the lines "WORD N" that `who` ("parent", "child") logged in `d`.
fn logged(d: &Dir, who: &str, word: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(d.path(who)).unwrap_or_default();
    let prefix = format!("{word} ");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .collect()
}

/// Whether `who` logged the line `line`.
fn logged_line(d: &Dir, who: &str, line: &str) -> bool {
    let text = std::fs::read_to_string(d.path(who)).unwrap_or_default();
    text.lines().any(|l| l == line)
}

/// The index of the tree's shared open file whose kind `is` picks, checking that fd `fd` of
/// every process is a copy of it (one open file description, recorded once).
fn shared_at(
    m: &ckpt::manifest::Manifest,
    fd: i32,
    is: impl Fn(&ckpt::fds::FdKind) -> bool,
) -> usize {
    use ckpt::fds::FdKind;
    let files = &m.shared.open_files;
    let found: Vec<usize> = (0..files.len()).filter(|&i| is(&files[i].kind)).collect();
    assert_eq!(found.len(), 1, "recorded once: {files:?}");
    for p in &m.processes {
        let f = p.files.fds.iter().find(|f| f.fd == fd).unwrap();
        assert!(
            matches!(&f.kind, FdKind::OpenFile(end) if end.open_file == found[0]),
            "fd {fd} of {} is {:?}",
            p.pid,
            f.kind
        );
    }
    found[0]
}

/// The records "P 000042\n" and "C 000042\n" of DIR/log: each process's numbers, in file
/// order; fails on anything else (a record written over another, a hole).
fn records(d: &Dir) -> (Vec<u64>, Vec<u64>) {
    let bytes = std::fs::read(d.path("log")).unwrap_or_default();
    let (mut p, mut c) = (Vec::new(), Vec::new());
    // A record being written may be cut short: only whole ones.
    for rec in bytes.chunks_exact(9) {
        let text = std::str::from_utf8(rec).unwrap_or("");
        let n = text.get(2..8).and_then(|n| n.parse().ok());
        match (text.get(..2), n, text.ends_with('\n')) {
            (Some("P "), Some(n), true) => p.push(n),
            (Some("C "), Some(n), true) => c.push(n),
            _ => panic!("a torn record {text:?} in the log"),
        }
    }
    (p, c)
}

/// A regular file the parent opened before forking: both processes write through one open
/// file description, so one offset. After --kill and restore they still do: every record
/// lands after the last one, none overwrites another (with an offset each, both would write
/// from the checkpoint's position on, over each other, and numbers would go missing).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn shared_description_of_a_file_keeps_one_offset_after_kill_and_restore() {
    use ckpt::fds::FdKind;
    let (d, mut root, parent, _) = spawn_shared("file");
    wait_for("both write", || {
        let (p, c) = records(&d);
        p.len() > 5 && c.len() > 5
    });
    let img = d.path("file.img");
    let (_, image, pids) = common::checkpoint_kill(&mut root, &img);
    let log = shared_at(
        &image.manifest,
        3,
        |k| matches!(k, FdKind::Path(p) if p.path.ends_with("/log")),
    );
    let at_checkpoint = records(&d);
    let size = std::fs::metadata(d.path("log")).unwrap().len();
    match &image.manifest.shared.open_files[log].kind {
        FdKind::Path(p) => assert_eq!(p.pos, size, "the offset is the file's end"),
        k => panic!("{k:?}"),
    }
    assert_eq!(restore_root(&img), parent);
    wait_for("both write on", || {
        let (p, c) = records(&d);
        p.len() > at_checkpoint.0.len() + 20 && c.len() > at_checkpoint.1.len() + 20
    });
    let (p, c) = records(&d);
    for (who, nums) in [("parent", &p), ("child", &c)] {
        let expected: Vec<u64> = (0..nums.len() as u64).collect();
        assert_eq!(
            *nums, expected,
            "the {who}'s records, each once and in order"
        );
    }
    kill_tree(&pids);
}

/// An eventfd made before the fork: the child adds to it, the parent reads the sum. After
/// --kill and restore it is still one counter: once the child stops, the parent has read
/// every unit the child wrote, before the checkpoint and after.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn shared_description_of_an_eventfd_is_one_counter_after_kill_and_restore() {
    use ckpt::fds::FdKind;
    let (d, mut root, parent, _) = spawn_shared("eventfd");
    wait_for("the child writes and the parent reads", || {
        logged(&d, "child", "wrote").len() > 5 && !logged(&d, "parent", "sum").is_empty()
    });
    let img = d.path("eventfd.img");
    let (_, image, pids) = common::checkpoint_kill(&mut root, &img);
    shared_at(&image.manifest, 3, |k| matches!(k, FdKind::EventFd(_)));
    let wrote = logged(&d, "child", "wrote").len();
    assert_eq!(restore_root(&img), parent);
    wait_for("the child writes on", || {
        logged(&d, "child", "wrote").len() > wrote + 5
    });
    std::fs::write(d.path("stop"), "").unwrap();
    common::wait_for("the child stops", 30, || {
        !logged(&d, "child", "stopped").is_empty()
    });
    let total = logged(&d, "child", "stopped")[0];
    common::wait_for("the parent has read every unit the child wrote", 30, || {
        logged(&d, "parent", "sum").last() == Some(&total)
    });
    kill_tree(&pids);
}

/// A timerfd made and armed (for an hour) by the parent before the fork; the child waits in
/// read. After --kill and restore it is one timer: it is still armed as the child sees it,
/// and when the parent arms it again for 50 ms, the child's read returns.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn shared_description_of_a_timerfd_the_parent_arms_fires_for_the_child() {
    use ckpt::fds::FdKind;
    let (d, mut root, parent, child) = spawn_shared("timerfd");
    let img = d.path("timerfd.img");
    let (_, image, pids) = common::checkpoint_kill(&mut root, &img);
    let t = shared_at(&image.manifest, 3, |k| matches!(k, FdKind::TimerFd(_)));
    match &image.manifest.shared.open_files[t].kind {
        FdKind::TimerFd(t) => assert!(t.value_ns > 3000 * 1_000_000_000, "{t:?}"),
        k => panic!("{k:?}"),
    }
    assert_eq!(restore_root(&img), parent);
    let info = std::fs::read_to_string(format!("/proc/{child}/fdinfo/3")).unwrap();
    let left: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("it_value: ("))
        .and_then(|v| v.split(',').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{info}"));
    assert!(left > 3000, "armed for about an hour still: {info}");
    assert!(logged(&d, "child", "fired").is_empty());
    std::fs::write(d.path("arm"), "").unwrap();
    wait_for("the parent arms it", || logged_line(&d, "parent", "armed"));
    common::wait_for("the child's read returns", 30, || {
        logged(&d, "child", "fired") == [1]
    });
    kill_tree(&pids);
}

/// flock taken by the parent on a file it opened before the fork: the lock belongs to the
/// open file description both hold. After --kill and restore it is held by that one
/// description: when the parent closes its fd the child still holds it, and the child can
/// take it again through its own fd.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn shared_description_keeps_its_flock_while_one_holder_keeps_its_fd() {
    use ckpt::fds::{FdKind, LockKind};
    let (d, mut root, parent, _) = spawn_shared("flock");
    let lockfile = d.path("lockfile");
    assert!(!flock_free(&lockfile));
    let img = d.path("flock.img");
    let (_, image, pids) = common::checkpoint_kill(&mut root, &img);
    shared_at(
        &image.manifest,
        3,
        |k| matches!(k, FdKind::Path(p) if p.path.ends_with("/lockfile")),
    );
    let recorded = image_locks(&image.manifest);
    assert!(
        matches!(&recorded[..], [(p, l)] if *p == parent && l.kind == LockKind::Flock),
        "once: {recorded:?}"
    );
    assert!(flock_free(&lockfile), "the killed tree left the lock");
    assert_eq!(restore_root(&img), parent);
    assert!(!flock_free(&lockfile), "flock -n took the restored lock");
    let flocks: Vec<Held> = (locks_on(inode(&lockfile)).into_iter())
        .filter(|l| l.kind == "FLOCK")
        .collect();
    assert_eq!(flocks.len(), 1, "{flocks:?}");
    std::fs::write(d.path("close"), "").unwrap();
    wait_for("the parent closes its fd", || {
        logged_line(&d, "parent", "closed")
    });
    assert!(
        !flock_free(&lockfile),
        "the child's fd still holds the lock"
    );
    std::fs::write(d.path("relock"), "").unwrap();
    wait_for("the child locks again", || {
        logged_line(&d, "child", "relock ok") || logged(&d, "child", "relock failed").len() == 1
    });
    assert!(
        logged_line(&d, "child", "relock ok"),
        "the child's own fd is the lock's description: {:?}",
        std::fs::read_to_string(d.path("child"))
    );
    kill_tree(&pids);
}

/// An epoll instance made before the fork, watching eventfd A (fd 3, both hold it); the child
/// adds its own eventfd B at fd 10 (where the parent has another file) and waits on the
/// instance. After --kill and restore it is one interest list: a unit the parent adds to A
/// wakes the child, so does B (the child's watch, added back by the child), and a new
/// eventfd the parent adds after the restore reaches the child's wait.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn shared_description_of_an_epoll_instance_keeps_one_interest_list() {
    use ckpt::fds::FdKind;
    let (d, mut root, parent, _) = spawn_shared("epoll");
    wait_for("the child sees A's first unit", || {
        logged(&d, "child", "event") == [1]
    });
    let img = d.path("epoll.img");
    let (_, image, pids) = common::checkpoint_kill(&mut root, &img);
    let ep = shared_at(&image.manifest, 4, |k| matches!(k, FdKind::Epoll(_)));
    match &image.manifest.shared.open_files[ep].kind {
        FdKind::Epoll(e) => {
            let mut by: Vec<(i32, Option<usize>)> =
                e.watches.iter().map(|w| (w.fd, w.by)).collect();
            by.sort();
            assert_eq!(by, [(3, Some(0)), (10, Some(1))], "who adds each watch");
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(restore_root(&img), parent);
    for (poke, event) in [("poke-a", vec![1, 1]), ("poke-b", vec![1, 1, 2])] {
        std::fs::write(d.path(poke), "").unwrap();
        common::wait_for(&format!("{poke} wakes the child"), 30, || {
            logged(&d, "child", "event") == event
        });
    }
    std::fs::write(d.path("add"), "").unwrap();
    wait_for("the parent adds C", || logged_line(&d, "parent", "added"));
    common::wait_for("the parent's new watch reaches the child", 30, || {
        logged(&d, "child", "event") == [1, 1, 2, 3]
    });
    kill_tree(&pids);
}
