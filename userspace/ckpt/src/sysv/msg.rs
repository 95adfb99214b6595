//! SysV message queues the tree uses: recorded with key, id, owner, mode, byte limit and
//! every queued message (type and text, copied out without taking them: MSG_COPY); made
//! again with the same key and id and the messages sent again in order.

use super::Kind;
use crate::image::{section_is, ImageWriter, Section, SectionKind};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::io;

/// The texts of a queue's messages, one after another.
pub const SYSV_MSG_DATA: SectionKind = SectionKind::named("sysv_msg_data");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MsgQueue {
    pub key: i32,
    pub id: i32,
    /// Permission bits (0o777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The most bytes the queue holds (msg_qbytes).
    pub max_bytes: u64,
    /// Queued messages, oldest first; their texts are in `data_section`, in this order.
    pub messages: Vec<Message>,
    pub data_section: Option<usize>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub mtype: i64,
    pub len: u64,
}

/// The pids of the last sender and the last receiver of queue `id`.
pub(super) fn last_users(id: i32) -> io::Result<Vec<i32>> {
    let ds = sys::sysv_msg_stat(id)?;
    Ok(vec![ds.msg_lspid, ds.msg_lrpid])
}

/// Queue `id` (its key `key`) with its messages, whose texts go into the image.
pub(super) fn read(key: i32, id: i32, w: &mut ImageWriter) -> io::Result<MsgQueue> {
    let ds = sys::sysv_msg_stat(id)?;
    let mut messages = Vec::new();
    let mut texts = Vec::new();
    // No message is longer than the bytes queued.
    let longest = ds.__msg_cbytes as usize;
    for index in 0..ds.msg_qnum as usize {
        let (mtype, text) = sys::sysv_msg_copy(id, index, longest)?;
        messages.push(Message {
            mtype,
            len: text.len() as u64,
        });
        texts.extend_from_slice(&text);
    }
    let data_section = match texts.is_empty() {
        true => None,
        false => Some(w.add_blob(SYSV_MSG_DATA, &texts)?),
    };
    Ok(MsgQueue {
        key,
        id,
        mode: u32::from(ds.msg_perm.mode) & 0o777,
        uid: ds.msg_perm.uid,
        gid: ds.msg_perm.gid,
        max_bytes: ds.msg_qbytes as u64,
        messages,
        data_section,
    })
}

impl MsgQueue {
    /// Makes the queue again with its owner, limit and messages (`texts`: its section).
    /// Returns its id.
    pub fn make(&self, texts: &[u8], fresh: bool) -> io::Result<i32> {
        let create = || sys::sysv_msg_create(self.key, self.mode);
        let id = super::create_keyed(Kind::Msg, (self.key, self.id), fresh, create)?;
        if let Err(e) = self.fill(id, texts) {
            let _ = sys::sysv_msg_remove(id);
            return Err(io::Error::new(
                e.kind(),
                format!("filling SysV message queue key {:#x}: {e}", self.key),
            ));
        }
        Ok(id)
    }

    fn fill(&self, id: i32, texts: &[u8]) -> io::Result<()> {
        // The limit first: the messages may need more than a new queue's default.
        let owner = (self.uid, self.gid, self.mode);
        sys::sysv_msg_set(id, owner, self.max_bytes)?;
        let mut at = 0usize;
        for m in &self.messages {
            let end = at + m.len as usize;
            let text = texts.get(at..end).ok_or(io::ErrorKind::InvalidData)?;
            sys::sysv_msg_send(id, m.mtype, text)?;
            at = end;
        }
        Ok(())
    }
}

/// Queues' messages add up to their sections (image data is never trusted).
pub fn validate(queues: &[MsgQueue], sections: &[Section]) -> Result<(), String> {
    for q in queues {
        let total = q
            .messages
            .iter()
            .try_fold(0u64, |sum, m| sum.checked_add(m.len));
        let ok = match (q.data_section, total) {
            (_, None) => false,
            (None, Some(t)) => t == 0,
            (Some(i), Some(t)) => section_is(sections, i, &SYSV_MSG_DATA) && sections[i].len == t,
        };
        let fits = total.is_some_and(|t| t <= q.max_bytes) && q.max_bytes <= i32::MAX as u64;
        if !ok || !fits || q.messages.iter().any(|m| m.mtype <= 0) || q.id < 0 {
            return Err(format!("bad SysV message queue {}", q.id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(lens: &[u64], data_section: Option<usize>) -> MsgQueue {
        MsgQueue {
            key: 1,
            id: 2,
            mode: 0o600,
            uid: 0,
            gid: 0,
            max_bytes: 100,
            messages: lens.iter().map(|&len| Message { mtype: 1, len }).collect(),
            data_section,
        }
    }

    #[test]
    fn messages_must_add_up_to_their_section() {
        let sections = [Section {
            kind: SYSV_MSG_DATA,
            offset: 0,
            len: 10,
            xxh64: 0,
            compressed: None,
            delta: None,
        }];
        assert!(validate(&[queue(&[4, 6], Some(0))], &sections).is_ok());
        assert!(validate(&[queue(&[4, 7], Some(0))], &sections).is_err());
        assert!(validate(&[queue(&[4], None)], &sections).is_err());
        assert!(validate(&[queue(&[], None)], &sections).is_ok());
        assert!(validate(&[queue(&[u64::MAX, 2], Some(0))], &sections).is_err());
        // More queued than the queue's own limit.
        assert!(validate(
            &[queue(&[60, 50], Some(0))],
            &[Section {
                len: 110,
                ..sections[0].clone()
            }]
        )
        .is_err());
        let mut bad_type = queue(&[10], Some(0));
        bad_type.messages[0].mtype = 0;
        assert!(validate(&[bad_type], &sections).is_err());
    }
}
