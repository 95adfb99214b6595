//! What an image describes: the processes (each composed of its resources' saved state, whose
//! types live with the resources) and the checkpoint's statistics. Field names are the image
//! format: renaming one is a format change. The container around it is `crate::image`.

use crate::attrs::Attrs;
use crate::fds::FdTable;
use crate::image::{Section, Validate};
use crate::interceptor::InterceptorState;
use crate::memory::Memory;
use crate::signals::SigAction;
use crate::stats::Stats;
use crate::thread::Thread;
use serde::{Deserialize, Serialize};

/// An image of this version, verified.
pub type Image = crate::image::Image<Manifest>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub processes: Vec<Process>,
    #[serde(default)]
    pub stats: Option<Stats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
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
}

impl Validate for Manifest {
    fn validate(&self, sections: &[Section]) -> Result<(), String> {
        if self.processes.is_empty() {
            return Err("no process in the image".into());
        }
        for p in &self.processes {
            p.validate(sections)
                .map_err(|e| format!("process {}: {e}", p.pid))?;
        }
        Ok(())
    }
}

impl Process {
    fn validate(&self, sections: &[Section]) -> Result<(), String> {
        crate::thread::validate(&self.threads, sections)?;
        if self.threads.first().map(|t| t.tid) != Some(self.pid) {
            return Err("the first thread is not the main thread".into());
        }
        self.memory.validate(sections)?;
        self.files.validate(sections)?;
        if let Some(i) = &self.interceptor {
            i.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fds::{Fd, FdKind, InheritedStdio, Pipe, PipeEnd};
    use crate::image::{ImageWriter, PAGE};
    use crate::memory::{Backing, MmLayout, PageRun, Vma};
    use crate::thread::{RobustList, SigAltStack, XSTATE};

    fn sample_process(pages_at: u64, xstate_section: usize) -> Process {
        let anon = |start: u64, pages| Vma {
            start,
            end: start + 0x10000,
            prot: 3,
            shared: false,
            growsdown: false,
            backing: Backing::Anonymous,
            pages,
        };
        Process {
            pid: 42,
            ppid: 1,
            attrs: Attrs {
                comm: "sample".into(),
                exe: "/bin/sample".into(),
                cwd: "/".into(),
                umask: 0o22,
                ..Attrs::default()
            },
            memory: Memory {
                mm: MmLayout::default(),
                vmas: vec![anon(
                    0x10000,
                    vec![PageRun {
                        addr: 0x12000,
                        len: 2 * PAGE,
                        offset: pages_at,
                    }],
                )],
            },
            sigactions: vec![],
            files: FdTable {
                fds: vec![
                    Fd {
                        fd: 0,
                        flags: 0,
                        kind: FdKind::InheritStdio(InheritedStdio { was: "pipe".into() }),
                    },
                    Fd {
                        fd: 3,
                        flags: 0,
                        kind: FdKind::Pipe(PipeEnd {
                            pipe: 0,
                            write_end: false,
                        }),
                    },
                ],
                pipes: vec![Pipe {
                    inode: 7,
                    capacity: 65536,
                    data_section: None,
                }],
                socket_pairs: vec![],
            },
            threads: vec![Thread {
                tid: 42,
                regs: Default::default(),
                xstate_section,
                sigmask: 0,
                sigaltstack: SigAltStack::default(),
                clear_child_tid: 0,
                robust_list: RobustList::default(),
                rseq: None,
                pending: 0,
                comm: String::new(),
                kernel_tid: None,
                creds: None,
                own_files: false,
            }],
            shared_pending: 0,
            interceptor: None,
        }
    }

    fn write_sample(path: &std::path::Path) -> Manifest {
        let mut w = ImageWriter::create(path).unwrap();
        let at = w.append_pages(&[5u8; 2 * PAGE as usize]).unwrap();
        let xs = w.add_blob(XSTATE, &[1u8; 832]).unwrap();
        let m = Manifest {
            processes: vec![sample_process(at, xs)],
            stats: None,
        };
        w.finish(&m).unwrap();
        m
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

    /// The resources' state types are flattened into the process: the JSON keeps the layout
    /// of format version 1, so images written before the layout change still open.
    #[test]
    fn the_json_layout_is_format_version_one() {
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
                "pid",
                "pipes",
                "ppid",
                "rlimits",
                "shared_pending",
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
                xxh3: 0,
            },
            crate::image::Section {
                kind: XSTATE,
                offset: at + 2 * PAGE,
                len: 832,
                xxh3: 0,
            },
        ];
        let good = Manifest {
            processes: vec![sample_process(at, xs)],
            stats: None,
        };
        assert_eq!(good.validate(&sections), Ok(()));
        for (i, spoil) in cases.iter().enumerate() {
            let mut m = good.clone();
            spoil(&mut m.processes[0]);
            assert!(m.validate(&sections).is_err(), "case {i} was accepted");
        }
    }
}
