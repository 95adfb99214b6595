//! Bytes in flight in a pty, in the guest (tests/progs/ptypair.c: a master holder and the
//! program on its slave): output the master has not read (cooked, and in packet mode), input
//! the program has not read (a canonical line not ended yet with its echo, raw bytes), each
//! read exactly once after --kill and restore; without --kill the original gets them once
//! and so does a copy restored later; a locked pty still comes back.

mod common;

use common::{checkpoint_kill, ckpt, gone, ok, prog, restore_root, wait_for, Dir};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The bytes raw mode leaves as they are and a cooked terminal would not (ptypair.c).
const RAW_BYTES: &[u8] = b"\r\x03\x7f\x04a\0b\n\x15";
const LINES: &str = "line 0\r\nline 1\r\nline 2\r\nline 3\r\nline 4\r\nline 5\r\nline 6\r\n\
                     line 7\r\nline 8\r\nline 9\r\n";

/// Starts `ptypair MODE DIR` and waits until it has left its bytes in flight.
fn start(mode: &str, d: &Dir) -> Child {
    let child = Command::new(prog("ptypair"))
        .arg(mode)
        .arg(&d.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("ptypair is ready", 30, || d.path("ready").exists());
    child
}

/// The pty of the image, with its queued sizes: (to the master, to the program).
fn queued(img: &Path) -> (u64, u64) {
    let m = ckpt::manifest::Image::open(img).unwrap().manifest;
    assert_eq!(m.shared.ptys.len(), 1, "one pty");
    m.shared.ptys[0]
        .queued
        .as_ref()
        .map_or((0, 0), |q| (q.output, q.input_bytes()))
}

/// Lets the processes go on (DIR/go) and returns what the master and the program read
/// (DIR/master, DIR/slave: empty when the mode has none).
fn go_and_read(d: &Dir, program_reads: bool) -> (Vec<u8>, Vec<u8>) {
    std::fs::write(d.path("go"), b"").unwrap();
    let files_there = || d.path("master").exists() && (!program_reads || d.path("slave").exists());
    wait_for("the master and the program have read", 60, files_there);
    let read = |f: &str| std::fs::read(d.path(f)).unwrap_or_default();
    (read("master"), read("slave"))
}

/// A restored root (not our child) has finished.
fn wait_gone(pid: i32) {
    wait_for("the restored root exits", 30, || gone(pid));
}

/// Checkpoints `mode` with --kill, checks the image holds (to the master, to the program)
/// bytes, restores, and returns what each side reads then.
fn kill_and_restore(
    mode: &str,
    want_queued: (u64, u64),
    program_reads: bool,
) -> (Vec<u8>, Vec<u8>) {
    let d = Dir::new(&format!("pty-{mode}"));
    let mut root = start(mode, &d);
    let img = d.path("pty.img");
    let (_, image, _) = checkpoint_kill(&mut root, &img);
    assert_eq!(image.manifest.shared.ptys.len(), 1);
    assert_eq!(queued(&img), want_queued, "bytes queued in the image");
    let pid = restore_root(&img);
    let read = go_and_read(&d, program_reads);
    wait_gone(pid);
    read
}

/// (a) Lines the program wrote and the master had not read: read once after the restore,
/// with the terminal's \n to \r\n done once; `ckpt inspect` shows them.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn output_the_master_had_not_read_comes_back_once() {
    let d = Dir::new("pty-out-inspect");
    let mut root = start("out", &d);
    let img = d.path("pty.img");
    checkpoint_kill(&mut root, &img);
    let text = ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    assert!(
        text.contains("80 bytes queued to the master, 0 to the program"),
        "{text}"
    );
    let pid = restore_root(&img);
    let (master, _) = go_and_read(&d, false);
    wait_gone(pid);
    assert_eq!(String::from_utf8_lossy(&master), format!("{LINES}end\r\n"));
}

/// The same with the master in packet mode.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn output_in_packet_mode_comes_back_once() {
    let (master, _) = kill_and_restore("pkt", (80, 0), false);
    assert_eq!(String::from_utf8_lossy(&master), format!("{LINES}end\r\n"));
}

/// (b) A line and a line not ended yet, typed (written to the master) before the
/// checkpoint, with their echo: the program reads the line, then the rest of the other line
/// once it is ended; the master reads each echo once.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_canonical_line_not_ended_comes_back_once_with_its_echo() {
    // To the master: the echo "one\r\npartial"; to the program: "one\n" and "partial".
    let (master, slave) = kill_and_restore("canon", (12, 11), true);
    assert_eq!(String::from_utf8_lossy(&slave), "one\npartial end\n");
    assert_eq!(
        String::from_utf8_lossy(&master),
        "one\r\npartial end\r\ndone\r\n"
    );
}

/// (b) Bytes written to the master of a program in raw mode: read once, unchanged.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn raw_input_comes_back_once_unchanged() {
    let (master, slave) = kill_and_restore("raw", (0, RAW_BYTES.len() as u64), true);
    assert_eq!(slave, [RAW_BYTES, b"Z"].concat());
    assert_eq!(master, b"done\n", "nothing echoed");
}

/// (c) Without --kill the original goes on with its bytes, once; a copy restored from the
/// image afterwards gets them once too.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn without_kill_the_original_and_a_restored_copy_each_read_them_once() {
    let cases: [(&str, String, Option<&str>); 2] = [
        ("out", format!("{LINES}end\r\n"), None),
        (
            "canon",
            "one\r\npartial end\r\ndone\r\n".into(),
            Some("one\npartial end\n"),
        ),
    ];
    for (mode, want_master, want_slave) in cases {
        let d = Dir::new(&format!("pty-live-{mode}"));
        let mut root = start(mode, &d);
        let img = d.path("pty.img");
        let pid = root.id().to_string();
        ok(&ckpt(&["checkpoint", &pid, "-o", img.to_str().unwrap()]));
        assert_ne!(queued(&img), (0, 0), "{mode}: bytes were in flight");
        let (master, slave) = go_and_read(&d, want_slave.is_some());
        root.wait().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&master),
            want_master,
            "{mode}: original"
        );
        assert_eq!(
            String::from_utf8_lossy(&slave),
            want_slave.unwrap_or(""),
            "{mode}: original"
        );
        for f in ["master", "slave"] {
            let _ = std::fs::remove_file(d.path(f));
        }
        // The image's copy: its go file is there already.
        let restored = restore_root(&img);
        let (master, slave) = go_and_read(&d, want_slave.is_some());
        wait_gone(restored);
        assert_eq!(
            String::from_utf8_lossy(&master),
            want_master,
            "{mode}: copy"
        );
        assert_eq!(
            String::from_utf8_lossy(&slave),
            want_slave.unwrap_or(""),
            "{mode}: copy"
        );
    }
}

/// A master still locked (its slave never opened) comes back locked, with nothing queued,
/// and can be unlocked and used after the restore.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_locked_pty_comes_back_locked_and_works() {
    let d = Dir::new("pty-locked");
    let mut root = start("locked", &d);
    let img = d.path("pty.img");
    let (_, image, _) = checkpoint_kill(&mut root, &img);
    let p = &image.manifest.shared.ptys[0];
    assert!(
        p.locked && p.queued.is_none() && p.termios.is_none(),
        "{p:?}"
    );
    let pid = restore_root(&img);
    let (master, _) = go_and_read(&d, false);
    wait_gone(pid);
    assert_eq!(master, b"hi\r\n");
}
