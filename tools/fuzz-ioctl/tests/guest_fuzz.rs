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
    // The fuzzer seizes its targets: calls of each command naming a pid get past the
    // module's permission check into its deep paths (about 80 to 230 each in a run of the
    // test kernel), and calls on processes it does not trace are refused.
    let past = per_command(&stdout, "fuzz-ioctl: past the permission check: ");
    let refused = per_command(&stdout, "fuzz-ioctl: refused by it (EPERM): ");
    for cmd in ["Query", "DumpTask", "DumpPages"] {
        assert!(
            past[cmd] >= MIN_PAST,
            "only {} {cmd} calls got past the permission check:\n{stdout}",
            past[cmd]
        );
        assert!(
            refused[cmd] >= MIN_REFUSED,
            "only {} {cmd} calls refused (EPERM):\n{stdout}",
            refused[cmd]
        );
    }
    eprintln!("{stdout}");
}

/// Least calls of each command that must get past the permission check in the short run.
const MIN_PAST: u64 = 25;
/// Least calls of each command the permission check must refuse in it.
const MIN_REFUSED: u64 = 5;

/// The counts of a summary line "PREFIX Query N, DumpTask N, DumpPages N", by command.
fn per_command(stdout: &str, prefix: &str) -> std::collections::HashMap<String, u64> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in the output:\n{stdout}"));
    line.split(", ")
        .map(|item| {
            let (cmd, n) = item
                .split_once(' ')
                .unwrap_or_else(|| panic!("{item:?} in {line:?}"));
            (
                cmd.to_string(),
                n.parse().unwrap_or_else(|_| panic!("{line:?}")),
            )
        })
        .collect()
}
