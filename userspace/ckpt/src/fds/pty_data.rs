//! Bytes in flight in a pty of the tree (`pty.rs`), both ways: output the program wrote on
//! the slave that the master's holder has not read, and input written to the master that the
//! program has not read (whole lines, a canonical line not ended yet, bytes written while the
//! line discipline's buffer was full). Reading them consumes them: a checkpoint takes them and
//! puts them straight back into the pty, a restore puts them into the new pty the same way,
//! so each side reads them once.
//!
//! How, from 7.2's drivers/tty/n_tty.c and pty.c:
//! - Output waits in the master's line discipline and flip buffer. A master's termios is
//!   always raw (termios calls on a master act on its slave), so reading the master gives the
//!   bytes as the program's output processing left them (packet mode: a TIOCPKT_DATA byte
//!   first, or a status byte alone). They go back written on the slave with OPOST off, so
//!   that processing (\n to \r\n) is not done twice.
//! - Input waits in the slave's line discipline, processed already (translated, echoed), and,
//!   while its 4095-byte buffer is full, unprocessed in the slave's flip buffer. A canonical
//!   read returns one line (a line ended by the VEOF character comes without it; a read of 0
//!   bytes is a VEOF at the start of a line); the line not ended yet can be read only with
//!   ICANON off, and switching ICANON back on an empty buffer leaves it clean. Without
//!   ICANON, the bytes the buffer holds (FIONREAD) are the processed ones; the rest are read
//!   with input processing off, so they stay unprocessed.
//! - Input goes back through TIOCSTI, which hands each byte to the line discipline at once
//!   (no flip buffer, no worker to wait for), under a termios with no echo, no signals and no
//!   input translation; in canonical mode every line is ended again by a newline or VEOF and
//!   any other byte special there is escaped with VLNEXT. Unprocessed bytes, and what no
//!   longer fits in the buffer, are written on the master once the recorded termios is back:
//!   the line discipline processes them when the program reads, as it would have.
//! - The temporary termios keep IXON, VSTART and VSTOP: changing those would queue a
//!   packet-mode status for the master, and clearing IXON restarts a stopped terminal. The
//!   master's status flags are its holders' too: O_NONBLOCK is set while ckpt uses it, then
//!   put back. The slave fd is ckpt's own open (TIOCGPTPEER), non-blocking.

use super::{io_error, DumpError};
use crate::image::{section_is, ImageWriter, Section, SectionKind};
use crate::sys;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{tcflush, tcsetattr, FlushArg, SetArg, Termios};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// The bytes a pty held, unread.
pub const PTY_DATA: SectionKind = SectionKind::named("pty_data");

/// N_TTY_BUF_SIZE: the line discipline's buffer. It takes one byte less than its size.
const LDISC_BUF: usize = 4096;
const LDISC_ROOM: usize = LDISC_BUF - 1;
/// More than a pty can hold either way (buffer plus an 8 KiB flip buffer, many times over):
/// reading past it means someone keeps writing (a process outside the tree).
const MAX_QUEUED: usize = 1 << 20;

/// Packet-mode status bits (include/uapi/asm-generic/ioctls.h).
const TIOCPKT_DATA: u8 = 0;
const TIOCPKT_FLUSHREAD: u8 = 1;
const TIOCPKT_FLUSHWRITE: u8 = 2;
const TIOCPKT_STOP: u8 = 4;
const TIOCPKT_START: u8 = 8;
const TIOCPKT_NOSTOP: u8 = 16;
const TIOCPKT_DOSTOP: u8 = 32;
const TIOCPKT_IOCTL: u8 = 64;
/// The status bits that are not made again: they report flow changes (^S, ^Q) and termios
/// changes under EXTPROC, which only those events make.
const STATUS_NOT_REMADE: u8 = TIOCPKT_STOP | TIOCPKT_START | TIOCPKT_IOCTL;

/// The control characters the canonical line discipline acts on, cleared while input is put
/// back (VEOF and VLNEXT are set to characters of ckpt's choosing).
const CANON_CHARS: [usize; 10] = [
    libc::VINTR,
    libc::VQUIT,
    libc::VERASE,
    libc::VKILL,
    libc::VEOL,
    libc::VEOL2,
    libc::VWERASE,
    libc::VREPRINT,
    libc::VSUSP,
    libc::VDISCARD,
];
const INPUT_TRANSLATION: libc::tcflag_t =
    libc::ISTRIP | libc::IUCLC | libc::IGNCR | libc::ICRNL | libc::INLCR | libc::PARMRK;
const ECHO_AND_SIGNALS: libc::tcflag_t = libc::ECHO
    | libc::ECHOE
    | libc::ECHOK
    | libc::ECHONL
    | libc::ECHOCTL
    | libc::ECHOPRT
    | libc::ECHOKE
    | libc::ISIG;

/// What a pty held, unread, when checkpointed (`Pty::queued`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Queued {
    /// The `PTY_DATA` section: the output, then the input pieces' bytes in order.
    pub section: Option<usize>,
    /// Bytes the program wrote (after its output processing) that the master had not read.
    pub output: u64,
    /// The input the program had not read, in the order it reads it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input: Vec<InputPiece>,
    /// A packet-mode status byte (TIOCPKT_*) the master had not read; 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packet_status: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputPiece {
    pub len: u32,
    pub kind: Input,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// A line as one canonical read returns it: with its newline, or without one when VEOF
    /// ended it; empty: a VEOF at the start of a line (the program reads an end of file).
    Line,
    /// Processed bytes with no line end: a canonical line not ended yet, or the bytes a
    /// non-canonical line discipline holds.
    Held,
    /// Bytes not yet through the input processing (written while a non-canonical line
    /// discipline's buffer was full).
    Unprocessed,
}

/// `Queued` in memory, with its bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Queue {
    pub output: Vec<u8>,
    pub input: Vec<(Input, Vec<u8>)>,
    pub status: u8,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.output.is_empty() && self.input.is_empty() && self.status == 0
    }

    /// The section's bytes: the output, then the input.
    fn bytes(&self) -> Vec<u8> {
        let mut all = self.output.clone();
        for (_, b) in &self.input {
            all.extend_from_slice(b);
        }
        all
    }

    fn recorded(&self, section: Option<usize>) -> Queued {
        Queued {
            section,
            output: self.output.len() as u64,
            input: (self.input.iter())
                .map(|(kind, b)| InputPiece {
                    len: b.len() as u32,
                    kind: *kind,
                })
                .collect(),
            packet_status: self.status,
        }
    }

    /// The queue `q` records, `data` being its section's bytes (checked by `validate`).
    pub fn from_image(q: &Queued, data: &[u8]) -> io::Result<Queue> {
        let short = || io::Error::other("the pty's saved bytes are shorter than recorded");
        let (output, mut rest) = data.split_at_checked(q.output as usize).ok_or_else(short)?;
        let mut input = Vec::new();
        for piece in &q.input {
            let (bytes, tail) = rest
                .split_at_checked(piece.len as usize)
                .ok_or_else(short)?;
            input.push((piece.kind, bytes.to_vec()));
            rest = tail;
        }
        Ok(Queue {
            output: output.to_vec(),
            input,
            status: q.packet_status,
        })
    }
}

impl Queued {
    /// Bytes the program had not read.
    pub fn input_bytes(&self) -> u64 {
        self.input.iter().map(|p| u64::from(p.len)).sum()
    }

    /// Sizes that add up to the section's, pieces in the order a line discipline has them
    /// (lines, then bytes held, then unprocessed ones) and of its mode (`canonical`).
    pub fn validate(&self, canonical: bool, sections: &[Section]) -> Result<(), String> {
        let len = self
            .section
            .filter(|&i| section_is(sections, i, &PTY_DATA))
            .and_then(|i| sections.get(i))
            .map_or(0, |s| s.len);
        let total = self.output + self.input_bytes();
        let rank = |k: Input| match k {
            Input::Line => 0,
            Input::Held => 1,
            Input::Unprocessed => 2,
        };
        let ordered = (self.input.windows(2))
            .all(|w| rank(w[0].kind) < rank(w[1].kind) || w[0].kind == Input::Line);
        let fits_mode = self.input.iter().all(|p| match p.kind {
            Input::Line => canonical && p.len as usize <= LDISC_BUF,
            Input::Held => p.len as usize <= LDISC_BUF,
            Input::Unprocessed => !canonical,
        });
        let section_ok = self.section.is_some() == (total > 0);
        if total != len || !section_ok || !ordered || !fits_mode || total > 2 * MAX_QUEUED as u64 {
            return Err("bad bytes in flight".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

/// At checkpoint: takes what pty /dev/pts/`index` holds each way, puts it straight back (the
/// tree goes on, or may if the checkpoint fails later) and writes it into the image.
pub fn carry(
    image: &mut ImageWriter,
    index: u32,
    (master, slave): (&OwnedFd, &OwnedFd),
    termios: &Termios,
    packet: bool,
) -> Result<Option<Queued>, DumpError> {
    if sys::line_discipline(slave).map_err(io_error("TIOCGETD"))? != 0 {
        eprintln!(
            "ckpt: warning: /dev/pts/{index} has another line discipline than N_TTY: bytes in \
             flight in it are not carried"
        );
        return Ok(None);
    }
    let t: libc::termios = termios.clone().into();
    let what = |verb: &str| format!("{verb} the bytes in flight in /dev/pts/{index}");
    let master_flags = NonBlocking::on(master.as_fd()).map_err(io_error("F_SETFL"))?;
    set_nonblocking(slave).map_err(io_error("F_SETFL"))?;
    // Without the right to put input back, it is left where it is.
    let with_input = may_push_input();
    let (q, stopped) = take(master.as_fd(), slave.as_fd(), &t, (packet, with_input))
        .map_err(io_error(what("reading")))?;
    put_back((master.as_fd(), slave.as_fd()), &t, packet, &q)
        .map_err(io_error(what("putting back")))?;
    master_flags.restore().map_err(io_error("F_SETFL"))?;
    warn(index, &q, &t, stopped);
    if !with_input {
        eprintln!(
            "ckpt: warning: input /dev/pts/{index}'s program had not read is not carried: \
             putting it back (TIOCSTI) needs CAP_SYS_ADMIN"
        );
    }
    if q.is_empty() {
        return Ok(None);
    }
    let bytes = q.bytes();
    let section = match bytes.is_empty() {
        true => None,
        false => Some(image.add_blob(PTY_DATA, &bytes).map_err(DumpError::Image)?),
    };
    Ok(Some(q.recorded(section)))
}

/// Takes the input (if `with_input`), then the output (taking the input may echo what the
/// flip buffer still held: that echo is output). Also says how many bytes are left to the
/// master when the output is stopped.
fn take(
    master: BorrowedFd,
    slave: BorrowedFd,
    t: &libc::termios,
    (packet, with_input): (bool, bool),
) -> io::Result<(Queue, Option<u32>)> {
    let input = match with_input {
        true => take_input(slave, t)?,
        false => Vec::new(),
    };
    match take_output(master, slave, packet) {
        Ok((output, status, stopped)) => Ok((
            Queue {
                output,
                input,
                status,
            },
            stopped,
        )),
        Err(e) => {
            // What was taken goes back before giving up.
            let q = Queue {
                input,
                ..Default::default()
            };
            let _ = put_back((master, slave), t, packet, &q);
            Err(e)
        }
    }
}

/// The output and status byte the master has not read; a stopped terminal (^S, tcflow) would
/// not take its output back, so it stays (how many bytes, then).
fn take_output(
    master: BorrowedFd,
    slave: BorrowedFd,
    packet: bool,
) -> io::Result<(Vec<u8>, u8, Option<u32>)> {
    if output_stopped(master, slave)? {
        return Ok((Vec::new(), 0, Some(sys::bytes_waiting(master)?)));
    }
    let (output, status) = read_master(master, packet)?;
    Ok((output, status, None))
}

/// The input the program has not read, as pieces.
fn take_input(slave: BorrowedFd, t: &libc::termios) -> io::Result<Vec<(Input, Vec<u8>)>> {
    let mut temp = TempTermios::new(slave, t);
    let mut pieces = Vec::new();
    if canonical(t) {
        // Whole lines as the program would read them (what the flip buffer still holds is
        // processed meanwhile, under the program's settings, as it would have been).
        pieces.extend(read_lines(slave)?.into_iter().map(|l| (Input::Line, l)));
        // Then the line not ended yet, the only thing left in the buffer.
        let mut raw = *t;
        raw.c_lflag &= !libc::ICANON;
        temp.set(&raw)?;
        let held = read_all(slave)?;
        temp.finish()?;
        if !held.is_empty() {
            pieces.push((Input::Held, held));
        }
    } else {
        let processed = sys::bytes_waiting(slave)? as usize;
        temp.set(&verbatim(t))?;
        let mut held = read_all(slave)?;
        temp.finish()?;
        let unprocessed = held.split_off(processed.min(held.len()));
        for (kind, bytes) in [(Input::Held, held), (Input::Unprocessed, unprocessed)] {
            if !bytes.is_empty() {
                pieces.push((kind, bytes));
            }
        }
    }
    Ok(pieces)
}

/// The slave takes no output although the master's line discipline has room: its output is
/// stopped (POLLOUT is off while either holds).
fn output_stopped(master: BorrowedFd, slave: BorrowedFd) -> io::Result<bool> {
    let mut p = [PollFd::new(slave, PollFlags::POLLOUT)];
    poll(&mut p, PollTimeout::ZERO)?;
    let writable = p[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLOUT));
    Ok(!writable && (sys::bytes_waiting(master)? as usize) < LDISC_ROOM)
}

/// What the master has not read (packet mode: without the TIOCPKT_DATA bytes), and the status
/// byte it had not read.
fn read_master(master: BorrowedFd, packet: bool) -> io::Result<(Vec<u8>, u8)> {
    let (mut data, mut status) = (Vec::new(), 0);
    let mut buf = vec![0u8; 16384];
    while let Some(n) = read_ready(master, &mut buf)? {
        match (packet, &buf[..n]) {
            (_, []) => break,
            (false, bytes) => data.extend_from_slice(bytes),
            (true, [TIOCPKT_DATA, bytes @ ..]) => data.extend_from_slice(bytes),
            (true, [s, ..]) => status |= *s,
        }
        bounded(data.len())?;
    }
    Ok((data, status))
}

/// Canonical reads until none is ready: a line each (empty: an end of file).
fn read_lines(fd: BorrowedFd) -> io::Result<Vec<Vec<u8>>> {
    let (mut lines, mut total) = (Vec::new(), 0);
    let mut buf = vec![0u8; LDISC_BUF + 1];
    while let Some(n) = read_ready(fd, &mut buf)? {
        total += n + 1;
        bounded(total)?;
        lines.push(buf[..n].to_vec());
    }
    Ok(lines)
}

/// Non-canonical reads until none is ready (or one gives nothing: VMIN 0).
fn read_all(fd: BorrowedFd) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16384];
    while let Some(n) = read_ready(fd, &mut buf)?.filter(|&n| n > 0) {
        all.extend_from_slice(&buf[..n]);
        bounded(all.len())?;
    }
    Ok(all)
}

/// One non-blocking read: None when nothing is ready. A read that finds nothing first waits
/// for the flip buffer's worker (n_tty_read), so None means the pty is empty that way.
fn read_ready(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn bounded(len: usize) -> io::Result<()> {
    match len > MAX_QUEUED {
        true => Err(io::Error::other(
            "the pty keeps receiving bytes (a process outside the tree writing to it?)",
        )),
        false => Ok(()),
    }
}

/// What did not come along, said.
fn warn(index: u32, q: &Queue, t: &libc::termios, stopped: Option<u32>) {
    let name = format!("/dev/pts/{index}");
    if let Some(left) = stopped.filter(|&n| n > 0) {
        eprintln!(
            "ckpt: warning: {name}'s output is stopped (^S or tcflow): the {left} bytes its \
             master has not read stay in this pty and are not carried"
        );
    }
    if q.status & STATUS_NOT_REMADE != 0 {
        eprintln!(
            "ckpt: warning: {name}'s master had not read a packet-mode status ({:#x}): its \
             flow-control and ioctl bits are not carried",
            q.status
        );
    }
    let again = plan_input(&q.input, t).again;
    if again > 0 {
        eprintln!(
            "ckpt: warning: {name} holds more input than its line discipline's buffer: {again} \
             bytes of it go through its input processing (echo included) again when put back"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Putting back

/// At restore: puts `q` into a pty just made (its termios `t` and packet mode set).
pub fn refill(master: &OwnedFd, t: &Termios, packet: bool, q: &Queue) -> io::Result<()> {
    let slave = sys::pty_peer(master)?;
    set_nonblocking(&slave)?;
    let flags = NonBlocking::on(master.as_fd())?;
    put_back(
        (master.as_fd(), slave.as_fd()),
        &t.clone().into(),
        packet,
        q,
    )?;
    flags.restore()
}

/// Puts `q` into a pty that holds nothing: the status for the master first (it reports
/// flushes and flow-control changes made before the bytes), the input the program reads, the
/// output the master reads.
fn put_back(
    (master, slave): (BorrowedFd, BorrowedFd),
    t: &libc::termios,
    packet: bool,
    q: &Queue,
) -> io::Result<()> {
    if packet && q.status != 0 {
        remake_status(slave, t, q.status)?;
    }
    let plan = plan_input(&q.input, t);
    if !plan.push.is_empty() && !may_push_input() {
        return Err(io::Error::other(
            "putting back the input the program had not read (TIOCSTI) needs CAP_SYS_ADMIN",
        ));
    }
    let mut temp = TempTermios::new(slave, t);
    if !plan.push.is_empty() {
        temp.set(&plan.termios)?;
        for &b in &plan.push {
            sys::push_input(slave, b)?;
        }
        let held = sys::bytes_waiting(slave)? as usize;
        if held != plan.readable {
            return Err(io::Error::other(format!(
                "the terminal holds {held} bytes of input where {} were put back",
                plan.readable
            )));
        }
    }
    if !q.output.is_empty() {
        let mut no_opost = *t;
        no_opost.c_oflag &= !libc::OPOST;
        temp.set(&no_opost)?;
        write_waiting(slave, &q.output)?;
    }
    temp.finish()?;
    // Under the program's own settings, through the line discipline.
    write_waiting(master, &plan.later)
}

/// How input goes back: the bytes to hand to the line discipline under `termios`, the bytes a
/// read then finds ready (FIONREAD), and those written on the master afterwards (`again` of
/// them were processed once already).
struct InputPlan {
    termios: libc::termios,
    push: Vec<u8>,
    readable: usize,
    later: Vec<u8>,
    again: usize,
}

fn plan_input(input: &[(Input, Vec<u8>)], t: &libc::termios) -> InputPlan {
    let canon = canonical(t).then(|| canonical_push(t));
    let mut plan = InputPlan {
        termios: canon.as_ref().map_or_else(|| verbatim(t), |c| c.termios),
        push: Vec::new(),
        readable: 0,
        later: Vec::new(),
        again: 0,
    };
    let mut used = 0;
    for (kind, bytes) in input {
        // A line ends with its newline, or else with VEOF; other bytes go as they are.
        let (body, end) = match (kind, &canon, bytes.split_last()) {
            (Input::Line, _, Some((&b'\n', body))) => (body, Some(b'\n')),
            (Input::Line, Some(c), _) => (bytes.as_slice(), Some(c.eof)),
            _ => (bytes.as_slice(), None),
        };
        let slots = body.len() + usize::from(end.is_some());
        if *kind == Input::Unprocessed || !plan.later.is_empty() || used + slots > LDISC_ROOM {
            plan.again += if *kind == Input::Unprocessed {
                0
            } else {
                bytes.len()
            };
            plan.later.extend_from_slice(bytes);
            // Under the program's settings a line VEOF ended needs its VEOF again.
            let veof = t.c_cc[libc::VEOF];
            if *kind == Input::Line && end != Some(b'\n') && veof != 0 {
                plan.later.push(veof);
            }
            continue;
        }
        used += slots;
        match &canon {
            Some(c) => c.escape(body, &mut plan.push),
            None => plan.push.extend_from_slice(body),
        }
        plan.push.extend(end);
        if canon.is_none() || *kind == Input::Line {
            plan.readable += bytes.len();
        }
    }
    plan
}

/// The termios under which canonical input goes back: canonical, nothing echoed, no signals,
/// no translation; VEOF and VLNEXT are `eof` and `lnext`, and `special` are the bytes the
/// line discipline would act on (escaped with `lnext` inside a line).
struct CanonPush {
    termios: libc::termios,
    eof: u8,
    lnext: u8,
    special: Vec<u8>,
}

fn canonical_push(t: &libc::termios) -> CanonPush {
    let flow: Vec<u8> = match t.c_iflag & libc::IXON != 0 {
        true => vec![t.c_cc[libc::VSTART], t.c_cc[libc::VSTOP]],
        false => Vec::new(),
    };
    // ^D and ^V, unless flow control uses them (then other control characters).
    let mut free = [4u8, 0x16, 1, 2, 5]
        .into_iter()
        .filter(|c| !flow.contains(c));
    let (eof, lnext) = (free.next().unwrap_or(4), free.next().unwrap_or(0x16));
    let mut termios = verbatim(t);
    termios.c_lflag |= libc::ICANON | libc::IEXTEN;
    for i in CANON_CHARS {
        termios.c_cc[i] = 0;
    }
    termios.c_cc[libc::VEOF] = eof;
    termios.c_cc[libc::VLNEXT] = lnext;
    let special = [b'\n', eof, lnext].into_iter().chain(flow);
    CanonPush {
        termios,
        eof,
        lnext,
        special: special.filter(|&c| c != 0).collect(),
    }
}

impl CanonPush {
    /// `bytes` as literal characters of a line.
    fn escape(&self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            if self.special.contains(&b) {
                out.push(self.lnext);
            }
            out.push(b);
        }
    }
}

/// Input handed on as it is: no translation, echo, signals or canonical processing (flow
/// control stays, see the module's comment). Under EXTPROC the line discipline does no
/// canonical processing anyway, and ICANON stays (changing it would move its line marks).
fn verbatim(t: &libc::termios) -> libc::termios {
    let mut v = *t;
    v.c_iflag &= !INPUT_TRANSLATION;
    v.c_lflag &= !(libc::IEXTEN | ECHO_AND_SIGNALS);
    if t.c_lflag & libc::EXTPROC == 0 {
        v.c_lflag &= !libc::ICANON;
    }
    v
}

/// Reads return lines (EXTPROC: the line editing is done elsewhere, reads are raw).
pub fn reads_lines(lflag: libc::tcflag_t) -> bool {
    lflag & libc::ICANON != 0 && lflag & libc::EXTPROC == 0
}

fn canonical(t: &libc::termios) -> bool {
    reads_lines(t.c_lflag)
}

/// Flow control by ^S/^Q, as pty_set_termios tells packet mode.
fn standard_flow(t: &libc::termios) -> bool {
    t.c_iflag & libc::IXON != 0 && t.c_cc[libc::VSTOP] == 0x13 && t.c_cc[libc::VSTART] == 0x11
}

/// The status bits made again: flushes (the queues are empty) and the last change of flow
/// control, made again from the other setting.
fn remake_status(slave: BorrowedFd, t: &libc::termios, status: u8) -> io::Result<()> {
    if status & TIOCPKT_FLUSHREAD != 0 {
        tcflush(slave, FlushArg::TCIFLUSH)?;
    }
    if status & TIOCPKT_FLUSHWRITE != 0 {
        tcflush(slave, FlushArg::TCOFLUSH)?;
    }
    let to_standard = status & TIOCPKT_DOSTOP != 0;
    if status & (TIOCPKT_DOSTOP | TIOCPKT_NOSTOP) != 0 && to_standard == standard_flow(t) {
        let mut other = *t;
        if to_standard {
            other.c_iflag &= !libc::IXON;
        } else {
            other.c_iflag |= libc::IXON;
            other.c_cc[libc::VSTART] = 0x11;
            other.c_cc[libc::VSTOP] = 0x13;
        }
        let mut temp = TempTermios::new(slave, t);
        temp.set(&other)?;
        temp.finish()?;
    }
    Ok(())
}

/// Writes all of `data` to a non-blocking pty fd, waiting (10 s in all at most) while the
/// other side's buffers are full.
fn write_waiting(fd: BorrowedFd, mut data: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) if Instant::now() < deadline => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                poll(&mut p, PollTimeout::from(100u8))?;
            }
            Err(Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the pty took no more ({} bytes left)", data.len()),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn set_termios(fd: BorrowedFd, t: &libc::termios) -> io::Result<()> {
    Ok(tcsetattr(fd, SetArg::TCSANOW, &Termios::from(*t))?)
}

/// The slave's termios changed for a while: the recorded one is put back by `finish`, or on
/// drop after an error.
struct TempTermios<'a> {
    slave: BorrowedFd<'a>,
    recorded: libc::termios,
    changed: bool,
}

impl<'a> TempTermios<'a> {
    fn new(slave: BorrowedFd<'a>, recorded: &libc::termios) -> Self {
        TempTermios {
            slave,
            recorded: *recorded,
            changed: false,
        }
    }

    fn set(&mut self, t: &libc::termios) -> io::Result<()> {
        self.changed = true;
        set_termios(self.slave, t)
    }

    fn finish(mut self) -> io::Result<()> {
        self.changed = false;
        set_termios(self.slave, &self.recorded)
    }
}

impl Drop for TempTermios<'_> {
    fn drop(&mut self) {
        if self.changed {
            let _ = set_termios(self.slave, &self.recorded);
        }
    }
}

/// O_NONBLOCK on an open file description (a master's is its holders' too) until `restore`,
/// or drop after an error.
struct NonBlocking<'a> {
    fd: BorrowedFd<'a>,
    flags: Option<OFlag>,
}

impl<'a> NonBlocking<'a> {
    fn on(fd: BorrowedFd<'a>) -> io::Result<Self> {
        let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(NonBlocking {
            fd,
            flags: Some(flags),
        })
    }

    fn restore(mut self) -> io::Result<()> {
        match self.flags.take() {
            Some(f) => Ok(fcntl(self.fd, FcntlArg::F_SETFL(f)).map(drop)?),
            None => Ok(()),
        }
    }
}

impl Drop for NonBlocking<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.flags.take() {
            let _ = fcntl(self.fd, FcntlArg::F_SETFL(f));
        }
    }
}

/// TIOCSTI on a terminal that is not the caller's controlling terminal needs CAP_SYS_ADMIN
/// (capability 21) in the effective set.
fn may_push_input() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (status.lines())
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|c| u64::from_str_radix(c.trim(), 16).ok())
        .is_some_and(|c| c & (1 << 21) != 0)
}

/// O_NONBLOCK on ckpt's own open of a slave.
fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests;
