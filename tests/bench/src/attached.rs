//! Attached clients per replica: how many broker attachments one rallyd holds, and what each
//! costs in resident memory.
//!
//! rallyd runs on SQLite in a process of its own (this binary again, started with
//! [`CHILD_ENV`] set: see [`serve_child`]), so its VmRSS is its own. The bench signs in N device
//! users, reads the child's VmRSS, opens N Attach streams (Hello, then Welcome; each client on
//! its own HTTP/2 connection, as real clients are, unless the open-file limit forces sharing),
//! lets the child settle, and reads VmRSS again: the figure is the difference per attachment.
//! The child is killed at the end, on every path (a guard with `Drop`); it also stops by itself
//! when this process goes away (its stdin closes).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::Channel;

use crate::Budget;
use crate::report::{Report, Row};
use crate::signalling::{Attachment, Login, attach, channel, device_login};

const SCENARIO: &str = "attached clients per replica";

/// Set (to `rallyd`) in the environment of the child process: it then runs rallyd instead of
/// the benchmarks, with its arguments as rallyd's flags.
const CHILD_ENV: &str = "RALLY_BENCH_CHILD";
/// The line the child prints, followed by its gRPC address, once it serves.
const READY: &str = "rallyd-listening";

/// Clients in a full run, and in `--quick`.
const FULL_CLIENTS: usize = 10_000;
const QUICK_CLIENTS: usize = 500;
/// Logins and attaches run this many at a time.
const CONCURRENCY: usize = 64;
/// File descriptors left for everything but the clients' connections.
const SPARE_FILES: usize = 512;
/// Most Attach streams put on one shared connection (hyper serves 200 at most by default).
const MAX_STREAMS_PER_CONNECTION: usize = 150;

/// The child's rallyd flags, besides its addresses and data directory: a keepalive long enough
/// that idle clients need not ping during the run, and the sign-in and connection limits per
/// address raised (every client comes from 127.0.0.1).
const FLAGS: [&str; 6] = [
    "--broker-keepalive-ms",
    "600000",
    "--signin-per-address-per-minute",
    "1000000",
    "--max-connections-per-address",
    "1000000",
];

/// In the child process (see [`CHILD_ENV`]): runs rallyd until stdin closes or SIGTERM, and
/// returns the exit code. `None` in the benchmark process itself.
pub(crate) async fn serve_child() -> Option<ExitCode> {
    if std::env::var_os(CHILD_ENV).is_none_or(|value| value != "rallyd") {
        return None;
    }
    Some(match child_main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rally-bench (rallyd child): {error:#}");
            ExitCode::FAILURE
        }
    })
}

async fn child_main() -> anyhow::Result<()> {
    let args = std::iter::once("rallyd".to_owned()).chain(std::env::args().skip(1));
    let config = <rallyd::Config as clap::Parser>::try_parse_from(args)?;
    let running = rallyd::start(config).await.context("starting rallyd")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{READY} {}", running.grpc_addr())?;
        stdout.flush()?;
    }
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        // Ends at EOF: the parent closed the pipe or went away.
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed.send(());
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = stdin_closed => {}
        _ = terminate.recv() => {}
    }
    tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .context("rallyd did not stop within 10 s")?
        .context("rallyd stopped with an error")?;
    Ok(())
}

/// The child rallyd; killed (and reaped) when dropped. Owns the data directory.
struct ChildRallyd {
    process: Child,
    _data: tempfile::TempDir,
}

impl Drop for ChildRallyd {
    fn drop(&mut self) {
        drop(self.process.stdin.take());
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl ChildRallyd {
    /// Starts it and waits (bounded) for its address.
    async fn start() -> anyhow::Result<(Self, String)> {
        let data = tempfile::tempdir().context("a data directory for the child")?;
        let exe = std::env::current_exe().context("locating this executable")?;
        let data_dir = data.path().display().to_string();
        let mut process = Command::new(exe)
            .env(CHILD_ENV, "rallyd")
            .args(["--listen", "127.0.0.1:0", "--relay-listen", "127.0.0.1:0"])
            .args(["--data-dir", &data_dir])
            .args(FLAGS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the child rallyd")?;
        let stdout = process.stdout.take();
        // From here on the guard kills the child on every path.
        let child = Self {
            process,
            _data: data,
        };
        let stdout = stdout.context("the child's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Reads until the child exits, so it never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix(READY) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .context("waiting for the child")?
            .context("the child rallyd did not report its address within 60 s")?;
        Ok((child, format!("http://{addr}")))
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// The soft limit on open files of this process (the child inherits it).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(usize::MAX);
    }
    soft.parse().ok()
}

/// Runs the scenario.
pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let mut target = if budget.quick {
        QUICK_CLIENTS
    } else {
        FULL_CLIENTS
    };
    let limit = open_file_limit().unwrap_or(1024);
    let mut connections = target.min(limit.saturating_sub(SPARE_FILES).max(1));
    if target.div_ceil(connections) > MAX_STREAMS_PER_CONNECTION {
        target = connections * MAX_STREAMS_PER_CONNECTION;
        eprintln!(
            "rally-bench: the open-file limit ({limit}) allows {connections} connections: \
             attaching {target} clients instead"
        );
    }
    connections = connections.min(target);
    let phase_limit = if budget.quick {
        Duration::from_secs(12)
    } else {
        Duration::from_secs(150)
    };
    let (child, url) = ChildRallyd::start().await?;
    let pid = child.pid();

    let started = Instant::now();
    let logins = sign_in(&url, target, started + phase_limit / 2).await?;
    let login_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;

    let attach_start = Instant::now();
    let (attachments, failure) =
        attach_all(&url, logins, connections, started + phase_limit).await?;
    let attach_secs = attach_start.elapsed().as_secs_f64();
    let count = attachments.len();
    if count == 0 {
        bail!(
            "no client attached: {}",
            failure.unwrap_or_else(|| "no attempt finished in time".to_owned())
        );
    }
    tokio::time::sleep(Duration::from_secs(if budget.quick { 1 } else { 2 })).await;
    let after = rss_kib(pid)?;
    let per_client = after.saturating_sub(before) as f64 / count as f64;
    let used_connections = connections.min(count);
    let sharing = if used_connections >= count {
        "one HTTP/2 connection per client".to_owned()
    } else {
        format!("{used_connections} HTTP/2 connections (the open-file limit is {limit})")
    };
    let stopped = match &failure {
        Some(reason) => format!("; stopped at {count} of {target}: {reason}"),
        None if count < target => format!("; stopped at {count} of {target}: out of time"),
        None => String::new(),
    };
    let settings = format!(
        "{count} Attach streams (Hello, Welcome, then idle), {sharing}; rallyd on SQLite in its \
         own process; VmRSS {before} KiB after {count} logins, {after} KiB attached; logins \
         {login_secs:.1} s, attaches {attach_secs:.1} s; keepalive raised to 600 s so idle \
         clients need not ping, sign-in limit per address raised{stopped}"
    );
    report.push(
        Row::rate(SCENARIO, "clients attached", count as f64, "clients").settings(settings.clone()),
    );
    report.push(
        Row::cost(
            SCENARIO,
            "RSS per attached client",
            "per client",
            per_client,
            "KiB",
        )
        .settings(settings),
    );
    drop(attachments);
    drop(child);
    Ok(())
}

/// Signs in up to `count` users, [`CONCURRENCY`] at a time, until `deadline`.
async fn sign_in(url: &str, count: usize, deadline: Instant) -> anyhow::Result<Vec<Login>> {
    let mut identity = Vec::new();
    for _ in 0..8 {
        identity.push(channel(url).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|worker| {
            let (channel, next) = (identity[worker % identity.len()].clone(), next.clone());
            tokio::spawn(async move {
                let mut logins = Vec::new();
                // Bounded by `count` and the deadline.
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || Instant::now() > deadline {
                        break;
                    }
                    logins.push(device_login(channel.clone(), &format!("a{i}")).await?);
                }
                anyhow::Ok(logins)
            })
        })
        .collect();
    let mut logins = Vec::with_capacity(count);
    for worker in workers {
        logins.extend(worker.await.context("a login worker panicked")??);
    }
    Ok(logins)
}

/// Attaches every login, [`CONCURRENCY`] at a time, until `deadline` or the first failure:
/// client `i` on connection `i % connections`. Returns the open attachments (with their
/// connections) and why it stopped early, if it did.
async fn attach_all(
    url: &str,
    logins: Vec<Login>,
    connections: usize,
    deadline: Instant,
) -> anyhow::Result<(Vec<(Channel, Attachment)>, Option<String>)> {
    let shared = if connections < logins.len() {
        let mut shared = Vec::with_capacity(connections);
        for _ in 0..connections {
            shared.push(channel(url).await?);
        }
        Some(Arc::new(shared))
    } else {
        None
    };
    let logins = Arc::new(logins);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (url, logins, next, failed, shared) = (
                url.to_owned(),
                logins.clone(),
                next.clone(),
                failed.clone(),
                shared.clone(),
            );
            tokio::spawn(async move {
                let mut attached = Vec::new();
                // Bounded by the logins, the deadline and the first failure.
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let stop = failed.lock().map(|f| f.is_some()).unwrap_or(true);
                    let Some(login) = logins.get(i) else { break };
                    if stop || Instant::now() > deadline {
                        break;
                    }
                    let opened = async {
                        let channel = match &shared {
                            Some(shared) => shared[i % shared.len()].clone(),
                            None => channel(&url).await?,
                        };
                        let port = 20_000 + u16::try_from(i % 40_000).unwrap_or(0);
                        let attachment = attach(channel.clone(), &login.token, port).await?;
                        anyhow::Ok((channel, attachment))
                    };
                    match opened.await {
                        Ok(opened) => attached.push(opened),
                        Err(error) => {
                            if let Ok(mut failed) = failed.lock() {
                                failed.get_or_insert_with(|| format!("{error:#}"));
                            }
                            break;
                        }
                    }
                }
                attached
            })
        })
        .collect();
    let mut attached = Vec::with_capacity(logins.len());
    for worker in workers {
        attached.extend(worker.await.context("an attach worker panicked")?);
    }
    let failure = failed.lock().ok().and_then(|f| f.clone());
    Ok((attached, failure))
}
