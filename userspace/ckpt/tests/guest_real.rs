//! Real multi-process programs from Debian packages, in the guest: each is checkpointed
//! mid-work with `--kill`, the whole tree is checked gone, restored, and must finish its work
//! or keep answering with its data intact. (The bash pipeline is in guest_tree.rs.)

mod common;

use common::{ckpt, gone, restore_root, Dir};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    common::wait_for(what, 30, cond)
}

/// Checkpoints the tree of `root` with --kill into `img`; its pids, once all are gone.
fn checkpoint_kill(root: &mut Child, img: &Path) -> Vec<i32> {
    common::checkpoint_kill(root, img).2
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// One HTTP/1.1 request on the kept-alive connection `s`; the body of the answer.
fn http_again(s: &mut std::net::TcpStream) -> String {
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut len = 0;
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// nginx with a master and two workers sharing a listening socket, socket pairs and shared
/// memory; the workers run as nobody. A client keeps an HTTP/1.1 connection to a worker
/// across the checkpoint with --kill and the restore, and is served on over it.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn nginx_with_workers_answers_after_kill_and_restore() {
    let d = Dir::new("real-nginx");
    std::fs::create_dir_all(d.path("www")).unwrap();
    std::fs::create_dir_all(d.path("tmp")).unwrap();
    std::fs::write(d.path("www/index.html"), "hello from a restored nginx\n").unwrap();
    let port = 18080 + (std::process::id() % 1000) as u16;
    let root = d.0.display();
    let conf = format!(
        "daemon off; master_process on; worker_processes 2; pid {root}/nginx.pid;
         error_log {root}/error.log; events {{ worker_connections 64; }}
         http {{ access_log off; client_body_temp_path {root}/tmp/body;
           proxy_temp_path {root}/tmp/proxy; fastcgi_temp_path {root}/tmp/fastcgi;
           uwsgi_temp_path {root}/tmp/uwsgi; scgi_temp_path {root}/tmp/scgi;
           server {{ listen 127.0.0.1:{port}; root {root}/www; }} }}"
    );
    std::fs::write(d.path("nginx.conf"), conf).unwrap();
    let mut master = Command::new("nginx")
        .args(["-p", &root.to_string(), "-c"])
        .arg(d.path("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = master.id() as i32;
    wait_for("nginx answers", || {
        http_get(port, "/").is_ok_and(|r| r.contains("hello from a restored nginx"))
    });
    // A client with a kept-alive connection to a worker, across the checkpoint.
    let mut kept = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    assert!(http_again(&mut kept).contains("hello from a restored nginx"));
    let img = d.path("nginx.img");
    let pids = checkpoint_kill(&mut master, &img);
    assert_eq!(pids.len(), 3, "a master and two workers: {pids:?}");
    assert!(
        http_get(port, "/").is_err(),
        "nothing listens while it is down"
    );
    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, Path::new("/usr/sbin/nginx"));
    for i in 0..20 {
        let r = http_get(port, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(r.contains("hello from a restored nginx"), "{r}");
    }
    // The kept-alive connection is served on by its restored worker.
    for _ in 0..3 {
        assert!(http_again(&mut kept).contains("hello from a restored nginx"));
    }
    // Its workers are its own again: they answer after the master is told to quit.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    wait_for("nginx quits as asked", || pids.iter().all(|&p| gone(p)));
}

/// Node.js (V8's JIT, libuv's epoll and helper threads) serving HTTP, with a child from
/// `child_process.fork` that counts and reports over node's IPC channel (a socket pair): the
/// count goes on from where it was, through the restored channel.
const NODE_PARENT_AND_CHILD: &str = r#"
const cp = require('child_process');
if (process.argv[2] === 'child') {
  let n = 0;
  setInterval(() => process.send(++n), 50);
} else {
  let last = 0;
  const child = cp.fork(__filename, ['child']);
  child.on('message', (m) => { last = m; });
  require('http').createServer((q, r) => r.end(String(last))).listen(+process.argv[2], '127.0.0.1');
}
"#;

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn node_with_a_forked_child_counts_on_after_kill_and_restore() {
    let d = Dir::new("real-node");
    std::fs::write(d.path("count.js"), NODE_PARENT_AND_CHILD).unwrap();
    let port = 19080 + (std::process::id() % 1000) as u16;
    let mut node = Command::new("node")
        .arg(d.path("count.js"))
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = node.id() as i32;
    let count = || -> Option<u64> {
        let r = http_get(port, "/").ok()?;
        r.rsplit("\r\n\r\n").next()?.trim().parse().ok()
    };
    wait_for("node's child has counted", || {
        count().is_some_and(|n| n > 5)
    });
    let img = d.path("node.img");
    let pids = checkpoint_kill(&mut node, &img);
    assert_eq!(pids.len(), 2, "node and its child: {pids:?}");
    let at_checkpoint = count();
    assert!(at_checkpoint.is_none(), "nothing answers while it is down");
    let restored = restore_root(&img);
    assert_eq!(restored, pid);
    let first = count().expect("node answers after restore");
    // The child's messages reach the parent again, and the count did not start over.
    wait_for("the count goes on over the IPC channel", || {
        count().is_some_and(|n| n > first + 5)
    });
    assert!(first > 5, "the count started over: {first}");
    for &p in &pids {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for("node is gone", || pids.iter().all(|&p| gone(p)));
}

/// A parallel build: GNU make -j2 with its jobserver pipe, its shells and their sleeps.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn make_j2_finishes_the_build_after_kill_and_restore() {
    let d = Dir::new("real-make");
    std::fs::write(
        d.path("Makefile"),
        "N := $(shell seq 1 24)\n\
         all: $(addprefix out/,$(N))\n\
         \t@cat $^ > all.txt\n\
         out/%: | out\n\
         \t@sleep 0.3; echo target $* > $@\n\
         out:\n\
         \t@mkdir -p out\n",
    )
    .unwrap();
    let mut make = Command::new("make")
        .args(["-j2", "-C"])
        .arg(&d.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let built = || std::fs::read_dir(d.path("out")).map_or(0, |r| r.count());
    wait_for("a few targets are built", || built() >= 4);
    let img = d.path("make.img");
    let pids = checkpoint_kill(&mut make, &img);
    assert!(pids.len() >= 2, "make and at least one job: {pids:?}");
    assert!(built() < 24, "the build was stopped mid-way");
    // Restored, it finishes: --wait passes make's exit status on.
    let out = ckpt(&["restore", "--wait", img.to_str().unwrap()]);
    assert!(out.status.success(), "make after restore: {:?}", out);
    let all = std::fs::read_to_string(d.path("all.txt")).unwrap();
    let want: String = (1..=24).map(|i| format!("target {i}\n")).collect();
    assert_eq!(all, want);
}

/// Python's multiprocessing: a pool of two worker processes fed through pipes, with a
/// semaphore in shared memory and the parent's handler threads.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn python_multiprocessing_pool_finishes_after_kill_and_restore() {
    let d = Dir::new("real-python");
    let script = d.path("pool.py");
    std::fs::write(
        &script,
        "import multiprocessing as mp, sys, time\n\
         def work(x):\n\
         \x20   time.sleep(0.05)\n\
         \x20   return x * x\n\
         if __name__ == '__main__':\n\
         \x20   mp.set_start_method('fork')\n\
         \x20   out = sys.argv[1]\n\
         \x20   with mp.Pool(2) as pool:\n\
         \x20       done = 0\n\
         \x20       with open(out + '.progress', 'w', buffering=1) as p:\n\
         \x20           results = []\n\
         \x20           for r in pool.imap(work, range(300)):\n\
         \x20               results.append(r)\n\
         \x20               p.write('%d\\n' % len(results))\n\
         \x20   open(out, 'w').write(' '.join(map(str, results)))\n",
    )
    .unwrap();
    let out = d.path("result");
    let mut py = python(&script, &out);
    let progress =
        || std::fs::read_to_string(d.path("result.progress")).map_or(0, |t| t.lines().count());
    wait_for("the pool works", || progress() >= 20);
    let img = d.path("python.img");
    let pids = checkpoint_kill(&mut py, &img);
    assert!(pids.len() >= 3, "the parent and two workers: {pids:?}");
    assert!(progress() < 300, "stopped mid-way");
    let o = ckpt(&["restore", "--wait", img.to_str().unwrap()]);
    assert!(o.status.success(), "python after restore: {o:?}");
    let got = std::fs::read_to_string(&out).unwrap();
    let want: Vec<String> = (0..300u64).map(|x| (x * x).to_string()).collect();
    assert_eq!(got, want.join(" "));
}

/// Python's multiprocessing.reduction.send_handle (SCM_RIGHTS over a Pipe, a socket pair):
/// the parent sends an open file (offset 4) to its worker, which receives it only later; the
/// checkpoint with `--kill` comes in between. After the restore the worker gets the file and
/// reads it from offset 4.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn python_send_handle_passes_a_file_across_kill_and_restore() {
    let d = Dir::new("real-python-fd");
    let script = d.path("pass.py");
    std::fs::write(
        &script,
        "import multiprocessing as mp, os, sys, time\n\
         from multiprocessing import reduction\n\
         def worker(conn, out):\n\
         \x20   while not os.path.exists(out + '.go'):\n\
         \x20       time.sleep(0.02)\n\
         \x20   with os.fdopen(reduction.recv_handle(conn)) as f:\n\
         \x20       open(out, 'w').write(f.read())\n\
         if __name__ == '__main__':\n\
         \x20   mp.set_start_method('fork')\n\
         \x20   out = sys.argv[1]\n\
         \x20   a, b = mp.Pipe()\n\
         \x20   p = mp.Process(target=worker, args=(b, out))\n\
         \x20   p.start()\n\
         \x20   with open(out + '.data', 'w+') as f:\n\
         \x20       f.write('0123456789')\n\
         \x20       f.flush()\n\
         \x20       f.seek(4)\n\
         \x20       reduction.send_handle(a, f.fileno(), p.pid)\n\
         \x20       open(out + '.sent', 'w').close()\n\
         \x20       p.join()\n\
         \x20   sys.exit(p.exitcode)\n",
    )
    .unwrap();
    let out = d.path("result");
    let mut py = python(&script, &out);
    wait_for("the file is sent", || d.path("result.sent").exists());
    let img = d.path("python.img");
    let pids = checkpoint_kill(&mut py, &img);
    assert_eq!(pids.len(), 2, "the parent and its worker: {pids:?}");
    let image = ckpt::manifest::Image::open(&img).unwrap();
    assert_eq!(
        image.manifest.shared.in_flight.len(),
        1,
        "the file in flight"
    );
    std::fs::write(d.path("result.go"), "").unwrap();
    let o = ckpt(&["restore", "--wait", img.to_str().unwrap()]);
    assert!(o.status.success(), "python after restore: {o:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "456789");
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs `cmd` as the postgres user; its stdout.
fn as_postgres(cmd: &mut Command) -> String {
    let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    let out = cmd
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A query through psql over the UNIX socket in `dir`.
fn psql(dir: &Path, port: u16, sql: &str) -> String {
    as_postgres(Command::new("/usr/bin/psql").args([
        "-X",
        "-A",
        "-t",
        "-P",
        "pager=off",
        "-d",
        "postgres",
        "-h",
        dir.to_str().unwrap(),
        "-p",
        &port.to_string(),
        "-c",
        sql,
    ]))
}

/// A psql session over TCP (127.0.0.1:`port`), kept open: `ask` sends SQL and returns its
/// output.
struct PsqlSession {
    child: Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl PsqlSession {
    fn open(port: u16) -> PsqlSession {
        let mut child = Command::new("/usr/bin/psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-P",
                "pager=off",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = std::io::BufReader::new(child.stdout.take().unwrap());
        PsqlSession {
            child,
            input,
            output,
        }
    }

    fn ask(&mut self, sql: &str) -> String {
        writeln!(self.input, "{sql}\n\\echo END-OF-ANSWER").unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut self.output, &mut line).unwrap();
            assert!(n > 0, "psql ended; it said: {lines:?}");
            if line.trim() == "END-OF-ANSWER" {
                return lines.join("\n");
            }
            lines.push(line.trim_end().to_string());
        }
    }
}

/// PostgreSQL: the postmaster and its background processes (checkpointer, background
/// writer, WAL writer, autovacuum and logical replication launchers) sharing 128 MiB of
/// buffers, a SysV interlock segment, pipes and listening sockets: killed and restored, it
/// keeps its data and takes new connections.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn postgres_keeps_its_data_and_answers_after_kill_and_restore() {
    let d = Dir::new("real-postgres");
    let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    nix::unistd::chown(&d.0, Some(user.uid), Some(user.gid)).unwrap();
    let data = d.path("data");
    as_postgres(
        Command::new(format!("{PG_BIN}/initdb"))
            .args(["-A", "trust", "-D"])
            .arg(&data),
    );
    let port = 15432 + (std::process::id() % 1000) as u16;
    let mut pg = Command::new(format!("{PG_BIN}/postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-k", d.0.to_str().unwrap(), "-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.path("pg.log")).unwrap())
        .spawn()
        .unwrap();
    let ready = || {
        Command::new("/usr/bin/pg_isready")
            .args(["-h", d.0.to_str().unwrap(), "-p", &port.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    wait_for("postgres accepts connections", ready);
    psql(
        &d.0,
        port,
        "create table t(x int); insert into t values (1),(2),(3);",
    );
    // A client connected over TCP, in the middle of a transaction: its backend is a process
    // of the tree, the client is not.
    let mut session = PsqlSession::open(port);
    assert_eq!(
        session.ask("begin; insert into t values (100); select count(*) from t;"),
        "4"
    );
    let img = d.path("pg.img");
    let pids = checkpoint_kill(&mut pg, &img);
    assert!(
        pids.len() >= 5,
        "the postmaster and its background processes: {pids:?}"
    );
    let restored = restore_root(&img);
    assert_eq!(restored, pids[0]);
    assert_eq!(psql(&d.0, port, "select sum(x) from t;"), "6");
    assert_eq!(
        psql(
            &d.0,
            port,
            "insert into t values (4); select sum(x) from t;"
        ),
        "INSERT 0 1\n10"
    );
    // The session goes on over the same connection and commits its transaction.
    assert_eq!(
        session.ask("insert into t values (200); commit; select sum(x) from t;"),
        "310"
    );
    drop(session.input);
    let _ = session.child.wait();
    // A fast shutdown, as asked, by the restored postmaster and all its processes.
    unsafe { libc::kill(restored, libc::SIGINT) };
    wait_for("postgres shuts down", || pids.iter().all(|&p| gone(p)));
}

/// `tmux -S SOCK ARGS...` (its output).
fn tmux(sock: &Path, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last "tick N" a tmux pane shows.
fn last_tick(sock: &Path, pane: &str) -> Option<u64> {
    let screen = tmux(sock, &["capture-pane", "-p", "-t", pane]);
    screen
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
}

/// Whether a child of `pid` runs `comm`.
fn runs_child(pid: i32, comm: &str) -> bool {
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace()
        .any(|k| std::fs::read_to_string(format!("/proc/{k}/comm")).is_ok_and(|c| c.trim() == comm))
}

/// The controlling terminal's device number of `pid` (field 7 of /proc/PID/stat).
fn tty_nr(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[4].parse().unwrap()
}

/// tmux (a server holding pty masters, a pane running an interactive bash on its terminal, a
/// pane printing a count), checkpointed with --kill and restored: the counting pane's screen
/// goes on, the interactive shell runs the line typed ahead while it ran sleep (it waited in
/// the pty) and reads what is typed into it and answers, each pane keeps its /dev/pts number
/// and its shell its controlling terminal.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn tmux_panes_go_on_after_kill_and_restore() {
    let d = Dir::new("real-tmux");
    let sock = d.path("sock");
    let home = d.0.display().to_string();
    let status = Command::new("tmux")
        .env_clear()
        .envs([("PATH", "/usr/bin:/bin"), ("HOME", home.as_str())])
        .arg("-S")
        .arg(&sock)
        .args([
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "80",
            "-y",
            "24",
        ])
        .arg("bash --norc --noprofile -i")
        .status()
        .unwrap();
    assert!(status.success());
    let count = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    tmux(&sock, &["new-window", "-d", "-t", "t:1", count]);
    wait_for("the pane counts", || {
        last_tick(&sock, "t:1").is_some_and(|n| n > 3)
    });
    let server: i32 = tmux(&sock, &["display", "-p", "#{pid}"])
        .trim()
        .parse()
        .unwrap();
    let panes = tmux(
        &sock,
        &["list-panes", "-a", "-F", "#{pane_pid} #{pane_tty}"],
    );
    let panes: Vec<(i32, String)> = panes
        .lines()
        .map(|l| {
            let (pid, tty) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), tty.to_string())
        })
        .collect();
    assert_eq!(panes.len(), 2, "{panes:?}");
    let ttys: Vec<u64> = panes.iter().map(|&(p, _)| tty_nr(p)).collect();
    assert!(ttys.iter().all(|&t| t != 0), "each pane has its terminal");
    // Type-ahead: a line typed while the shell runs a command waits, echoed and unread, in
    // the pane's terminal; the shell runs it once the command is done.
    let shell: i32 = tmux(&sock, &["display", "-p", "-t", "t:0", "#{pane_pid}"])
        .trim()
        .parse()
        .unwrap();
    tmux(&sock, &["send-keys", "-t", "t:0", "sleep 8", "Enter"]);
    wait_for("the shell runs sleep", || runs_child(shell, "sleep"));
    let typed = "echo typed-$((6*7))";
    tmux(&sock, &["send-keys", "-t", "t:0", typed, "Enter"]);
    wait_for("the typed line is echoed", || {
        tmux(&sock, &["capture-pane", "-p", "-t", "t:0"]).contains(typed)
    });

    let img = d.path("tmux.img");
    let out = ckpt(&[
        "checkpoint",
        &server.to_string(),
        "-o",
        img.to_str().unwrap(),
        "--kill",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("tmux is gone", || {
        gone(server) && panes.iter().all(|&(p, _)| gone(p))
    });
    let at_checkpoint = last_tick(&sock, "t:1");
    assert!(
        at_checkpoint.is_none(),
        "no server answers while it is down"
    );
    let m = ckpt::manifest::Image::open(&img).unwrap().manifest;
    assert_eq!(m.shared.ptys.len(), 2, "two ptys");
    let waiting = (m.shared.ptys.iter())
        .filter_map(|p| p.queued.as_ref())
        .map(|q| q.input_bytes())
        .sum::<u64>();
    assert_eq!(
        waiting,
        typed.len() as u64 + 1,
        "the typed line is in the image"
    );

    let restored = restore_root(&img);
    assert_eq!(restored, server);
    let before = last_tick(&sock, "t:1").expect("the pane's screen is back");
    wait_for("the pane counts on", || {
        last_tick(&sock, "t:1").is_some_and(|n| n > before + 3)
    });
    wait_for("the typed-ahead line runs once sleep is done", || {
        tmux(&sock, &["capture-pane", "-p", "-t", "t:0"]).contains("typed-42")
    });
    tmux(
        &sock,
        &["send-keys", "-t", "t:0", "echo hello-$((6*7))", "Enter"],
    );
    wait_for("the shell answers", || {
        tmux(&sock, &["capture-pane", "-p", "-t", "t:0"]).contains("hello-42")
    });
    // The terminal keeps its size (rows, columns).
    tmux(
        &sock,
        &[
            "send-keys",
            "-t",
            "t:0",
            "echo size-$(stty size | tr ' ' x)",
            "Enter",
        ],
    );
    wait_for("stty answers", || {
        tmux(&sock, &["capture-pane", "-p", "-t", "t:0"]).contains("size-24x80")
    });
    let after = tmux(
        &sock,
        &["list-panes", "-a", "-F", "#{pane_pid} #{pane_tty}"],
    );
    for (pid, tty) in &panes {
        assert!(after.contains(&format!("{pid} {tty}")), "{after}");
        let fd0 = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
        assert_eq!(fd0, Path::new(tty), "the pane's program is on its terminal");
    }
    let ttys_after: Vec<u64> = panes.iter().map(|&(p, _)| tty_nr(p)).collect();
    assert_eq!(
        ttys_after, ttys,
        "each shell keeps its controlling terminal"
    );
    tmux(&sock, &["kill-server"]);
    wait_for("tmux quits as asked", || gone(server));
}

/// Python's signal.setitimer (ITIMER_REAL every 100 ms, a handler counting): the count goes
/// on at its rate after --kill and restore, and Python still reads its interval back.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn python_setitimer_ticks_on_after_kill_and_restore() {
    let d = Dir::new("real-python-itimer");
    let script = d.path("tick.py");
    std::fs::write(
        &script,
        "import signal, sys, time\n\
         n = 0\n\
         def tick(sig, frame):\n\
         \x20   global n\n\
         \x20   n += 1\n\
         signal.signal(signal.SIGALRM, tick)\n\
         signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)\n\
         out = open(sys.argv[1], 'a', buffering=1)\n\
         while True:\n\
         \x20   time.sleep(0.2)\n\
         \x20   out.write('%d %d %s\\n' % (time.monotonic_ns() // 1000000, n,\n\
         \x20             signal.getitimer(signal.ITIMER_REAL)[1]))\n",
    )
    .unwrap();
    let out = d.path("ticks");
    let mut py = python(&script, &out);
    // (time ms, ticks, interval) per line after byte `from`.
    let lines = |from: usize| -> Vec<(i64, i64, String)> {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.get(from..)
            .unwrap_or("")
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let t = w.next()?.parse().ok()?;
                let n = w.next()?.parse().ok()?;
                Some((t, n, w.next()?.to_owned()))
            })
            .collect()
    };
    wait_for("python ticks", || lines(0).last().is_some_and(|l| l.1 >= 5));
    let img = d.path("python.img");
    let (_, image, _) = common::checkpoint_kill(&mut py, &img);
    let timers = image.manifest.processes[0].timers.clone();
    let before = lines(0).last().cloned().unwrap();
    let from = std::fs::metadata(&out).unwrap().len() as usize;
    let pid = restore_root(&img);
    wait_for("python ticks for 2 s after the restore", || {
        let l = lines(from);
        l.len() >= 2 && l[l.len() - 1].0 - l[0].0 >= 2000
    });
    let l = lines(from);
    let (first, last) = (&l[0], &l[l.len() - 1]);
    assert!(
        first.1 >= before.1,
        "the count went back: {before:?} then {first:?}"
    );
    let (dt, dn) = (last.0 - first.0, last.1 - first.1);
    assert!(
        dn * 2 >= dt / 100 - 2 && dn <= dt / 100 + dt / 500 + 2,
        "{dn} ticks in {dt} ms, one every 100 ms expected (before: {before:?}, after: \
         {l:?}; in the image: {timers:?})"
    );
    assert_eq!(last.2, "0.1", "the interval Python reads back");
    // SAFETY: ending the restored process (init reaps it: `ckpt restore` has exited).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("python gone", || gone(pid));
}

/// The N of the next "tick N" record at `log` (a syslog datagram: "<14>tick N\0").
fn next_tick(log: &std::os::unix::net::UnixDatagram) -> u64 {
    let mut buf = [0u8; 256];
    let n = log.recv(&mut buf).expect("a record within 30 s");
    tick_in(&buf[..n])
}

fn tick_in(record: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(record);
    let n = text.trim_end_matches('\0').rsplit(' ').next();
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tick record: {text:?}"))
}

/// Python's `logging.handlers.SysLogHandler` keeps a datagram socket connected to the
/// syslog socket (here the test's, playing /dev/log, outside the tree): carried without
/// asking, connected to the same path again, the next records arrive there in order.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn python_syslog_handler_logs_on_to_the_same_socket_after_kill_and_restore() {
    let d = Dir::new("real-python-syslog");
    let log_path = d.path("log");
    let log = std::os::unix::net::UnixDatagram::bind(&log_path).unwrap();
    log.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let script = d.path("syslog.py");
    std::fs::write(
        &script,
        "import logging, logging.handlers, sys, time\n\
         h = logging.handlers.SysLogHandler(address=sys.argv[1])\n\
         log = logging.getLogger('t')\n\
         log.addHandler(h)\n\
         log.setLevel(logging.INFO)\n\
         n = 0\n\
         while True:\n\
         \x20   log.info('tick %d', n)\n\
         \x20   n += 1\n\
         \x20   time.sleep(0.02)\n",
    )
    .unwrap();
    let mut py = python(&script, &log_path);
    assert_eq!(next_tick(&log), 0);
    let img = d.path("python.img");
    let (_, image, _) = common::checkpoint_kill(&mut py, &img);
    let ext = &image.manifest.shared.unix_external;
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(ext[0].reconnect, ckpt::fds::Reconnect::Name);
    // What it logged before it was frozen.
    log.set_nonblocking(true).unwrap();
    let mut last = 0;
    let mut buf = [0u8; 256];
    while let Ok(n) = log.recv(&mut buf) {
        last = tick_in(&buf[..n]);
    }
    log.set_nonblocking(false).unwrap();
    let pid = restore_root(&img);
    assert_eq!(next_tick(&log), last + 1, "it logs on where it was");
    assert_eq!(next_tick(&log), last + 2);
    // SAFETY: ending the restored process (init reaps it: `ckpt restore` has exited).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("python gone", || gone(pid));
}

/// Runs `sqlite3 DB ARGS...` (each argument a statement or dot-command, run in order in one
/// session).
fn sqlite3(db: &Path, args: &[&str]) -> std::process::Output {
    Command::new("sqlite3").arg(db).args(args).output().unwrap()
}

/// The POSIX write locks /proc/locks shows on `path`, by holder pid.
fn posix_write_locks(path: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0);
    let text = std::fs::read_to_string("/proc/locks").unwrap();
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let [_, "POSIX", _, "WRITE", pid, inode, ..] = w[..] else {
                return None;
            };
            (inode.rsplit(':').next()? == ino.to_string()).then(|| pid.parse().ok())?
        })
        .collect()
}

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn sqlite3_keeps_its_open_write_transaction_after_kill_and_restore() {
    // WAL mode: the writer's locks are POSIX locks on DB-shm, a file it also maps (the
    // restorer's fds of mapped files are closed by the restore ioctl: the locks must come
    // after it).
    let d = Dir::new("real-sqlite3");
    let (db, shm) = (d.path("db"), d.path("db-shm"));
    let setup = [
        "PRAGMA journal_mode=WAL",
        "CREATE TABLE t(x)",
        "INSERT INTO t VALUES(1)",
    ];
    assert!(sqlite3(&db, &setup).status.success());
    let steps = [
        "BEGIN IMMEDIATE",
        "INSERT INTO t VALUES(2)",
        ".shell exec sleep 1000",
        "COMMIT",
    ];
    let mut writer = Command::new("sqlite3")
        .arg(&db)
        .args(steps)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = writer.id() as i32;
    wait_for("the transaction is open (the writer runs sleep)", || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .is_ok_and(|c| !c.trim().is_empty())
            && posix_write_locks(&shm).contains(&pid)
    });
    let locked = |what: &str| {
        let out = sqlite3(&db, &["INSERT INTO t VALUES(3)"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("locked"),
            "{what}: {err}"
        );
    };
    locked("before the checkpoint");
    let img = d.path("sqlite3.img");
    let pids = checkpoint_kill(&mut writer, &img);
    assert_eq!(restore_root(&img), pid);
    assert!(
        posix_write_locks(&shm).contains(&pid),
        "the write lock is back"
    );
    locked("after the restore");
    // The sleep ends: the writer commits its transaction and exits.
    let sleep = pids.iter().copied().find(|&p| p != pid).unwrap();
    unsafe { libc::kill(sleep, libc::SIGKILL) };
    wait_for("the writer commits and exits", || gone(pid));
    let rows = sqlite3(&db, &["SELECT x FROM t"]);
    assert_eq!(String::from_utf8_lossy(&rows.stdout), "1\n2\n");
    assert!(sqlite3(&db, &["INSERT INTO t VALUES(3)"]).status.success());
}

/// The inotify watches of process `pid` (every instance), as "wd:N ino:N sdev:N mask:N",
/// sorted.
fn inotify_watches(pid: i32) -> Vec<String> {
    let mut watches = Vec::new();
    for f in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(f.path()).unwrap_or_default();
        let lines = info.lines().filter_map(|l| l.strip_prefix("inotify "));
        watches.extend(lines.map(|l| l.split(' ').take(4).collect::<Vec<_>>().join(" ")));
    }
    watches.sort();
    watches
}

/// GNU tail -F (coreutils) follows a file through inotify (watches on the file and its
/// directory); its polling fallback is set to an hour, so only the restored watches can show
/// it lines appended after the restore, and the file being replaced.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn tail_follows_its_file_through_inotify_after_kill_and_restore() {
    let d = Dir::new("real-tail");
    let (log, out) = (d.path("log"), d.path("out"));
    std::fs::write(&log, "one\n").unwrap();
    let mut tail = Command::new("tail")
        .args(["-F", "-s", "3600", "-n", "+1"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    let pid = tail.id() as i32;
    let printed = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_for("tail prints the first line", || printed().contains("one\n"));
    let uses_inotify = || {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|f| {
                std::fs::read_link(f.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:inotify")
            })
        })
    };
    wait_for("tail watches with inotify", uses_inotify);
    // It adds its watches one by one: both must be there before the checkpoint.
    wait_for("tail watches the file and its directory", || {
        inotify_watches(pid).len() >= 2
    });
    let before = inotify_watches(pid);
    let img = d.path("tail.img");
    checkpoint_kill(&mut tail, &img);
    assert_eq!(restore_root(&img), pid);
    assert_eq!(
        inotify_watches(pid),
        before,
        "the same watches, wds and inodes"
    );
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"two\n").unwrap();
    wait_for("tail prints a line appended after the restore", || {
        printed().contains("one\ntwo\n")
    });
    // Replaced: tail -F follows the name (its directory's watch sees the rename).
    std::fs::write(d.path("log.new"), "three\n").unwrap();
    std::fs::rename(d.path("log.new"), &log).unwrap();
    wait_for("tail follows the replaced file", || {
        printed().contains("three\n")
    });
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("tail is gone", || gone(pid));
}

/// tail -F on a file of the guest's root filesystem (9p, read-only: open_by_handle_at cannot
/// open its handles), so its watched objects are found by inode number, under its working
/// directory: it comes back with the same watches.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn tail_of_a_file_on_a_filesystem_without_handles_comes_back() {
    let d = Dir::new("real-tail-9p");
    let here = env!("CARGO_MANIFEST_DIR");
    let mut tail = Command::new("tail")
        .args(["-F", "-s", "3600", "Cargo.toml"])
        .current_dir(here)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = tail.id() as i32;
    wait_for("tail watches with inotify", || {
        inotify_watches(pid).len() >= 2
    });
    let before = inotify_watches(pid);
    let img = d.path("tail.img");
    checkpoint_kill(&mut tail, &img);
    let summary = common::ok(&ckpt(&["inspect", img.to_str().unwrap()]));
    let file = format!("{here}/Cargo.toml");
    assert!(summary.contains(&file), "{file} not in:\n{summary}");
    assert_eq!(restore_root(&img), pid);
    assert_eq!(
        inotify_watches(pid),
        before,
        "the same watches, wds and inodes"
    );
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("tail is gone", || gone(pid));
}

/// Starts `python3 SCRIPT ARG` with no stdin and stdout.
fn python(script: &std::path::Path, arg: &std::path::Path) -> std::process::Child {
    Command::new("/usr/bin/python3")
        .arg(script)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// A JVM program: a worker thread counting, the main thread reporting the count to a file,
/// garbage made all along.
const JAVA_COUNTER: &str = r#"
import java.io.*;
import java.util.*;
import java.util.concurrent.atomic.AtomicLong;
public class Count {
  public static void main(String[] a) throws Exception {
    AtomicLong n = new AtomicLong();
    Thread t = new Thread(() -> {
      List<long[]> keep = new ArrayList<>();
      while (true) {
        n.incrementAndGet();
        keep.add(new long[512]); if (keep.size() > 4000) keep.remove(0);
        try { Thread.sleep(5); } catch (InterruptedException e) { return; }
      }
    });
    t.start();
    PrintWriter out = new PrintWriter(new FileWriter(a[0], true), true);
    for (long seq = 1; ; seq++) { out.println(seq + " " + n.get()); Thread.sleep(50); }
  }
}
"#;

/// The last "SEQ COUNT" line of the Java counter's output.
fn java_last(out: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(out).ok()?;
    let (seq, n) = text.lines().last()?.split_once(' ')?;
    Some((seq.parse().ok()?, n.parse().ok()?))
}

/// A JVM (about twenty threads: GC, JIT compilers, signal dispatcher; a UNIX socket whose
/// peer has closed, which ckpt refused until then) checkpointed with --kill and restored:
/// its report goes on from where it was, no line lost or repeated and the count not started
/// over; then a live checkpoint of the restored JVM restores too.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_jvm_counts_on_after_kill_and_restore_and_after_a_live_checkpoint() {
    let d = Dir::new("real-java");
    std::fs::write(d.path("Count.java"), JAVA_COUNTER).unwrap();
    let out = d.path("out");
    // Its own messages and a crash report (HotSpot writes the report's summary on stdout)
    // go to files shown if it ends before the checkpoint: that is not ckpt's doing, but
    // it must say why.
    let log = std::fs::File::create(d.path("java.log")).unwrap();
    let mut java = Command::new("java")
        .args(["-Xmx128m", "-Xshare:off"])
        .arg(format!("-XX:ErrorFile={}", d.path("hs_err.log").display()))
        .arg(d.path("Count.java"))
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    common::wait_for("the JVM reports", 300, || {
        if let Some(status) = java.try_wait().unwrap() {
            let show = |f| std::fs::read_to_string(d.path(f)).unwrap_or_default();
            let (log, report) = (show("java.log"), show("hs_err.log"));
            let head: String = report.lines().take(40).collect::<Vec<_>>().join("\n");
            panic!("the JVM ended by itself ({status}) before any checkpoint:\n{log}\n{head}");
        }
        java_last(&out).is_some_and(|(s, _)| s > 5)
    });
    let threads = std::fs::read_dir(format!("/proc/{}/task", java.id())).unwrap();
    assert!(threads.count() > 10, "a JVM has many threads");
    let img = d.path("java.img");
    checkpoint_kill(&mut java, &img);
    let (seq, count) = java_last(&out).unwrap();
    let pid = restore_root(&img);
    wait_for("the JVM reports again", || {
        java_last(&out).is_some_and(|(s, _)| s > seq + 5)
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let seqs: Vec<u64> = (text.lines())
        .filter_map(|l| l.split_once(' ')?.0.parse().ok())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "lines lost or repeated"
    );
    let (_, later) = java_last(&out).unwrap();
    assert!(
        later > count,
        "the count started over: {later} after {count}"
    );
    // Live: the JVM runs on, and the image restores once it is gone.
    let img2 = d.path("java2.img");
    let stats = common::checkpoint_json(pid, &img2, &[]);
    assert_eq!(stats["snapshots"], 1, "{stats}");
    common::kill_and_reap(pid);
    let (seq, _) = java_last(&out).unwrap();
    let pid = restore_root(&img2);
    wait_for("the JVM restored from a live image reports", || {
        java_last(&out).is_some_and(|(s, _)| s > seq + 5)
    });
    common::kill_and_reap(pid);
}

/// A request to Redis on connection `s` (an inline command); its whole answer (a bulk
/// string read to its length, anything else to its line end), without the last CRLF.
fn redis_ask(s: &mut std::net::TcpStream, cmd: &str) -> String {
    write!(s, "{cmd}\r\n").unwrap();
    let mut got = Vec::new();
    let complete = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let Some((head, rest)) = text.split_once("\r\n") else {
            return false;
        };
        match head.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(len) => rest.len() >= len + 2,
            None => true,
        }
    };
    while !complete(&got) {
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "redis closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).trim_end().to_owned()
}

/// Redis with 4,000 keys of 1 KiB and a client holding a TCP connection, checkpointed with
/// --kill while a background save's forked child (sharing the parent's memory copy-on-write)
/// writes the database: both come back, the save finishes, every key is there, and the
/// client goes on over its connection.
#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn redis_with_a_client_and_a_background_save_after_kill_and_restore() {
    let d = Dir::new("real-redis");
    let port = 16379 + (std::process::id() % 1000) as u16;
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--enable-debug-command", "yes", "--dir"])
        .arg(d.path(""))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut client = None;
    common::wait_for("redis listens", 60, || {
        client = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        client.is_some()
    });
    let mut c = client.unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(redis_ask(&mut c, "DEBUG POPULATE 4000 key 1024"), "+OK");
    assert_eq!(redis_ask(&mut c, "INCR visits"), ":1");
    // A save slowed down (a 10 µs sleep a key: about 1.5 ms under TCG, 6 s in all) so that
    // its child is in the tree.
    assert_eq!(redis_ask(&mut c, "CONFIG SET rdb-key-save-delay 10"), "+OK");
    assert_eq!(redis_ask(&mut c, "BGSAVE"), "+Background saving started");
    let pid = redis.id();
    let children = || std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    wait_for("the save's child", || {
        children().is_ok_and(|c| !c.trim().is_empty())
    });
    let img = d.path("redis.img");
    let pids = checkpoint_kill(&mut redis, &img);
    assert_eq!(pids.len(), 2, "redis and its save's child: {pids:?}");
    let restored = restore_root(&img);
    assert_eq!(restored, pid as i32);
    assert_eq!(
        redis_ask(&mut c, "INCR visits"),
        ":2",
        "the client's connection"
    );
    assert_eq!(redis_ask(&mut c, "DBSIZE"), ":4001");
    let value = redis_ask(&mut c, "GET key:3999");
    assert!(value.starts_with("$1024\r\nvalue:3999"), "{value}");
    common::wait_for("the background save ends", 300, || {
        redis_ask(&mut c, "INFO persistence").contains("rdb_bgsave_in_progress:0")
    });
    let info = redis_ask(&mut c, "INFO persistence");
    assert!(info.contains("rdb_last_bgsave_status:ok"), "{info}");
    assert!(d.path("dump.rdb").exists(), "the save's file");
    for &p in &pids {
        // SAFETY: signalling the restored processes.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for("redis is gone", || pids.iter().all(|&p| gone(p)));
}
