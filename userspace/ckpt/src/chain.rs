//! Incremental images: an image written with `ckpt checkpoint --parent OLD` stores only the
//! pages that changed since OLD; each of its other page runs names the image of the chain
//! that holds it by its distance (`PageRun::image`: 1 the parent, 2 the parent's parent...),
//! so a restore reads every page straight from the one image that has it, without walking
//! the chain page by page. A run is copied from the parent with its distance plus one.
//!
//! An image names its parent (`ParentRef`) by file (relative to its own directory when they
//! share one, so a chain can be moved as a whole) and by the parent's random `image_id`: a
//! parent replaced since, even by a checkpoint of the same process, is refused.

use crate::image::background::{plain_pages, Unchecked};
use crate::image::{ImageError, MacKey, Section};
use crate::manifest::{Image, Manifest};
use crate::memory::PageRun;
use crate::progress::Progress;
use ckpt_abi::CKPT_RESTORE_MAX_IMAGES;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The most images a chain may have (the image and its ancestors): what one restore reads.
pub const MAX_CHAIN: usize = CKPT_RESTORE_MAX_IMAGES as usize;

/// An image's parent, as its manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParentRef {
    /// The parent's file: a name relative to this image's directory, or an absolute path.
    pub file: String,
    /// The parent's `image_id`.
    pub id: String,
}

impl ParentRef {
    /// The reference from an image written at `child` to the image at `parent` (whose id is
    /// `id`): its file name when both are in the same directory, else its absolute path.
    pub fn to(parent: &Path, child: &Path, id: &str) -> io::Result<ParentRef> {
        let parent = std::fs::canonicalize(parent)?;
        let child_dir = std::fs::canonicalize(dir_of(child))?;
        let file = match (parent.parent(), parent.file_name()) {
            (Some(d), Some(name)) if d == child_dir => name.to_string_lossy().into_owned(),
            _ => parent.to_string_lossy().into_owned(),
        };
        Ok(ParentRef {
            file,
            id: id.to_owned(),
        })
    }

    /// Where the parent of the image at `child` is.
    pub fn resolve(&self, child: &Path) -> PathBuf {
        let file = Path::new(&self.file);
        match file.is_absolute() {
            true => file.to_path_buf(),
            false => dir_of(child).join(file),
        }
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A new random image id (128 bits, hex).
pub fn new_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An image and its ancestors, each verified, the image first.
#[derive(Debug)]
pub struct Chain {
    pub images: Vec<Image>,
}

impl Chain {
    /// Opens the image at `path` and every ancestor, each verified completely (every
    /// checksum), checks each is the parent its child names (its id), and that every page
    /// run lies in a pages section of the image it names.
    pub fn open(path: &Path) -> Result<Chain, ImageError> {
        Self::open_with(path, Image::open)
    }

    /// As [`Chain::open`], every image's MAC checked with `key` if given
    /// ([`Image::open_keyed`]).
    pub fn open_keyed(path: &Path, key: Option<&MacKey>) -> Result<Chain, ImageError> {
        Self::open_with(path, |p| Image::open_keyed(p, key))
    }

    /// As [`Chain::open_keyed`], each image opened with [`Image::open_pages_later`]:
    /// compressed pages are checked as the restore decompresses them (`Image::pages_view`).
    /// `progress` counts the bytes verified, over the whole chain.
    pub fn open_pages_later(
        path: &Path,
        key: Option<&MacKey>,
        progress: &Progress,
    ) -> Result<Chain, ImageError> {
        Self::open_with(path, |p| Image::open_pages_later(p, key, progress))
    }

    /// As [`Chain::open`], each image opened with [`Image::open_pages_unverified`]: for a
    /// restore, which checks the pages in the background (a lazy one in its page server).
    pub fn open_pages_unverified(path: &Path) -> Result<Chain, ImageError> {
        Self::open_with(path, Image::open_pages_unverified)
    }

    /// The plain pages sections of every image (opened with
    /// [`Chain::open_pages_unverified`]), for `image::background` to check.
    pub fn unchecked_pages(&self) -> Result<Vec<Unchecked>, ImageError> {
        let unchecked = |i: &Image| -> Result<Unchecked, ImageError> {
            let file = i.file.try_clone().map_err(|source| ImageError::Io {
                path: i.path.clone(),
                source,
            })?;
            Ok((i.path.clone(), file, plain_pages(&i.sections)))
        };
        self.images.iter().map(unchecked).collect()
    }

    /// As [`Chain::open`], reading only the manifests (header and manifest checksums
    /// verified, not the pages): what a checkpoint needs of its parent.
    pub fn open_manifests(path: &Path) -> Result<Chain, ImageError> {
        Self::open_with(path, Image::open_manifest)
    }

    fn open_with(
        path: &Path,
        open: impl Fn(&Path) -> Result<Image, ImageError>,
    ) -> Result<Chain, ImageError> {
        let mut images = vec![open(path)?];
        while let Some(last) = images.last() {
            let Some(parent) = &last.manifest.parent else {
                break;
            };
            if images.len() >= MAX_CHAIN {
                return Err(ImageError::ChainTooLong {
                    path: path.into(),
                    max: MAX_CHAIN,
                });
            }
            let file = parent.resolve(&last.path);
            let img = open(&file).map_err(|e| match e {
                ImageError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                    ImageError::ParentMissing {
                        path: last.path.clone(),
                        parent: file.clone(),
                    }
                }
                e => ImageError::ParentBad {
                    path: last.path.clone(),
                    parent: file.clone(),
                    source: Box::new(e),
                },
            })?;
            let found = img.manifest.image_id.as_deref().unwrap_or("none");
            if found != parent.id {
                return Err(ImageError::ParentMismatch {
                    path: last.path.clone(),
                    parent: file,
                    found: found.to_owned(),
                    expected: parent.id.clone(),
                });
            }
            images.push(img);
        }
        let sections: Vec<&[Section]> = images.iter().map(|i| &i.sections[..]).collect();
        for (i, img) in images.iter().enumerate() {
            let corrupt = |what| ImageError::Corrupt {
                path: img.path.clone(),
                what,
            };
            check_runs(&img.manifest, &sections[i..]).map_err(corrupt)?;
            for s in &img.sections {
                if let Some(d) = &s.delta {
                    d.check(s, &sections[i..]).map_err(corrupt)?;
                }
            }
        }
        Ok(Chain { images })
    }

    /// The image asked for.
    pub fn image(&self) -> &Image {
        &self.images[0]
    }
}

/// Each image's pages view (`Image::pages_view`; None where the file is its own view), made
/// from the oldest image on: pages an image stores as differences (`image::delta`) get their
/// bases from an ancestor's view. `progress` counts the bytes decompressed.
pub fn views(images: &[Image], progress: &Progress) -> Result<Vec<Option<File>>, ImageError> {
    let mut views: Vec<Option<File>> = Vec::with_capacity(images.len());
    for (k, img) in images.iter().enumerate().rev() {
        // `views` holds the ancestors' so far, the oldest first.
        let ancestors = (images[k + 1..].iter().enumerate())
            .map(|(j, a)| views[views.len() - 1 - j].as_ref().unwrap_or(&a.file));
        let chain: Vec<&File> = std::iter::once(&img.file).chain(ancestors).collect();
        let view = img.pages_view(progress, &chain)?;
        views.push(view);
    }
    views.reverse();
    Ok(views)
}

/// Every page run of `m` lies inside a pages section of the image it names (`chain[0]`: the
/// image itself, `chain[k]`: its k-th ancestor).
pub fn check_runs(m: &Manifest, chain: &[&[Section]]) -> Result<(), String> {
    for p in &m.processes {
        for r in p.memory.vmas.iter().flat_map(|v| &v.pages) {
            let ok = chain
                .get(r.image as usize)
                .is_some_and(|sections| crate::memory::in_pages_section(r, sections));
            if !ok {
                return Err(format!(
                    "process {}: page run at {:#x} is not in image {} of the chain",
                    p.pid, r.addr, r.image
                ));
            }
        }
    }
    Ok(())
}

/// Where each page of a run list is: page address -> (image of the chain, offset in it).
pub fn page_sources(runs: &[PageRun]) -> std::collections::BTreeMap<u64, (u32, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for r in runs {
        for k in 0..r.len / crate::image::PAGE {
            let at = k * crate::image::PAGE;
            out.insert(r.addr + at, (r.image, r.offset + at));
        }
    }
    out
}
