//! ckpt user space: the `/dev/ckpt` client, the image, and checkpoint and restore of a
//! process, one module per resource (see docs/design.md, "Layout").

// Orchestration.
pub mod checkpoint;
pub mod restore;

// The image: the container and what it describes.
pub mod chain;
pub mod image;
pub mod manifest;
pub mod stats;

// Resources, each with its saved state, dump and restore.
pub mod attrs;
pub mod cow;
pub mod creds;
pub mod dirty;
pub mod fds;
pub mod memory;
pub mod netlock;
pub mod shmem;
pub mod signals;
pub mod sysv;
pub mod thread;
pub mod timers;
pub mod tree;
pub mod vdso;

// Mechanisms.
pub mod attach;
pub mod batch;
pub mod detour;
pub mod device;
pub mod errors;
pub mod flush;
pub mod freeze;
pub mod groups;
pub mod inject;
pub mod interceptor;
pub mod lazy;
pub mod proc;
pub mod progress;
pub mod snapshot;
pub mod sys;
pub mod worker;

// Trying the image reader with images made wrong on purpose (tests and fuzz/).
#[doc(hidden)]
pub mod fuzzing;

// Other commands.
pub mod info;
pub mod inspect;
pub mod list;
pub mod periodic;
pub mod run;
pub mod schedule;
