//! The CLI's behaviour where no module is needed (runs natively).

mod common;
use std::process::Command;

#[test]
fn info_without_module_explains_how_to_load_it() {
    let out = Command::new(common::ckpt_bin())
        .args(["info", "1", "--device", "/nonexistent/ckpt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("module is not loaded") && err.contains("insmod ckpt.ko"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn info_rejects_a_read_without_length() {
    let out = Command::new(common::ckpt_bin())
        .args(["info", "1", "--read", "0x1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--len"));
}

#[test]
fn info_rejects_a_bad_address() {
    let out = Command::new(common::ckpt_bin())
        .args(["info", "1", "--read", "0xzz", "--len", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a number: 0xzz"));
}
