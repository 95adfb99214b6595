//! `ckpt schedule`: the crontab line, or the systemd service and timer, that run a periodic
//! checkpoint (`ckpt checkpoint ... --dir DIR`) every so often; printed, or installed.
//!
//! Both run `ckpt` by its absolute path with the checkpoint's arguments, paths made absolute
//! (cron starts jobs in the home directory). An installed schedule carries a marker naming
//! it, so installing it again replaces it instead of adding a second one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Interval(String),
    #[error("{what}: {why}")]
    Install { what: String, why: String },
}

/// The five cron fields for "every `every`": a whole number of minutes dividing an hour, of
/// hours dividing a day, or a day. Cron can say nothing else exactly.
pub fn cron_fields(every: Duration) -> Result<String, ScheduleError> {
    let secs = every.as_secs();
    let refuse = || {
        ScheduleError::Interval(format!(
            "cron cannot run every {}: it can run every N minutes (N dividing 60), every N \
             hours (N dividing 24) or every day; --systemd runs at any interval",
            humantime::format_duration(every)
        ))
    };
    if secs == 0 || !secs.is_multiple_of(60) || every.subsec_nanos() != 0 {
        return Err(refuse());
    }
    let minutes = secs / 60;
    Ok(match minutes {
        1 => "* * * * *".into(),
        m if m < 60 && 60u64.is_multiple_of(m) => format!("*/{m} * * * *"),
        60 => "0 * * * *".into(),
        m if m.is_multiple_of(60) && m < 1440 && 1440u64.is_multiple_of(m) => {
            format!("0 */{} * * *", m / 60)
        }
        1440 => "0 0 * * *".into(),
        _ => return Err(refuse()),
    })
}

/// The marker that names a schedule in a crontab or a unit's description.
pub fn marker(name: &str) -> String {
    format!("ckpt-schedule:{name}")
}

/// `argv` as one shell command line.
fn shell_join(argv: &[String]) -> Result<String, ScheduleError> {
    shlex::try_join(argv.iter().map(String::as_str)).map_err(|e| {
        ScheduleError::Interval(format!("an argument cannot be written in a command: {e}"))
    })
}

/// The crontab line: the fields, the command (cron takes `%` for a newline: escaped), the
/// marker as a comment.
pub fn crontab_line(fields: &str, argv: &[String], name: &str) -> Result<String, ScheduleError> {
    let command = shell_join(argv)?.replace('%', "\\%");
    Ok(format!("{fields} {command} # {}", marker(name)))
}

/// The systemd service and timer units (`NAME.service`, `NAME.timer`).
pub fn systemd_units(
    every: Duration,
    argv: &[String],
    name: &str,
) -> Result<(String, String), ScheduleError> {
    if argv.iter().any(|a| a.contains(['\'', '"', '\\'])) {
        return Err(ScheduleError::Interval(
            "an argument holds a quote or a backslash, which a unit's ExecStart would read \
             differently: rename the path"
                .into(),
        ));
    }
    // Unit files expand %-specifiers: a literal % is %%.
    let exec = shell_join(argv)?.replace('%', "%%");
    let every = humantime::format_duration(every).to_string();
    let service = format!(
        "[Unit]\nDescription=Periodic checkpoint ({})\n\n[Service]\nType=oneshot\n\
         ExecStart={exec}\n",
        marker(name)
    );
    let timer = format!(
        "[Unit]\nDescription=Periodic checkpoint every {every} ({})\n\n[Timer]\n\
         OnActiveSec={every}\nOnUnitActiveSec={every}\nAccuracySec=1s\n\n\
         [Install]\nWantedBy=timers.target\n",
        marker(name)
    );
    Ok((service, timer))
}

/// `crontab` with the schedule's line in place of any earlier line of the same name.
pub fn install_crontab(line: &str, name: &str) -> Result<(), ScheduleError> {
    let fail = |why: String| ScheduleError::Install {
        what: "installing the crontab line".into(),
        why,
    };
    let current = Command::new("crontab")
        .arg("-l")
        .stderr(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run crontab: {e}")))?;
    // `crontab -l` fails when the user has no crontab yet: start from an empty one.
    let current = match current.status.success() {
        true => String::from_utf8_lossy(&current.stdout).into_owned(),
        false => String::new(),
    };
    let tag = format!("# {}", marker(name));
    let mut table: Vec<&str> = current
        .lines()
        .filter(|l| !l.trim_end().ends_with(&tag))
        .collect();
    table.push(line);
    let text = table.join("\n") + "\n";
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run crontab: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing to crontab: {e}")))?;
    }
    let status = child.wait().map_err(|e| fail(e.to_string()))?;
    match status.success() {
        true => Ok(()),
        false => Err(fail(format!("crontab - failed ({status})"))),
    }
}

/// Where systemd units go: the system's for root, the user's otherwise.
pub fn default_unit_dir() -> PathBuf {
    match nix::unistd::geteuid().is_root() {
        true => PathBuf::from("/etc/systemd/system"),
        false => std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
            .unwrap_or_else(|| PathBuf::from(".config"))
            .join("systemd/user"),
    }
}

/// Writes the units into `dir` and starts the timer (`systemctl [--user] daemon-reload`,
/// `enable --now NAME.timer`).
pub fn install_systemd(
    dir: &Path,
    name: &str,
    service: &str,
    timer: &str,
) -> Result<(), ScheduleError> {
    let fail = |what: &str, why: String| ScheduleError::Install {
        what: what.into(),
        why,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), e.to_string()))?;
    for (ext, text) in [("service", service), ("timer", timer)] {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::write(&path, text)
            .map_err(|e| fail(&path.display().to_string(), e.to_string()))?;
    }
    let user = !nix::unistd::geteuid().is_root();
    let timer_unit = format!("{name}.timer");
    for args in [
        vec!["daemon-reload"],
        vec!["enable", "--now", timer_unit.as_str()],
    ] {
        let mut cmd = Command::new("systemctl");
        if user {
            cmd.arg("--user");
        }
        let status = cmd
            .args(&args)
            .status()
            .map_err(|e| fail("running systemctl", e.to_string()))?;
        if !status.success() {
            return Err(fail(
                &format!("systemctl {}", args.join(" ")),
                format!("failed ({status})"),
            ));
        }
    }
    Ok(())
}

/// A schedule's name: letters, digits, `-`, `_` and `.`, as unit names and markers take them.
pub fn check_name(name: &str) -> Result<(), ScheduleError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    match ok {
        true => Ok(()),
        false => Err(ScheduleError::Interval(format!(
            "{name:?} cannot name a schedule: use letters, digits, '-', '_' and '.' (--name)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_says_what_it_can_and_refuses_the_rest() {
        let m = |n: u64| Duration::from_secs(n * 60);
        assert_eq!(cron_fields(m(1)).unwrap(), "* * * * *");
        assert_eq!(cron_fields(m(10)).unwrap(), "*/10 * * * *");
        assert_eq!(cron_fields(m(60)).unwrap(), "0 * * * *");
        assert_eq!(cron_fields(m(360)).unwrap(), "0 */6 * * *");
        assert_eq!(cron_fields(m(1440)).unwrap(), "0 0 * * *");
        for bad in [
            m(7),
            m(90),
            m(2880),
            Duration::from_secs(30),
            Duration::ZERO,
        ] {
            let e = cron_fields(bad).unwrap_err().to_string();
            assert!(e.contains("--systemd"), "{e}");
        }
    }

    #[test]
    fn the_crontab_line_quotes_and_escapes_percent() {
        let argv: Vec<String> = ["/usr/bin/ckpt", "checkpoint", "--dir", "/srv/a b/100%"]
            .map(String::from)
            .to_vec();
        let line = crontab_line("*/5 * * * *", &argv, "job").unwrap();
        assert_eq!(
            line,
            "*/5 * * * * /usr/bin/ckpt checkpoint --dir '/srv/a b/100\\%' # ckpt-schedule:job"
        );
    }

    #[test]
    fn units_run_every_interval_and_refuse_quotes() {
        let argv: Vec<String> = ["/usr/bin/ckpt", "checkpoint", "--dir", "/srv/50%"]
            .map(String::from)
            .to_vec();
        let (service, timer) = systemd_units(Duration::from_secs(90), &argv, "job").unwrap();
        assert!(
            service.contains("ExecStart=/usr/bin/ckpt checkpoint --dir '/srv/50%%'\n"),
            "{service}"
        );
        assert!(timer.contains("OnUnitActiveSec=1m 30s\n"), "{timer}");
        let quoted = vec!["/usr/bin/ckpt".to_string(), "it's".to_string()];
        assert!(systemd_units(Duration::from_secs(60), &quoted, "job").is_err());
    }

    #[test]
    fn names_are_unit_safe() {
        assert!(check_name("web-1_a.b").is_ok());
        for bad in ["", "a b", "a/b", "x#y"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
