//! The errors of a checkpoint and of a restore, in one place below every resource module, so
//! that each resource's dump and restore can return them without depending on the
//! orchestrators.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no such process: {0}")]
    NoSuchProcess(i32),
    #[error("process {0} is ckpt itself")]
    IsSelf(i32),
    #[error("process {0} is a kernel thread; only user processes can be checkpointed")]
    KernelThread(i32),
    #[error("process {0} is a zombie (it has exited and waits for its parent to reap it)")]
    Zombie(i32),
    #[error(transparent)]
    Query(#[from] crate::device::QueryError),
    #[error("cannot attach to process {pid} ({source}): {why}")]
    Attach {
        pid: i32,
        source: std::io::Error,
        /// In words (`attach::why_refused`).
        why: String,
    },
    #[error("process {pid} is busy: another ckpt (pid {by}) is checkpointing it; try again once it is done")]
    Busy { pid: i32, by: i32 },
    #[error(
        "stopped: ckpt was killed or interrupted; the checkpoint is abandoned, every process \
         let go as it was and no image written"
    )]
    Stopped,
    #[error("cannot checkpoint fd {fd} of process {pid} ({target}): {why}")]
    UnsupportedFd {
        pid: i32,
        fd: i32,
        target: String,
        why: String,
    },
    #[error("cannot checkpoint the mapping at {start:#x} of process {pid} ({name}): {why}")]
    UnsupportedMapping {
        pid: i32,
        start: u64,
        name: String,
        why: &'static str,
    },
    #[error("cannot checkpoint the process tree: {0}")]
    Tree(String),
    #[error("cannot checkpoint process {pid}: {why}")]
    Unsupported { pid: i32, why: String },
    #[error("process {pid}: {what}: {source}")]
    Io {
        pid: i32,
        what: String,
        source: std::io::Error,
    },
    #[error("writing the image {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot take {path} as the parent image: {why}")]
    Parent { path: PathBuf, why: String },
}

/// A closure turning an io error into `CheckpointError::Io` about `pid`.
pub fn checkpoint_io(
    pid: i32,
    what: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let what = what.into();
    move |source| CheckpointError::Io { pid, what, source }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(
        "refusing to restore {} as root: {why}. Whoever can write an image can make a root \
         restore run any program as any user; --trust-image restores it anyway",
        path.display()
    )]
    Untrusted {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("refusing to restore {} as uid {uid}: {why}", path.display())]
    NotYours {
        path: std::path::PathBuf,
        uid: u32,
        why: String,
    },
    #[error("{0}")]
    Device(#[from] crate::device::DeviceError),
    #[error("the image holds {0} processes; this version restores one")]
    Processes(usize),
    #[error(
        "the image's kernel mappings ({image}) differ from this kernel's ({here}): it was \
         taken on another kernel"
    )]
    Vdso { image: String, here: String },
    #[error("mapped file {path}: {why}")]
    MappedFile { path: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "the restored process failed while preparing (exit status {0}); see its message above"
    )]
    Child(i32),
    #[error("cannot restore the process tree: {0}")]
    Tree(String),
    #[error("the module refused the restore: {0}")]
    Ioctl(std::io::Error),
    /// A file lock the image holds could not be taken again (the text names the file and
    /// the holder).
    #[error("{0}")]
    Lock(String),
}

pub fn restore_io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}
