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

/// nginx with a master and two workers sharing a listening socket, socket pairs and shared
/// memory; the workers run as nobody.
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
    let mut py = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
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
    // A fast shutdown, as asked, by the restored postmaster and all its processes.
    unsafe { libc::kill(restored, libc::SIGINT) };
    wait_for("postgres shuts down", || pids.iter().all(|&p| gone(p)));
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
