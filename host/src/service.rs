//! Running under a service manager: the sd_notify(3) messages of a
//! `Type=notify` unit (ready, stopping, a status line), and the decision
//! whether stderr goes to the systemd journal, whose log lines then carry
//! a syslog level prefix (`<3>`..`<7>`, sd-daemon(3)) instead of a
//! timestamp. Outside systemd (`NOTIFY_SOCKET` and `JOURNAL_STREAM` unset)
//! everything here is a no-op.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::Level;
use sd_notify::NotifyState;

fn notify(states: &[NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this sends nothing; a failed send only costs
    // the service manager a state change, so it is logged, not fatal.
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify failed: {e}");
    }
}

/// Tells the service manager that the listeners are bound (`READY=1`),
/// with a status line.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that the graceful stop has begun
/// (`STOPPING=1`); only the first call per process sends it.
pub fn notify_stopping() {
    static SENT: AtomicBool = AtomicBool::new(false);
    if !SENT.swap(true, Ordering::SeqCst) {
        notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }
}

/// Updates the status line `systemctl status` shows.
pub fn notify_status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// The `STATUS=` line of a long-running loop: sent only under a service
/// manager, only when it changed, and at most once per [`Self::PERIOD`].
#[derive(Debug)]
pub struct StatusLine {
    last: String,
    next: Instant,
}

impl StatusLine {
    /// How often the line may change.
    pub const PERIOD: Duration = Duration::from_secs(1);

    /// A status line, if `NOTIFY_SOCKET` is set (else there is nobody to
    /// tell).
    pub fn if_supervised() -> Option<StatusLine> {
        std::env::var_os("NOTIFY_SOCKET").map(|_| StatusLine {
            last: String::new(),
            next: Instant::now(),
        })
    }

    /// When the line is next due.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// Sends `text()` if due and changed.
    pub fn update(&mut self, now: Instant, text: impl FnOnce() -> String) {
        if now < self.next {
            return;
        }
        self.next = now + Self::PERIOD;
        let text = text();
        if text != self.last {
            notify_status(&text);
            self.last = text;
        }
    }
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE`.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// True when stderr is the journal stream systemd connected: the
/// `JOURNAL_STREAM` variable names the device and inode of stderr (a child
/// that inherited the variable with stderr redirected elsewhere does not
/// match, as systemd.exec(5) asks).
pub fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .as_deref()
        .and_then(parse_journal_stream)
    else {
        return false;
    };
    stderr_identity().is_some_and(|(d, i)| d == dev && i == ino)
}

/// The device and inode of this process's stderr.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The sd-daemon(3) prefix of a log level: error `<3>`, warn `<4>`, info
/// `<6>`, debug and trace `<7>`.
pub fn syslog_prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

/// A log message as journal lines: every line carries the prefix (the
/// journal splits entries at newlines).
pub fn journal_lines(level: Level, message: &str) -> String {
    let prefix = syslog_prefix(level);
    let mut out = String::with_capacity(message.len() + 4);
    for line in message.split('\n') {
        out.push_str(prefix);
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_parsed() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    #[test]
    fn lines_carry_the_level_prefix() {
        assert_eq!(journal_lines(Level::Error, "boom"), "<3>boom\n");
        assert_eq!(journal_lines(Level::Warn, "w"), "<4>w\n");
        assert_eq!(journal_lines(Level::Info, "a\nb"), "<6>a\n<6>b\n");
        assert_eq!(journal_lines(Level::Trace, "t"), "<7>t\n");
    }

    #[test]
    fn stderr_identity_is_readable() {
        // The test harness's stderr is a pipe or a terminal; either way it
        // has a device and an inode to compare JOURNAL_STREAM with.
        assert!(stderr_identity().is_some());
    }
}
