//! `ckpt run [--id ID] -- PROG ARGS`: starts PROG with the interceptor library preloaded.
//!
//! ckpt replaces itself with PROG (so PROG gets ckpt's pid, stdio and parent) after registering
//! the application as `RUNTIME_DIR/ID/app.json`. The library path travels in LD_PRELOAD and the
//! id and runtime directory in CKPT_APP_ID and CKPT_RUNTIME_DIR, so every process the
//! application starts (fork, exec) is intercepted too. A statically linked PROG cannot load a
//! library: ckpt says so and runs it without, and checkpoints of it take the plain path.

use crate::list::AppRecord;
use ckpt_abi::interceptor::{APP_FILE, ENV_APP_ID, ENV_RUNTIME_DIR};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The library's file name, looked for next to the `ckpt` executable.
pub const LIBRARY: &str = "libckpt_interceptor.so";
/// Room for "/PID.sock" in a UNIX socket path (108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}: no such program (not a path, and not found in PATH)")]
    NoProgram(String),
    #[error(
        "the interceptor library {LIBRARY} was not found (looked in {0}); set CKPT_INTERCEPTOR \
         to its path"
    )]
    NoLibrary(String),
    #[error("application id {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadId(String),
    #[error("runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "runtime directory {0} is too long for a UNIX socket path; choose a shorter one with \
         --runtime-dir"
    )]
    RuntimeDirTooLong(PathBuf),
    #[error("an application with id {0:?} is already running; choose another --id")]
    IdInUse(String),
    #[error("starting {program}: {source}")]
    Exec {
        program: String,
        source: std::io::Error,
    },
}

/// CKPT_RUNTIME_DIR, else $XDG_RUNTIME_DIR/ckpt, else /run/ckpt for root, else
/// /tmp/ckpt-UID.
pub fn default_runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(ENV_RUNTIME_DIR).filter(|d| !d.is_empty()) {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ckpt");
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        PathBuf::from("/run/ckpt")
    } else {
        PathBuf::from(format!("/tmp/ckpt-{uid}"))
    }
}

/// CKPT_INTERCEPTOR, else next to this executable, else ../lib/ckpt/ from it.
pub fn find_library() -> Result<PathBuf, RunError> {
    if let Some(p) = std::env::var_os("CKPT_INTERCEPTOR") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RunError::NoLibrary(p.display().to_string()))
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(LIBRARY), dir.join("../lib/ckpt").join(LIBRARY)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .ok_or_else(|| {
            RunError::NoLibrary(
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

fn resolve_program(prog: &OsString) -> Option<PathBuf> {
    let p = Path::new(prog);
    if prog.as_bytes().contains(&b'/') {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
}

/// How a program file can take the library.
#[derive(Debug, PartialEq, Eq)]
pub enum Linkage {
    /// A dynamically linked 64-bit ELF (or a script, whose interpreter is): preloadable.
    Dynamic,
    /// No program interpreter: nothing loads libraries into it.
    Static,
    /// A 32-bit ELF: a 64-bit library cannot be loaded into it.
    Elf32,
}

/// Reads the ELF header and program headers of `path`.
pub fn linkage(path: &Path) -> std::io::Result<Linkage> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut head = vec![0u8; 64];
    let n = f.read(&mut head)?;
    if n < 64 || head[..4] != *b"\x7fELF" {
        return Ok(Linkage::Dynamic); // a script: its interpreter is what runs
    }
    if head[4] == 1 {
        return Ok(Linkage::Elf32);
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as u64;
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().unwrap_or([0; 8]));
    let phentsize = u16_at(&head, 0x36);
    let phnum = u16_at(&head, 0x38);
    if phentsize < 4 || phnum > 4096 {
        return Ok(Linkage::Dynamic);
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut table, phoff)?;
    const PT_INTERP: u32 = 3;
    let has_interp = table
        .chunks_exact(phentsize as usize)
        .any(|ph| u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_INTERP);
    Ok(if has_interp {
        Linkage::Dynamic
    } else {
        Linkage::Static
    })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !id.starts_with('.')
}

pub struct RunOptions {
    pub id: Option<String>,
    pub runtime_dir: Option<PathBuf>,
    pub argv: Vec<OsString>,
}

/// Registers the application and replaces this process with it. Returns only on failure.
pub fn run(opts: RunOptions) -> Result<std::convert::Infallible, RunError> {
    let prog_arg = opts.argv.first().cloned().unwrap_or_default();
    let prog_name = prog_arg.to_string_lossy().into_owned();
    let program =
        resolve_program(&prog_arg).ok_or_else(|| RunError::NoProgram(prog_name.clone()))?;
    let kind = linkage(&program).map_err(|source| RunError::Exec {
        program: prog_name.clone(),
        source,
    })?;
    let pid = std::process::id() as i32;
    let id = match opts.id {
        Some(id) => id,
        None => default_id(&prog_name, pid),
    };
    if !valid_id(&id) {
        return Err(RunError::BadId(id));
    }
    let (runtime_dir, app_dir) = app_dir(opts.runtime_dir, &id)?;
    let library = library_for(kind, &program)?;
    let record = AppRecord {
        id: id.clone(),
        root_pid: pid,
        argv: opts
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        intercepted: library.is_some(),
    };
    let json = serde_json::to_string_pretty(&record).unwrap_or_default();
    std::fs::write(app_dir.join(APP_FILE), json + "\n").map_err(|source| RunError::RuntimeDir {
        path: app_dir.clone(),
        source,
    })?;

    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&program);
    cmd.arg0(&prog_arg).args(&opts.argv[1..]);
    if let Some(lib) = library {
        let mut preload = lib.into_os_string();
        if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
            preload.push(":");
            preload.push(old);
        }
        cmd.env("LD_PRELOAD", preload);
    }
    cmd.env(ENV_APP_ID, &id).env(ENV_RUNTIME_DIR, &runtime_dir);
    let source = cmd.exec();
    let _ = std::fs::remove_dir_all(&app_dir);
    Err(RunError::Exec {
        program: prog_name,
        source,
    })
}

/// PROGRAM-PID, with the program's base name made safe for an id.
fn default_id(prog_name: &str, pid: i32) -> String {
    let base = Path::new(prog_name)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into());
    let safe = |c: char| {
        if c.is_ascii_alphanumeric() || "._-".contains(c) {
            c
        } else {
            '_'
        }
    };
    let base: String = base.chars().map(safe).collect();
    format!("{}-{pid}", base.trim_start_matches('.'))
}

/// The runtime directory (made, canonical) and a fresh directory for application `id` in it
/// (refused while an application with that id still runs).
fn app_dir(runtime_dir: Option<PathBuf>, id: &str) -> Result<(PathBuf, PathBuf), RunError> {
    let runtime_dir = runtime_dir.unwrap_or_else(default_runtime_dir);
    let rt_err = |source| RunError::RuntimeDir {
        path: runtime_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&runtime_dir).map_err(rt_err)?;
    let runtime_dir = std::fs::canonicalize(&runtime_dir).map_err(rt_err)?;
    let app_dir = runtime_dir.join(id);
    if app_dir.as_os_str().len() + "/4194304.sock".len() > SOCKET_PATH_MAX {
        return Err(RunError::RuntimeDirTooLong(runtime_dir));
    }
    if let Ok(old) = crate::list::read_app(&app_dir) {
        if crate::list::alive(old.root_pid) || !crate::list::live_processes(&app_dir).is_empty() {
            return Err(RunError::IdInUse(id.to_owned()));
        }
    }
    let _ = std::fs::remove_dir_all(&app_dir);
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&app_dir)
        .map_err(|source| RunError::RuntimeDir {
            path: app_dir.clone(),
            source,
        })?;
    Ok((runtime_dir, app_dir))
}

/// The interceptor library to preload, or None (with a message) for a program it cannot go
/// into.
fn library_for(kind: Linkage, program: &Path) -> Result<Option<PathBuf>, RunError> {
    match kind {
        Linkage::Dynamic => Ok(Some(find_library()?)),
        Linkage::Static => {
            eprintln!(
                "ckpt run: {} is statically linked, so the interceptor cannot be preloaded into \
                 it; running it without (checkpoints take the plain path: no flushing, no id \
                 virtualization)",
                program.display()
            );
            Ok(None)
        }
        Linkage::Elf32 => {
            eprintln!(
                "ckpt run: {} is a 32-bit program; the interceptor is 64-bit and checkpoints \
                 of 32-bit programs are not supported; running it without",
                program.display()
            );
            Ok(None)
        }
    }
}
