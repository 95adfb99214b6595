//! ckpt user space: the `/dev/ckpt` client and (later) image format, dump and restore.
pub mod checkpoint;
pub mod device;
pub mod flush;
pub mod image;
pub mod info;
pub mod inject;
pub mod inspect;
pub mod interceptor;
pub mod list;
pub mod proc;
pub mod restore;
pub mod run;
pub mod socket;
pub mod sys;
