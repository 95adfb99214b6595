//! Compiles the C target programs the integration tests run (tests/progs/*.c) into OUT_DIR.
//! They are test fixtures, not part of the product; building them here lets the tests find
//! them through `env!("CKPT_TEST_PROGS")` on the host and, through the shared filesystem, in
//! the guest.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let progs = manifest.join("../../tests/progs");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("progs");
    std::fs::create_dir_all(&out).unwrap();
    // (source, extra flags)
    let list: &[(&str, &[&str])] = &[
        ("static_target", &["-static"]),
        ("threaded_target", &["-pthread"]),
        ("counter", &[]),
        ("counter_static", &["-static"]),
        ("fdkinds", &[]),
        ("sysv_target", &[]),
        ("sysv_ipc", &[]),
        ("tcpecho", &[]),
        ("tcpbench", &[]),
        ("fifo", &[]),
        ("udpecho", &[]),
        ("shm", &[]),
        ("shmtree", &[]),
        ("cowtree", &[]),
        ("mt_counter", &["-pthread"]),
        ("app", &["-pthread"]),
        ("printer", &[]),
        ("dropper", &[]),
        ("forker", &[]),
        ("tree", &[]),
        ("unix_socks", &[]),
        ("scm", &[]),
        ("timers", &["-pthread"]),
        ("itimer", &[]),
        ("locks", &[]),
        ("notify", &[]),
        ("sigmask", &["-pthread"]),
        ("relay", &[]),
        ("scribbler", &[]),
        ("manythreads", &["-pthread"]),
        ("manymaps", &[]),
        ("ptypair", &[]),
        ("shared_fds", &[]),
        ("dirtier", &[]),
    ];
    // Headers the programs share.
    println!("cargo:rerun-if-changed={}", progs.join("tick.h").display());
    for (name, flags) in list {
        // counter_static is counter.c linked statically.
        let src = progs.join(format!("{}.c", name.trim_end_matches("_static")));
        println!("cargo:rerun-if-changed={}", src.display());
        let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-O1", "-g", "-Wall", "-Werror", "-o"])
            .arg(out.join(name))
            .arg(&src)
            .args(*flags)
            .status()
            .expect("running the C compiler for tests/progs");
        assert!(status.success(), "compiling {} failed", src.display());
    }
    println!("cargo:rustc-env=CKPT_TEST_PROGS={}", out.display());
}
