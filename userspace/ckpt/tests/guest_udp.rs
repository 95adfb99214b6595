//! UDP sockets, in the guest: an echo server in the tree with a client outside it (this
//! test), whose queued datagrams come back with their sender and whose exchange resumes
//! after checkpoint --kill and restore; and two UDP sockets of the tree connected to each
//! other.

mod common;

use common::{restore_root, spawn_ready, Dir};
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

fn port() -> u16 {
    30000 + (std::process::id() % 5000) as u16
}

/// The "c N" counts in DIR/c, and whether a line says "bad".
fn counts(dir: &Path) -> (Vec<u64>, bool) {
    common::numbered_lines(&dir.join("c"), "c ")
}

/// Every reply `c` receives within `secs` seconds, counted by number (as text).
fn replies(
    c: &UdpSocket,
    secs: u64,
    until: impl Fn(&BTreeMap<u64, u32>) -> bool,
) -> BTreeMap<u64, u32> {
    let mut got = BTreeMap::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    while t0.elapsed() < Duration::from_secs(secs) && !until(&got) {
        if let Ok((n, _)) = c.recv_from(&mut buf) {
            let num: u64 = String::from_utf8_lossy(&buf[..n]).parse().unwrap();
            *got.entry(num).or_insert(0) += 1;
        }
    }
    got
}

/// A slow UDP echo server with datagrams waiting in its queue, killed and restored: the
/// queued ones are answered once each, to their sender (they came back as if from it), the
/// port is bound again and a new exchange works.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_udp_server_answers_its_queue_and_goes_on_after_restore() {
    let d = Dir::new("udp-echo");
    let port = port();
    let p = port.to_string();
    let (mut server, pid) = spawn_ready("udpecho", &["serve".as_ref(), p.as_ref(), "400".as_ref()]);
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to = ("127.0.0.1", port);
    c.send_to(b"1", to).unwrap();
    assert_eq!(replies(&c, 10, |g| g.contains_key(&1)).get(&1), Some(&1));
    for n in 2..=8 {
        c.send_to(n.to_string().as_bytes(), to).unwrap();
    }
    let img = d.path("udp.img");
    let (_, image, _) = common::checkpoint_kill(&mut server, &img);
    let udp = &image.manifest.shared.udp;
    assert_eq!(udp.len(), 1, "{udp:?}");
    assert!(
        udp[0].display.ends_with(&format!(":{port}")),
        "{}",
        udp[0].display
    );
    let me = c.local_addr().unwrap();
    let queued = udp[0].datagrams.len();
    assert!(queued >= 1, "datagrams were queued at the checkpoint");
    for dg in &udp[0].datagrams {
        let from = ckpt::fds::tcp::socket_addr(&dg.from);
        assert_eq!(from, Some(me), "each datagram with its sender");
    }
    // While it is down: may be lost (UDP), never answered twice.
    c.send_to(b"9", to).unwrap();
    let before = replies(&c, 1, |_| false);
    assert_eq!(restore_root(&img), pid);
    let mut got = replies(&c, 30, |g| (2..=8).all(|n| g.contains_key(&n)));
    for (n, k) in before {
        *got.entry(n).or_insert(0) += k;
    }
    for n in 2..=8 {
        assert_eq!(got.get(&n), Some(&1), "reply {n} once: {got:?}");
    }
    // The exchange resumes.
    let mut answered = false;
    for _ in 0..20 {
        c.send_to(b"100", to).unwrap();
        if replies(&c, 1, |g| g.contains_key(&100)).contains_key(&100) {
            answered = true;
            break;
        }
    }
    assert!(answered, "the restored server answers");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    common::wait_for("the server is gone", 30, || common::gone(pid));
}

/// Two UDP sockets of the tree connected to each other, exchanging numbered datagrams with
/// some queued: killed and restored, every reply arrives once and in order.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_connected_udp_pair_in_the_tree_comes_back() {
    let d = Dir::new("udp-pair");
    let (mut root, pid) = spawn_ready("udpecho", &["pair".as_ref(), d.0.as_os_str()]);
    common::wait_for("the client counts", 30, || counts(&d.0).0.len() > 10);
    let img = d.path("pair.img");
    let (_, image, all) = common::checkpoint_kill(&mut root, &img);
    let udp = &image.manifest.shared.udp;
    assert_eq!(udp.len(), 2, "{udp:?}");
    assert!(udp.iter().all(|u| u.peer.is_some()), "both connected");
    assert_eq!(udp[0].peer.as_ref(), Some(&udp[1].local));
    let at_checkpoint = counts(&d.0).0.len();
    assert_eq!(restore_root(&img), pid);
    common::wait_for("the client counts on", 60, || {
        counts(&d.0).0.len() > at_checkpoint + 10
    });
    let (nums, bad) = counts(&d.0);
    assert!(!bad, "a reply was lost, repeated or out of order");
    assert!(nums.iter().enumerate().all(|(i, &n)| n == i as u64 + 1));
    for &p in all.iter().rev() {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// A restore while the original still holds the port fails, naming the address.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_taken_udp_port_fails_the_restore_by_name() {
    let d = Dir::new("udp-taken");
    let port = port() + 1;
    let p = port.to_string();
    let (mut server, pid) = spawn_ready("udpecho", &["serve".as_ref(), p.as_ref(), "0".as_ref()]);
    let img = d.path("live.img");
    common::ok(&common::ckpt(&[
        "checkpoint",
        &pid.to_string(),
        "-o",
        img.to_str().unwrap(),
    ]));
    let out = common::ckpt(&["restore", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restored while the port is taken");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("port is taken"),
        "{err}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
