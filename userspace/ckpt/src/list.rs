//! `ckpt list`: the applications started by `ckpt run` under a runtime directory and their
//! live processes, asked through their interceptors. Registrations whose processes are all
//! gone are removed on the way.

use ckpt_abi::interceptor::{APP_FILE, SOCKET_SUFFIX};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What `ckpt run` records of an application (`RUNTIME_DIR/ID/app.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppRecord {
    pub id: String,
    pub root_pid: i32,
    pub argv: Vec<String>,
    #[serde(default)]
    pub started_unix_ms: u64,
    /// False when the program is statically linked and runs without the library.
    #[serde(default)]
    pub intercepted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessEntry {
    /// The kernel's pid (what to give `ckpt checkpoint`).
    pub pid: i32,
    /// The pid the application sees (differs after a restore that could not keep it).
    pub vpid: i32,
    /// Restores this process has been through.
    pub generation: u64,
    pub intercepted: bool,
    pub comm: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppEntry {
    #[serde(flatten)]
    pub app: AppRecord,
    pub processes: Vec<ProcessEntry>,
}

pub fn read_app(dir: &Path) -> std::io::Result<AppRecord> {
    let text = std::fs::read_to_string(dir.join(APP_FILE))?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

pub fn alive(pid: i32) -> bool {
    pid > 0
        && crate::proc::stat(pid)
            .map(|s| s.state != 'Z' && s.state != 'X')
            .unwrap_or(false)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default()
}

/// The processes of the application in `dir` whose interceptors answer; stale sockets are
/// removed.
pub fn live_processes(dir: &Path) -> Vec<ProcessEntry> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_suffix(SOCKET_SUFFIX)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let answer = crate::interceptor::Client::connect(pid)
            .and_then(|c| c.ok())
            .and_then(|mut c| c.info().ok());
        match answer {
            Some((kpid, vpid, generation)) if kpid == pid => out.push(ProcessEntry {
                pid,
                vpid,
                generation,
                intercepted: true,
                comm: comm(pid),
            }),
            _ if !alive(pid) => {
                let _ = std::fs::remove_file(e.path());
            }
            _ => {}
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Every application under `runtime_dir`. Ones with no live process left are removed.
pub fn list(runtime_dir: &Path) -> Vec<AppEntry> {
    let mut apps = Vec::new();
    let Ok(entries) = std::fs::read_dir(runtime_dir) else {
        return apps;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(app) = read_app(&dir) else {
            continue;
        };
        let mut processes = live_processes(&dir);
        // A program that runs without the library (static) has no socket: its root process
        // is all we know of.
        if !processes.iter().any(|p| p.pid == app.root_pid)
            && alive(app.root_pid)
            && !app.intercepted
        {
            processes.push(ProcessEntry {
                pid: app.root_pid,
                vpid: app.root_pid,
                generation: 0,
                intercepted: false,
                comm: comm(app.root_pid),
            });
        }
        if processes.is_empty() && !alive(app.root_pid) {
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        apps.push(AppEntry { app, processes });
    }
    apps.sort_by(|a, b| a.app.id.cmp(&b.app.id));
    apps
}

/// The text form of `ckpt list`.
pub fn text(apps: &[AppEntry]) -> String {
    let mut s = String::new();
    if apps.is_empty() {
        s.push_str("no applications\n");
        return s;
    }
    s.push_str(&format!(
        "{:<24} {:>8} {:>8} {:>4}  {:<12} COMMAND\n",
        "APP", "PID", "VPID", "GEN", "PATH"
    ));
    for a in apps {
        for p in &a.processes {
            s.push_str(&format!(
                "{:<24} {:>8} {:>8} {:>4}  {:<12} {}\n",
                a.app.id,
                p.pid,
                p.vpid,
                p.generation,
                if p.intercepted {
                    "interceptor"
                } else {
                    "plain"
                },
                if p.pid == a.app.root_pid {
                    a.app.argv.join(" ")
                } else {
                    p.comm.clone()
                }
            ));
        }
        if a.processes.is_empty() {
            s.push_str(&format!("{:<24} (no live process answers)\n", a.app.id));
        }
    }
    s
}

/// The processes of application `id` under `runtime_dir` to checkpoint, as roots: every live
/// process of it (its own or reparented) whose parent is not one of them, its first process
/// first. An error names what is missing.
pub fn app_roots(runtime_dir: &Path, id: &str) -> Result<Vec<i32>, String> {
    let dir = runtime_dir.join(id);
    let app = read_app(&dir)
        .map_err(|e| format!("no application {id:?} under {}: {e}", runtime_dir.display()))?;
    let mut pids: Vec<i32> = live_processes(&dir).iter().map(|p| p.pid).collect();
    // The first process, which may run without the library (static): only if it still is
    // the application's (its pid may have been reused since).
    let is_ours = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            let want = format!("{}={id}", ckpt_abi::interceptor::ENV_APP_ID);
            env.split(|&b| b == 0).any(|v| v == want.as_bytes())
        })
    };
    if alive(app.root_pid) && !pids.contains(&app.root_pid) && is_ours(app.root_pid) {
        pids.push(app.root_pid);
    }
    pids.sort_by_key(|&p| (p != app.root_pid, p));
    let parent = |p: i32| crate::proc::stat(p).map(|s| s.ppid).unwrap_or(0);
    let roots: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| !pids.contains(&parent(p)))
        .collect();
    if roots.is_empty() {
        return Err(format!("application {id:?} has no live process"));
    }
    Ok(roots)
}
