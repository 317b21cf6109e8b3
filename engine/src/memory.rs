//! How much memory this process may use, and the block cache's default share of it.
//!
//! The limit is the smaller of the machine's memory (`MemTotal` in `/proc/meminfo`) and the
//! process's cgroup memory limits: in a Kubernetes pod, `/proc/meminfo` shows the node's memory, and
//! a cache sized from it would get the pod OOM-killed. cgroup v2: the smallest `memory.max` of the
//! process's own cgroup (from `/proc/self/cgroup`) and its ancestors, so a systemd `MemoryMax=` or
//! a nested cgroup counts; cgroup v1: `hierarchical_memory_limit` of `memory.stat` at the mount's
//! root (the container's cgroup, ancestors included), else its `memory.limit_in_bytes`. The parsing
//! is pure (tested below); `limit_bytes` reads the files.

/// The block cache takes this fraction of the memory limit by default: RocksDB's memtables (up to
/// ~0.4 GiB with the default tuning), the server's buffers and the page cache that serves compaction
/// and cold reads need the rest.
pub const BLOCK_CACHE_SHARE_DIVISOR: u64 = 8;
/// The default block cache is never smaller than this, unless the limit is under four times it.
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

/// `hierarchical_memory_limit` of a cgroup v1 `memory.stat`: the cgroup's limit with its ancestors'.
pub fn parse_v1_hierarchical_limit(memory_stat: &str) -> Option<u64> {
    memory_stat
        .lines()
        .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
        .and_then(parse_cgroup_limit)
}

/// The cgroup v2 path of this process (`0::/system.slice/x.service` in `/proc/self/cgroup`), or
/// None on a v1-only system.
pub fn parse_cgroup_v2_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// The directories (relative to the v2 mount) whose `memory.max` limit a process in `path`: the
/// cgroup itself and each ancestor up to the root (`""`). At most 64 of them.
pub fn cgroup_v2_dirs(path: &str) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut dir = path.trim_matches('/');
    loop {
        dirs.push(dir.to_owned());
        if dir.is_empty() || dirs.len() == 64 {
            return dirs;
        }
        dir = dir.rfind('/').map_or("", |i| &dir[..i]);
    }
}

/// The smaller of the machine's memory and the cgroup limits, from the texts of those files: any
/// number of v2 `memory.max` files (a cgroup and its ancestors) and the v1 limit.
pub fn memory_limit<'a>(
    meminfo: Option<&str>,
    cgroup_v2_max: impl IntoIterator<Item = &'a str>,
    cgroup_v1_limit: Option<&str>,
) -> Option<u64> {
    let total = meminfo.and_then(parse_meminfo_total);
    let v2 = cgroup_v2_max
        .into_iter()
        .filter_map(parse_cgroup_limit)
        .min();
    let cgroup = v2.or_else(|| cgroup_v1_limit.and_then(parse_cgroup_limit));
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// The default block cache for a memory limit (None: unknown).
pub fn block_cache_bytes_for(limit: Option<u64>) -> u64 {
    match limit {
        Some(limit) => {
            (limit / BLOCK_CACHE_SHARE_DIVISOR).max(BLOCK_CACHE_BYTES_MIN.min(limit / 4))
        }
        None => BLOCK_CACHE_BYTES_FALLBACK,
    }
}

/// This process's memory limit, read from `/proc` and `/sys/fs/cgroup`.
pub fn limit_bytes() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let own = read("/proc/self/cgroup");
    let v2: Vec<String> = own
        .as_deref()
        .and_then(parse_cgroup_v2_path)
        .map(cgroup_v2_dirs)
        .unwrap_or_else(|| vec![String::new()])
        .iter()
        .filter_map(|dir| match dir.as_str() {
            "" => read("/sys/fs/cgroup/memory.max"),
            dir => read(&format!("/sys/fs/cgroup/{dir}/memory.max")),
        })
        .collect();
    let v1 = read("/sys/fs/cgroup/memory/memory.stat")
        .as_deref()
        .and_then(parse_v1_hierarchical_limit)
        .map(|limit| limit.to_string())
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
    memory_limit(
        read("/proc/meminfo").as_deref(),
        v2.iter().map(String::as_str),
        v1.as_deref(),
    )
}

/// The default block cache of this process: `BLOCK_CACHE_SHARE_DIVISOR`-th of its memory limit.
pub fn default_block_cache_bytes() -> u64 {
    block_cache_bytes_for(limit_bytes())
}

/// Turns transparent huge pages off for this process (Linux; elsewhere nothing to do). Call it
/// first in `main`, before threads start. RocksDB's tuning guide advises against THP, and here is
/// why: mimalloc asks for huge pages on its regions, so every fault of a fresh region zeroed
/// 2 MiB while the thread waited, and freed memory came back as new huge pages a second later.
/// Batches of 1,000 at 50 requests/s had p99 214–319 ms with huge pages and 28–46 ms without;
/// peak RSS under batches 418–465 MiB against 295–330 MiB (bench/RESULTS.md, session 18).
/// `PR_SET_THP_DISABLE` marks the whole address space, so RocksDB's own allocations and a node
/// whose THP setting is `always` are covered too.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes integers only, no pointer, and sets
        // one flag of this process's memory descriptor that the kernel reads on later page faults;
        // no memory of this program is read or written, so no Rust invariant can be broken.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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
        let pod = ["2147483648\n"];
        assert_eq!(memory_limit(Some(MEMINFO), pod, None), Some(2 << 30));
        assert_eq!(
            memory_limit(Some(MEMINFO), ["max"], None),
            Some(24_683_764 * 1024)
        );
        // A nested cgroup under a limited parent: the smallest limit of the chain.
        assert_eq!(
            memory_limit(Some(MEMINFO), ["max", "1073741824", "max"], None),
            Some(1 << 30)
        );
        // v2 unlimited falls through to a v1 limit.
        assert_eq!(
            memory_limit(Some(MEMINFO), ["max"], Some("1073741824")),
            Some(1 << 30)
        );
        assert_eq!(memory_limit(None, pod, None), Some(2 << 30));
        assert_eq!(memory_limit(None, [], None), None);
    }

    #[test]
    fn cgroup_v1_hierarchical_limit() {
        let stat = "cache 0\nhierarchical_memory_limit 4294967296\nrss 1\n";
        assert_eq!(parse_v1_hierarchical_limit(stat), Some(4 << 30));
        let unlimited = "hierarchical_memory_limit 9223372036854771712\n";
        assert_eq!(parse_v1_hierarchical_limit(unlimited), None);
        assert_eq!(parse_v1_hierarchical_limit("cache 0\n"), None);
    }

    #[test]
    fn the_own_cgroup_and_its_ancestors() {
        let own = "12:memory:/x\n0::/system.slice/trackstore.service\n";
        assert_eq!(
            parse_cgroup_v2_path(own),
            Some("/system.slice/trackstore.service")
        );
        assert_eq!(parse_cgroup_v2_path("12:memory:/x\n"), None);
        assert_eq!(
            cgroup_v2_dirs("/system.slice/trackstore.service"),
            ["system.slice/trackstore.service", "system.slice", ""]
        );
        // Inside a container's cgroup namespace the process sits at the root.
        assert_eq!(cgroup_v2_dirs("/"), [""]);
        assert_eq!(cgroup_v2_dirs(&"/a".repeat(100)).len(), 64);
    }

    #[test]
    fn cache_share_has_a_floor_and_a_fallback() {
        assert_eq!(block_cache_bytes_for(Some(24 << 30)), 3 << 30);
        assert_eq!(block_cache_bytes_for(Some(1 << 30)), BLOCK_CACHE_BYTES_MIN);
        // A small pod: a quarter of its limit, not the 256 MiB floor.
        assert_eq!(block_cache_bytes_for(Some(512 << 20)), 128 << 20);
        assert_eq!(block_cache_bytes_for(None), BLOCK_CACHE_BYTES_FALLBACK);
    }
}
