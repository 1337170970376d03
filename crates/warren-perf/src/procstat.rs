//! CPU time and memory of a process, from Linux's `/proc`: how much the broker (and this tool)
//! spent on a run, comparable across machines as CPU per message.
//!
//! `/proc/<pid>/stat` gives user and system time in clock ticks of `USER_HZ`, which the Linux
//! ABI fixes at 100 per second for `/proc`; `/proc/<pid>/status` gives `VmRSS` in KiB. On other
//! systems every function returns `None`.

/// `USER_HZ`: the unit of the times in `/proc/<pid>/stat`.
pub const TICKS_PER_S: f64 = 100.0;

/// User plus system CPU seconds of `pid` (this process when `None`).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let text = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    parse_stat_ticks(&text).map(|t| t as f64 / TICKS_PER_S)
}

/// Resident set size of `pid` in KiB (this process when `None`).
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let text = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    parse_status_field(&text, "VmRSS:")
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// utime + stime (fields 14 and 15) of a `stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted after the
/// last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th and stime (15) the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name:   1234 kB` line of a `status` file, in KiB.
pub fn parse_status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_a_hostile_command_name() {
        let stat = "4192 (beam.smp) x) S 1 4192 4192 0 -1 4194560 82190 0 6 0 1520 377 0 0 20 0 30 0 2105 \
                    2235532 30945 18446744073709551615 1 1 0 0 0 0 0 4096 1536 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(1520 + 377));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_rss() {
        let status = "Name:\twarren\nVmPeak:\t  150000 kB\nVmRSS:\t    8064 kB\nThreads:\t3\n";
        assert_eq!(parse_status_field(status, "VmRSS:"), Some(8064));
        assert_eq!(parse_status_field(status, "VmHWM:"), None);
    }

    #[test]
    fn this_process_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds(None).is_some());
            assert!(rss_kib(None).is_some_and(|k| k > 0));
        }
    }
}
