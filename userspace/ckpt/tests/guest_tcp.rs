//! Established TCP connections, in the guest: both ends in the tree; a client outside the
//! tree that keeps its connection across the server's checkpoint with --kill and restore
//! (the network lock holds its packets back meanwhile); and a ckpt killed while the lock is
//! on, which must leave neither the lock nor a broken connection behind.

mod common;

use ckpt::fds::tcp::TcpState;
use common::{gone, restore_root, spawn_ready, Dir};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    common::wait_for(what, 30, cond)
}

fn port() -> u16 {
    20000 + (std::process::id() % 5000) as u16
}

/// Whether nftables has the table `name` (other tests' locks may be there too: tests run
/// side by side).
fn lock_held(name: &str) -> bool {
    lock_tables()
        .iter()
        .any(|t| t.split_whitespace().last() == Some(name))
}

/// The ckpt tables nftables has.
fn lock_tables() -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ckpt_"))
        .map(String::from)
        .collect()
}

/// The "c N" counts in DIR/c, and whether a line says "bad".
fn counts(dir: &Path) -> (Vec<u64>, bool) {
    common::numbered_lines(&dir.join("c"), "c ")
}

/// A client of the tree (`tcpecho ask`) connected to our listener `l`, which has sent its
/// request and shut down its side: the process, its pid and our end of the connection.
fn asking_client(d: &Dir, l: &TcpListener) -> (std::process::Child, i32, TcpStream) {
    use std::io::Read;
    let port = l.local_addr().unwrap().port().to_string();
    let (client, pid) = spawn_ready("tcpecho", &[d.0.as_os_str(), port.as_ref(), "ask".as_ref()]);
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut request = Vec::new();
    s.read_to_end(&mut request).unwrap();
    assert_eq!(request, b"request");
    (client, pid, s)
}

/// Checkpoints the `hold` server `pid` with --kill, its one connection in `state`
/// (/proc/net/tcp code `code`) with `unread` bytes it has not read; restores it, checks the
/// connection is back in that state and the network lock lifted, then lets the server read:
/// returns what it read ("...|EOF").
fn carry_in_state(
    (server, pid): (&mut std::process::Child, i32),
    d: &Dir,
    (state, code, port): (TcpState, &str, u16),
    unread: u32,
) -> String {
    let img = d.path(&format!("{code}.img"));
    let (_, image, _) = common::checkpoint_kill(server, &img);
    let tcp = &image.manifest.shared.tcp;
    assert_eq!(tcp.len(), 1);
    assert_eq!(tcp[0].state, state, "{:?}", tcp[0]);
    assert_eq!(tcp[0].recv_len, unread);
    let table = image.manifest.netlock.clone().expect("a network lock");
    assert_eq!(restore_root(&img), pid);
    assert!(!lock_held(&table), "the lock is lifted");
    assert!(tcp_state_on(port, code), "{state:?} again");
    std::fs::write(d.path("go"), b"").unwrap();
    let got = || std::fs::read_to_string(d.path("got")).unwrap_or_default();
    wait_for("the server reads its connection", || !got().is_empty());
    got()
}

/// A server and its client, both in the tree, over loopback TCP with bytes in flight:
/// killed and restored, both ends come back connected, every reply arrives once and in order.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn both_ends_of_a_loopback_connection_come_back() {
    let d = Dir::new("tcp-pair");
    let port = port().to_string();
    let (mut root, pid) = spawn_ready("tcpecho", &[d.0.as_os_str(), port.as_ref()]);
    wait_for("the client counts", || counts(&d.0).0.len() > 10);
    let img = d.path("pair.img");
    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    let m = &image.manifest;
    assert_eq!(m.shared.tcp.len(), 2, "both ends: {:?}", m.shared.tcp);
    assert_eq!(m.shared.listeners.len(), 1);
    let at_checkpoint = counts(&d.0).0.len();
    assert_eq!(restore_root(&img), pid);
    wait_for("the client counts on", || {
        counts(&d.0).0.len() > at_checkpoint + 10
    });
    let (nums, bad) = counts(&d.0);
    assert!(!bad, "a reply was lost, repeated or out of order");
    assert!(
        nums.iter().enumerate().all(|(i, &n)| n == i as u64 + 1),
        "every reply once, in order"
    );
    let table = m.netlock.clone().expect("a network lock");
    assert!(
        !lock_held(&table),
        "the lock is lifted: {:?}",
        lock_tables()
    );
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// One request and its reply over `s`.
fn ask(s: &mut TcpStream, reader: &mut BufReader<TcpStream>, n: u64) -> u64 {
    writeln!(s, "{n}").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("reply {line:?}"))
}

/// The echo server (`tcpecho serve`) on port `port() + offset`, and a connection to it.
fn server_and_client(
    name: &str,
    offset: u16,
) -> (
    Dir,
    std::process::Child,
    i32,
    TcpStream,
    BufReader<TcpStream>,
) {
    let d = Dir::new(name);
    let port = port() + offset;
    let p = port.to_string();
    let (server, pid) = spawn_ready("tcpecho", &[d.0.as_os_str(), p.as_ref(), "serve".as_ref()]);
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let reader = BufReader::new(s.try_clone().unwrap());
    (d, server, pid, s, reader)
}

/// A client outside the tree keeps its connection to a server checkpointed with --kill: while
/// the server is down the network lock holds its packets back (no reset); after the restore
/// its pending request is answered and every reply arrives exactly once.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_client_outside_keeps_its_connection_across_kill_and_restore() {
    let (d, mut server, pid, mut s, mut reader) = server_and_client("tcp-outside", 1);
    for n in 1..=5 {
        assert_eq!(ask(&mut s, &mut reader, n), n);
    }
    let img = d.path("server.img");
    let (_, image, _) = common::checkpoint_kill(&mut server, &img);
    assert_eq!(image.manifest.shared.tcp.len(), 1);
    let table = image.manifest.netlock.clone().expect("a network lock");
    assert!(
        lock_tables().iter().any(|t| t.contains(&table)),
        "the lock holds while the server is down"
    );
    // A request while it is down: held back, not refused.
    writeln!(s, "6").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(restore_root(&img), pid);
    assert!(!lock_held(&table), "the lock is lifted after the restore");
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "6",
        "the request sent while it was down is answered"
    );
    for n in 7..=12 {
        assert_eq!(ask(&mut s, &mut reader, n), n, "every reply once");
    }
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the server is gone", || gone(pid));
}

/// A damaged image of a server killed with its connection locked is refused, by a full and
/// by a lazy restore, before anything is made: its pages are checked before the lock would be
/// lifted, so the lock still holds the client's packets and the good copy of the image
/// restores the connection afterwards.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_damaged_image_leaves_the_connection_locked_for_another_try() {
    let (d, mut server, pid, mut s, mut reader) = server_and_client("tcp-damaged", 10);
    assert_eq!(ask(&mut s, &mut reader, 1), 1);
    let img = d.path("server.img");
    let (_, image, _) = common::checkpoint_kill(&mut server, &img);
    let table = image.manifest.netlock.clone().expect("a network lock");
    let bad = d.path("bad.img");
    let i = common::damage_pages(&image, &img, &bad);
    for lazy in [false, true] {
        let mut args = vec!["restore", bad.to_str().unwrap()];
        args.extend(lazy.then_some("--lazy"));
        let o = common::ckpt(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "lazy {lazy}: {err}");
        assert!(
            err.contains(&format!("section {i} (pages) checksum mismatch")),
            "lazy {lazy}: {err}"
        );
        assert!(gone(pid), "lazy {lazy}: the damaged image runs");
        assert!(lock_held(&table), "lazy {lazy}: the lock was lifted");
    }
    writeln!(s, "2").unwrap();
    assert_eq!(restore_root(&img), pid);
    assert!(!lock_held(&table), "the lock is lifted after the restore");
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "2", "the request sent meanwhile is answered");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the server is gone", || gone(pid));
}

/// An inetd-style service: `cat` (Debian's) started with an accepted TCP connection as its
/// stdin and stdout. The connection is the program's own, not the shell's stdio: killed and
/// restored, it is back at fds 0 and 1 and the client outside (this test) keeps talking to
/// it, a line sent while it was down answered too.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn an_inetd_style_service_keeps_its_connection_on_its_stdio() {
    let d = Dir::new("tcp-inetd");
    let l = TcpListener::bind(("127.0.0.1", port() + 9)).unwrap();
    let mut s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (conn, _) = l.accept().unwrap();
    let conn = std::os::fd::OwnedFd::from(conn);
    let mut cat = Command::new("cat")
        .stdin(conn.try_clone().unwrap())
        .stdout(conn)
        .spawn()
        .unwrap();
    let pid = cat.id() as i32;
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut next_line = || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    };
    writeln!(s, "before").unwrap();
    assert_eq!(next_line(), "before");
    let img = d.path("cat.img");
    let (_, image, _) = common::checkpoint_kill(&mut cat, &img);
    assert_eq!(
        image.manifest.shared.tcp.len(),
        1,
        "the connection is carried"
    );
    writeln!(s, "while down").unwrap();
    assert_eq!(restore_root(&img), pid);
    for fd in [0, 1] {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert!(
            target.to_string_lossy().starts_with("socket:"),
            "fd {fd} is {target:?}"
        );
    }
    assert_eq!(next_line(), "while down", "the line sent while it was down");
    writeln!(s, "after").unwrap();
    assert_eq!(next_line(), "after");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("cat is gone", || gone(pid));
}

/// A ckpt killed while the connections are locked (repair mode on, packets held back): its
/// guard lifts the lock, the server goes on and its client gets its replies.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_killed_ckpt_leaves_no_lock_behind() {
    let (d, mut server, pid, mut s, mut reader) = server_and_client("tcp-killed", 2);
    assert_eq!(ask(&mut s, &mut reader, 1), 1);
    let img = d.path("never.img");
    let mut c = Command::new(common::ckpt_bin())
        .args([
            "checkpoint",
            &pid.to_string(),
            "-o",
            img.to_str().unwrap(),
            "--kill",
        ])
        .env("CKPT_TEST_PAUSE_LOCKED", "60")
        .spawn()
        .unwrap();
    // Its table's name starts with the pid of its worker (the child doing the work).
    let worker = || common::children_of(c.id() as i32).first().copied();
    wait_for("ckpt's worker starts", || worker().is_some());
    let ours = format!("ckpt_{}_", worker().unwrap());
    let held = || lock_tables().iter().any(|t| t.contains(&ours));
    wait_for("the lock is on", held);
    c.kill().unwrap();
    c.wait().unwrap();
    wait_for("the guard lifts the lock", || !held());
    assert!(!img.exists(), "no image under the final name");
    for n in 2..=5 {
        assert_eq!(ask(&mut s, &mut reader, n), n, "the connection works");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `--tcp-close`: without --kill the connection is left alone and nothing is locked; with
/// it, the restored server finds its connection ended (reset: its read returns ECONNRESET,
/// or end of file) and accepts new ones.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn tcp_close_ends_the_connection_and_the_server_goes_on() {
    let (d, mut server, pid, mut s, mut reader) = server_and_client("tcp-close", 3);
    assert_eq!(ask(&mut s, &mut reader, 1), 1);
    let img = d.path("live.img");
    let out = common::ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--tcp-close",
    ]);
    common::ok(&out);
    let image = ckpt::manifest::Image::open(&img).unwrap();
    assert!(image.manifest.shared.tcp.is_empty());
    assert_eq!(image.manifest.shared.tcp_closed.len(), 1);
    assert!(image.manifest.netlock.is_none());
    assert_eq!(
        ask(&mut s, &mut reader, 2),
        2,
        "the original connection goes on"
    );

    let img = d.path("closed.img");
    let out = common::ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--tcp-close",
        "--kill",
    ]);
    common::ok(&out);
    server.wait().unwrap();
    wait_for("the server is gone", || gone(pid));
    let closed = ckpt::manifest::Image::open(&img).unwrap();
    assert!(
        closed.manifest.netlock.is_none(),
        "no lock with --tcp-close"
    );
    let inspect = common::ok(&common::ckpt(&["inspect", img.to_str().unwrap()]));
    assert!(inspect.contains("recorded closed"), "{inspect}");
    assert_eq!(restore_root(&img), pid);
    let ends = || std::fs::read_to_string(d.path("s")).unwrap_or_default();
    wait_for("the server sees its connection end", || {
        ends().contains("end")
    });
    let end = ends();
    assert!(
        end == "end 0\n" || end == format!("end {}\n", libc::ECONNRESET),
        "end of file or ECONNRESET: {end:?}"
    );
    let port = port() + 3;
    let mut s2 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader2 = BufReader::new(s2.try_clone().unwrap());
    for n in 1..=3 {
        assert_eq!(
            ask(&mut s2, &mut reader2, n),
            n,
            "a new connection is served"
        );
    }
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the server is gone", || gone(pid));
}

/// Whether /proc/net/tcp shows a socket on local port `port` in state `state` (hex).
fn tcp_state_on(port: u16, state: &str) -> bool {
    tcp_state_at(1, port, state)
}

/// Whether /proc/net/tcp shows a socket whose address `field` (1 local, 2 remote) is
/// 127.0.0.1:`port` in state `state` (hex).
fn tcp_state_at(field: usize, port: u16, state: &str) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let addr = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(field) == Some(&addr.as_str()) && f.get(3) == Some(&state)
    })
}

/// A connection whose client has shut down its side (CLOSE_WAIT at the server, with unread
/// bytes before the FIN) is carried: after restore the server reads the bytes, then end of
/// file, and its close reaches the client.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_close_wait_connection_comes_back_with_its_data_and_fin() {
    let d = Dir::new("tcp-closewait");
    let port = port() + 4;
    let p = port.to_string();
    let (mut server, pid) = spawn_ready("tcpecho", &[d.0.as_os_str(), p.as_ref(), "hold".as_ref()]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"hello, half closed").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for("the server's side is in CLOSE_WAIT", || {
        tcp_state_on(port, "08")
    });
    let got = carry_in_state(
        (&mut server, pid),
        &d,
        (TcpState::CloseWait, "08", port),
        18,
    );
    assert_eq!(got, "hello, half closed|EOF");
    let mut rest = Vec::new();
    use std::io::Read;
    s.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "the server's close ends the client's side: {rest:?}"
    );
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the server is gone", || gone(pid));
}

/// A client in the tree that has shut down its side, its FIN acknowledged (FIN_WAIT2), is
/// carried: after restore the peer outside (this test) still reads its end of file, and
/// what the peer sends then, and its close, reach the client.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_fin_wait2_connection_comes_back_half_closed() {
    let d = Dir::new("tcp-finwait2");
    let port = port() + 5;
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (mut client, pid, mut s) = asking_client(&d, &l);
    wait_for("the client's side is in FIN_WAIT2", || {
        tcp_state_at(2, port, "05")
    });
    let img = d.path("fw2.img");
    let (_, image, _) = common::checkpoint_kill(&mut client, &img);
    let tcp = &image.manifest.shared.tcp;
    assert_eq!(tcp.len(), 1);
    assert_eq!(tcp[0].state, TcpState::FinWait2, "{:?}", tcp[0]);
    assert_eq!((tcp[0].send_len, tcp[0].recv_len), (0, 0));
    assert_eq!(restore_root(&img), pid);
    assert!(tcp_state_at(2, port, "05"), "FIN_WAIT2 again");
    s.write_all(b"reply").unwrap();
    drop(s);
    std::fs::write(d.path("go"), b"").unwrap();
    let got = || std::fs::read_to_string(d.path("got")).unwrap_or_default();
    wait_for("the client reads its connection", || !got().is_empty());
    assert_eq!(got(), "reply|EOF");
    wait_for("the client is done", || gone(pid));
}

/// An nftables table of the test's own that drops the packets `rule` matches, deleted on
/// drop: a peer whose acknowledgements do not arrive.
struct Dropping(String);

impl Dropping {
    fn new(name: &str, rule: &str) -> Dropping {
        let text = format!(
            "table inet {name} {{\n chain c {{\n type filter hook input priority -160; policy accept;\n {rule}\n }}\n}}\n"
        );
        let mut c = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success(), "nft {text}");
        Dropping(name.into())
    }
}

impl Drop for Dropping {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}

/// A client in the tree whose FIN (and last bytes) the peer has not acknowledged
/// (FIN_WAIT1: the peer's acknowledgements are dropped) is carried with its unacknowledged
/// bytes: once the peer's packets pass again, the FIN is acknowledged (FIN_WAIT2: the
/// sequence numbers are the ones the peer expects), and the peer's reply and close reach it.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_fin_wait1_connection_comes_back_and_finishes_closing() {
    let d = Dir::new("tcp-finwait1");
    let port = port() + 6;
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let acks = Dropping::new(
        &format!("inettest_fw1_{port}"),
        &format!("tcp sport {port} tcp flags & syn == 0 drop"),
    );
    let (mut client, pid, mut s) = asking_client(&d, &l);
    wait_for("the client's side is in FIN_WAIT1", || {
        tcp_state_at(2, port, "04")
    });
    let img = d.path("fw1.img");
    let (_, image, _) = common::checkpoint_kill(&mut client, &img);
    let tcp = &image.manifest.shared.tcp;
    assert_eq!(tcp.len(), 1);
    assert_eq!(tcp[0].state, TcpState::FinWait1, "{:?}", tcp[0]);
    assert_eq!((tcp[0].send_len, tcp[0].unsent), (7, 0), "unacknowledged");
    assert_eq!(restore_root(&img), pid);
    assert!(tcp_state_at(2, port, "04"), "FIN_WAIT1 again");
    drop(acks);
    wait_for("the FIN is acknowledged", || tcp_state_at(2, port, "05"));
    s.write_all(b"reply").unwrap();
    drop(s);
    std::fs::write(d.path("go"), b"").unwrap();
    let got = || std::fs::read_to_string(d.path("got")).unwrap_or_default();
    wait_for("the client reads its connection", || !got().is_empty());
    assert_eq!(got(), "reply|EOF");
    wait_for("the client is done", || gone(pid));
}

/// A server in the tree that has shut down its side after its client did (LAST_ACK: the
/// client's acknowledgements are dropped) is carried with its unread bytes: after restore
/// it reads them and end of file, and once the client's packets pass again its FIN is
/// acknowledged and the connection ends.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_last_ack_connection_comes_back_and_ends() {
    let d = Dir::new("tcp-lastack");
    let port = port() + 7;
    let p = port.to_string();
    let (mut server, pid) = spawn_ready("tcpecho", &[d.0.as_os_str(), p.as_ref(), "shut".as_ref()]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"hi").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for("the server's side is in CLOSE_WAIT", || {
        tcp_state_on(port, "08")
    });
    let mine = s.local_addr().unwrap().port();
    let acks = Dropping::new(
        &format!("inettest_la_{port}"),
        // Its acknowledgements only (its FIN went before; the one the restore makes again
        // must pass).
        &format!("tcp sport {mine} tcp flags & (syn | fin) == 0 drop"),
    );
    std::fs::write(d.path("shut"), b"").unwrap();
    wait_for("the server's side is in LAST_ACK", || {
        tcp_state_on(port, "09")
    });
    let got = carry_in_state((&mut server, pid), &d, (TcpState::LastAck, "09", port), 2);
    assert_eq!(got, "hi|EOF");
    drop(acks);
    wait_for("the server's FIN is acknowledged", || {
        !tcp_state_on(port, "09")
    });
    drop(s);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the server is gone", || gone(pid));
}

/// Both sides closing at once (CLOSING: the server's FIN is not acknowledged, the client's
/// FIN has arrived; the server's FINs are dropped): carried, the server reads its bytes and
/// end of file, and once its FIN passes again the connection ends.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_closing_connection_comes_back_and_ends() {
    use std::io::Read;
    let d = Dir::new("tcp-closing");
    let port = port() + 8;
    let p = port.to_string();
    let (mut server, pid) = spawn_ready("tcpecho", &[d.0.as_os_str(), p.as_ref(), "shut".as_ref()]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"hi").unwrap();
    let fins = Dropping::new(
        &format!("inettest_cl_{port}"),
        &format!("tcp sport {port} tcp flags & fin == fin drop"),
    );
    std::fs::write(d.path("shut"), b"").unwrap();
    wait_for("the server's side is in FIN_WAIT1", || {
        tcp_state_on(port, "04")
    });
    s.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for("the server's side is in CLOSING", || {
        tcp_state_on(port, "0B")
    });
    let got = carry_in_state((&mut server, pid), &d, (TcpState::Closing, "0B", port), 2);
    assert_eq!(got, "hi|EOF");
    drop(fins);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "the server's FIN reaches the client: {rest:?}"
    );
    wait_for("the server's FIN is acknowledged", || {
        !tcp_state_on(port, "0B")
    });
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the server is gone", || gone(pid));
}
