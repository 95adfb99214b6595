//! The kernel objects the tree's fds share, possibly across processes (pipes, sockets,
//! ptys, FIFOs, shared memory, SysV objects, open file descriptions): the table the image
//! keeps (`Shared`), how it is built at checkpoint (`Census`, `SharedDump`) and made again
//! before the restorers fork (`SharedFds`), and its checks. Each kind's own state, dump and
//! restore stay in its module.

use super::*;

/// The kernel objects the tree's fds share, possibly across processes: each is one object
/// again after a restore, whichever processes and fds held it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shared {
    /// Pipes with both ends in the tree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipes: Vec<Pipe>,
    /// Connected pairs of UNIX sockets (any type) with both ends in the tree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_pairs: Vec<SocketPair>,
    /// File descriptors in flight in the queues of the tree's UNIX sockets, once per open
    /// file; messages refer to them by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<InFlight>,
    /// The other UNIX datagram sockets of the tree (named, unbound, connected one way).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unix_dgram: Vec<DgramSocket>,
    /// UNIX sockets of the tree whose peer is outside it, with how each comes back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unix_external: Vec<ExternalSocket>,
    /// Listening sockets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<SharedListener>,
    /// Pseudo-terminals whose master the tree holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptys: Vec<Pty>,
    /// Established TCP connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpConnection>,
    /// Named pipes (FIFOs) open in the tree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fifos: Vec<Fifo>,
    /// TCP connections recorded as closed (`ckpt checkpoint --tcp-close`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_closed: Vec<ClosedTcp>,
    /// UDP sockets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udp: Vec<UdpSocket>,
    /// SysV shared memory segments attached by the tree's processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysv_shm: Vec<crate::sysv::SysvSegment>,
    /// SysV semaphore sets the tree's processes use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysv_sem: Vec<crate::sysv::SemSet>,
    /// SysV message queues the tree's processes use, with their messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysv_msg: Vec<crate::sysv::MsgQueue>,
    /// Shared memory objects (anonymous shared memory, memfds), mapped or held as fds.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "shared_memory"
    )]
    pub memory: Vec<ShmObject>,
    /// Open file descriptions several fds share (fork, dup, SCM_RIGHTS) whose kind is made
    /// once: files, deleted files, memfd fds, eventfds, timerfds, signalfds, epoll instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_files: Vec<OpenFile>,
}

/// Where the tree's pipes and sockets are, from every process's fds: a pipe is the tree's
/// when both its ends are among them, a socket pair when both its sockets are; and which
/// fds are one open file description.
#[derive(Debug, Default)]
pub struct Census {
    pub pipes: BTreeMap<u64, pipe::Ends>,
    pub sockets: BTreeSet<u64>,
    /// The tree's processes.
    pub pids: BTreeSet<i32>,
    /// Pty index -> (pid, fd) of a master the tree holds.
    pub pty_masters: BTreeMap<u32, (i32, i32)>,
    /// Which fds are one open file description (`group` it once every process is added).
    pub descriptions: open_file::Descriptions,
}

impl Census {
    /// Counts the fds `entries` of process `pid`.
    pub fn add(&mut self, pid: i32, entries: &[FdEntry]) {
        self.descriptions.add(pid, entries);
        self.add_objects(pid, entries);
    }

    /// Counts ckpt's copies `entries` (`pid`: ckpt's) of descriptors in flight in a queue of
    /// process `holder` (its index in the image), after every process: the pipes and sockets
    /// they are, the open file descriptions they share with processes' fds.
    pub fn add_in_flight(&mut self, holder: usize, pid: i32, entries: &[FdEntry]) {
        self.descriptions.add_held(holder, pid, entries);
        self.add_objects(pid, entries);
    }

    fn add_objects(&mut self, pid: i32, entries: &[FdEntry]) {
        self.pids.insert(pid);
        for e in entries {
            if let Some(ino) = crate::proc::bracketed_inode(&e.target, "pipe") {
                self.pipes.entry(ino).or_default().add(pid, e);
            } else if let Some(ino) = crate::proc::bracketed_inode(&e.target, "socket") {
                self.sockets.insert(ino);
            } else if e.target == "/dev/ptmx" || e.target == "/dev/pts/ptmx" {
                if let Some(index) = pty::master_index(pid, e) {
                    self.pty_masters.entry(index).or_insert((pid, e.fd));
                }
            }
        }
    }
}

/// The tree's shared objects while they are being recorded.
#[derive(Debug, Default)]
pub struct SharedDump {
    pub census: Census,
    /// The table being built: a pipe or a socket pair is added when its first fd is seen.
    pub table: Shared,
    /// The kernel object's inode -> its index in the table's pipes or socket pairs.
    pub pipe_index: BTreeMap<u64, usize>,
    pub pair_index: BTreeMap<u64, usize>,
    pub listen_index: BTreeMap<u64, usize>,
    /// Pty index -> its index in the table's ptys.
    pub pty_index: BTreeMap<u32, usize>,
    /// Socket inode -> its index in the table's TCP connections.
    pub tcp_index: BTreeMap<u64, usize>,
    /// FIFO inode -> its index in the table's FIFOs.
    pub fifo_index: BTreeMap<u64, usize>,
    /// Socket inode -> its index in the table's closed TCP connections, UDP sockets.
    pub tcp_closed_index: BTreeMap<u64, usize>,
    pub udp_index: BTreeMap<u64, usize>,
    /// Record TCP connections as closed instead of carrying them (`--tcp-close`).
    pub tcp_close: bool,
    /// Socket pair ends already recorded (by inode).
    pub ends_seen: BTreeSet<u64>,
    /// Datagram sockets: inode -> index in the table; (index, peer's inode) to resolve.
    pub dgram_index: BTreeMap<u64, usize>,
    pub dgram_peers: Vec<(usize, u64)>,
    /// UNIX sockets whose peer is outside: inode -> index in the table.
    pub external_index: BTreeMap<u64, usize>,
    /// `ckpt checkpoint --external unix`: stream and seqpacket sockets whose peer is outside
    /// the tree are carried (reconnected, or with their peer gone) instead of refused.
    pub external_unix: bool,
    /// Pipes processes outside the tree hold (scanned once, when the first pipe is met).
    pub pipes_outside: Option<BTreeSet<u64>>,
    /// Shared memory objects (their table goes to `Shared::memory` at the end).
    pub shm: ShmDump,
    /// The file locks recorded so far (each is recorded once).
    pub locks: locks::Seen,
    /// The census's shared descriptions met so far -> their index in the table's open files
    /// (None: their kind is not made once, each fd goes its own way).
    pub open_file_index: BTreeMap<usize, Option<usize>>,
    /// The descriptors in flight: ckpt's copies, and the queues they were found in.
    pub in_flight: in_flight::Seen,
}

impl SharedDump {
    /// The tree's table, once every process is recorded (datagram sockets' peers resolved).
    pub fn finish(mut self) -> Result<Shared, String> {
        let dgram = &mut self.table.unix_dgram;
        unix_dgram::resolve_peers(dgram, &self.dgram_index, &self.dgram_peers)?;
        Ok(Shared {
            memory: self.shm.table,
            sysv_shm: self.shm.sysv.table,
            ..self.table
        })
    }
}

/// The tree's shared objects made again, before the first restorer is forked: every
/// restorer inherits them and takes the ends its fds need. Made at `min` or above, clear of
/// every fd number of the image.
pub struct SharedFds {
    /// [read end, write end] per pipe of `Shared::pipes`.
    pub pipes: Vec<[OwnedFd; 2]>,
    /// Both ends per pair of `Shared::socket_pairs`.
    pub pairs: Vec<[OwnedFd; 2]>,
    /// A socket per entry of `Shared::unix_dgram`.
    pub dgram: Vec<OwnedFd>,
    /// A socket per entry of `Shared::unix_external`.
    pub external: Vec<OwnedFd>,
    /// A memfd per object of `Shared::memory`.
    pub memory: Vec<OwnedFd>,
    /// A socket per listener of `Shared::listeners`.
    pub listeners: Vec<OwnedFd>,
    /// Each pty of `Shared::ptys`, made again.
    pub ptys: Vec<PtyFds>,
    /// Each connection of `Shared::tcp`, made again.
    pub tcp: Vec<OwnedFd>,
    /// Each FIFO of `Shared::fifos`, opened read-write.
    pub fifos: Vec<OwnedFd>,
    /// A reset socket per entry of `Shared::tcp_closed`.
    pub tcp_closed: Vec<OwnedFd>,
    /// Each socket of `Shared::udp`, made again.
    pub udp: Vec<OwnedFd>,
    /// Each open file description of `Shared::open_files`, made again.
    pub open_files: Vec<OwnedFd>,
    /// The watches of the shared epoll instances (by index in `open_files`), each added by
    /// the restorer of the process it names.
    pub watches: Vec<(usize, EpollWatch)>,
    /// The ids of the SysV objects of `Shared`, made again.
    pub sysv: crate::sysv::Made,
    /// Each descriptor of `Shared::in_flight`, made again (sent with its messages).
    pub in_flight: Vec<OwnedFd>,
}

impl SharedFds {
    /// Makes every object of `shared`, with its saved bytes (`read` reads a small section;
    /// shared memory is copied from `image`, whose `sections` say where).
    pub fn make(
        shared: &Shared,
        read: impl Fn(usize) -> io::Result<Vec<u8>>,
        image: crate::image::SectionData<'_>,
        envs: &[HolderEnv],
        (min, same_ipc_ids): (RawFd, bool),
    ) -> io::Result<SharedFds> {
        let blob = |s: Option<usize>| s.map_or(Ok(Vec::new()), &read);
        let lift = |[a, b]: [OwnedFd; 2]| -> io::Result<[OwnedFd; 2]> {
            Ok([above(a, min)?, above(b, min)?])
        };
        let pipes = shared
            .pipes
            .iter()
            .map(|p| lift(pipe::make(p, &blob(p.data_section)?)?))
            .collect::<io::Result<_>>()?;
        // Pairs before listeners: an accepted end takes its listener's name for a moment.
        let taken: Vec<&[u8]> = shared
            .listeners
            .iter()
            .map(|l| l.socket.addr.as_slice())
            .collect();
        let env_of = |i: usize| {
            envs.get(i)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
        };
        let pairs = shared
            .socket_pairs
            .iter()
            .map(|sp| lift(socket_pair::make(sp, env_of(sp.holder)?, &taken)?))
            .collect::<io::Result<_>>()?;
        let dgram = unix_dgram::make_all(&shared.unix_dgram, &blob, envs)?
            .into_iter()
            .map(|s| above(s, min))
            .collect::<io::Result<_>>()?;
        let external = unix_external::make_all(&shared.unix_external, &blob, envs)?
            .into_iter()
            .map(|s| above(s, min))
            .collect::<io::Result<_>>()?;
        let memory: Vec<OwnedFd> = shared
            .memory
            .iter()
            .map(|o| above(o.make(image)?, min))
            .collect::<io::Result<_>>()?;
        // After the shared memory: a memfd's open file is opened on its object.
        let open_files = open_file::make_all(&shared.open_files, envs, &memory, &read, min)?;
        let listeners = listen::make_all(&shared.listeners, envs)?
            .into_iter()
            .map(|s| above(s, min))
            .collect::<io::Result<_>>()?;
        let ptys = shared
            .ptys
            .iter()
            .map(|p| {
                let made = pty::make(p, &blob(p.queued.as_ref().and_then(|q| q.section))?)?;
                let slave = made.slave.map(|s| above(s, min)).transpose()?;
                Ok(PtyFds {
                    master: above(made.master, min)?,
                    slave,
                })
            })
            .collect::<io::Result<_>>()?;
        let tcp = tcp::make_all(&shared.tcp, &blob)?
            .into_iter()
            .map(|s| above(s, min))
            .collect::<io::Result<_>>()?;
        let tcp_closed = (shared.tcp_closed.iter())
            .map(|c| above(c.make()?, min))
            .collect::<io::Result<_>>()?;
        let udp = udp::make_all(&shared.udp, &blob)?
            .into_iter()
            .map(|s| above(s, min))
            .collect::<io::Result<_>>()?;
        let fifos = (shared.fifos.iter())
            .map(|f| above(f.make(&blob(f.data_section)?)?, min))
            .collect::<io::Result<_>>()?;
        let sysv = crate::sysv::Made::make(shared, &blob, same_ipc_ids)?;
        let mut made = SharedFds {
            pipes,
            pairs,
            dgram,
            external,
            memory,
            listeners,
            ptys,
            tcp,
            tcp_closed,
            udp,
            fifos,
            open_files,
            watches: open_file::watches_of(&shared.open_files),
            sysv,
            in_flight: Vec::new(),
        };
        // Once every object a descriptor in flight may be exists; then the pairs' queues,
        // which carry them.
        made.in_flight = in_flight::make_all(&shared.in_flight, &made, envs, (&read, min))?;
        for (sp, ends) in shared.socket_pairs.iter().zip(&made.pairs) {
            let q = [blob(sp.data_sections[0])?, blob(sp.data_sections[1])?];
            let fds = |i: usize| made.in_flight.get(i).map(AsRawFd::as_raw_fd);
            socket_pair::fill(sp, ends, [&q[0], &q[1]], (env_of(sp.holder)?, &fds))?;
        }
        Ok(made)
    }

    /// The range of fd numbers they hold (empty: None).
    pub fn range(&self) -> Option<(RawFd, RawFd)> {
        let ends = self.pipes.iter().chain(&self.pairs).flatten();
        let pty_fds = self
            .ptys
            .iter()
            .flat_map(|p| std::iter::once(&p.master).chain(&p.slave));
        let singles = (self.memory.iter().chain(&self.listeners))
            .chain(pty_fds)
            .chain(&self.tcp)
            .chain(&self.tcp_closed)
            .chain(&self.udp)
            .chain(&self.dgram)
            .chain(&self.external)
            .chain(&self.fifos)
            .chain(&self.open_files)
            .chain(&self.in_flight);
        let all = ends.chain(singles).map(|f| f.as_raw_fd());
        let (lo, hi) = all.fold((RawFd::MAX, -1), |(lo, hi), n| (lo.min(n), hi.max(n)));
        (hi >= 0).then_some((lo, hi))
    }
}

impl Shared {
    /// Pipes and socket pairs refer to sections of the right kind, listeners to one of the
    /// image's `processes`.
    pub fn validate(&self, sections: &[Section], processes: usize) -> Result<(), String> {
        pipe::validate(&self.pipes, sections)?;
        socket_pair::validate(
            &self.socket_pairs,
            sections,
            (processes, self.in_flight.len()),
        )?;
        in_flight::validate(self, sections, processes)?;
        unix_dgram::validate(&self.unix_dgram, sections, processes)?;
        unix_external::validate(&self.unix_external, sections, processes)?;
        let holders_ok = self.listeners.iter().all(|l| l.holder < processes);
        if !holders_ok {
            return Err("a listening socket's holder is not a process of the image".into());
        }
        crate::shmem::validate(&self.memory, sections)?;
        pty::validate(&self.ptys, sections)?;
        tcp::validate(&self.tcp, sections, processes)?;
        fifo::validate(&self.fifos, sections)?;
        tcp_closed::validate_closed(&self.tcp_closed)?;
        udp::validate(&self.udp, sections, processes)?;
        open_file::validate(&self.open_files, self, sections, processes)?;
        crate::sysv::shm::validate(&self.sysv_shm, sections)?;
        crate::sysv::sem::validate(&self.sysv_sem)?;
        crate::sysv::msg::validate(&self.sysv_msg, sections)
    }
}
