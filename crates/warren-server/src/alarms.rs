//! Resource alarms, as RabbitMQ's: memory use against the high watermark and free disk space
//! against the limit, checked on a timer. Crossing either blocks publishing connections (see
//! `Broker::set_alarms`); clearing both unblocks them.

use crate::Shared;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What the alarms watch.
#[derive(Debug, Clone)]
pub struct ResourceLimits {
    /// Resident memory (bytes) at or above which the memory alarm is set; `None`: no alarm.
    pub memory_high_watermark: Option<u64>,
    /// Free bytes on the data directory's file system below which the disk alarm is set.
    pub disk_free_limit: u64,
    pub data_dir: PathBuf,
}

/// How often memory is checked; the disk is checked every `DISK_EVERY` memory checks. A
/// publisher flood can add at most one interval's worth of reads before it is blocked.
const MEMORY_CHECK_INTERVAL: Duration = Duration::from_millis(50);
const DISK_EVERY: u32 = 20;

/// The machine's memory in bytes (`MemTotal`), or the cgroup's limit when lower.
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let total = kib * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// This process's resident memory in bytes.
pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Free bytes (for unprivileged users) on the file system holding `path`.
pub fn disk_free(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn mib(b: u64) -> u64 {
    b / (1024 * 1024)
}

pub(crate) async fn alarm_loop(shared: Arc<Shared>, limits: ResourceLimits) {
    let mut interval = tokio::time::interval(MEMORY_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut out = Vec::new();
    loop {
        interval.tick().await;
        if let (Some(limit), Some(used)) = (limits.memory_high_watermark, resident_memory()) {
            let mut core = shared.broker();
            let before = core.alarms().memory;
            core.set_memory_use(used, limit, &mut out);
            let now = core.alarms().memory;
            core.deliver(&mut out);
            drop(core);
            if now != before {
                if now {
                    tracing::warn!(
                        "memory resource limit alarm set: memory used {} MiB, allowed {} MiB. \
                         Publishers will be blocked until this alarm clears",
                        mib(used),
                        mib(limit)
                    );
                } else {
                    tracing::info!("memory resource limit alarm cleared: memory used {} MiB", mib(used));
                }
            }
        }
        if ticks.is_multiple_of(DISK_EVERY) {
            if let Some(free) = disk_free(&limits.data_dir) {
                let mut core = shared.broker();
                let before = core.alarms().disk;
                core.set_disk_free(free, limits.disk_free_limit, &mut out);
                let now = core.alarms().disk;
                core.deliver(&mut out);
                drop(core);
                if now != before {
                    if now {
                        tracing::warn!(
                            "disk resource limit alarm set: free disk space {} MiB, limit {} MiB. \
                             Publishers will be blocked until this alarm clears",
                            mib(free),
                            mib(limits.disk_free_limit)
                        );
                    } else {
                        tracing::info!("disk resource limit alarm cleared: free disk space {} MiB", mib(free));
                    }
                }
            }
        }
        ticks = ticks.wrapping_add(1);
    }
}
