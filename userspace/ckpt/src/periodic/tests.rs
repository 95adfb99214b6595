use super::*;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A chain given as (image, parent) pairs.
fn parents(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Result<Option<String>, String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    move |n: &str| Ok(map.get(n).cloned())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ckpt-periodic-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn names_are_utc_stamps_that_sort_in_time_order() {
    let t = UNIX_EPOCH + Duration::from_secs(1_796_435_940); // 2026-12-05T01:59:00Z
    assert_eq!(stamp(t), "20261205T015900Z");
    assert_eq!(
        point_name("20261205T015900Z", 0),
        "ckpt-20261205T015900Z.img"
    );
    let a = point_key("ckpt-20261205T015900Z.img").unwrap();
    let b = point_key("ckpt-20261205T015900Z-1.img").unwrap();
    let c = point_key("ckpt-20261205T015901Z.img").unwrap();
    assert!(a < b && b < c);
    for other in [
        "latest",
        "ckpt.log",
        ".ckpt-20261205T015900Z.img.ckpt-tmp.12",
        "ckpt-2026120T015900Z.img",
        "ckpt-20261205T015900Z-0.img",
        "ckpt-20261205T015900Z-x.img",
        "ckpt-20261205X015900Z.img",
    ] {
        assert_eq!(point_key(other), None, "{other}");
    }
}

#[test]
fn full_images_keep_the_newest_n() {
    let points = names(&["a1", "a2", "a3", "a4"]);
    let (delete, warnings) = retention(&points, 2, &|_| Ok(None));
    assert_eq!(delete, names(&["a1", "a2"]));
    assert!(warnings.is_empty());
    let (delete, _) = retention(&points, 10, &|_| Ok(None));
    assert!(delete.is_empty());
    // keep 0 still keeps the newest: it is what `latest` names.
    let (delete, _) = retention(&points, 0, &|_| Ok(None));
    assert_eq!(delete, names(&["a1", "a2", "a3"]));
}

#[test]
fn an_image_a_kept_one_depends_on_is_never_deleted() {
    // f1 <- i2 <- i3   f4 <- i5
    let points = names(&["f1", "i2", "i3", "f4", "i5"]);
    let p = parents(&[("i2", "f1"), ("i3", "i2"), ("i5", "f4")]);
    let (delete, _) = retention(&points, 2, &p);
    assert_eq!(delete, names(&["f1", "i2", "i3"]));
    let (delete, _) = retention(&points, 3, &p);
    assert!(delete.is_empty(), "i3 needs i2 and f1: {delete:?}");
    let (delete, _) = retention(&points, 1, &p);
    assert_eq!(delete, names(&["f1", "i2", "i3"]));
}

#[test]
fn a_broken_or_unreadable_chain_is_reported_and_deletes_nothing_it_might_need() {
    let points = names(&["f1", "i2", "i3"]);
    let missing = parents(&[("i3", "gone")]);
    let (delete, warnings) = retention(&points, 1, &missing);
    assert_eq!(delete, names(&["f1", "i2"]));
    assert_eq!(warnings, vec!["i3: its parent gone is missing".to_string()]);
    let unreadable = |n: &str| match n {
        "i3" => Err("i3: manifest checksum mismatch".to_string()),
        _ => Ok(None),
    };
    let (delete, warnings) = retention(&points, 1, &unreadable);
    assert!(delete.is_empty());
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("no image deleted"), "{warnings:?}");
}

#[test]
fn a_full_image_starts_a_new_chain_every_k() {
    let p = parents(&[("i2", "f1"), ("i3", "i2")]);
    assert_eq!(next_parent(None, 3, &p), None);
    assert_eq!(next_parent(Some("f1"), 3, &p), Some("f1".into()));
    assert_eq!(next_parent(Some("i2"), 3, &p), Some("i2".into()));
    assert_eq!(next_parent(Some("i3"), 3, &p), None, "f1 i2 i3 is 3 long");
    assert_eq!(next_parent(Some("f1"), 1, &p), None);
    let unreadable = |_: &str| Err("bad".to_string());
    assert_eq!(next_parent(Some("i3"), 9, &unreadable), None);
}

#[test]
fn a_second_run_on_a_locked_directory_is_busy_and_names_the_holder() {
    let dir = scratch("lock");
    let held = Dir::lock(&dir).unwrap();
    match Dir::lock(&dir) {
        Err(PeriodicError::Busy { holder, .. }) => {
            assert!(holder.contains(&std::process::id().to_string()), "{holder}")
        }
        other => panic!("expected busy, got {:?}", other.map(|d| d.path)),
    }
    drop(held);
    assert!(Dir::lock(&dir).is_ok(), "the lock goes with the run");
    let _ = fs::remove_dir_all(&dir);
}

/// A take that writes a small file where the image goes, as a checkpoint would.
fn fake_take(out: &Path, _parent: Option<&Path>) -> anyhow::Result<Stats> {
    fs::write(out, b"image")?;
    Ok(Stats {
        image_bytes: 5,
        ..Default::default()
    })
}

#[test]
fn runs_name_images_move_latest_prune_and_log() {
    let dir = scratch("run");
    let opts = Options {
        dir: dir.clone(),
        keep: 2,
        incremental: false,
        full_every: 1,
    };
    let mut images = Vec::new();
    for _ in 0..3 {
        let o = run(&opts, &|_| Ok(None), fake_take).unwrap();
        assert_eq!(latest_image(&dir).unwrap(), o.image);
        images.push(o.image);
    }
    assert!(
        !images[0].exists(),
        "the oldest of 3 is pruned with --keep 2"
    );
    assert!(images[1].exists() && images[2].exists());
    let mode = fs::metadata(&dir).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    let log = fs::read_to_string(dir.join(LOG)).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(log.lines().all(|l| l.contains(" ok ckpt-")), "{log}");
    assert!(log.lines().nth(2).unwrap().contains("deleted="), "{log}");

    // A failed checkpoint is logged and changes nothing.
    let err = run(&opts, &|_| Ok(None), |_, _| anyhow::bail!("target gone")).unwrap_err();
    assert!(err.to_string().contains("target gone"));
    assert_eq!(latest_image(&dir).unwrap(), images[2]);
    assert!(images[1].exists());
    let log = fs::read_to_string(dir.join(LOG)).unwrap();
    assert!(
        log.lines().last().unwrap().contains("failed: target gone"),
        "{log}"
    );

    // An overlapping run skips and says so in the log.
    let held = Dir::lock(&dir).unwrap();
    let err = run(&opts, &|_| Ok(None), fake_take).unwrap_err();
    assert!(err.to_string().contains("is running"), "{err}");
    drop(held);
    let log = fs::read_to_string(dir.join(LOG)).unwrap();
    assert!(log.lines().last().unwrap().contains("skipped: "), "{log}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn incremental_runs_chain_to_latest_and_restart_every_k() {
    let dir = scratch("incr");
    let opts = Options {
        dir: dir.clone(),
        keep: 1,
        incremental: true,
        full_every: 3,
    };
    // The parent each image was given, recorded as the checkpoint would in its manifest.
    let chain = std::cell::RefCell::new(HashMap::<String, String>::new());
    let parent_of = |n: &str| Ok(chain.borrow().get(n).cloned());
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let o = run(&opts, &parent_of, |out, parent| {
            if let Some(p) = parent {
                let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
                chain.borrow_mut().insert(name(out), name(p));
            }
            fake_take(out, parent)
        })
        .unwrap();
        kinds.push(o.parent.is_some());
        // The newest is kept with its whole chain.
        let mut at = o.image.file_name().unwrap().to_string_lossy().into_owned();
        while let Some(p) = chain.borrow().get(&at).cloned() {
            assert!(
                dir.join(&p).exists(),
                "{p}, a parent of the kept image, was deleted"
            );
            at = p;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(kinds, vec![false, true, true, false]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_temporary_image_of_a_dead_writer_is_removed_by_the_next_run() {
    let dir = scratch("abandoned");
    fs::create_dir_all(&dir).unwrap();
    // pid 0x7fffffff does not exist; ours does, and an unrelated dot file is not ours.
    let dead = ".ckpt-20261205T015900Z.img.ckpt-tmp.2147483647";
    let live = format!(".ckpt-20261205T015901Z.img.ckpt-tmp.{}", std::process::id());
    for n in [dead, live.as_str(), ".other.ckpt-tmp.2147483647"] {
        fs::write(dir.join(n), b"partial").unwrap();
    }
    let opts = Options {
        dir: dir.clone(),
        keep: 1,
        incremental: false,
        full_every: 1,
    };
    run(&opts, &|_| Ok(None), fake_take).unwrap();
    assert!(!dir.join(dead).exists());
    assert!(dir.join(&live).exists(), "a live writer's file is its own");
    assert!(dir.join(".other.ckpt-tmp.2147483647").exists());
    let log = fs::read_to_string(dir.join(LOG)).unwrap();
    assert!(
        log.contains(&format!("removed what a killed run left: {dead}")),
        "{log}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_parent_the_checkpoint_refuses_gives_a_full_image_with_a_warning() {
    let dir = scratch("refused");
    let opts = Options {
        dir: dir.clone(),
        keep: 3,
        incremental: true,
        full_every: 5,
    };
    let first = run(&opts, &|_| Ok(None), fake_take).unwrap();
    let first_name = first
        .image
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::thread::sleep(Duration::from_millis(5));
    let mut given = Vec::new();
    let o = run(&opts, &|_| Ok(None), |out, parent| {
        given.push(parent.map(Path::to_path_buf));
        if let Some(parent) = parent {
            return Err(crate::errors::CheckpointError::Parent {
                path: parent.into(),
                why: "restored since".into(),
            }
            .into());
        }
        fake_take(out, parent)
    })
    .unwrap();
    assert_eq!(given, vec![Some(dir.join(&first_name)), None]);
    assert_eq!(o.parent, None);
    assert!(
        o.warnings[0].contains("a full image instead") && o.warnings[0].contains("restored since")
    );
    let log = fs::read_to_string(dir.join(LOG)).unwrap();
    assert!(
        log.lines().last().unwrap().contains(" full ") && log.contains("restored since"),
        "{log}"
    );
    // Any other failure is the run's.
    let err = run(&opts, &|_| Ok(None), |_, _| anyhow::bail!("disk full")).unwrap_err();
    assert!(err.to_string().contains("disk full"));
    let _ = fs::remove_dir_all(&dir);
}
