//! `ckpt restore --lazy`, in the guest (ignored natively: they need /dev/ckpt): the program
//! runs while its page server places its memory, on faults and in the background.

mod common;
use common::kill_and_reap;
use common::{ckpt_env, gone, ok, wait_for, Dir};
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain prctl on ourselves: restored processes are reaped here.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    });
}

/// `ckpt restore --lazy IMG`: the restored root's pid.
fn restore_lazy(img: &Path) -> i32 {
    restore_lazy_with(img, true)
}

/// `restore_lazy`, the background loading off unless `prefetch` (only faults bring pages).
fn restore_lazy_with(img: &Path, prefetch: bool) -> i32 {
    let prefetch = ("CKPT_LAZY_PREFETCH", if prefetch { "1" } else { "0" });
    let out = ckpt_env(&["restore", "--lazy", img.to_str().unwrap()], &[prefetch]);
    let text = ok(&out);
    text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "restore printed {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What /proc says of `pids` (for messages).
fn described(pids: &[i32]) -> String {
    let stat = |p: &i32| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
    pids.iter().map(stat).collect::<Vec<_>>().join("; ")
}

/// The page servers serving `img` (named ckpt-pages, their command line naming `img`).
fn page_servers(img: &Path) -> Vec<i32> {
    let want = img.to_str().unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let lazy = args.contains(&&b"--lazy"[..]) && args.contains(&want.as_bytes());
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if lazy && comm.trim() == "ckpt-pages" && !zombie(pid) {
            out.push(pid);
        }
    }
    out
}

fn zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// The pid tracing `pid` (0: none).
fn tracer_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn lines(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines().map(str::to_owned).collect()
}

/// Starts tests/progs/counter with a `mib` MiB buffer of a repeated pattern; waits for its
/// first lines.
fn start_counter(out: &Path, mib: u32) -> Child {
    let child = Command::new(common::prog("counter"))
        .arg(out)
        .arg(mib.to_string())
        .env("COUNTER_FILL", "pattern")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the counter's first lines", 60, || lines(out).len() >= 3);
    child
}

/// Checkpoints `child` with --kill into `img`, once it is gone.
fn checkpoint_kill(child: &mut Child, img: &Path) {
    common::checkpoint_kill(child, img);
}

/// Asks the counter to verify its buffer (SIGUSR2) until it answers; its answer.
fn verify_memory(pid: i32, out: &Path) -> String {
    let from = lines(out).len();
    let mut answer = None;
    common::signal_until(pid, libc::SIGUSR2, "the counter's memory check", || {
        answer = lines(out)[from..]
            .iter()
            .find(|l| l.starts_with("mem-"))
            .cloned();
        answer.is_some()
    });
    answer.unwrap()
}

/// The counter runs on from a lazy restore, its image deleted right after `ckpt restore`
/// returned (the server holds it open): numbers go on without a gap, its buffer checks out
/// while pages still arrive and after the server is done, and the server then lets go of it.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_lazily_restored_counter_goes_on_with_its_memory_after_its_image_is_deleted() {
    setup();
    let d = Dir::new("lazy-counter");
    let (out, img) = (d.path("out"), d.path("img"));
    let mut child = start_counter(&out, 192);
    checkpoint_kill(&mut child, &img);
    let last: u64 = lines(&out)
        .iter()
        .filter_map(|l| l.parse().ok())
        .next_back()
        .unwrap();
    let from = lines(&out).len();
    let pid = restore_lazy(&img);
    let servers = page_servers(&img);
    std::fs::remove_file(&img).unwrap();
    assert_eq!(servers.len(), 1, "one page server: {}", described(&servers));
    assert_eq!(tracer_of(pid), servers[0], "the server holds the tree");
    assert_eq!(verify_memory(pid, &out).split(' ').next(), Some("mem-ok"));
    // Reparented to us (a subreaper), it stays a zombie until reaped.
    wait_for("the page server is done", 120, || {
        gone(servers[0]) || zombie(servers[0])
    });
    assert_eq!(tracer_of(pid), 0, "the server let go of the counter");
    assert_eq!(verify_memory(pid, &out).split(' ').next(), Some("mem-ok"));
    let after: Vec<u64> = lines(&out)[from..]
        .iter()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert_eq!(
        after.first(),
        Some(&(last + 1)),
        "first number after the restore"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "gap or repeat");
    kill_and_reap(pid);
}

/// Killing the page server while pages are still to come kills the tree it holds: a program
/// never reads zeros where its memory was.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn killing_the_page_server_kills_the_tree_rather_than_leave_it_zeros() {
    setup();
    let d = Dir::new("lazy-kill");
    let (out, img) = (d.path("out"), d.path("img"));
    let mut child = start_counter(&out, 256);
    checkpoint_kill(&mut child, &img);
    let pid = restore_lazy(&img);
    let servers = page_servers(&img);
    assert_eq!(servers.len(), 1, "one page server: {}", described(&servers));
    // SAFETY: signalling the test's page server.
    assert_eq!(unsafe { libc::kill(servers[0], libc::SIGKILL) }, 0);
    let mut status = 0;
    // SAFETY: reaping the restored counter (we are its subreaper).
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the counter ended with status {status:#x}, not killed"
    );
    assert!(!lines(&out).iter().any(|l| l.starts_with("mem-bad")));
}

const FORKER: &str = r#"
import hashlib, os, random, sys, time
out = open(sys.argv[1], "a", buffering=1)
rng = random.Random(7)
data = rng.randbytes(16 << 20)
digest = hashlib.sha256(data).hexdigest()
grown = bytearray(b"x" * (4 << 20))
n = 0
while True:
    n += 1
    # Checkpointed in this sleep, the first thing it does once restored is to fork: the
    # child reads the buffer before the parent has touched it again.
    out.write("sleeping %d\n" % n)
    time.sleep(1.5)
    pid = os.fork()
    if pid == 0:
        ok = hashlib.sha256(data).hexdigest() == digest
        out.write(("child-ok %d\n" if ok else "child-bad %d\n") % n)
        os._exit(0)
    os.waitpid(pid, 0)
    # The parent grows a buffer (mremap) and drops a big object (munmap), which the page
    # server must follow.
    grown += b"y" * (1 << 20)
    scratch = bytes(8 << 20)
    del scratch
    ok = grown[:4 << 20] == b"x" * (4 << 20) and hashlib.sha256(data).hexdigest() == digest
    out.write(("parent-ok %d\n" if ok else "parent-bad %d\n") % n)
"#;

/// python3 forking a child as the first thing it does after a lazy restore (checkpointed
/// while it sleeps before the fork, restored without background loading): the child's
/// inherited memory is whole (the server follows forks), as is the parent's while it grows
/// and frees buffers (mremap, munmap).
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn python_forking_right_after_a_lazy_restore_sees_its_memory() {
    setup();
    let d = Dir::new("lazy-python");
    let (out, img, script) = (d.path("out"), d.path("img"), d.path("forker.py"));
    std::fs::write(&script, FORKER).unwrap();
    let mut child = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let count = |prefix: &str| lines(&out).iter().filter(|l| l.starts_with(prefix)).count();
    wait_for("python's first round", 120, || count("parent-ok") >= 1);
    // Its next sleep: nothing but the process itself is alive then.
    wait_for("python's next sleep", 60, || count("sleeping") >= 2);
    checkpoint_kill(&mut child, &img);
    let before = count("parent-ok");
    assert_eq!(before, 1, "checkpointed in its second sleep");
    // Only faults bring pages: the fork finds the buffer absent.
    let pid = restore_lazy_with(&img, false);
    let servers = page_servers(&img);
    assert_eq!(servers.len(), 1, "one page server: {}", described(&servers));
    wait_for("three more rounds after the lazy restore", 120, || {
        count("parent-ok") >= before + 3
    });
    let text = lines(&out).join("\n");
    assert!(!text.contains("-bad"), "after a lazy restore:\n{text}");
    assert!(count("child-ok") >= before + 3);
    kill_and_reap(pid);
    // Without background loading, its tree gone, the server ends by itself rather than hold
    // the image for pages nobody will ask for.
    wait_for("the page server to end once its tree is gone", 60, || {
        page_servers(&img).is_empty()
    });
}

/// A lazy restore does not read the pages before the program runs, so a damaged pages
/// section is found by the page server in the background: it says so and the tree dies with
/// it, rather than run on with a damaged page.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_damaged_pages_section_found_in_the_background_kills_the_tree() {
    setup();
    let d = Dir::new("lazy-damaged");
    let (out, img, err) = (d.path("out"), d.path("img"), d.path("restore.err"));
    let printed = d.path("restore.out");
    let mut child = start_counter(&out, 32);
    checkpoint_kill(&mut child, &img);
    let image = ckpt::manifest::Image::open(&img).unwrap();
    let pages = image
        .sections
        .iter()
        .find(|s| s.kind == ckpt::image::PAGES)
        .unwrap();
    // The last byte of the first pages section: a page the program will not touch soon.
    let at = pages.offset + pages.len - 1;
    drop(image);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a], at).unwrap();
    drop(f);
    let restore = Command::new(common::ckpt_bin())
        .args(["restore", "--lazy", img.to_str().unwrap()])
        .stdin(Stdio::null())
        // Files, not pipes: the restored counter inherits them.
        .stdout(std::fs::File::create(&printed).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let said = || std::fs::read_to_string(&err).unwrap_or_default();
    if restore.success() {
        let pid: i32 = std::fs::read_to_string(&printed)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut status = 0;
        // SAFETY: reaping the restored counter (we are its subreaper).
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    }
    // Whether the tree ran or the restore failed, the server named the damage.
    wait_for("the page server's message", 60, || {
        said().contains("checksum")
    });
    assert!(said().contains("pages section"), "{}", said());
}
