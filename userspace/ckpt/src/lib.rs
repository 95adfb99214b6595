//! ckpt user space: the `/dev/ckpt` client and (later) image format, dump and restore.
pub mod device;
pub mod image;
pub mod info;
