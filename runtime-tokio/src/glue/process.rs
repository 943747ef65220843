//! What the process costs, for `/metrics`: CPU time, resident memory and open descriptors,
//! read from `/proc` where there is one (Linux); elsewhere only the uptime is known.

use std::time::Duration;

use signalr_relay_core::relay::ProcessStats;

/// The process's stats now; `uptime` is how long the relay has run.
pub(crate) fn read(uptime: Duration) -> ProcessStats {
    let mut stats = ProcessStats::new(uptime.as_secs_f64());
    #[cfg(target_os = "linux")]
    {
        if let Some(cpu) = cpu_seconds() {
            stats = stats.with_cpu_seconds(cpu);
        }
        if let Some(rss) = resident_bytes() {
            stats = stats.with_resident_bytes(rss);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            stats = stats.with_open_fds(fds.count() as u64);
        }
    }
    stats
}

/// `utime + stime` of `/proc/self/stat`, in seconds.
#[cfg(target_os = "linux")]
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    Some((utime + stime) as f64 / ticks as f64)
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
        assert!(stats.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(stats.resident_bytes.is_some_and(|r| r > 1024 * 1024));
        assert!(stats.open_fds.is_some_and(|n| n >= 3));
    }
}
