//! Whether root may restore an image: an image decides which programs run with which
//! credentials and which files they open, so whoever can write it can make a root restore do
//! anything. Root restores only images that root or a user the image's processes run as owns,
//! and that nobody else can write (group and others), unless told to trust it; an image a user
//! owns may ask for nothing that user could not give a process of their own
//! (`unprivileged::refusal` with that user's ids and groups from the user database).

use crate::errors::RestoreError;
use crate::manifest::Manifest;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Checks the opened image `file` (what was read, not what the path names now) before a
/// restore by root; `trusted` (`--trust-image`) skips the check.
pub fn check(
    path: &Path,
    file: &File,
    manifest: &Manifest,
    trusted: bool,
) -> Result<(), RestoreError> {
    if trusted || !nix::unistd::geteuid().is_root() {
        return Ok(()); // a user restoring can give no more than they have
    }
    let meta = file.metadata().map_err(|e| RestoreError::Untrusted {
        path: path.into(),
        why: format!("its owner and mode cannot be read: {e}"),
    })?;
    let users = users_of(manifest);
    let why =
        refusal(meta.uid(), meta.mode(), &users).or_else(|| owners_refusal(meta.uid(), manifest));
    match why {
        Some(why) => Err(RestoreError::Untrusted {
            path: path.into(),
            why,
        }),
        None => Ok(()),
    }
}

/// The user ids the image's threads run as (real, effective, saved, filesystem).
fn users_of(manifest: &Manifest) -> BTreeSet<u32> {
    let threads = manifest.processes.iter().flat_map(|p| &p.threads);
    threads
        .filter_map(|t| t.creds.as_ref())
        .flat_map(|c| c.uid)
        .collect()
}

/// Why root may not restore an image owned by `owner`, a user other than root, because it asks
/// for more than that user could give a process of their own (their own ids only, no
/// capabilities, no setuid program): whoever writes an image chooses what it asks for.
fn owners_refusal(owner: u32, manifest: &Manifest) -> Option<String> {
    if owner == 0 {
        return None;
    }
    let Some(user) = super::unprivileged::Caller::user(owner) else {
        return Some(format!(
            "it is owned by uid {owner}, whom the user database does not know"
        ));
    };
    let why = super::unprivileged::refusal(manifest, &user)?;
    Some(format!("it is owned by uid {owner}, and {why}"))
}

/// Why an image owned by `owner` with `mode` may not be restored by root (None: it may).
fn refusal(owner: u32, mode: u32, users: &BTreeSet<u32>) -> Option<String> {
    if mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by {} (mode {:04o})",
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode & 0o7777
        ));
    }
    if owner != 0 && !users.contains(&owner) {
        let list: Vec<String> = users.iter().map(u32::to_string).collect();
        return Some(format!(
            "it is owned by uid {owner}, who is neither root nor a user its processes run as \
             ({})",
            list.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn only_root_or_the_images_users_may_own_it_and_nobody_else_write_it() {
        let users = [0, 1000].into_iter().collect();
        assert_eq!(refusal(0, 0o100600, &users), None);
        assert_eq!(refusal(1000, 0o100644, &users), None);
        let why = refusal(1001, 0o100600, &users).unwrap();
        assert!(
            why.contains("owned by uid 1001") && why.contains("(0, 1000)"),
            "{why}"
        );
        let why = refusal(0, 0o100666, &users).unwrap();
        assert!(why.contains("writable by everyone (mode 0666)"), "{why}");
        let why = refusal(1000, 0o100620, &users).unwrap();
        assert!(why.contains("writable by its group (mode 0620)"), "{why}");
    }
}
