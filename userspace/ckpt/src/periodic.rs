//! Periodic checkpoints into a directory, the form a crontab line runs
//! (`ckpt checkpoint ... --dir DIR --keep N`): each image named by the UTC time it was taken,
//! `DIR/latest` moved to it atomically, incremental images chained to the previous one with a
//! full one every K, the newest N restorable points kept with every image they depend on, a
//! lock so that a run overlapping the previous one skips instead of colliding, and one line
//! per run in `DIR/ckpt.log`.
//!
//! The directory is the whole state: no index beside the images can go stale. A point's
//! parent is read from its own manifest (`parent_of`), the order from the names.

use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::stats::Stats;

/// The symlink naming the newest image (`ckpt restore DIR` restores it).
pub const LATEST: &str = "latest";
/// One line per run, appended.
pub const LOG: &str = "ckpt.log";
/// Held (flock) for the whole run; holds the holder's pid for the "skipped" message.
const LOCK: &str = ".ckpt.lock";
const PREFIX: &str = "ckpt-";
const SUFFIX: &str = ".img";

#[derive(Debug, thiserror::Error)]
pub enum PeriodicError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("another checkpoint into {dir} is running ({holder}): this run is skipped")]
    Busy { dir: PathBuf, holder: String },
    #[error("{dir} holds no checkpoint ({dir}/{LATEST} is missing)")]
    NoLatest { dir: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PeriodicError + '_ {
    move |source| PeriodicError::Io {
        path: path.into(),
        source,
    }
}

/// What a periodic run does besides taking the checkpoint.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// Restorable points to keep (at least 1).
    pub keep: usize,
    /// Chain each image to the previous one.
    pub incremental: bool,
    /// With `incremental`: the longest chain, a full image included; the next one is full.
    pub full_every: usize,
}

/// A directory of periodic images, locked for one run (unlocked on drop).
pub struct Dir {
    pub path: PathBuf,
    _lock: Flock<File>,
}

impl Dir {
    /// Creates `path` (0700: images hold secrets) if needed and takes its lock, or fails
    /// with [`PeriodicError::Busy`] naming the process that holds it.
    pub fn lock(path: &Path) -> Result<Dir, PeriodicError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_at(path))?;
        let lock_path = path.join(LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "its pid is not written yet".to_owned(),
                    pid => format!("process {pid}"),
                };
                return Err(PeriodicError::Busy {
                    dir: path.into(),
                    holder,
                });
            }
            Err((_, e)) => return Err(io_at(&lock_path)(e.into())),
        };
        let me = format!("{}\n", std::process::id());
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(me.as_bytes()))
            .map_err(io_at(&lock_path))?;
        Ok(Dir {
            path: path.into(),
            _lock: lock,
        })
    }

    /// The images in the directory, oldest first.
    pub fn points(&self) -> Result<Vec<String>, PeriodicError> {
        points_in(&self.path).map_err(io_at(&self.path))
    }

    /// The image `latest` names, if it names one of ours that exists.
    pub fn latest(&self) -> Option<String> {
        latest_name(&self.path)
    }

    /// A name for an image taken at `now` that no image has yet.
    pub fn new_name(&self, now: SystemTime, points: &[String]) -> String {
        let stamp = stamp(now);
        (0..)
            .map(|seq| point_name(&stamp, seq))
            .find(|n| !points.contains(n) && !self.path.join(n).exists())
            .unwrap_or_default()
    }

    /// Points `latest` at `name` atomically (a new symlink renamed over the old one), then
    /// makes the directory durable.
    pub fn set_latest(&self, name: &str) -> Result<(), PeriodicError> {
        let tmp = self.path.join(format!(".{LATEST}.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp).map_err(io_at(&tmp))?;
        fs::rename(&tmp, self.path.join(LATEST)).map_err(io_at(&self.path))?;
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.path))
    }

    /// Deletes `names`, returning those deleted. A failure is reported, not fatal: the
    /// checkpoint itself succeeded.
    pub fn delete(&self, names: &[String]) -> (Vec<String>, Vec<String>) {
        let mut deleted = Vec::new();
        let mut failed = Vec::new();
        for n in names {
            match fs::remove_file(self.path.join(n)) {
                Ok(()) => deleted.push(n.clone()),
                Err(e) => failed.push(format!("cannot delete {n}: {e}")),
            }
        }
        (deleted, failed)
    }

    /// Deletes what a run killed outright left: an image's temporary file (its writer's
    /// pid is gone). Returns their names.
    pub fn remove_abandoned(&self) -> Vec<String> {
        let abandoned = |name: &str| {
            let (image, pid) = name.strip_prefix('.')?.rsplit_once(".ckpt-tmp.")?;
            let pid: i32 = pid.parse().ok()?;
            (point_key(image).is_some() && !crate::list::alive(pid)).then_some(())
        };
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| abandoned(n).is_some() && fs::remove_file(self.path.join(n)).is_ok())
            .collect()
    }

    /// Writes one line to the log.
    pub fn log(&self, line: &str) {
        log_line(&self.path, line);
    }
}

/// Appends `line`, stamped with the time, to `dir`'s log. The log is for people: a failure
/// to write it is not a failure of the run.
pub fn log_line(dir: &Path, line: &str) {
    let path = dir.join(LOG);
    let stamped = format!(
        "{} {line}\n",
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    let _ = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(stamped.as_bytes()));
}

/// The images in `dir`, oldest first (by their time, then the number a second image in the
/// same second got: not the names' byte order).
pub fn points_in(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<(Key, String)> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((point_key(&name)?, name))
        })
        .collect();
    names.sort();
    Ok(names.into_iter().map(|(_, n)| n).collect())
}

/// The image `dir/latest` names, if it is one of ours and exists.
fn latest_name(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join(LATEST)).ok()?;
    let name = target.to_str()?.to_owned();
    (point_key(&name).is_some() && dir.join(&name).is_file()).then_some(name)
}

/// What `ckpt restore DIR` and `ckpt inspect DIR` take: the image `DIR/latest` names.
pub fn latest_image(dir: &Path) -> Result<PathBuf, PeriodicError> {
    latest_name(dir)
        .map(|n| dir.join(n))
        .ok_or_else(|| PeriodicError::NoLatest { dir: dir.into() })
}

/// How points sort: their time, then the sequence number a second point in the same second
/// got.
type Key = (String, u32);

/// `20261205T015900Z` for `now` (UTC, to the second).
fn stamp(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

fn point_name(stamp: &str, seq: u32) -> String {
    match seq {
        0 => format!("{PREFIX}{stamp}{SUFFIX}"),
        n => format!("{PREFIX}{stamp}-{n}{SUFFIX}"),
    }
}

/// The sort key of a point's file name; `None` for anything else in the directory.
fn point_key(name: &str) -> Option<Key> {
    let body = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (stamp, seq) = match body.split_once('-') {
        Some((stamp, seq)) => (stamp, seq.parse::<u32>().ok().filter(|&n| n > 0)?),
        None => (body, 0),
    };
    let b = stamp.as_bytes();
    let shaped = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    shaped.then(|| (stamp.to_owned(), seq))
}

/// What reading a point's parent found.
pub type ParentOf<'a> = &'a dyn Fn(&str) -> Result<Option<String>, String>;

/// The number of images in `name`'s chain, itself included, or an error naming the image
/// whose parent could not be read.
pub fn chain_len(name: &str, parent_of: ParentOf) -> Result<usize, String> {
    let mut len = 1;
    let mut at = name.to_owned();
    while let Some(parent) = parent_of(&at)? {
        len += 1;
        if len > 10_000 {
            return Err(format!("{name}: its chain of parents does not end"));
        }
        at = parent;
    }
    Ok(len)
}

/// Which of `points` (oldest first) to delete so that the newest `keep` stay restorable:
/// they and every image they depend on stay. If a kept image's parent cannot be read, what
/// it depends on is unknown and nothing is deleted; the reason comes back as a warning.
pub fn retention(
    points: &[String],
    keep: usize,
    parent_of: ParentOf,
) -> (Vec<String>, Vec<String>) {
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    let mut warnings = Vec::new();
    let first_kept = points.len().saturating_sub(keep.max(1));
    for name in &points[first_kept..] {
        kept.insert(name);
        let mut at = name.clone();
        loop {
            match parent_of(&at) {
                Ok(None) => break,
                Ok(Some(parent)) => match points.iter().find(|p| **p == parent) {
                    Some(p) if kept.insert(p) => at = parent,
                    Some(_) => break,
                    None => {
                        warnings.push(format!("{at}: its parent {parent} is missing"));
                        break;
                    }
                },
                Err(e) => {
                    warnings.push(format!("{e}: no image deleted"));
                    return (Vec::new(), warnings);
                }
            }
        }
    }
    let delete = points
        .iter()
        .filter(|n| !kept.contains(n.as_str()))
        .cloned()
        .collect();
    (delete, warnings)
}

/// The parent the next image chains to: the latest, unless its chain is already
/// `full_every` long (or cannot be read: a full image is always safe).
pub fn next_parent(latest: Option<&str>, full_every: usize, parent_of: ParentOf) -> Option<String> {
    let latest = latest?;
    match chain_len(latest, parent_of) {
        Ok(len) if len < full_every.max(1) => Some(latest.to_owned()),
        _ => None,
    }
}

/// The parent image `name` in `dir` names, by its name in `dir` (read from its manifest
/// alone). A parent elsewhere is not one of the directory's points: reported as an error,
/// so that retention deletes nothing on a guess.
pub fn parent_in(dir: &Path, name: &str) -> Result<Option<String>, String> {
    let path = dir.join(name);
    let img = crate::manifest::Image::open_manifest(&path).map_err(|e| e.to_string())?;
    let Some(parent) = &img.manifest.parent else {
        return Ok(None);
    };
    let file = parent.resolve(&path);
    match (file.parent(), file.file_name()) {
        (Some(d), Some(n)) if d == dir => Ok(Some(n.to_string_lossy().into_owned())),
        _ => Err(format!(
            "{name}: its parent {} is outside {}",
            file.display(),
            dir.display()
        )),
    }
}

/// Whether `e` is a checkpoint refusing its parent (then a full image is taken instead).
fn parent_refused(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::errors::CheckpointError>(),
        Some(crate::errors::CheckpointError::Parent { .. })
    )
}

/// What a periodic run did.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub image: PathBuf,
    /// The image this one is chained to (incremental), by name in the same directory.
    pub parent: Option<String>,
    pub deleted: Vec<String>,
    pub warnings: Vec<String>,
    pub stats: Stats,
}

/// One periodic run: lock `opts.dir`, choose the name and the parent, `take` the checkpoint
/// into that file (chained to the parent given, if any), move `latest` to it, delete what
/// the retention allows, log one line. A run that finds the lock held logs and returns
/// [`PeriodicError::Busy`]; a failed checkpoint is logged and returned, and leaves `latest`
/// and every image as they were.
pub fn run(
    opts: &Options,
    parent_of: ParentOf,
    mut take: impl FnMut(&Path, Option<&Path>) -> anyhow::Result<Stats>,
) -> anyhow::Result<Outcome> {
    let dir = match Dir::lock(&opts.dir) {
        Ok(dir) => dir,
        Err(e) => {
            if matches!(e, PeriodicError::Busy { .. }) {
                log_line(&opts.dir, &format!("skipped: {e}"));
            }
            return Err(e.into());
        }
    };
    let abandoned = dir.remove_abandoned();
    if !abandoned.is_empty() {
        dir.log(&format!(
            "removed what a killed run left: {}",
            abandoned.join(",")
        ));
    }
    let points = dir.points()?;
    let parent = match opts.incremental {
        true => next_parent(dir.latest().as_deref(), opts.full_every, parent_of),
        false => None,
    };
    let name = dir.new_name(SystemTime::now(), &points);
    let image = dir.path.join(&name);
    let parent_path = parent.as_ref().map(|p| dir.path.join(p));
    let mut parent = parent;
    let mut warnings = Vec::new();
    let mut taken = take(&image, parent_path.as_deref());
    if parent.is_some() && taken.as_ref().is_err_and(parent_refused) {
        if let Err(e) = &taken {
            warnings.push(format!("a full image instead: {e:#}"));
        }
        parent = None;
        taken = take(&image, None);
    }
    let stats = match taken {
        Ok(stats) => stats,
        Err(e) => {
            dir.log(&format!("failed: {e:#}"));
            return Err(e);
        }
    };
    dir.set_latest(&name)?;
    let (delete, kept_warnings) = retention(&dir.points()?, opts.keep, parent_of);
    warnings.extend(kept_warnings);
    let (deleted, failed) = dir.delete(&delete);
    warnings.extend(failed);
    let outcome = Outcome {
        image,
        parent,
        deleted,
        warnings,
        stats,
    };
    dir.log(&log_text(&name, &outcome));
    Ok(outcome)
}

/// The log's line for a successful run.
fn log_text(name: &str, o: &Outcome) -> String {
    let s = &o.stats;
    let mut line = format!(
        "ok {name} {} processes={} frozen_ms={:.1} total_ms={:.1} bytes={}",
        match &o.parent {
            Some(p) => format!("incremental(parent={p})"),
            None => "full".into(),
        },
        s.processes.max(1),
        s.frozen_us as f64 / 1000.0,
        s.total_us as f64 / 1000.0,
        s.image_bytes,
    );
    if !o.deleted.is_empty() {
        line.push_str(&format!(" deleted={}", o.deleted.join(",")));
    }
    for w in &o.warnings {
        line.push_str(&format!(" warning=\"{w}\""));
    }
    line
}

#[cfg(test)]
mod tests;
