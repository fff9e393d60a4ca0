//! The process figures every Prometheus client exports (`process_*`), parsed from
//! the text of `/proc/self/stat` and `/proc/stat`, which the worker reads.

/// What `/proc` says about the broker process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessInfo {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
}

/// Parses `/proc/self/stat` (`stat`) with the boot time (`btime` of `/proc/stat`),
/// the clock ticks per second and the page size. `None` if the text is not what
/// the kernel writes.
pub fn parse_stat(
    stat: &str,
    boot_time_s: u64,
    ticks_per_s: u64,
    page_bytes: u64,
) -> Option<ProcessInfo> {
    // The command name is in parentheses and may itself hold spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `f[0]` is field 3 (state) of proc(5).
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let ticks = ticks_per_s.max(1) as f64;
    Some(ProcessInfo {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: boot_time_s as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_bytes,
        open_fds: 0,
        max_fds: 0,
    })
}

/// The `btime` line of `/proc/stat`: boot time, seconds since the epoch.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_hostile_command_name_parses() {
        // Fields 3.. of a real line; the name holds a space and a ')'.
        let stat = "4242 (ring mq) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    3 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 \
                    17 0 0 0 0 0 0";
        let p = parse_stat(stat, 1_700_000_000, 100, 4096).expect("parses");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 3);
        assert_eq!(p.start_time_seconds, 1_700_000_123.45);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 2560 * 4096);
    }

    #[test]
    fn truncated_or_foreign_text_is_refused() {
        assert_eq!(parse_stat("4242 (x) S 1 2", 0, 100, 4096), None);
        assert_eq!(parse_stat("no parens here", 0, 100, 4096), None);
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
    }
}
