//! The processes under measurement: started pinned to a core, measured from `/proc`, and
//! stopped (by PID) when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Linux's `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`.
const TICKS_PER_SEC: f64 = 100.0;

/// A started server process.
pub(crate) struct Proc {
    child: Child,
    /// Where it listens (`host:port`).
    pub(crate) addr: String,
    /// Everything it printed, for error reports.
    output: std::sync::Arc<std::sync::Mutex<String>>,
    /// Started under `timeout`: what is measured is its child.
    pub(crate) wrapped: bool,
}

impl Proc {
    /// Starts `program args…` pinned to `core` (with `taskset`, when there is one) and waits
    /// for its `listening on http://<addr>` line.
    pub(crate) fn start(
        program: &Path,
        args: &[String],
        core: Option<usize>,
    ) -> Result<Self, String> {
        Self::start_until(
            program,
            args,
            core,
            Some(|line| {
                line.split("listening on http://")
                    .nth(1)
                    .or_else(|| line.split("listening on https://").nth(1))
                    .map(|addr| addr.split_whitespace().next().unwrap_or("").to_owned())
            }),
        )
    }

    /// [`Proc::start`], ready at the first line `ready` reads an address from (without
    /// `ready`: at once, at `""`; the caller checks).
    pub(crate) fn start_until(
        program: &Path,
        args: &[String],
        core: Option<usize>,
        ready: Option<fn(&str) -> Option<String>>,
    ) -> Result<Self, String> {
        let mut command = match core.filter(|_| has_taskset()) {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(addr) = ready.and_then(|ready| ready(&line)) {
                        let _ = tx.send(addr);
                    }
                    if let Ok(mut out) = output.lock() {
                        out.push_str(&line);
                        out.push('\n');
                    }
                }
            });
        }
        let mut proc = Self {
            child,
            addr: String::new(),
            output,
            wrapped: program.file_name().is_some_and(|n| n == "timeout"),
        };
        if ready.is_none() {
            return Ok(proc);
        }
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => {
                proc.addr = addr;
                Ok(proc)
            }
            Err(_) => Err(format!(
                "{} did not start: {}",
                program.display(),
                proc.output()
            )),
        }
    }

    /// Its process id: of the program itself, when it was started under a wrapper
    /// (`timeout`), as its wrapper's only child.
    pub(crate) fn pid(&self) -> u32 {
        let id = self.child.id();
        std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            .filter(|_| self.wrapped)
            .unwrap_or(id)
    }

    /// What it printed so far.
    pub(crate) fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Whether it has exited (it should not have, while measured).
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Its CPU time so far (user + system), in seconds.
    pub(crate) fn cpu_secs(&self) -> f64 {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// Its CPU time so far in user space and in the kernel (system), in seconds.
    pub(crate) fn cpu_split(&self) -> (f64, f64) {
        cpu_split(self.pid())
    }

    /// Its resident set, in bytes.
    pub(crate) fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Politely first (a profiler wrapped around it gets to write its data), then for sure.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins this process to `core`, when `taskset` exists.
pub(crate) fn pin_self(core: usize) {
    if has_taskset() {
        let _ = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &core.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

/// CPU time of a process in user space and in the kernel, in seconds.
fn cpu_split(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the command name (which may hold spaces): state is the first.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / TICKS_PER_SEC, ticks(12) / TICKS_PER_SEC)
}

/// Handshakes the kernel dropped so far because a listener's queue of connections not yet
/// accepted was full (`TcpExt: ListenOverflows` in `/proc/net/netstat`; `None` where it cannot
/// be read). The count is the network namespace's, not one listener's: read around a phase
/// where one server (and its app server) takes the connections, its growth is theirs. A
/// dropped handshake is retried by the client a second later.
pub(crate) fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            return names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(name, _)| *name == "ListenOverflows")
                .and_then(|(_, value)| value.parse().ok());
        }
    }
    None
}

/// How much [`listen_overflows`] grew over `phase`.
pub(crate) async fn listen_overflows_over<T>(
    phase: impl std::future::Future<Output = T>,
) -> (T, Option<u64>) {
    let before = listen_overflows();
    let out = phase.await;
    let grew = listen_overflows()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before));
    (out, grew)
}

/// Resident set of a process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Sockets in `TIME_WAIT` on IPv4 (`/proc/net/tcp`, state `06`). A storm of connections
/// leaves tens of thousands of them for a minute, and a storm started among them runs at a
/// fraction of its rate while `connect` looks for free ports.
pub(crate) fn time_wait_sockets() -> usize {
    std::fs::read_to_string("/proc/net/tcp").map_or(0, |table| {
        table
            .lines()
            .skip(1)
            .filter(|line| line.split_whitespace().nth(3) == Some("06"))
            .count()
    })
}

/// Whether the run counts system calls (`--syscalls`): `perf stat` on the server for each
/// echo stretch. Off by default, since counting costs the server a little per call.
pub(crate) static COUNT_SYSCALLS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A process's system calls and context switches over a stretch, counted by `perf stat`
/// (`None` where the machine does not let it, or the run did not ask).
pub(crate) struct SyscallCount(Option<Child>);

/// What [`SyscallCount`] counted.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct Syscalls {
    pub(crate) syscalls: u64,
    pub(crate) context_switches: u64,
}

impl SyscallCount {
    pub(crate) fn start(pid: u32) -> Self {
        if !COUNT_SYSCALLS.load(std::sync::atomic::Ordering::Relaxed) {
            return Self(None);
        }
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter,context-switches",
                "-p",
            ])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok();
        // Attached before the stretch starts.
        std::thread::sleep(Duration::from_millis(200));
        Self(child)
    }

    pub(crate) fn stop(self) -> Option<Syscalls> {
        let child = self.0?;
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let count = |event: &str| {
            text.lines()
                .find(|l| l.split(',').nth(2) == Some(event))
                .and_then(|l| l.split(',').next()?.parse::<u64>().ok())
        };
        Some(Syscalls {
            syscalls: count("raw_syscalls:sys_enter")?,
            context_switches: count("context-switches")?,
        })
    }
}
