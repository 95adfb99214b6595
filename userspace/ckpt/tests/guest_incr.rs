//! Incremental checkpoints (`ckpt checkpoint --parent`), in the guest (ignored natively).
//!
//! The target is tests/progs/dirtier.c: it changes about 1 % of its buffer per step when
//! asked (through a command file) and reports a checksum of the whole buffer after each
//! step and on request, so a restore from a chain can be checked byte for byte.

mod common;
use common::{ckpt, ok, wait_for, Dir, NEEDS_MODULE};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Restored processes are children of `ckpt restore`: reaped here.
        // SAFETY: plain prctl on ourselves.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    });
}

/// A running dirtier with its command and output files.
struct Dirtier {
    child: Option<Child>,
    pid: i32,
    out: PathBuf,
    cmd: PathBuf,
    steps: u32,
    checks: u32,
}

impl Dirtier {
    fn start(d: &Dir, name: &str, mib: u32) -> Dirtier {
        let (out, cmd) = (
            d.path(&format!("{name}.out")),
            d.path(&format!("{name}.cmd")),
        );
        let mut child = Command::new(common::prog("dirtier"))
            .arg(&out)
            .arg(&cmd)
            .arg(mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = common::first_line(&mut child);
        let pid = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
        Dirtier {
            child: Some(child),
            pid,
            out,
            cmd,
            steps: 0,
            checks: 0,
        }
    }

    fn ask(&self) {
        let tmp = self.cmd.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {}\n", self.steps, self.checks)).unwrap();
        std::fs::rename(&tmp, &self.cmd).unwrap();
    }

    /// The checksum reported on the line starting with `prefix`, once there.
    fn line(&self, prefix: &str) -> String {
        let mut found = None;
        wait_for(&format!("dirtier line {prefix:?}"), 60, || {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            found = (text.lines()).find_map(|l| l.strip_prefix(prefix).map(str::to_owned));
            found.is_some()
        });
        found.unwrap()
    }

    /// Does one more step; returns the checksum after it.
    fn step(&mut self) -> String {
        self.steps += 1;
        self.ask();
        self.line(&format!("step {} ", self.steps))
    }

    /// The checksum of the buffer now (the `n`-th check of this process's life, restores
    /// included: the count is in its memory).
    fn check(&mut self) -> String {
        self.checks += 1;
        self.ask();
        let n = self.checks as usize;
        let mut found = None;
        wait_for("a check line", 60, || {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            let checks: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("check "))
                .collect();
            found = checks.get(n - 1).map(|s| s.to_string());
            found.is_some()
        });
        found.unwrap()
    }

    /// Reaps it once a checkpoint with --kill killed it.
    fn killed(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.wait().unwrap();
        }
    }
}

impl Drop for Dirtier {
    fn drop(&mut self) {
        // SAFETY: signalling a process of the test.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// `ckpt checkpoint PID -o IMG --json [--parent PARENT] EXTRA...`, which must succeed.
fn checkpoint(pid: i32, img: &Path, parent: Option<&Path>, extra: &[&str]) -> serde_json::Value {
    let mut args: Vec<&str> = extra.to_vec();
    if let Some(p) = parent {
        args.extend(["--parent", p.to_str().unwrap()]);
    }
    common::checkpoint_json(pid, img, &args)
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// A full image and five incremental ones, each changing 1 % of 16 MiB: each incremental
/// image is a small fraction of the full one, and the restore of the last reads every page
/// from the image of the chain that has it: the buffer's checksum is the one before the
/// checkpoint. `ckpt inspect` shows the chain.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_chain_of_five_incremental_images_restores_the_last_state() {
    let _ = NEEDS_MODULE;
    setup();
    let d = Dir::new("incr-chain");
    let mut t = Dirtier::start(&d, "a", 16);
    let imgs: Vec<PathBuf> = (0..6).map(|i| d.path(&format!("img{i}"))).collect();
    let full = checkpoint(t.pid, &imgs[0], None, &[]);
    assert_eq!(full["pages_in_parent"].as_u64(), Some(0));
    let mut sum = String::new();
    for i in 1..6 {
        sum = t.step();
        let kill: &[&str] = if i == 5 { &["--kill"] } else { &[] };
        let s = checkpoint(t.pid, &imgs[i], Some(&imgs[i - 1]), kill);
        // 16 MiB is 4096 pages, 7/8 of them stored in the full image; a step changes 41.
        let (written, kept) = (
            s["pages_written"].as_u64().unwrap(),
            s["pages_in_parent"].as_u64().unwrap(),
        );
        assert!(
            kept > 3000,
            "image {i}: only {kept} pages taken from the chain"
        );
        assert!(written < 400, "image {i}: {written} pages written again");
        // A step changes one word of each page it changes: those whose previous version is
        // in the (plain) full image are stored as differences, in a few bytes each.
        let differences = s["pages_as_differences"].as_u64().unwrap();
        assert!(
            differences * 2 > written,
            "image {i}: {differences} of {written} pages stored as differences"
        );
        assert!(
            size(&imgs[i]) < written * 4096 / 2,
            "image {i} is {} bytes for {written} changed pages",
            size(&imgs[i])
        );
        assert!(
            size(&imgs[i]) * 10 < size(&imgs[0]),
            "image {i} is {} bytes, the full one {}",
            size(&imgs[i]),
            size(&imgs[0])
        );
    }
    t.killed();
    let text = ok(&ckpt(&["inspect", imgs[5].to_str().unwrap()]));
    assert!(text.contains("chain:    6 images, newest first"), "{text}");
    for img in &imgs {
        assert!(
            text.contains(img.to_str().unwrap()),
            "{} not shown: {text}",
            img.display()
        );
    }
    let pid = common::restore_root(&imgs[5]);
    assert_eq!(pid, t.pid);
    // The restored buffer, read by the program itself.
    assert_eq!(t.check(), sum, "the buffer after restoring the chain");
    // And it goes on: another step changes the sum.
    assert_ne!(t.step(), sum);
}

/// A dirtier of `mib` MiB in a new directory `name`, checkpointed whole, one step, then
/// checkpointed incrementally with --kill: (the directory, the dirtier, the incremental
/// image, the buffer's sum at its cut, the checkpoint's stats).
fn full_step_incremental(
    name: &str,
    mib: u32,
) -> (Dir, Dirtier, PathBuf, String, serde_json::Value) {
    setup();
    let d = Dir::new(name);
    let mut t = Dirtier::start(&d, "a", mib);
    let (full, inc) = (d.path("full"), d.path("inc"));
    checkpoint(t.pid, &full, None, &[]);
    let sum = t.step();
    let s = checkpoint(t.pid, &inc, Some(&full), &["--kill"]);
    t.killed();
    (d, t, inc, sum, s)
}

/// A process larger than one pages section (64 MiB of memory per DUMP_PAGES call): the
/// parent's runs meet where its sections meet, and the incremental image must not join the
/// unchanged pages on both sides into one run no section holds (it did: `inspect` and
/// `restore` refused the image as corrupt for any process over 64 MiB).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn an_incremental_image_of_a_process_over_one_section_restores() {
    let (_d, mut t, inc, sum, s) = full_step_incremental("incr-sections", 144);
    assert!(s["pages_in_parent"].as_u64().unwrap() > 30000, "{s}");
    ok(&ckpt(&["inspect", inc.to_str().unwrap()]));
    assert_eq!(common::restore_root(&inc), t.pid);
    assert_eq!(t.check(), sum, "the buffer after restoring");
}

/// A lazy restore of an incremental image whose changed pages are stored as differences: the
/// page server serves them from the view, where the parent's pages were added back, and the
/// program's own checksum of its buffer is the one it had at the cut.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_lazy_restore_of_pages_stored_as_differences_gives_them_whole() {
    let (_d, mut t, inc, sum, s) = full_step_incremental("incr-lazy", 16);
    assert!(s["pages_as_differences"].as_u64().unwrap() > 0, "{s}");
    let out = ckpt(&["restore", "--lazy", inc.to_str().unwrap()]);
    let pid: i32 = ok(&out).trim().parse().unwrap();
    assert_eq!(pid, t.pid);
    assert_eq!(
        t.check(),
        sum,
        "the buffer after a lazy restore of the chain"
    );
}

/// A parent image that is corrupted, missing or replaced makes restore and inspect fail,
/// naming it; nothing is restored.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_bad_parent_fails_the_restore_naming_it() {
    setup();
    let d = Dir::new("incr-bad-parent");
    let mut t = Dirtier::start(&d, "a", 4);
    let (img0, img1, img2) = (d.path("img0"), d.path("img1"), d.path("img2"));
    checkpoint(t.pid, &img0, None, &[]);
    t.step();
    checkpoint(t.pid, &img1, Some(&img0), &[]);
    t.step();
    checkpoint(t.pid, &img2, Some(&img1), &["--kill"]);
    t.killed();
    let good = std::fs::read(&img1).unwrap();
    let fails = |what: &str, expect: &[&str]| {
        for cmd in ["restore", "inspect"] {
            let out = ckpt(&[cmd, img2.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{cmd} with a {what} parent succeeded"
            );
            for e in expect {
                assert!(err.contains(e), "{cmd}, {what} parent: {err}");
            }
        }
        assert!(common::gone(t.pid), "restored with a {what} parent");
    };
    // A flipped byte in its pages.
    let mut bad = good.clone();
    bad[4096 + 100] ^= 0x40;
    std::fs::write(&img1, &bad).unwrap();
    fails("corrupted", &[img1.to_str().unwrap(), "corrupt"]);
    // Gone.
    std::fs::remove_file(&img1).unwrap();
    fails(
        "missing",
        &["parent image", img1.to_str().unwrap(), "is missing"],
    );
    // Replaced by another image (the full one): its id is not the one img2 names.
    std::fs::copy(&img0, &img1).unwrap();
    fails(
        "replaced",
        &[img1.to_str().unwrap(), "does not match: its id is"],
    );
    // Back as it was: the chain restores.
    std::fs::write(&img1, &good).unwrap();
    assert_eq!(common::restore_root(&img2), t.pid);
}

/// `--parent` must be the last checkpoint of this very process: an image of another
/// process, or an older image of this one (pages changed since it could show clean), is
/// refused before anything is stopped.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_parent_of_another_process_or_not_the_last_is_refused() {
    setup();
    let d = Dir::new("incr-refused");
    let mut a = Dirtier::start(&d, "a", 2);
    let b = Dirtier::start(&d, "b", 2);
    let (a0, a1, b1) = (d.path("a0"), d.path("a1"), d.path("b1"));
    checkpoint(a.pid, &a0, None, &[]);
    let refused = |pid: i32, parent: &Path, out: &Path, expect: &str| {
        let pid_s = pid.to_string();
        let args = [
            "checkpoint",
            &pid_s,
            "-o",
            out.to_str().unwrap(),
            "--parent",
            parent.to_str().unwrap(),
        ];
        let o = ckpt(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "--parent {} for {pid} accepted",
            parent.display()
        );
        assert!(
            err.contains(expect) && err.contains(parent.to_str().unwrap()),
            "{err}"
        );
        assert!(!out.exists(), "an image was written");
    };
    refused(b.pid, &a0, &b1, &format!("not of process {}", b.pid));
    a.step();
    checkpoint(a.pid, &a1, Some(&a0), &[]);
    // a1 reset the tracking: a0 is no longer the last checkpoint.
    refused(a.pid, &a0, &d.path("a2"), "is not the last checkpoint");
    // Written over its own parent: the chain would lose it.
    let (a_s, a1_s) = (a.pid.to_string(), a1.to_str().unwrap());
    let o = ckpt(&["checkpoint", &a_s, "-o", a1_s, "--parent", a1_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("would replace it"),
        "{err}"
    );
    // The latest is accepted.
    a.step();
    let s = checkpoint(a.pid, &d.path("a2"), Some(&a1), &[]);
    assert!(s["pages_in_parent"].as_u64().unwrap() > 0);
}

/// A checkpoint that fails after the cut (its change tracking already reset for an image
/// that is never written: here ckpt is killed while it writes the snapshot's pages) makes
/// the previous image unusable as a parent, since pages changed before the failed cut would
/// show clean; a full checkpoint starts a new chain.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_checkpoint_failing_after_the_cut_retires_the_old_parent() {
    setup();
    let d = Dir::new("incr-failed");
    let mut t = Dirtier::start(&d, "a", 2);
    let (a0, a1, b0, b1) = (d.path("a0"), d.path("a1"), d.path("b0"), d.path("b1"));
    checkpoint(t.pid, &a0, None, &[]);
    t.step();
    let pid = t.pid;
    let children =
        || std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut c = Command::new(common::ckpt_bin())
        .args(["checkpoint", &pid.to_string(), "-o", a1.to_str().unwrap()])
        .args(["--parent", a0.to_str().unwrap()])
        .env("CKPT_TEST_PAUSE_SNAPSHOT", "60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the snapshot exists", 60, || !children().trim().is_empty());
    c.kill().unwrap();
    c.wait().unwrap();
    common::reap_orphaned_workers();
    wait_for("the snapshot is gone", 30, || children().trim().is_empty());
    assert!(!a1.exists());
    t.step();
    let pid_s = pid.to_string();
    let o = ckpt(&[
        "checkpoint",
        &pid_s,
        "-o",
        a1.to_str().unwrap(),
        "--parent",
        a0.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "the old parent was taken after a failed checkpoint"
    );
    assert!(err.contains("is not the last checkpoint"), "{err}");
    checkpoint(t.pid, &b0, None, &[]);
    let sum = t.step();
    checkpoint(t.pid, &b1, Some(&b0), &["--kill"]);
    t.killed();
    assert_eq!(common::restore_root(&b1), t.pid);
    assert_eq!(t.check(), sum);
}

/// The last "NAME N" count in DIR/NAME (the cowtree's processes write them).
fn last_count(dir: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

/// The physical frame of `addr` in process `pid` (root sees frames).
fn frame(pid: i32, addr: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, addr / 4096 * 8).unwrap();
    let e = u64::from_ne_bytes(entry);
    (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
}

/// A tree whose processes share 32 MiB copy-on-write (tests/progs/cowtree.c): the
/// incremental image takes every process's unchanged pages from the full one, and restored
/// from the chain each process has its memory back and the pages shared again (the restorers
/// put the memory in place from the image of the chain that holds it).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_tree_sharing_memory_copy_on_write_comes_back_shared_from_a_chain() {
    setup();
    let d = Dir::new("incr-cowtree");
    let (mut root, pid) = common::spawn_ready("cowtree", &[d.0.as_os_str()]);
    let names = ["p", "c0", "c1", "c2"];
    let counting = |more: &[u64]| {
        names.iter().enumerate().all(|(i, n)| {
            last_count(&d.0, n).is_some_and(|c| c > more.get(i).copied().unwrap_or(2))
        })
    };
    wait_for("all count", 30, || counting(&[]));
    let (base, inc) = (d.path("base.img"), d.path("inc.img"));
    checkpoint(pid, &base, None, &[]);
    let s = checkpoint(pid, &inc, Some(&base), &["--kill"]);
    root.wait().unwrap();
    let kept = s["pages_in_parent"].as_u64().unwrap();
    assert!(kept >= 8192, "the 32 MiB taken from the full image: {s}");
    assert!(
        size(&inc) * 10 < size(&base),
        "{} against {}",
        size(&inc),
        size(&base)
    );
    let image = ckpt::manifest::Image::open(&inc).unwrap();
    let pids: Vec<i32> = image.manifest.processes.iter().map(|p| p.pid).collect();
    // The children, killed, are reparented to us (a subreaper): reaped here.
    common::wait_for("the tree is gone", 30, || {
        pids.iter().all(|&p| {
            // SAFETY: reaping a child of ours if it is one; nothing otherwise.
            unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
            common::gone(p)
        })
    });
    let region = (image.manifest.processes[0].memory.vmas.iter())
        .find(|v| v.end - v.start == 32 << 20)
        .expect("the 32 MiB mapping")
        .start;
    assert_eq!(common::restore_root(&inc), pid);
    let counts: Vec<u64> = names.iter().map(|n| last_count(&d.0, n).unwrap()).collect();
    let later: Vec<u64> = counts.iter().map(|c| c + 3).collect();
    wait_for("all count on", 30, || counting(&later));
    for n in names {
        let text = std::fs::read_to_string(d.path(n)).unwrap();
        assert!(
            !text.contains("bad"),
            "{n}'s memory came back wrong: {text}"
        );
    }
    for page in (3..8192).step_by(211) {
        let addr = region + page * 4096;
        let parents = frame(pid, addr).expect("present in the parent");
        for &c in &pids[1..] {
            assert_eq!(
                frame(c, addr),
                Some(parents),
                "page {page} of {c} is shared"
            );
        }
    }
    for &p in &pids {
        // SAFETY: signalling a process of the test.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// The images of a periodic directory, oldest first.
fn points(dir: &Path) -> Vec<String> {
    ckpt::periodic::points_in(dir).unwrap()
}

/// What a crontab line runs with `--incremental --full-every 3 --keep 2`: full, then two
/// incremental images chained to the one before, then a full one again; the oldest chain
/// goes only once no kept image needs it. `ckpt restore DIR` restores the latest from its
/// chain, byte for byte; the first run after that restore takes a full image (the restored
/// process is new to the change tracking), saying why.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn periodic_incremental_runs_chain_restart_and_survive_a_restore() {
    setup();
    let d = Dir::new("incr-periodic");
    let mut t = Dirtier::start(&d, "a", 8);
    let dir = d.path("points");
    let (pid_s, dir_s) = (t.pid.to_string(), dir.to_str().unwrap().to_owned());
    let line = [
        "checkpoint",
        &pid_s,
        "--dir",
        &dir_s,
        "--keep",
        "2",
        "--incremental",
        "--full-every",
        "3",
        "--json",
    ];
    let mut parents = Vec::new();
    for _ in 0..4 {
        t.step();
        let o: serde_json::Value = serde_json::from_str(&ok(&ckpt(&line))).unwrap();
        parents.push(o["parent"].as_str().map(str::to_owned));
    }
    let all = points(&dir);
    assert!(parents[0].is_none() && parents[3].is_none(), "{parents:?}");
    assert!(parents[1].is_some() && parents[2].is_some(), "{parents:?}");
    // Keeping 2: the last incremental (needs its whole chain of 3) and the new full one.
    assert_eq!(all.len(), 4, "{all:?}");
    let sum = t.step();
    let mut kill_line = line.to_vec();
    kill_line.push("--kill");
    let o: serde_json::Value = serde_json::from_str(&ok(&ckpt(&kill_line))).unwrap();
    assert!(o["parent"].is_string(), "chained to the full one: {o}");
    t.killed();
    // Now the first chain is no longer needed.
    assert_eq!(points(&dir).len(), 2, "{:?}", points(&dir));
    let pid = common::restore_root(&dir);
    assert_eq!(pid, t.pid);
    assert_eq!(
        t.check(),
        sum,
        "the buffer restored from the directory's chain"
    );
    let o = ckpt(&line);
    let text = ok(&o);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["parent"].is_null(), "after a restore: a full image: {v}");
    let warn = String::from_utf8_lossy(&o.stderr);
    assert!(warn.contains("a full image instead"), "{warn}");
    let log = std::fs::read_to_string(dir.join("ckpt.log")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains(" ok ")).count(),
        6,
        "{log}"
    );
}

/// Compressed and incremental together: a compressed full image, a compressed incremental
/// one and a plain incremental one after it; the restore decompresses each image of the
/// chain once and reads every page from the one holding it.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_chain_of_compressed_images_restores_the_last_state() {
    setup();
    let d = Dir::new("incr-compress");
    let mut t = Dirtier::start(&d, "a", 8);
    let imgs: Vec<PathBuf> = (0..3).map(|i| d.path(&format!("img{i}"))).collect();
    checkpoint(t.pid, &imgs[0], None, &["--compress"]);
    t.step();
    let s = checkpoint(t.pid, &imgs[1], Some(&imgs[0]), &["--compress"]);
    assert!(s["pages_in_parent"].as_u64().unwrap() > 1000, "{s}");
    let sum = t.step();
    checkpoint(t.pid, &imgs[2], Some(&imgs[1]), &["--kill"]);
    t.killed();
    let text = ok(&ckpt(&["inspect", imgs[2].to_str().unwrap()]));
    assert!(text.contains("chain:    3 images"), "{text}");
    assert_eq!(common::restore_root(&imgs[2]), t.pid);
    assert_eq!(
        t.check(),
        sum,
        "the buffer restored from a compressed chain"
    );
}

/// Keyed MACs (`--key`) through periodic incremental checkpoints: the chain is written with
/// the key; a restore with another key, or with the parent's MAC changed (every checksum
/// still right), is refused naming the image, and nothing is restored; with the key the
/// chain restores the last state (lazily: `--lazy` with `--key`).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_keyed_chain_restores_with_its_key_only() {
    use std::os::unix::fs::PermissionsExt;
    setup();
    let d = Dir::new("incr-keyed");
    let mut t = Dirtier::start(&d, "a", 4);
    let (key, other) = (d.path("key"), d.path("other"));
    for (k, byte) in [(&key, 1u8), (&other, 2)] {
        std::fs::write(k, [byte; 32]).unwrap();
        std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let dir = d.path("points");
    let (pid_s, dir_s, key_s) = (
        t.pid.to_string(),
        dir.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    );
    let line = [
        "checkpoint",
        &pid_s,
        "--dir",
        &dir_s,
        "--incremental",
        "--compress",
        "--key",
        &key_s,
        "--json",
    ];
    ok(&ckpt(&line));
    let sum = t.step();
    let mut kill_line = line.to_vec();
    kill_line.push("--kill");
    let o: serde_json::Value = serde_json::from_str(&ok(&ckpt(&kill_line))).unwrap();
    let parent = o["parent"]
        .as_str()
        .expect("an incremental image")
        .to_owned();
    t.killed();
    let parent = dir.join(Path::new(&parent).file_name().unwrap());
    let restore_with = |k: &Path| ckpt(&["restore", &dir_s, "--key", k.to_str().unwrap()]);
    let refused = |o: std::process::Output, expect: &[&str]| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "restored: {err}");
        for e in expect {
            assert!(err.contains(e), "{err}");
        }
        assert!(common::gone(t.pid), "restored anyway");
    };
    refused(restore_with(&other), &["its MAC does not match the key"]);
    // The parent's MAC changed: its checksums still hold, only the MAC tells.
    let good = std::fs::read(&parent).unwrap();
    let mut bad = good.clone();
    bad[ckpt::image::mac::MAC_AT] ^= 1;
    std::fs::write(&parent, &bad).unwrap();
    ckpt::manifest::Image::open(&parent).expect("checksums still right");
    refused(
        restore_with(&key),
        &[parent.to_str().unwrap(), "its MAC does not match the key"],
    );
    std::fs::write(&parent, &good).unwrap();
    // Lazily: the MAC needs every byte, so the chain is read whole first all the same.
    let out = ckpt(&["restore", &dir_s, "--key", &key_s, "--lazy"]);
    let pid: i32 = ok(&out).trim().parse().unwrap();
    assert_eq!(pid, t.pid);
    assert_eq!(t.check(), sum, "the buffer restored from the keyed chain");
}
