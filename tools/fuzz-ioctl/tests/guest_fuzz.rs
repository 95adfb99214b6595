//! The fuzzer's short form, in the guest suite: a fixed seed for a few seconds on the test
//! kernel (the full form is `make fuzz`, on the debug kernel). It needs the module, so
//! natively it is ignored; the guest runner runs it (tests/guest/suite.sh -> `--ignored`).

use std::process::Command;

/// The seed CI always runs: the same calls every time, so a failure replays.
const SEED: &str = "1";

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_short_fixed_seed_run_finds_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_ckpt-fuzz-ioctl"))
        .args([
            "--seed",
            SEED,
            "--seconds",
            "8",
            "--threads",
            "2",
            "--quick",
        ])
        .output()
        .expect("run ckpt-fuzz-ioctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the fuzzer failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("regression cases, 0 failed"), "{stdout}");
    // "fuzz-ioctl: seed 1: N calls in ..." : it must really have made calls.
    let calls: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("fuzz-ioctl: seed {SEED}: ")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no call count in the output:\n{stdout}"));
    assert!(calls >= 500, "only {calls} calls in 8 s:\n{stdout}");
    eprintln!("{stdout}");
}
