//! SysV semaphore sets the tree uses: recorded with key, id, owner, mode and every
//! semaphore's value; made again with the same key, id and values.
//! Not carried: the undo adjustments (SEM_UNDO) a process would have applied at its exit,
//! which the kernel keeps per process and does not show, and the last-operation times.

use super::Kind;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::io;

/// SEMMSL and SEMVMX: the most semaphores in a set, the highest value.
const MAX_SEMS: usize = 32000;
const MAX_VALUE: u16 = 32767;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SemSet {
    pub key: i32,
    pub id: i32,
    /// Permission bits (0o777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Each semaphore's value.
    pub values: Vec<u16>,
}

/// Set `id` (its key `key`) as it is now, with the last pid to change each semaphore.
pub(super) fn read(key: i32, id: i32) -> io::Result<(SemSet, Vec<i32>)> {
    let ds = sys::sysv_sem_stat(id)?;
    let (values, pids) = sys::sysv_sem_read(id, ds.sem_nsems as usize)?;
    let set = SemSet {
        key,
        id,
        mode: u32::from(ds.sem_perm.mode) & 0o777,
        uid: ds.sem_perm.uid,
        gid: ds.sem_perm.gid,
        values,
    };
    Ok((set, pids))
}

/// The last pid to change each semaphore of set `id`.
pub(super) fn last_users(id: i32) -> io::Result<Vec<i32>> {
    let nsems = sys::sysv_sem_stat(id)?.sem_nsems as usize;
    Ok(sys::sysv_sem_read(id, nsems)?.1)
}

impl SemSet {
    /// Makes the set again with its values and owner. Returns its id.
    pub fn make(&self, fresh: bool) -> io::Result<i32> {
        let create = || sys::sysv_sem_create(self.key, &self.values, self.mode);
        let id = super::create_keyed(Kind::Sem, (self.key, self.id), fresh, create)?;
        if let Err(e) = sys::sysv_sem_set_owner(id, self.uid, self.gid, self.mode) {
            let _ = sys::sysv_sem_remove(id);
            return Err(e);
        }
        Ok(id)
    }
}

/// Sets have a size and values the kernel accepts (image data is never trusted).
pub fn validate(sets: &[SemSet]) -> Result<(), String> {
    for s in sets {
        let sized = (1..=MAX_SEMS).contains(&s.values.len());
        if !sized || s.values.iter().any(|&v| v > MAX_VALUE) || s.id < 0 {
            return Err(format!("bad SysV semaphore set {}", s.id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_must_have_a_size_and_values_the_kernel_takes() {
        let set = |values: Vec<u16>| SemSet {
            key: 1,
            id: 0,
            mode: 0o600,
            uid: 0,
            gid: 0,
            values,
        };
        assert!(validate(&[set(vec![0, 5, MAX_VALUE])]).is_ok());
        assert!(validate(&[set(vec![])]).is_err());
        assert!(validate(&[set(vec![MAX_VALUE + 1])]).is_err());
        assert!(validate(&[set(vec![0; MAX_SEMS + 1])]).is_err());
    }
}
