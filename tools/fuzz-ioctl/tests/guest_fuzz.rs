//! The fuzzer's short form, in the guest suite: a fixed seed and a fixed number of calls on
//! the test kernel, a few seconds (the full form is `make fuzz`, on the debug kernel). It needs the module, so
//! natively it is ignored; the guest runner runs it (tests/guest/suite.sh -> `--ignored`).

use std::process::Command;

/// The seed CI always runs: the same calls every time, so a failure replays.
const SEED: &str = "1";
/// The calls it makes: a count, not a time, so that how many get past the permission check
/// does not depend on how loaded the host is (5 s on an idle one, some 15 s on a busy one).
const CALLS: u64 = 2500;
/// Seconds after which the run stops even with calls left (and the test fails).
const CAP: &str = "120";

#[test]
#[ignore = "needs /dev/ckpt: runs in the guest (tools/guest.sh)"]
fn a_short_fixed_seed_run_finds_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_ckpt-fuzz-ioctl"))
        .args([
            "--seed",
            SEED,
            "--calls",
            &CALLS.to_string(),
            "--seconds",
            CAP,
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
    assert_eq!(calls, CALLS, "not all calls made in {CAP} s:\n{stdout}");
    // The fuzzer seizes its targets: calls of each command naming a pid get past the
    // module's permission check into its deep paths (some 160 QUERY and DUMP_TASK and 67
    // DUMP_PAGES calls of these 2500), and calls on processes it does not trace are refused
    // (some 55, 40 and 18).
    let past = per_command(&stdout, "fuzz-ioctl: past the permission check: ");
    let refused = per_command(&stdout, "fuzz-ioctl: refused by it (EPERM): ");
    for cmd in ["Query", "DumpTask", "DumpPages", "Itimers"] {
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
    // By whose pid: its own memory target and its own churn (exiting, exec'ing, zombies)
    // are read; nothing another thread traces or nobody traces ever is (the tracer rule is
    // per thread). A pid reused between a slot's reap and its update could name one of
    // ours; in 2500 calls the pids do not wrap, so that cannot happen here.
    let by = per_command(
        &stdout,
        "fuzz-ioctl: past the permission check, by target: ",
    );
    let n = |w: &str| by.get(w).copied().unwrap_or(0);
    assert!(n("OwnTarget") >= MIN_PAST, "own memory target:\n{stdout}");
    assert!(n("OwnChurn") >= MIN_CHURN, "own seized churn:\n{stdout}");
    assert_eq!(n("OthersTraced") + n("Untraced"), 0, "{stdout}");
    eprintln!("{stdout}");
}

/// Least calls on its own churn (forked and seized by the calling thread) that must get past
/// the permission check (some 35 to 70 in a run).
const MIN_CHURN: u64 = 5;

/// Least calls of each command that must get past the permission check in the short run.
const MIN_PAST: u64 = 25;
/// Least calls of each command the permission check must refuse in it.
const MIN_REFUSED: u64 = 5;

/// The counts of a summary line "PREFIX Query N, DumpTask N, DumpPages N", by name.
fn per_command(stdout: &str, prefix: &str) -> std::collections::HashMap<String, u64> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in the output:\n{stdout}"));
    line.split(", ")
        .filter(|item| !item.is_empty())
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
