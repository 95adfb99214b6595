//! Taking and putting back on real ptys (natively: no module needed; TIOCSTI needs root, as
//! ckpt does).

use super::*;
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr};

/// A pty: its master, the program's slave and ckpt's own slave (both non-blocking).
struct Pty {
    master: OwnedFd,
    program: OwnedFd,
    ours: OwnedFd,
}

fn pty(settings: impl FnOnce(&mut Termios)) -> Pty {
    assert!(
        nix::unistd::geteuid().is_root(),
        "putting input back uses TIOCSTI on a terminal that is not ours: run as root, as ckpt"
    );
    let p = openpty(None, None).unwrap();
    let mut t = tcgetattr(&p.slave).unwrap();
    settings(&mut t);
    tcsetattr(&p.slave, SetArg::TCSANOW, &t).unwrap();
    let ours = sys::pty_peer(&p.master).unwrap();
    set_nonblocking(&ours).unwrap();
    set_nonblocking(&p.slave).unwrap();
    Pty {
        master: p.master,
        program: p.slave,
        ours,
    }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    tcgetattr(fd).unwrap().into()
}

fn same_termios(a: &libc::termios, b: &libc::termios) -> bool {
    (a.c_iflag, a.c_oflag, a.c_cflag, a.c_lflag, a.c_cc)
        == (b.c_iflag, b.c_oflag, b.c_cflag, b.c_lflag, b.c_cc)
}

/// What a checkpoint does to the pty: takes its bytes and puts them back.
fn take_back(p: &Pty, packet: bool) -> Queue {
    let t = termios(&p.ours);
    let flags = NonBlocking::on(p.master.as_fd()).unwrap();
    let (q, stopped) = take(p.master.as_fd(), p.ours.as_fd(), &t, (packet, true)).unwrap();
    assert_eq!(stopped, None);
    put_back((p.master.as_fd(), p.ours.as_fd()), &t, packet, &q).unwrap();
    flags.restore().unwrap();
    assert!(same_termios(&termios(&p.ours), &t), "the settings are back");
    let fl = fcntl(&p.master, FcntlArg::F_GETFL).unwrap();
    assert_eq!(fl & libc::O_NONBLOCK, 0, "the master's flags are back");
    q
}

/// Waits (5 s at most) until `fd` has `n` bytes ready (FIONREAD).
fn wait_ready(fd: &OwnedFd, n: u32) {
    let t0 = Instant::now();
    while sys::bytes_waiting(fd).unwrap() != n {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "never {n} bytes ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Each read of `fd` (non-blocking) until none is ready.
fn reads(fd: &OwnedFd) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Some(n) = read_ready(fd.as_fd(), &mut buf).unwrap() {
        out.push(buf[..n].to_vec());
        if n == 0 && out.len() > 100 {
            break;
        }
    }
    out
}

/// Everything the master reads now.
fn master_bytes(p: &Pty) -> Vec<u8> {
    let flags = NonBlocking::on(p.master.as_fd()).unwrap();
    let all = read_all(p.master.as_fd()).unwrap();
    flags.restore().unwrap();
    all
}

fn write(fd: &OwnedFd, data: &[u8]) {
    write_waiting(fd.as_fd(), data).unwrap();
}

fn v(s: &[u8]) -> Vec<u8> {
    s.to_vec()
}

const LINES: &[u8] = b"one\rx\x16\x04y\rab\x04\x04tail";

/// The input `LINES` leaves in a cooked terminal: "one" (ICRNL), a line with a literal ^D
/// (VLNEXT), "ab" ended by VEOF, a VEOF alone, a line not ended yet.
fn lines_queue() -> Vec<(Input, Vec<u8>)> {
    vec![
        (Input::Line, v(b"one\n")),
        (Input::Line, v(b"x\x04y\n")),
        (Input::Line, v(b"ab")),
        (Input::Line, v(b"")),
        (Input::Held, v(b"tail")),
    ]
}

/// Its echo (ECHOCTL: ^V shows as "^\b", the literal ^D as "^D"; VEOF is not echoed), then
/// the program's "out\n" (ONLCR).
const LINES_ECHO_AND_OUTPUT: &[u8] = b"one\r\nx^\x08^Dy\r\nabtailout\r\n";

/// After a checkpoint (or in the new pty after a restore): the program reads each line once,
/// then the line not ended yet once it is ended; the master reads the echo and output once.
fn check_lines_come_back(p: &Pty) {
    let got = reads(&p.program);
    assert_eq!(got, vec![v(b"one\n"), v(b"x\x04y\n"), v(b"ab"), v(b"")]);
    assert_eq!(master_bytes(p), LINES_ECHO_AND_OUTPUT);
    write(&p.master, b"X\r");
    wait_ready(&p.program, 6);
    assert_eq!(reads(&p.program), vec![v(b"tailX\n")]);
    assert_eq!(
        master_bytes(p),
        b"X\r\n",
        "echoed once, under the program's settings"
    );
}

#[test]
fn canonical_lines_and_a_line_not_ended_come_back_once_with_their_echo() {
    let p = pty(|_| {});
    write(&p.master, LINES);
    wait_ready(&p.program, 4 + 4 + 2);
    write(&p.program, b"out\n");
    let q = take_back(&p, false);
    assert_eq!(q.input, lines_queue());
    assert_eq!(q.output, LINES_ECHO_AND_OUTPUT);
    assert_eq!(q.status, 0);
    check_lines_come_back(&p);

    // A restore: the same into a new pty with the same settings.
    let fresh = pty(|_| {});
    let t = tcgetattr(&p.ours).unwrap();
    refill(&fresh.master, &t, false, &q).unwrap();
    check_lines_come_back(&fresh);
}

/// Raw mode with echo and CR to NL: more than the line discipline's buffer holds. The bytes
/// it holds come back processed once; the rest is processed (and echoed) when read, once.
#[test]
fn raw_input_past_the_buffer_is_processed_once() {
    let raw_echo = |t: &mut Termios| {
        cfmakeraw(t);
        let mut r: libc::termios = t.clone().into();
        r.c_iflag |= libc::ICRNL;
        r.c_lflag |= libc::ECHO;
        *t = Termios::from(r);
    };
    let p = pty(raw_echo);
    let data: Vec<u8> = (0..6000)
        .map(|i| {
            if i % 100 == 99 {
                b'\r'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let processed: Vec<u8> = data
        .iter()
        .map(|&c| if c == b'\r' { b'\n' } else { c })
        .collect();
    write(&p.master, &data);
    wait_ready(&p.program, LDISC_ROOM as u32);
    let q = take_back(&p, false);
    assert_eq!(q.input.len(), 2, "held and unprocessed");
    assert_eq!(q.input[0], (Input::Held, processed[..LDISC_ROOM].to_vec()));
    assert_eq!(
        q.input[1],
        (Input::Unprocessed, data[LDISC_ROOM..].to_vec())
    );
    assert_eq!(q.output, processed[..LDISC_ROOM], "the echo so far");
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < data.len() && t0.elapsed() < Duration::from_secs(5) {
        got.extend(reads(&p.program).concat());
    }
    assert_eq!(got, processed);
    assert_eq!(master_bytes(&p), processed, "each byte echoed once");
}

/// Packet mode: the output without its TIOCPKT_DATA bytes, and the status the master had not
/// read (flow control turned off: NOSTOP) made again.
#[test]
fn packet_mode_output_and_status_come_back() {
    let p = pty(|_| {});
    sys::set_pty_packet_mode(&p.master, true).unwrap();
    write(&p.program, b"x\n");
    let mut t = termios(&p.program);
    t.c_iflag &= !libc::IXON;
    set_termios(p.program.as_fd(), &t).unwrap();
    let q = take_back(&p, true);
    assert_eq!(
        (q.output.as_slice(), q.status),
        (&b"x\r\n"[..], TIOCPKT_NOSTOP)
    );
    let flags = NonBlocking::on(p.master.as_fd()).unwrap();
    let got = reads(&p.master);
    flags.restore().unwrap();
    assert_eq!(got, vec![vec![TIOCPKT_NOSTOP], v(b"\0x\r\n")]);
}

#[test]
fn canonical_input_is_escaped_and_ended_as_read() {
    let t = termios(&pty(|_| {}).ours);
    let plan = plan_input(&lines_queue(), &t);
    // ^D and ^V are free (flow control is ^Q/^S): literal ones and newlines inside are
    // escaped with ^V; a line read without its newline is ended with ^D.
    let want = b"one\nx\x16\x04y\nab\x04\x04tail";
    assert_eq!(plan.push, want);
    assert_eq!((plan.readable, plan.later.len(), plan.again), (10, 0, 0));
}

#[test]
fn canonical_input_past_the_buffer_goes_through_the_master() {
    let t = termios(&pty(|_| {}).ours);
    let line = |n: usize| (Input::Line, [vec![b'a'; n - 1], vec![b'\n']].concat());
    let plan = plan_input(&[line(4000), line(100), line(3)], &t);
    assert_eq!((plan.push.len(), plan.readable), (4000, 4000));
    assert_eq!((plan.later.len(), plan.again), (103, 103));
}

#[test]
fn a_queue_goes_through_the_image_unchanged() {
    let q = Queue {
        output: v(b"out"),
        input: lines_queue(),
        status: TIOCPKT_FLUSHREAD,
    };
    let rec = q.recorded(Some(0));
    let bytes = q.bytes();
    assert_eq!(Queue::from_image(&rec, &bytes).unwrap(), q);
    let section = |len| Section {
        kind: PTY_DATA,
        offset: 4096,
        len,
        xxh64: 0,
        compressed: None,
        delta: None,
    };
    assert!(rec.validate(true, &[section(bytes.len() as u64)]).is_ok());
    assert!(rec.validate(false, &[section(bytes.len() as u64)]).is_err());
    assert!(rec
        .validate(true, &[section(bytes.len() as u64 - 1)])
        .is_err());
    let mut unordered = rec.clone();
    unordered.input.swap(0, 4);
    assert!(unordered
        .validate(true, &[section(bytes.len() as u64)])
        .is_err());
    assert!(Queue::from_image(&rec, &bytes[1..]).is_err());
}
