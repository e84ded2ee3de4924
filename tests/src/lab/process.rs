//! A process running in a lab namespace, driven line by line: commands go to its stdin, and the
//! test waits (always with a deadline) for lines on its stdout.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Shared, lock};

/// How many of the last lines a failure shows, of stdout and of stderr.
const SHOWN_LINES: usize = 40;

/// A wait for a line that did not end well: the deadline passed or the process exited first.
/// Carries what the process printed meanwhile.
#[derive(Clone)]
pub struct ExpectFailed {
    message: String,
}

impl fmt::Display for ExpectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// As `Display`, so that `.expect(..)` in a test shows the process's output readably.
impl fmt::Debug for ExpectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExpectFailed {}

/// What the lab keeps of each process it spawned, to kill it and to show its output after a
/// failure.
pub(crate) struct Owned {
    label: String,
    child: Arc<Mutex<Child>>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
}

impl Owned {
    /// Kills the process (if it still runs) and reaps it.
    pub(crate) fn kill(&self) {
        let mut child = lock(&self.child);
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Prints the end of its stdout and stderr.
    pub(crate) fn print_stderr(&self) {
        eprintln!(
            "{}",
            report(&self.label, &lock(&self.stdout), &read_stderr(&self.stderr))
        );
    }
}

/// A child process in a lab namespace with piped stdin and stdout; stderr goes to a file in the
/// lab's directory. Killed when dropped (and, at the latest, when the lab is).
pub struct NamespacedProcess {
    label: String,
    child: Arc<Mutex<Child>>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
}

impl fmt::Debug for NamespacedProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespacedProcess")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl NamespacedProcess {
    /// Starts `command` (already prefixed with `ip netns exec`), registered with the lab.
    pub(crate) fn spawn(
        shared: &Arc<Shared>,
        label: &str,
        mut command: Command,
    ) -> std::io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let stderr = shared.dir.path().join(format!("{label}-{n}.stderr"));
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr)?)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("the child's stdout is not piped"))?;
        let (tx, lines) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let kept = transcript.clone();
        std::thread::Builder::new()
            .name(format!("lab-{label}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lock(&kept).push(line.clone());
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        let child = Arc::new(Mutex::new(child));
        lock(&shared.processes).push(Owned {
            label: label.to_owned(),
            child: child.clone(),
            stdout: transcript.clone(),
            stderr: stderr.clone(),
        });
        Ok(Self {
            label: label.to_owned(),
            child,
            stdin,
            lines,
            stdout: transcript,
            stderr,
        })
    }

    /// The label it was spawned with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        lock(&self.child).id()
    }

    /// Writes `line` and a newline to its stdin.
    pub fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin is closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Reads stdout lines until one satisfies `predicate` and returns it; lines before it are
    /// passed over (they stay in the transcript shown on failure). Fails when `timeout` passes or
    /// the process closes its stdout first, and then prints what it wrote, stderr included.
    pub fn expect_line(
        &mut self,
        mut predicate: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, ExpectFailed> {
        self.expect_map(|line| predicate(line).then(|| line.to_owned()), timeout)
    }

    /// As [`NamespacedProcess::expect_line`], for processes that print one JSON object per
    /// line; other lines are passed over.
    pub fn expect_json(
        &mut self,
        mut predicate: impl FnMut(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Result<serde_json::Value, ExpectFailed> {
        self.expect_map(
            |line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .filter(|value| predicate(value))
            },
            timeout,
        )
    }

    /// The first `Some` that `f` makes of a stdout line, with the deadline and failure report
    /// of [`NamespacedProcess::expect_line`].
    pub fn expect_map<T>(
        &mut self,
        mut f: impl FnMut(&str) -> Option<T>,
        timeout: Duration,
    ) -> Result<T, ExpectFailed> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = f(&line) {
                        return Ok(found);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failed(&format!("no expected line within {timeout:?}")));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failed("its stdout closed before the expected line"));
                }
            }
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_stderr(&self.stderr)
    }

    /// Every line it wrote to stdout so far, including those the waits passed over.
    pub fn transcript(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// Kills it at once (SIGKILL: no clean-up of its own, as in a crash) and reaps it.
    pub fn kill(self) -> Result<ExitStatus, ExpectFailed> {
        let mut child = lock(&self.child);
        if let Err(error) = child.kill() {
            drop(child);
            return Err(self.failed(&format!("cannot be killed: {error}")));
        }
        let status = child.wait();
        drop(child);
        status.map_err(|e| self.failed(&format!("cannot be waited for: {e}")))
    }

    /// Closes its stdin and waits up to `timeout` for it to exit (its stdout closing); kills it
    /// if it does not.
    pub fn finish(mut self, timeout: Duration) -> Result<ExitStatus, ExpectFailed> {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break true,
                Err(RecvTimeoutError::Timeout) => break false,
            }
        };
        if !closed {
            let mut child = lock(&self.child);
            let _ = child.kill();
            let _ = child.wait();
            drop(child);
            return Err(self.failed(&format!("did not exit within {timeout:?}")));
        }
        let status = lock(&self.child).wait();
        status.map_err(|e| self.failed(&format!("cannot be waited for: {e}")))
    }

    fn failed(&self, what: &str) -> ExpectFailed {
        let message = format!(
            "{}: {what}\n{}",
            self.label,
            report(&self.label, &lock(&self.stdout), &self.stderr())
        );
        eprintln!("{message}");
        ExpectFailed { message }
    }
}

impl Drop for NamespacedProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let mut child = lock(&self.child);
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

fn read_stderr(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {path:?}: {e})"))
}

/// The last lines of a process's stdout and stderr.
fn report(label: &str, stdout: &[String], stderr: &str) -> String {
    let tail = |lines: Vec<&str>| {
        let skip = lines.len().saturating_sub(SHOWN_LINES);
        lines[skip..].join("\n")
    };
    format!(
        "--- {label}: stdout (last {SHOWN_LINES} lines) ---\n{}\n--- {label}: stderr (last {SHOWN_LINES} lines) ---\n{}\n--- end of {label} ---",
        tail(stdout.iter().map(String::as_str).collect()),
        tail(stderr.lines().collect()),
    )
}
