//! A process's mappings stored as a binary section of the image (`mappings`) instead of in
//! the JSON manifest.
//!
//! A process with 10,000 mappings has 1.5 MB of them in JSON, and a 1 GiB one thousands of
//! page runs; parsing that text was the largest part of restoring the first (117 of 515 ms in
//! the guest) and of an incremental checkpoint's time before the freeze (the parent's
//! manifest). Here they are postcard records: numbers as varints, no keys, no text to scan.
//! The JSON manifest names the section (`Memory::table`); `ckpt inspect --json` shows the
//! mappings as before, read back from it. Images whose mappings are in the JSON (older ones,
//! MAC'd ones) still read.

use super::{Backing, Memory, PageRun, Vma};
use crate::image::{ImageWriter, SectionKind};
use serde::{Deserialize, Serialize};

/// The section kind holding one process's mappings.
pub const MAPPINGS: SectionKind = SectionKind::named("mappings");

/// A mapping as stored in the section: `Vma`'s fields in order, its backing externally
/// tagged (postcard cannot read `Backing`'s internally tagged JSON form), its page runs as
/// tuples `(addr, len, offset, image)`.
#[derive(Serialize, Deserialize)]
struct Record {
    start: u64,
    end: u64,
    prot: u32,
    shared: bool,
    growsdown: bool,
    accounted: bool,
    backing: RecordBacking,
    pages: Vec<(u64, u64, u64, u32)>,
}

#[derive(Serialize, Deserialize)]
enum RecordBacking {
    Anonymous,
    File {
        path: String,
        offset: u64,
        dev: String,
        inode: u64,
    },
    Special {
        name: String,
    },
    Shm {
        object: u64,
        offset: u64,
    },
    Sysv {
        segment: u64,
    },
}

impl From<&Vma> for Record {
    fn from(v: &Vma) -> Record {
        let backing = match &v.backing {
            Backing::Anonymous => RecordBacking::Anonymous,
            Backing::File {
                path,
                offset,
                dev,
                inode,
            } => RecordBacking::File {
                path: path.clone(),
                offset: *offset,
                dev: dev.clone(),
                inode: *inode,
            },
            Backing::Special { name } => RecordBacking::Special { name: name.clone() },
            Backing::Shm { object, offset } => RecordBacking::Shm {
                object: *object as u64,
                offset: *offset,
            },
            Backing::Sysv { segment } => RecordBacking::Sysv {
                segment: *segment as u64,
            },
        };
        Record {
            start: v.start,
            end: v.end,
            prot: v.prot,
            shared: v.shared,
            growsdown: v.growsdown,
            accounted: v.accounted,
            backing,
            pages: (v.pages.iter())
                .map(|r| (r.addr, r.len, r.offset, r.image))
                .collect(),
        }
    }
}

/// An index into one of the image's tables, from the section: too large for this machine's
/// `usize` is as invalid as past the table's end (which validation checks).
fn index(i: u64) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX)
}

impl From<Record> for Vma {
    fn from(r: Record) -> Vma {
        let backing = match r.backing {
            RecordBacking::Anonymous => Backing::Anonymous,
            RecordBacking::File {
                path,
                offset,
                dev,
                inode,
            } => Backing::File {
                path,
                offset,
                dev,
                inode,
            },
            RecordBacking::Special { name } => Backing::Special { name },
            RecordBacking::Shm { object, offset } => Backing::Shm {
                object: index(object),
                offset,
            },
            RecordBacking::Sysv { segment } => Backing::Sysv {
                segment: index(segment),
            },
        };
        Vma {
            start: r.start,
            end: r.end,
            prot: r.prot,
            shared: r.shared,
            growsdown: r.growsdown,
            accounted: r.accounted,
            backing,
            pages: (r.pages.into_iter())
                .map(|(addr, len, offset, image)| PageRun {
                    addr,
                    len,
                    offset,
                    image,
                })
                .collect(),
        }
    }
}

impl Memory {
    /// Moves the mappings into a section of `w` (the manifest then names it), unless the
    /// image cannot have one (a MAC'd image: see `ImageWriter::add_table`).
    pub fn store_table(&mut self, w: &mut ImageWriter) -> std::io::Result<()> {
        if !w.takes_tables() {
            return Ok(());
        }
        let records: Vec<Record> = self.vmas.iter().map(Record::from).collect();
        let data = postcard::to_stdvec(&records).map_err(std::io::Error::other)?;
        if let Some(index) = w.add_table(MAPPINGS, &data)? {
            self.table = Some(index);
            self.vmas = Vec::new();
        }
        Ok(())
    }

    /// Reads the mappings back from the section the manifest names, if any: `read` gives a
    /// section's content, checked against its checksum, if it is of the kind asked.
    pub fn load_table(&mut self, read: &crate::image::ReadTable) -> Result<(), String> {
        let Some(index) = self.table else {
            return Ok(());
        };
        if !self.vmas.is_empty() {
            return Err("mappings both in the manifest and in a section".into());
        }
        let data = read(index, &MAPPINGS)?;
        let records: Vec<Record> =
            postcard::from_bytes(&data).map_err(|e| format!("mappings section {index}: {e}"))?;
        self.vmas = records.into_iter().map(Vma::from).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{sample_manifest, sample_process};
    use crate::image::{Image, ImageWriter, MacKey, FORMAT_VERSION, PAGE};
    use crate::manifest::Manifest;
    use crate::thread::XSTATE;
    use std::path::{Path, PathBuf};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ckpt-table-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }

    /// A manifest whose process has mappings of several backings, one in a parent image.
    fn sample(w: &mut ImageWriter) -> Manifest {
        let at = w.append_pages(&[5u8; 2 * PAGE as usize]).unwrap();
        let xs = w.add_blob(XSTATE, &[1u8; 832]).unwrap();
        let mut p = sample_process(at, xs);
        let file = Vma {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0000_2000,
            prot: 5,
            shared: false,
            growsdown: false,
            accounted: true,
            backing: Backing::File {
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                offset: 0x1000,
                dev: "fe:01".into(),
                inode: 1234,
            },
            pages: vec![],
        };
        let stack = Vma {
            start: 0x7ffc_0000_0000,
            end: 0x7ffc_0002_0000,
            growsdown: true,
            backing: Backing::Anonymous,
            accounted: false,
            prot: 3,
            ..file.clone()
        };
        p.memory.vmas.extend([file, stack]);
        sample_manifest(p)
    }

    fn write(path: &Path, key: Option<&MacKey>) -> Manifest {
        let mut w = ImageWriter::create(path).unwrap();
        if let Some(k) = key {
            w.sign(k);
        }
        let m = sample(&mut w);
        m.clone().write_to(w).unwrap();
        m
    }

    #[test]
    fn mappings_move_to_a_section_and_read_back_as_they_were() {
        let d = tmp("round");
        let path = d.join("img");
        let m = write(&path, None);
        let img = Image::<Manifest>::open(&path).unwrap();
        assert_eq!(img.meta.format_version, FORMAT_VERSION);
        let memory = &img.manifest.processes[0].memory;
        let index = memory.table.expect("the mappings are in a section");
        assert_eq!(img.sections[index].kind, MAPPINGS);
        assert_eq!(memory.vmas, m.processes[0].memory.vmas);
        // Only the section holds them: the JSON manifest has none.
        let raw = std::fs::read(&path).unwrap();
        let json = String::from_utf8_lossy(&raw);
        assert!(json.contains("\"vmas\":[]"), "mappings left in the JSON");
        assert!(
            !json.contains("libc.so.6\""),
            "a mapping's path in the JSON"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_damaged_mappings_section_is_refused_naming_it() {
        let d = tmp("damaged");
        let path = d.join("img");
        write(&path, None);
        let img = Image::<Manifest>::open(&path).unwrap();
        let index = img.manifest.processes[0].memory.table.unwrap();
        let s = &img.sections[index];
        let mut raw = std::fs::read(&path).unwrap();
        raw[(s.offset + s.len / 2) as usize] ^= 0x40;
        std::fs::write(&path, &raw).unwrap();
        // Refused whether the image is read whole or for its manifest only (a parent's).
        for err in [
            Image::<Manifest>::open(&path).err().map(|e| e.to_string()),
            Image::<Manifest>::open_manifest(&path)
                .err()
                .map(|e| e.to_string()),
        ] {
            let err = err.expect("a damaged mappings section was accepted");
            assert!(err.contains(&format!("section {index}")), "{err}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_table_that_is_not_a_mappings_section_is_refused() {
        let d = tmp("kind");
        let path = d.join("img");
        let mut w = ImageWriter::create(&path).unwrap();
        let mut m = sample(&mut w);
        let xstate = m.processes[0].threads[0].xstate_section;
        m.processes[0].memory.vmas.clear();
        m.processes[0].memory.table = Some(xstate);
        w.finish(&m).unwrap();
        let err = Image::<Manifest>::open(&path).err().unwrap().to_string();
        assert!(err.contains("is not a mappings section"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_keyed_image_keeps_its_mappings_in_the_manifest() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp("keyed");
        let key_file = d.join("key");
        std::fs::write(&key_file, [3u8; 32]).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = MacKey::load(&key_file).unwrap();
        let path = d.join("img");
        let m = write(&path, Some(&key));
        let img = Image::<Manifest>::open_keyed(&path, Some(&key)).unwrap();
        assert_eq!(img.manifest, m);
        assert!(img.sections.iter().all(|s| s.kind != MAPPINGS));
        std::fs::remove_dir_all(d).unwrap();
    }
}
