//! A progress bar on stderr for the long parts of a checkpoint (writing pages) and of a
//! restore (verifying and decompressing the image): bytes done and to do, throughput, time
//! left. Drawn only on a terminal (TERM set, not `dumb`), only when allowed (not with
//! `--json` or `--no-progress`), and only once the work is long enough ([`THRESHOLD`]): a
//! short checkpoint prints what it always printed.
//!
//! The work's size may grow as it goes (a tree's processes are scanned one after the other):
//! [`Progress::add_total`] as it is found, [`Progress::advance`] as it is done. The bar
//! appears the first time the total passes the threshold. The code that does the work only
//! calls these; nothing else here touches the terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::{Cell, OnceCell};
use std::io::IsTerminal;

/// Work of more bytes than this gets a bar; below, it is over too soon to need one.
pub const THRESHOLD: u64 = 64 << 20;

/// Whether a bar is to be drawn: `allowed` (no `--json`, no `--no-progress`), stderr a
/// terminal, and more than [`THRESHOLD`] bytes of work.
pub fn wanted(allowed: bool, stderr_is_terminal: bool, total: u64) -> bool {
    allowed && stderr_is_terminal && total > THRESHOLD
}

/// Whether a bar can be drawn on stderr: a terminal (`isatty`) of a known kind (`term`, the
/// TERM variable): one whose kind is unknown or `dumb` cannot move its cursor (indicatif
/// draws nothing there either).
pub fn usable_terminal(term: Option<&std::ffi::OsStr>, isatty: bool) -> bool {
    isatty && term.is_some_and(|t| !t.is_empty() && t != "dumb")
}

/// The progress of one long piece of work, in bytes. Methods take `&self`: the readers that
/// advance it are closures handed around.
pub struct Progress {
    /// Shown before the bar ("writing pages", "verifying").
    what: &'static str,
    total: Cell<u64>,
    done: Cell<u64>,
    /// No `--json`, no `--no-progress`.
    allowed: bool,
    /// stderr (or the test's screen) is a terminal.
    terminal: bool,
    /// Where the bar is drawn once [`wanted`] says so.
    target: fn() -> ProgressDrawTarget,
    bar: OnceCell<ProgressBar>,
}

impl Progress {
    /// Progress of `what`, drawn on stderr if it is a [usable terminal](usable_terminal) and
    /// `allowed`.
    pub fn stderr(what: &'static str, allowed: bool) -> Self {
        let term = std::env::var_os("TERM");
        let terminal = usable_terminal(term.as_deref(), std::io::stderr().is_terminal());
        Self::build(what, (allowed, terminal), ProgressDrawTarget::stderr)
    }

    /// Progress nobody sees.
    pub fn hidden() -> Self {
        Self::build("", (false, false), ProgressDrawTarget::hidden)
    }

    /// Progress of `what`, drawn on the terminal `target` makes once long enough.
    pub fn with_target(what: &'static str, target: fn() -> ProgressDrawTarget) -> Self {
        Self::build(what, (true, true), target)
    }

    fn build(
        what: &'static str,
        (allowed, terminal): (bool, bool),
        target: fn() -> ProgressDrawTarget,
    ) -> Self {
        Progress {
            what,
            total: Cell::new(0),
            done: Cell::new(0),
            allowed,
            terminal,
            target,
            bar: OnceCell::new(),
        }
    }

    /// `bytes` more work found; the bar appears if the total is now long enough.
    pub fn add_total(&self, bytes: u64) {
        let total = self.total.get().saturating_add(bytes);
        self.total.set(total);
        match self.bar.get() {
            Some(bar) => bar.set_length(total),
            None => self.start_if_long(),
        }
    }

    /// `bytes` of the work done.
    pub fn advance(&self, bytes: u64) {
        let done = self.done.get().saturating_add(bytes);
        self.done.set(done);
        if let Some(bar) = self.bar.get() {
            bar.set_position(done);
        }
    }

    /// Bytes done and bytes of work found so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.done.get(), self.total.get())
    }

    /// Whether a bar has been drawn.
    pub fn is_drawn(&self) -> bool {
        self.bar.get().is_some()
    }

    /// The work is over: the bar (if any) is erased, so that what is printed next is not
    /// mixed with it.
    pub fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }

    fn start_if_long(&self) {
        if !wanted(self.allowed, self.terminal, self.total.get()) {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(self.total.get()), (self.target)());
        // The template is fixed, it cannot fail; a bar without style would still count.
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(self.what);
        bar.set_position(self.done.get());
        // Throughput and time left from now on, not from work done before the bar was up.
        bar.reset_eta();
        let _ = self.bar.set(bar);
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::hidden()
    }
}

impl Drop for Progress {
    /// Work given up half-way (an error) leaves no bar behind either.
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;
    use std::sync::{Arc, Mutex};

    #[test]
    fn drawn_only_on_a_terminal_when_allowed_and_long() {
        let long = THRESHOLD + 4096;
        assert!(wanted(true, true, long));
        assert!(!wanted(true, false, long), "stderr not a terminal");
        assert!(!wanted(false, true, long), "--json or --no-progress");
        assert!(
            !wanted(true, true, THRESHOLD),
            "not more than the threshold"
        );
        assert!(!wanted(true, true, 0));
    }

    #[test]
    fn a_terminal_of_unknown_or_dumb_kind_gets_no_bar() {
        let term = |t: &str| Some(std::ffi::OsString::from(t));
        assert!(usable_terminal(term("xterm-256color").as_deref(), true));
        assert!(
            !usable_terminal(term("xterm").as_deref(), false),
            "not a tty"
        );
        assert!(!usable_terminal(term("dumb").as_deref(), true));
        assert!(!usable_terminal(term("").as_deref(), true));
        assert!(!usable_terminal(None, true), "TERM unset");
    }

    /// A terminal that keeps what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    static SCREEN: Mutex<Option<Screen>> = Mutex::new(None);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn screen_target() -> ProgressDrawTarget {
        let screen = SCREEN.lock().unwrap().clone().unwrap_or_default();
        ProgressDrawTarget::term_like(Box::new(screen))
    }

    /// The bar appears once the growing total passes the threshold, counting what was done
    /// before, and shows bytes done and to do.
    #[test]
    fn the_bar_appears_when_the_total_passes_the_threshold() {
        let screen = Screen::default();
        *SCREEN.lock().unwrap() = Some(screen.clone());
        let p = Progress::with_target("writing pages", screen_target);
        p.add_total(THRESHOLD);
        p.advance(THRESHOLD / 2);
        assert!(!p.is_drawn(), "drawn for work of the threshold only");
        assert!(screen.0.lock().unwrap().is_empty());
        p.add_total(THRESHOLD);
        assert!(p.is_drawn());
        p.advance(THRESHOLD / 2);
        let text = screen.0.lock().unwrap().clone();
        assert!(text.contains("writing pages"), "{text:?}");
        assert!(text.contains("/128.00 MiB"), "{text:?}");
        assert_eq!(
            p.bar.get().map(|b| (b.position(), b.length())),
            Some((THRESHOLD, Some(2 * THRESHOLD)))
        );
    }

    #[test]
    fn hidden_progress_never_draws() {
        let p = Progress::hidden();
        p.add_total(u64::MAX);
        p.advance(u64::MAX);
        assert!(!p.is_drawn());
    }
}
