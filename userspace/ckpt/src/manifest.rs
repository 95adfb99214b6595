//! What an image describes: the processes (each composed of its resources' saved state, whose
//! types live with the resources) and the checkpoint's statistics. Field names are the image
//! format: renaming one is a format change. The container around it is `crate::image`.

use crate::attrs::Attrs;
use crate::fds::{FdTable, Shared};
use crate::groups::{Ids, Plan};
use crate::image::flat;
use crate::image::{ImageWriter, Section, Validate};
use crate::interceptor::InterceptorState;
use crate::memory::Memory;
use crate::signals::SigAction;
use crate::stats::Stats;
use crate::thread::Thread;
use crate::timers::Timers;
use crate::tree::Zombie;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;

/// An image of this version, verified.
pub type Image = crate::image::Image<Manifest>;

/// Read through [`flat`] (see there why), written by the derive.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Manifest {
    /// The tree's live processes, parents before children; the first is the root.
    pub processes: Vec<Process>,
    /// Its children that had exited and were not reaped yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zombies: Vec<Zombie>,
    /// Process group and session ids whose leader had exited at checkpoint (a double-fork
    /// daemon's session, a pipeline whose first command ended): the restore makes them with
    /// helper processes of these pids (`crate::groups`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone_leaders: Vec<i32>,
    /// The nftables table holding back the peers' packets of the tree's TCP connections
    /// since a checkpoint with --kill (`crate::netlock`): `ckpt restore` deletes it once the
    /// connections are made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netlock: Option<String>,
    /// Kernel objects the processes' fds share (pipes, socket pairs).
    #[serde(flatten)]
    pub shared: Shared,
    #[serde(default)]
    pub stats: Option<Stats>,
    /// This image's random id (absent in images from before incremental checkpoints): a
    /// child image names its parent by it, so a parent replaced since is detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The image holding the pages this one did not store again (`ckpt checkpoint
    /// --parent`): page runs with `image` > 0 are in it or its ancestors (`crate::chain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::chain::ParentRef>,
}

/// Read through [`flat`] (see there why), written by the derive.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    /// Process group and session (0 in images from before process trees: not restored).
    #[serde(default)]
    pub pgid: i32,
    #[serde(default)]
    pub sid: i32,
    #[serde(flatten)]
    pub attrs: Attrs,
    #[serde(flatten)]
    pub memory: Memory,
    /// Signals whose disposition is not the default.
    pub sigactions: Vec<SigAction>,
    #[serde(flatten)]
    pub files: FdTable,
    /// The main thread first.
    pub threads: Vec<Thread>,
    /// Signals pending for the whole process (a mask, bit n-1 for signal n).
    #[serde(default)]
    pub shared_pending: u64,
    /// Present when the process ran under `ckpt run`: where its interceptor keeps its state.
    /// `pid`, `ppid` and the threads' `tid` are then the ids the application sees (virtual),
    /// which may differ from the kernel's after an earlier restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interceptor: Option<InterceptorState>,
    /// The controlling terminal of the session it leads, when that is a pty of the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctty: Option<crate::fds::Ctty>,
    /// POSIX timers and itimers.
    #[serde(default, skip_serializing_if = "Timers::is_empty")]
    pub timers: Timers,
    /// Which kernel process this was (pid and start time), for a later incremental
    /// checkpoint to know its memory's dirty tracking is about the same process
    /// (`crate::dirty`). Absent in older images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::dirty::Identity>,
}

/// A manifest's own keys (the rest are its flattened `shared`'s). Its fields and their
/// attributes are `Manifest`'s: the struct literal below names every field, so one added to
/// `Manifest` and not here does not compile.
#[derive(Deserialize)]
struct ManifestOwn {
    processes: Vec<Process>,
    #[serde(default)]
    zombies: Vec<Zombie>,
    #[serde(default)]
    gone_leaders: Vec<i32>,
    #[serde(default)]
    netlock: Option<String>,
    #[serde(default)]
    stats: Option<Stats>,
    #[serde(default)]
    image_id: Option<String>,
    #[serde(default)]
    parent: Option<crate::chain::ParentRef>,
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Self as flat::FromRawObject>::from_raw(&flat::RawObject::deserialize(d)?)
    }
}

impl flat::FromRawObject for Manifest {
    fn from_raw<E: serde::de::Error>(raw: &flat::RawObject) -> Result<Self, E> {
        let own: ManifestOwn = raw.part()?;
        Ok(Manifest {
            processes: own.processes,
            zombies: own.zombies,
            gone_leaders: own.gone_leaders,
            netlock: own.netlock,
            shared: raw.part()?,
            stats: own.stats,
            image_id: own.image_id,
            parent: own.parent,
        })
    }
}

/// A process's own keys (the rest are its flattened parts'), as in `ManifestOwn`.
#[derive(Deserialize)]
struct ProcessOwn {
    pid: i32,
    ppid: i32,
    #[serde(default)]
    pgid: i32,
    #[serde(default)]
    sid: i32,
    sigactions: Vec<SigAction>,
    threads: Vec<Thread>,
    #[serde(default)]
    shared_pending: u64,
    #[serde(default)]
    interceptor: Option<InterceptorState>,
    #[serde(default)]
    ctty: Option<crate::fds::Ctty>,
    #[serde(default)]
    timers: Timers,
    #[serde(default)]
    identity: Option<crate::dirty::Identity>,
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = flat::RawObject::deserialize(d)?;
        let own: ProcessOwn = raw.part()?;
        Ok(Process {
            pid: own.pid,
            ppid: own.ppid,
            pgid: own.pgid,
            sid: own.sid,
            attrs: raw.part()?,
            memory: raw.part()?,
            sigactions: own.sigactions,
            files: raw.part()?,
            threads: own.threads,
            shared_pending: own.shared_pending,
            interceptor: own.interceptor,
            ctty: own.ctty,
            timers: own.timers,
            identity: own.identity,
        })
    }
}

impl Validate for Manifest {
    fn load_tables(&mut self, read: &crate::image::ReadTable) -> Result<(), String> {
        for p in &mut self.processes {
            (p.memory.load_table(read)).map_err(|e| format!("process {}: {e}", p.pid))?;
        }
        Ok(())
    }

    fn validate(&self, sections: &[Section]) -> Result<(), String> {
        if self.processes.is_empty() {
            return Err("no process in the image".into());
        }
        let in_ancestor = (self.processes.iter())
            .flat_map(|p| &p.memory.vmas)
            .flat_map(|v| &v.pages)
            .any(|r| r.image > 0);
        if in_ancestor && self.parent.is_none() {
            return Err("page runs in a parent image, but no parent".into());
        }
        self.shared.validate(sections, self.processes.len())?;
        for p in &self.processes {
            p.validate(&self.shared, sections)
                .map_err(|e| format!("process {}: {e}", p.pid))?;
        }
        let tables: Vec<&crate::fds::FdTable> = self.processes.iter().map(|p| &p.files).collect();
        crate::fds::validate_shared_watches(&self.shared, &tables)?;
        self.validate_tree()
    }
}

impl Manifest {
    /// Moves its large tables (each process's mappings) into sections of `w`, where reading
    /// them back costs a fraction of parsing them as JSON (`crate::memory::table`); then
    /// writes it, finishing the image. Returns the image's size.
    pub fn write_to(mut self, mut w: ImageWriter) -> std::io::Result<u64> {
        for p in &mut self.processes {
            p.memory.store_table(&mut w)?;
        }
        w.finish(&self)
    }

    /// Pids are unique and positive; a process whose parent is in the image comes after it
    /// (the restore forks them in this order; the others are roots), and so does every
    /// zombie's; a gone group or session leader is none of them.
    fn validate_tree(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.processes.iter().enumerate() {
            if p.pid <= 0 || !seen.insert(p.pid) {
                return Err(format!("process {}: duplicate or bad pid", p.pid));
            }
            let parent_after = self.processes[i..].iter().any(|q| q.pid == p.ppid);
            if parent_after {
                return Err(format!("process {}: its parent is not before it", p.pid));
            }
        }
        for z in &self.zombies {
            if z.pid <= 0 || !seen.insert(z.pid) || !self.processes.iter().any(|q| q.pid == z.ppid)
            {
                return Err(format!("zombie {}: bad pid or parent", z.pid));
            }
        }
        if let Some(g) = self
            .gone_leaders
            .iter()
            .find(|&&g| g <= 0 || seen.contains(&g))
        {
            return Err(format!(
                "gone leader {g}: bad pid, or a process of the image"
            ));
        }
        Ok(())
    }

    /// The processes whose parent is not in the image (the first is one), in image order:
    /// restored as children of `ckpt restore`.
    pub fn roots(&self) -> Vec<usize> {
        let inside = |pid: i32| self.processes.iter().any(|q| q.pid == pid);
        (0..self.processes.len())
            .filter(|&i| !inside(self.processes[i].ppid))
            .collect()
    }

    /// Every process's and zombie's ids, for `groups::plan`.
    pub fn group_ids(&self) -> Vec<Ids> {
        let live = self.processes.iter().map(|p| Ids {
            pid: p.pid,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            zombie: false,
        });
        live.chain(self.zombies.iter().map(Ids::from)).collect()
    }

    /// How the restore makes the tree's groups and sessions.
    pub fn groups(&self) -> Result<Plan, String> {
        let gone: BTreeSet<i32> = self.gone_leaders.iter().copied().collect();
        crate::groups::plan(&self.group_ids(), &gone)
    }

    /// The processes and zombies whose parent is `pid`, in image order.
    pub fn children_of(&self, pid: i32) -> (Vec<usize>, Vec<&Zombie>) {
        let procs = (1..self.processes.len())
            .filter(|&i| self.processes[i].ppid == pid)
            .collect();
        let zombies = self.zombies.iter().filter(|z| z.ppid == pid).collect();
        (procs, zombies)
    }
}

impl Process {
    fn validate(&self, shared: &Shared, sections: &[Section]) -> Result<(), String> {
        crate::thread::validate(&self.threads, sections)?;
        if self.threads.first().map(|t| t.tid) != Some(self.pid) {
            return Err("the first thread is not the main thread".into());
        }
        self.memory
            .validate(sections, (&shared.memory, &shared.sysv_shm))?;
        self.files.validate(shared, sections)?;
        if let Some(i) = &self.interceptor {
            i.validate()?;
        }
        let tids: Vec<i32> = self.threads.iter().map(|t| t.tid).collect();
        self.timers.validate(&tids)?;
        let ctty_ok = self.ctty.is_none_or(|c| {
            self.sid == self.pid && shared.ptys.get(c.pty).is_some_and(|p| p.termios.is_some())
        });
        if !ctty_ok {
            return Err("its controlling terminal is not a pty of the image".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fds::{FdKind, PipeEnd};
    use crate::fuzzing::{sample_manifest, sample_process};
    use crate::image::{ImageWriter, PAGE};
    use crate::thread::XSTATE;

    fn write_sample(path: &std::path::Path) -> Manifest {
        write_sample_with(path, |_| {})
    }

    /// A sample image, its manifest changed by `change` (which gets the pages' offset).
    fn write_sample_with(path: &std::path::Path, change: impl FnOnce(&mut Manifest)) -> Manifest {
        write_sample_keyed(path, None, change)
    }

    /// As `write_sample_with`, with a MAC by `key` if given.
    fn write_sample_keyed(
        path: &std::path::Path,
        key: Option<&crate::image::MacKey>,
        change: impl FnOnce(&mut Manifest),
    ) -> Manifest {
        let mut w = ImageWriter::create(path).unwrap();
        if let Some(key) = key {
            w.sign(key);
        }
        let at = w.append_pages(&[5u8; 2 * PAGE as usize]).unwrap();
        let xs = w.add_blob(XSTATE, &[1u8; 832]).unwrap();
        let mut m = sample_manifest(sample_process(at, xs));
        change(&mut m);
        w.finish(&m).unwrap();
        m
    }

    /// A chain opens when each parent is the image its child names (by id), and a missing
    /// or replaced parent, or a run in an image the chain does not have, is refused naming
    /// the image.
    #[test]
    fn a_chain_needs_each_parent_it_names() {
        use crate::chain::{Chain, ParentRef};
        let dir = tmp();
        std::fs::create_dir(&dir).unwrap();
        let (base, child) = (dir.join("base.img"), dir.join("child.img"));
        write_sample_with(&base, |m| m.image_id = Some("aa".into()));
        let pages_at = |m: &Manifest| m.processes[0].memory.vmas[0].pages[0];
        let write_child = |image: u32| {
            write_sample_with(&child, |m| {
                m.image_id = Some("bb".into());
                m.parent = Some(ParentRef::to(&base, &child, "aa").unwrap());
                let run = &mut m.processes[0].memory.vmas[0].pages;
                // One page of its own, the next one in an ancestor.
                let own = run[0];
                run[0].len = PAGE;
                run.push(crate::memory::PageRun {
                    addr: own.addr + PAGE,
                    len: PAGE,
                    offset: own.offset + PAGE,
                    image,
                });
            })
        };
        let m = write_child(1);
        assert_eq!(m.parent.as_ref().unwrap().file, "base.img", "relative");
        let chain = Chain::open(&child).unwrap();
        assert_eq!(chain.images.len(), 2);
        let sources = crate::chain::page_sources(&m.processes[0].memory.vmas[0].pages);
        let first = pages_at(&m);
        assert_eq!(sources[&first.addr], (0, first.offset));
        assert_eq!(sources[&(first.addr + PAGE)], (1, first.offset + PAGE));
        assert_eq!(m.processes[0].memory.saved_bytes(), PAGE);
        assert_eq!(m.processes[0].memory.restored_bytes(), 2 * PAGE);

        // A run two images down: this chain has two images only.
        write_child(2);
        let e = Chain::open(&child).unwrap_err().to_string();
        assert!(e.contains("not in image 2 of the chain"), "{e}");

        // The parent taken again (another id).
        write_child(1);
        std::fs::remove_file(&base).unwrap();
        write_sample_with(&base, |m| m.image_id = Some("cc".into()));
        let e = Chain::open(&child).unwrap_err().to_string();
        assert!(
            e.contains("base.img") && e.contains("its id is cc, expected aa"),
            "{e}"
        );
        // Corrupted: its own checksum fails, naming it.
        let bytes = std::fs::read(&base).unwrap();
        let mut bad = bytes.clone();
        bad[PAGE as usize + 10] ^= 1;
        std::fs::write(&base, &bad).unwrap();
        let e = Chain::open(&child).unwrap_err().to_string();
        // Naming the image that named it too (found by the reader fuzzing).
        assert!(
            e.contains("base.img is corrupt") && e.contains("child.img cannot be used"),
            "{e}"
        );
        // Missing.
        std::fs::remove_file(&base).unwrap();
        let e = Chain::open(&child).unwrap_err().to_string();
        assert!(
            e.contains("parent image") && e.contains("base.img") && e.contains("is missing"),
            "{e}"
        );
        // A run in a parent without a parent: refused by the image itself.
        write_sample_with(&base, |m| {
            m.processes[0].memory.vmas[0].pages[0].image = 1;
        });
        let e = Image::open(&base).unwrap_err().to_string();
        assert!(e.contains("no parent"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With a key, every image of a chain needs its MAC: a parent written without the key is
    /// refused, naming it.
    #[test]
    fn a_keyed_chain_checks_every_images_mac() {
        use crate::chain::{Chain, ParentRef};
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp();
        std::fs::create_dir(&dir).unwrap();
        let key_file = dir.join("key");
        std::fs::write(&key_file, [9u8; 32]).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = crate::image::MacKey::load(&key_file).unwrap();
        let (base, child) = (dir.join("base.img"), dir.join("child.img"));
        let write = |parent_key| {
            write_sample_keyed(&base, parent_key, |m| m.image_id = Some("aa".into()));
            write_sample_keyed(&child, Some(&key), |m| {
                m.image_id = Some("bb".into());
                m.parent = Some(ParentRef::to(&base, &child, "aa").unwrap());
            });
        };
        write(Some(&key));
        assert_eq!(
            Chain::open_keyed(&child, Some(&key)).unwrap().images.len(),
            2
        );
        assert_eq!(
            Chain::open_pages_later(&child, Some(&key), &crate::progress::Progress::hidden())
                .unwrap()
                .images
                .len(),
            2
        );
        write(None);
        let e = Chain::open_pages_later(&child, Some(&key), &crate::progress::Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("base.img carries no MAC") && e.contains("of") && e.contains("child.img"),
            "{e}"
        );
        assert_eq!(
            Chain::open(&child).unwrap().images.len(),
            2,
            "no key: unchecked"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tmp() -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "ckpt-manifest-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    #[test]
    fn a_process_round_trips_through_an_image() {
        let p = tmp();
        let m = write_sample(&p);
        let img = Image::open(&p).unwrap();
        assert_eq!(img.manifest, m);
        std::fs::remove_file(p).unwrap();
    }

    /// Every key a process or manifest is written with is read by one of its parts
    /// (`flat`), and no two parts read the same key.
    #[test]
    fn every_written_key_has_one_reader() {
        use crate::image::flat::fields_of;
        let check = |v: serde_json::Value, parts: &[&[&str]]| {
            for k in v.as_object().unwrap().keys() {
                let readers = parts.iter().filter(|p| p.contains(&k.as_str())).count();
                assert_eq!(readers, 1, "{k}");
            }
            for p in parts {
                assert!(!p.is_empty(), "a part with flatten of its own");
            }
        };
        let p = sample_process(4096, 0);
        check(
            serde_json::to_value(&p).unwrap(),
            &[
                fields_of::<super::ProcessOwn>(),
                fields_of::<Attrs>(),
                fields_of::<Memory>(),
                fields_of::<FdTable>(),
            ],
        );
        let m = Manifest {
            processes: vec![p],
            zombies: vec![],
            gone_leaders: vec![1],
            netlock: Some("t".into()),
            shared: crate::fuzzing::sample_shared(),
            stats: None,
            image_id: Some("id".into()),
            parent: None,
        };
        check(
            serde_json::to_value(&m).unwrap(),
            &[fields_of::<super::ManifestOwn>(), fields_of::<Shared>()],
        );
    }

    /// The resources' state types are flattened into the process: the JSON is the layout the
    /// format version names (2), as it was before the code was split by resource.
    #[test]
    fn the_json_layout_is_the_format_versions() {
        let v = serde_json::to_value(sample_process(4096, 0)).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "comm",
                "cwd",
                "exe",
                "fds",
                "mm",
                "personality",
                "pgid",
                "pid",
                "ppid",
                "rlimits",
                "shared_pending",
                "sid",
                "sigactions",
                "threads",
                "umask",
                "vmas"
            ]
        );
        let kind = &v["fds"][1]["kind"];
        assert_eq!(kind["type"], "pipe");
        assert_eq!(kind["pipe"], 0);
        assert_eq!(kind["write_end"], false);
        assert_eq!(v["fds"][0]["kind"]["type"], "inherit_stdio");
    }

    #[test]
    fn bad_references_are_refused() {
        let cases: [fn(&mut Process); 4] = [
            |p| p.threads[0].xstate_section = 9,
            |p| {
                p.files.fds[1].kind = FdKind::Pipe(PipeEnd {
                    pipe: 3,
                    write_end: true,
                })
            },
            |p| p.memory.vmas[0].pages[0].addr = 0x13000 + 0x10000,
            |p| p.threads[0].tid = 41,
        ];
        let mut w = ImageWriter::create(&tmp()).unwrap();
        let at = w.append_pages(&[5u8; 2 * PAGE as usize]).unwrap();
        let xs = w.add_blob(XSTATE, &[1u8; 832]).unwrap();
        let sections = vec![
            crate::image::Section {
                kind: crate::image::PAGES,
                offset: at,
                len: 2 * PAGE,
                xxh64: 0,
                compressed: None,
                delta: None,
            },
            crate::image::Section {
                kind: XSTATE,
                offset: at + 2 * PAGE,
                len: 832,
                xxh64: 0,
                compressed: None,
                delta: None,
            },
        ];
        let good = sample_manifest(sample_process(at, xs));
        assert_eq!(good.validate(&sections), Ok(()));
        for (i, spoil) in cases.iter().enumerate() {
            let mut m = good.clone();
            spoil(&mut m.processes[0]);
            assert!(m.validate(&sections).is_err(), "case {i} was accepted");
        }
        // A tree: children after their parent, pids unique, zombies' parents in the tree.
        let mut child = good.processes[0].clone();
        (child.pid, child.ppid, child.threads[0].tid) = (43, 42, 43);
        let mut tree = good.clone();
        tree.processes.push(child.clone());
        tree.zombies.push(crate::tree::Zombie {
            pid: 44,
            comm: "z".into(),
            ppid: 43,
            pgid: 42,
            sid: 42,
            exit_status: 3 << 8,
        });
        assert_eq!(tree.validate(&sections), Ok(()));
        assert_eq!(tree.children_of(42).0, vec![1]);
        // A process whose parent is not in the image is a root (an application's process
        // that was reparented).
        let mut orphan = tree.clone();
        orphan.processes[1].ppid = 99;
        assert_eq!(orphan.validate(&sections), Ok(()));
        assert_eq!(orphan.roots(), vec![0, 1]);
        assert_eq!(tree.roots(), vec![0]);
        let mut twice = tree.clone();
        twice.zombies[0].pid = 43;
        assert!(twice.validate(&sections).is_err());
        let mut reversed = tree.clone();
        reversed.processes.swap(0, 1);
        assert!(reversed.validate(&sections).is_err());
        // A gone leader's pid is free: not a process's or a zombie's.
        let mut gone = tree.clone();
        gone.gone_leaders = vec![40];
        assert_eq!(gone.validate(&sections), Ok(()));
        for bad in [0, 43, 44] {
            gone.gone_leaders = vec![bad];
            assert!(gone.validate(&sections).is_err(), "gone leader {bad}");
        }
        in_flight_references(&good, &sections);
    }

    /// Descriptors in flight: a pipe end of the tree carried in a pair's message is valid; a
    /// message's index past the table, a kind not carried in flight, a shared open file the
    /// table does not have, or a holder that is no process are not.
    fn in_flight_references(good: &Manifest, sections: &[crate::image::Section]) {
        use crate::fds::{EndState, InFlight, Message, OpenFileEnd, SocketPair, UnixType};
        let mut flying = good.clone();
        flying.shared.in_flight.push(InFlight {
            flags: 1,
            holder: 0,
            kind: FdKind::Pipe(PipeEnd {
                pipe: 0,
                write_end: true,
            }),
        });
        let carrying = EndState {
            messages: vec![Message {
                len: 0,
                from: vec![],
                fds: vec![0, 0],
            }],
            ..EndState::default()
        };
        flying.shared.socket_pairs.push(SocketPair {
            inodes: [1, 2],
            data_sections: [None, None],
            sock_type: UnixType::Seqpacket,
            ends: [carrying, EndState::default()],
            holder: 0,
        });
        assert_eq!(flying.validate(sections), Ok(()));
        let cases: [fn(&mut Manifest); 4] = [
            |m| m.shared.socket_pairs[0].ends[0].messages[0].fds = vec![1],
            |m| {
                m.shared.in_flight[0].kind = FdKind::InheritStdio(crate::fds::InheritedStdio {
                    was: "/dev/tty".into(),
                })
            },
            |m| m.shared.in_flight[0].kind = FdKind::OpenFile(OpenFileEnd { open_file: 0 }),
            |m| m.shared.in_flight[0].holder = 1,
        ];
        for (i, spoil) in cases.iter().enumerate() {
            let mut m = flying.clone();
            spoil(&mut m);
            assert!(
                m.validate(sections).is_err(),
                "in-flight case {i} was accepted"
            );
        }
    }

    /// The image reader is an attack surface (`inspect`, `restore`): images whose manifest
    /// is mutated at random (checksums made right, so that it is the manifest's validation
    /// that is tried) are opened and summarised thousands of times; each is accepted or
    /// refused with a message, never a panic.
    #[test]
    fn mutated_manifests_are_refused_or_accepted_never_a_panic() {
        let path = tmp();
        let good = serde_json::to_value(write_sample(&path)).unwrap();
        let mut rng = fastrand::Rng::with_seed(0x636b_7074);
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..3000 {
            let mut m = good.clone();
            for _ in 0..rng.usize(1..4) {
                crate::fuzzing::mutate_value(&mut m, &mut rng);
            }
            let p = path.with_extension(format!("m{round}"));
            let mut w = ImageWriter::create(&p).unwrap();
            w.append_pages(&[5u8; 2 * PAGE as usize]).unwrap();
            w.add_blob(XSTATE, &[1u8; 832]).unwrap();
            if w.finish(&m).is_err() {
                continue; // not an object at the top: the writer cannot even frame it
            }
            let outcome = std::panic::catch_unwind(|| match crate::chain::Chain::open(&p) {
                Ok(chain) => {
                    let _ = crate::inspect::summary(&chain);
                    true
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    false
                }
            });
            std::fs::remove_file(&p).unwrap();
            match outcome {
                Ok(true) => accepted += 1,
                Ok(false) => refused += 1,
                Err(_) => panic!("round {round}: the reader panicked on manifest {m}"),
            }
        }
        std::fs::remove_file(&path).unwrap();
        // Both outcomes occur: the mutations reach past the JSON parser and the checks.
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }
}
