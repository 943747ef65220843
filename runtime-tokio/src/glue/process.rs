//! What the process costs, for `/metrics`: CPU time (the process's CPU-time clock), and
//! resident memory and open descriptors read from `/proc`, on Linux; elsewhere only the
//! uptime is known.

use std::time::Duration;

use signalr_relay_core::relay::ProcessStats;

/// The process's stats now; `uptime` is how long the relay has run.
pub(crate) fn read(uptime: Duration) -> ProcessStats {
    let mut stats = ProcessStats::new(uptime.as_secs_f64());
    #[cfg(target_os = "linux")]
    {
        stats = stats.with_cpu_seconds(cpu_seconds());
        if let Some(rss) = resident_bytes() {
            stats = stats.with_resident_bytes(rss);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            stats = stats.with_open_fds(fds.count() as u64);
        }
    }
    stats
}

/// The CPU time of all the process's threads, living and ended, in seconds: the
/// process's CPU-time clock, kept in nanoseconds. (`/proc/self/stat`'s `utime + stime`
/// count whole clock ticks, 10 ms each, so a relay that has done little reads 0.)
#[cfg(target_os = "linux")]
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// The second field of `/proc/self/statm` (resident pages), in bytes.
#[cfg(target_os = "linux")]
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn this_process_has_cpu_memory_and_descriptors() {
        let stats = super::read(std::time::Duration::from_secs(3));
        assert_eq!(stats.uptime_seconds, 3.0);
        let cpu = stats.cpu_seconds.expect("the CPU time");
        assert!(cpu > 0.0, "a running process has used some CPU: {cpu}");
        assert!(stats.resident_bytes.is_some_and(|r| r > 1024 * 1024));
        assert!(stats.open_fds.is_some_and(|n| n >= 3));
    }

    #[test]
    fn the_cpu_time_moves_in_steps_finer_than_a_clock_tick() {
        // `/proc`'s CPU times move in clock ticks (10 ms): the smallest step seen here would
        // be a whole tick. The process's CPU-time clock moves in nanoseconds.
        let start = super::cpu_seconds();
        let step = loop {
            let now = super::cpu_seconds();
            if now > start {
                break now - start;
            }
        };
        assert!(step < 0.001, "the CPU time moved by {step} s");
    }
}
