use super::*;

fn p(pid: i32, ppid: i32, pgid: i32, sid: i32) -> Ids {
    Ids {
        pid,
        ppid,
        pgid,
        sid,
        zombie: false,
    }
}

fn z(pid: i32, ppid: i32, pgid: i32, sid: i32) -> Ids {
    Ids {
        zombie: true,
        ..p(pid, ppid, pgid, sid)
    }
}

fn gone(ids: &[i32]) -> BTreeSet<i32> {
    ids.iter().copied().collect()
}

#[test]
fn a_tree_with_its_own_session_and_groups_needs_no_helper() {
    // The guest tree test's shape: root leads its session, a leads a group with a1, b's
    // zombie in the root's group.
    let procs = [
        p(10, 1, 10, 10),
        p(11, 10, 11, 10),
        p(12, 11, 11, 10),
        p(13, 10, 10, 10),
        z(14, 13, 10, 10),
    ];
    let plan = plan(&procs, &gone(&[])).unwrap();
    assert!(plan.no_helpers());
    assert!(plan.makes_group(10) && plan.makes_group(11));
}

#[test]
fn a_shell_job_inherits_its_session_and_group() {
    // bash run from a shell (session 5, group 7, both alive outside), its child in its group.
    let procs = [p(20, 7, 7, 5), p(21, 20, 7, 5)];
    let plan = plan(&procs, &gone(&[])).unwrap();
    assert!(plan.no_helpers());
    assert!(!plan.makes_group(7));
    // A shell job leading its own group still takes the restorer's (not a background job).
    let plan2 = super::plan(&[p(20, 7, 20, 5), p(21, 20, 20, 5)], &gone(&[])).unwrap();
    assert!(!plan2.makes_group(20));
    // In the session and group of the kernel's first process (0), as in the test guest.
    let plan3 = super::plan(&[p(22, 1, 0, 0), p(23, 22, 23, 0)], &gone(&[])).unwrap();
    assert!(plan3.no_helpers() && plan3.makes_group(23) && !plan3.makes_group(0));
}

#[test]
fn a_double_fork_daemon_gets_a_session_helper() {
    // 30 (setsid, exited) forked 31, reparented to init; 31's child 32.
    let procs = [p(31, 1, 30, 30), p(32, 31, 30, 30)];
    let plan = plan(&procs, &gone(&[30])).unwrap();
    assert_eq!(plan.sessions, BTreeMap::from([(30, vec![31])]));
    assert!(plan.groups.is_empty(), "setsid made group 30 too");
    assert!(plan.makes_group(30));
    assert_eq!(plan.session_helper_of(31), Some(30));
    assert_eq!(plan.helper_pids(), [30]);
    // Taken as a shell job when the leader still lives: no helper.
    assert!(super::plan(&procs, &gone(&[])).unwrap().no_helpers());
}

#[test]
fn a_daemon_in_its_own_group_of_a_gone_session() {
    // 31 in gone session 30 leads group 31; 33 (another root of session 30) in gone group 34.
    let procs = [p(31, 1, 31, 30), p(32, 31, 31, 30), p(33, 1, 34, 30)];
    let plan = plan(&procs, &gone(&[30, 34])).unwrap();
    assert_eq!(plan.sessions, BTreeMap::from([(30, vec![31, 33])]));
    assert_eq!(plan.groups, BTreeMap::from([(34, 30)]));
    assert_eq!(plan.group_helpers_of(30), [34]);
    assert!(plan.makes_group(31) && plan.makes_group(34));
}

#[test]
fn a_pipeline_whose_first_command_exited_gets_a_group_helper() {
    // bash 40 (shell job: session 5, group 7) with job control: pipeline group 41 (exited
    // leader), members 42 and 43; 42's child 44 inherits the group.
    let procs = [
        p(40, 7, 7, 5),
        p(42, 40, 41, 5),
        p(43, 40, 41, 5),
        p(44, 42, 41, 5),
    ];
    let plan = plan(&procs, &gone(&[41])).unwrap();
    assert!(plan.sessions.is_empty());
    assert_eq!(plan.groups, BTreeMap::from([(41, 40)]));
    assert_eq!(plan.group_helpers_of(40), [41]);
    assert!(plan.makes_group(41));
}

#[test]
fn a_gone_group_whose_members_have_different_parents_is_refused() {
    let procs = [
        p(50, 7, 50, 50),
        p(51, 50, 51, 50),
        p(52, 51, 53, 50),
        p(54, 50, 53, 50),
    ];
    let e = plan(&procs, &gone(&[53])).unwrap_err();
    assert!(e.contains("process group 53"), "{e}");
}

#[test]
fn a_zombie_leading_its_own_group_or_session_is_made_by_it() {
    let procs = [p(60, 1, 60, 60), z(61, 60, 61, 60), z(62, 60, 62, 62)];
    let plan = plan(&procs, &gone(&[])).unwrap();
    assert!(plan.no_helpers());
    assert!(plan.makes_group(61) && plan.makes_group(62));
    // A sibling may be in the zombie's group: its parent forks both.
    let with_member = [p(60, 1, 60, 60), z(61, 60, 61, 60), p(63, 60, 61, 60)];
    assert!(super::plan(&with_member, &gone(&[])).is_ok());
}

#[test]
fn a_zombie_session_with_other_members_is_refused() {
    // 64 was reparented to 60 (a subreaper) from zombie 61's session.
    let procs = [p(60, 1, 60, 60), z(61, 60, 61, 61), p(64, 60, 61, 61)];
    let e = plan(&procs, &gone(&[])).unwrap_err();
    assert!(e.contains("zombie"), "{e}");
}

#[test]
fn a_child_in_another_session_than_its_parent_is_refused() {
    // A subreaper's reparented daemon: 71 in gone session 72, parent 70 in session 70.
    let procs = [p(70, 1, 70, 70), p(71, 70, 72, 72)];
    let e = plan(&procs, &gone(&[72])).unwrap_err();
    assert!(e.contains("process 71 is in session 72"), "{e}");
}

#[test]
fn a_group_led_from_outside_or_by_a_moved_leader_is_refused() {
    // 81 joined group 99 of a process outside the tree (alive).
    let e = plan(&[p(80, 1, 80, 80), p(81, 80, 99, 80)], &gone(&[])).unwrap_err();
    assert!(e.contains("still alive"), "{e}");
    // 82 made group 82, then moved to 80's; 83 stayed in 82.
    let procs = [p(80, 1, 80, 80), p(82, 80, 80, 80), p(83, 82, 82, 80)];
    let e = plan(&procs, &gone(&[])).unwrap_err();
    assert!(e.contains("moved"), "{e}");
}

#[test]
fn a_zombie_without_its_parent_is_refused() {
    assert!(plan(&[p(90, 1, 90, 90), z(91, 92, 90, 90)], &gone(&[])).is_err());
}
