//! `--parent OLD`: the image an incremental checkpoint takes its unchanged pages from, and
//! the checks that make that safe (`crate::dirty`): OLD is a checkpoint of the same process
//! tree's root, and the last one its dirty tracking was reset for.

use crate::chain::{Chain, ParentRef, MAX_CHAIN};
use crate::dirty::{self, Identity, Reuse};
use crate::errors::{checkpoint_io, CheckpointError};
use crate::manifest::Process;
use crate::proc::{MapEntry, Stat};
use std::path::Path;

/// The parent chain, read (manifests only: the restore verifies the pages).
pub struct Base {
    chain: Chain,
    /// Where a changed page's previous version can be read, by distance from the new image
    /// (see [`Base::base_files`]).
    bases: Vec<Option<std::fs::File>>,
    id: String,
    /// What the new image's manifest records.
    pub reference: ParentRef,
}

impl Base {
    /// Opens the chain of `parent` for a checkpoint of the tree rooted at `pid` written to
    /// `output`, and refuses a parent that is not the last checkpoint of that process.
    /// `differences`: changed pages are to be stored as differences (their bases are found).
    pub fn open(
        parent: &Path,
        output: &Path,
        pid: i32,
        differences: bool,
    ) -> Result<Base, CheckpointError> {
        let refuse = |why: String| CheckpointError::Parent {
            path: parent.into(),
            why,
        };
        let same = |a: &Path, b: &Path| {
            std::fs::canonicalize(a)
                .ok()
                .is_some_and(|a| std::fs::canonicalize(b).ok() == Some(a))
        };
        if same(parent, output) {
            return Err(refuse(
                "the new image would replace it (give another -o)".into(),
            ));
        }
        let chain = Chain::open_manifests(parent).map_err(|e| refuse(e.to_string()))?;
        if chain.images.len() >= MAX_CHAIN {
            return Err(refuse(format!(
                "its chain is {MAX_CHAIN} images long already; take a full checkpoint"
            )));
        }
        let m = &chain.image().manifest;
        let id = m.image_id.clone().ok_or_else(|| {
            refuse("it has no image id (written by an older ckpt); take a full checkpoint".into())
        })?;
        let st = crate::proc::stat(pid).map_err(|_| CheckpointError::NoSuchProcess(pid))?;
        let now = Identity::of(pid, &st);
        match m.processes.first().and_then(|p| p.identity) {
            Some(was) if was == now => {}
            Some(was) => {
                return Err(refuse(format!(
                    "it is a checkpoint of {was}, not of {now} (restored since, or another \
                     process); take a full checkpoint"
                )))
            }
            None => return Err(refuse("it records no process identity".into())),
        }
        match dirty::cleared_for(&now) {
            Some(cleared) if cleared == id => {}
            other => {
                let last = other.map_or("no checkpoint ckpt knows of".into(), |c| {
                    format!("checkpoint {c}")
                });
                return Err(refuse(format!(
                    "it (id {id}) is not the last checkpoint of {now}: its memory's change \
                     tracking was last reset by {last}, so pages changed since it could be \
                     missed; take a full checkpoint or use the latest image"
                )));
            }
        }
        let reference = ParentRef::to(parent, output, &id)
            .map_err(|e| refuse(format!("resolving its path: {e}")))?;
        Ok(Base {
            bases: match differences {
                true => base_files(&chain),
                false => Vec::new(),
            },
            chain,
            id,
            reference,
        })
    }

    /// The pages frozen process `pid` (`st`, mappings `maps`) takes from the chain: none if
    /// the parent has no record of this very process, or if its tracking was reset for
    /// another image since (then its pages are all stored, with a warning).
    pub fn reuse(&self, pid: i32, st: &Stat, maps: &[MapEntry]) -> Result<Reuse, CheckpointError> {
        let now = Identity::of(pid, st);
        let Some(record) = self.record_of(&now) else {
            return Ok(Reuse::default());
        };
        if dirty::cleared_for(&now).as_deref() != Some(self.id.as_str()) {
            eprintln!(
                "ckpt: warning: {now} had its change tracking reset by another checkpoint \
                 than the parent's: all its pages are stored"
            );
            return Ok(Reuse::default());
        }
        let reuse = Reuse::read(pid, maps, &record.memory.vmas)
            .map_err(checkpoint_io(pid, "reading its soft-dirty bits (pagemap)"))?;
        let bases = self.bases.iter().map(|f| f.as_ref()?.try_clone().ok());
        Ok(reuse.with_bases(bases.collect()))
    }

    fn record_of(&self, id: &Identity) -> Option<&Process> {
        let m = &self.chain.image().manifest;
        m.processes.iter().find(|p| p.identity.as_ref() == Some(id))
    }
}

/// The most page content of compressed images in a parent chain that a checkpoint decodes
/// to take changed pages' previous versions from them: the chain's incremental images are
/// small, a compressed full image is not (decoding it would cost more than the differences
/// save).
const DECODED_BASES_MAX: u64 = 16 << 20;

/// The chain's pages by distance from the new image (1: the parent; 0, the new image, None):
/// a plain image's file; a compressed image's view (`chain::views`), when the chain's
/// compressed images hold at most [`DECODED_BASES_MAX`] of pages; else None: its changed
/// pages are stored whole.
fn base_files(chain: &Chain) -> Vec<Option<std::fs::File>> {
    let pages = |i: &crate::manifest::Image| {
        let s = i.sections.iter().filter(|s| s.kind == crate::image::PAGES);
        (
            s.clone().all(|s| s.compressed.is_none()),
            s.map(|s| s.len).sum::<u64>(),
        )
    };
    let compressed: u64 = (chain.images.iter().map(pages))
        .filter(|(plain, _)| !plain)
        .map(|(_, len)| len)
        .sum();
    let views = (compressed <= DECODED_BASES_MAX)
        .then(|| crate::chain::views(&chain.images, &crate::progress::Progress::hidden()).ok())
        .flatten();
    let ancestors = chain.images.iter().enumerate().map(|(k, i)| {
        let view = views.as_ref().and_then(|v| v.get(k)?.as_ref());
        match (pages(i).0, view) {
            (true, _) => i.file.try_clone().ok(),
            (false, Some(v)) => v.try_clone().ok(),
            (false, None) => None,
        }
    });
    std::iter::once(None).chain(ancestors).collect()
}
