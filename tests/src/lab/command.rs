//! Running the lab's commands (`ip`, `iptables`, `sysctl`, `conntrack`) and the namespaces they
//! act on. Every failure carries the command line and its stderr, and is printed when it happens.

use std::ffi::OsStr;
use std::fmt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::process::NamespacedProcess;
use super::{NEXT_NAMESPACE, Shared, lock};

/// A command that could not run or exited with an error.
#[derive(Debug, Clone)]
pub struct CommandFailed {
    /// The command line.
    pub command: String,
    /// Its exit code (`None`: it could not start, or a signal ended it).
    pub code: Option<i32>,
    /// What it printed on stderr (or why it could not start).
    pub stderr: String,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self
            .code
            .map_or_else(|| "no exit code".to_owned(), |c| format!("exit code {c}"));
        write!(
            f,
            "`{}` failed ({code}): {}",
            self.command,
            self.stderr.trim()
        )
    }
}

impl std::error::Error for CommandFailed {}

/// Runs `program args` in the root namespace (only `ip` itself, to make namespaces and veth
/// pairs: nothing is configured there) and returns its stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, CommandFailed> {
    let mut command = Command::new(program);
    command.args(args);
    output(&mut command)
}

/// Runs `command` to completion; a failure is printed with its stderr, and returned.
fn output(command: &mut Command) -> Result<String, CommandFailed> {
    let line = describe(command);
    let failed = |code, stderr: String| {
        let error = CommandFailed {
            command: line.clone(),
            code,
            stderr,
        };
        eprintln!("lab: {error}");
        error
    };
    match command.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(failed(
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        Err(error) => Err(failed(None, error.to_string())),
    }
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Kills whatever still runs in namespace `name`, then deletes it. Failures are printed only:
/// this runs while cleaning up.
pub(crate) fn delete_namespace(name: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            let mut kill = Command::new("kill");
            kill.arg("-KILL").args(&pids);
            let _ = output(&mut kill);
        }
    }
    let _ = run("ip", &["netns", "del", name]);
}

/// A network namespace the lab made (`rlab<pid>x<n>`).
#[derive(Clone)]
pub struct Namespace {
    name: String,
    shared: Arc<Shared>,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Namespace").field(&self.name).finish()
    }
}

impl Namespace {
    /// Makes a new namespace with `lo` up, recorded in `shared` for deletion.
    pub(crate) fn create(shared: &Arc<Shared>) -> Result<Namespace, CommandFailed> {
        let n = NEXT_NAMESPACE.fetch_add(1, Ordering::Relaxed);
        let name = format!("rlab{}x{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        lock(&shared.namespaces).push(name.clone());
        let ns = Namespace {
            name,
            shared: shared.clone(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to run in this namespace (`ip netns exec <ns> program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `program args` in this namespace to completion and returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, CommandFailed> {
        let mut command = self.command(program);
        command.args(args);
        output(&mut command)
    }

    /// `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> Result<String, CommandFailed> {
        let mut command = Command::new("ip");
        command.args(["-n", &self.name]).args(args);
        output(&mut command)
    }

    /// `iptables args` in this namespace: add (`-A`, `-I`) or remove (`-D`) any rule, for
    /// example a DROP that blocks the direct path between two players, or a loss rule:
    ///
    /// ```no_run
    /// # fn f(router: &rally_e2e::lab::Router) -> Result<(), rally_e2e::lab::CommandFailed> {
    /// let ns = router.ns().expect("a NAT router");
    /// ns.iptables(&["-t", "mangle", "-A", "POSTROUTING", "-o", "wan0", "-m", "statistic",
    ///     "--mode", "random", "--probability", "0.10", "-j", "DROP"])?;
    /// # Ok(()) }
    /// ```
    pub fn iptables(&self, args: &[&str]) -> Result<(), CommandFailed> {
        self.run("iptables", args).map(drop)
    }

    /// `sysctl -w key=value` in this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), CommandFailed> {
        self.run("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// As [`Namespace::sysctl`], doing nothing when the kernel has no such key.
    pub fn sysctl_if_present(&self, key: &str, value: &str) -> Result<(), CommandFailed> {
        self.run("sysctl", &["-q", "-e", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Forgets every conntrack entry (NAT mapping) of this namespace (`conntrack -F`).
    pub fn flush_conntrack(&self) -> Result<(), CommandFailed> {
        self.run("conntrack", &["-F"]).map(drop)
    }

    /// Starts `program args` in this namespace, owned by the lab (killed when it is dropped):
    /// stdin and stdout piped, stderr kept in the lab's directory under `label` and printed when
    /// an expectation fails.
    pub fn spawn<I, S>(
        &self,
        label: &str,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> std::io::Result<NamespacedProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(program);
        command.args(args);
        NamespacedProcess::spawn(&self.shared, label, command)
    }
}
