//! How much memory this process may use, and the block cache's default share of it.
//!
//! The limit is the smaller of the machine's memory (`MemTotal` in `/proc/meminfo`) and the
//! cgroup's memory limit (v2 `memory.max`, or v1 `memory.limit_in_bytes`): in a Kubernetes pod,
//! `/proc/meminfo` shows the node's memory, and a cache sized from it would get the pod OOM-killed.
//! The parsing is pure (tested below); `limit_bytes` reads the files.

/// The block cache takes this fraction of the memory limit by default: RocksDB's memtables (up to
/// ~0.4 GiB with the default tuning), the server's buffers and the page cache that serves compaction
/// and cold reads need the rest.
pub const BLOCK_CACHE_SHARE_DIVISOR: u64 = 8;
/// The default block cache is never smaller than this, whatever the limit.
pub const BLOCK_CACHE_BYTES_MIN: u64 = 256 << 20;
/// Used when no limit can be read (not Linux, or unreadable files).
pub const BLOCK_CACHE_BYTES_FALLBACK: u64 = 512 << 20;

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// A cgroup memory limit file (v2 `memory.max`: a number or `max`; v1 `memory.limit_in_bytes`: a
/// number, huge when unlimited). None when unlimited or unreadable.
pub fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    // cgroup v1 reports "no limit" as a page-rounded i64::MAX.
    text.parse().ok().filter(|&v: &u64| v < (1 << 62))
}

/// The smaller of the machine's memory and the cgroup limit, from the texts of those files.
pub fn memory_limit(
    meminfo: Option<&str>,
    cgroup_v2_max: Option<&str>,
    cgroup_v1_limit: Option<&str>,
) -> Option<u64> {
    let total = meminfo.and_then(parse_meminfo_total);
    let cgroup = cgroup_v2_max
        .and_then(parse_cgroup_limit)
        .or_else(|| cgroup_v1_limit.and_then(parse_cgroup_limit));
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// The default block cache for a memory limit (None: unknown).
pub fn block_cache_bytes_for(limit: Option<u64>) -> u64 {
    match limit {
        Some(limit) => (limit / BLOCK_CACHE_SHARE_DIVISOR).max(BLOCK_CACHE_BYTES_MIN),
        None => BLOCK_CACHE_BYTES_FALLBACK,
    }
}

/// This process's memory limit, read from `/proc` and `/sys/fs/cgroup`.
pub fn limit_bytes() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    memory_limit(
        read("/proc/meminfo").as_deref(),
        read("/sys/fs/cgroup/memory.max").as_deref(),
        read("/sys/fs/cgroup/memory/memory.limit_in_bytes").as_deref(),
    )
}

/// The default block cache of this process: `BLOCK_CACHE_SHARE_DIVISOR`-th of its memory limit.
pub fn default_block_cache_bytes() -> u64 {
    block_cache_bytes_for(limit_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24683764 kB\nMemFree:        18696884 kB\n";

    #[test]
    fn meminfo_total_in_bytes() {
        assert_eq!(parse_meminfo_total(MEMINFO), Some(24_683_764 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: 5 MB\n"), None);
    }

    #[test]
    fn cgroup_limits() {
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("4294967296\n"), Some(4 << 30));
        // cgroup v1 without a limit.
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cgroup_limit(""), None);
    }

    #[test]
    fn the_smaller_limit_wins() {
        let pod = Some("2147483648\n");
        assert_eq!(memory_limit(Some(MEMINFO), pod, None), Some(2 << 30));
        assert_eq!(
            memory_limit(Some(MEMINFO), Some("max"), None),
            Some(24_683_764 * 1024)
        );
        // v2 unlimited falls through to a v1 limit.
        assert_eq!(
            memory_limit(Some(MEMINFO), Some("max"), Some("1073741824")),
            Some(1 << 30)
        );
        assert_eq!(memory_limit(None, pod, None), Some(2 << 30));
        assert_eq!(memory_limit(None, None, None), None);
    }

    #[test]
    fn cache_share_has_a_floor_and_a_fallback() {
        assert_eq!(block_cache_bytes_for(Some(24 << 30)), 3 << 30);
        assert_eq!(block_cache_bytes_for(Some(1 << 30)), BLOCK_CACHE_BYTES_MIN);
        assert_eq!(block_cache_bytes_for(None), BLOCK_CACHE_BYTES_FALLBACK);
    }
}
