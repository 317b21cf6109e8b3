//! The RocksDB database: column families, their tuning, and small typed accessors.

use std::path::Path;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB,
    DBCompressionType, Env, Options, ReadOptions, SliceTransform, WriteBatch,
};

use crate::error::{Error, Result};
use crate::keys;

/// The column families, in the order of [`Cf::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cf {
    Log,
    ByOrder,
    ByTime,
    Orders,
    StatusIndex,
    EventIds,
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 7] = [
        Cf::Log,
        Cf::ByOrder,
        Cf::ByTime,
        Cf::Orders,
        Cf::StatusIndex,
        Cf::EventIds,
        Cf::Meta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => "log",
            Cf::ByOrder => "by_order",
            Cf::ByTime => "by_time",
            Cf::Orders => "orders",
            Cf::StatusIndex => "status_index",
            Cf::EventIds => "event_ids",
            Cf::Meta => "meta",
        }
    }
}

/// Tuning knobs. The block cache defaults to a share of the process's memory limit
/// (`memory::default_block_cache_bytes`); the rest is sized for the 2-core development machine.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Shared block cache for all column families (uncompressed blocks, filters, indexes).
    pub block_cache_bytes: usize,
    /// Memtable size of the large families (`log`, `by_order`); the others use a quarter. Smaller
    /// than RocksDB's usual 64 MiB on purpose: the writer thread's inserts walk these skiplists, and
    /// with many orders in flight each level is a cache miss. 32 MiB against 64 MiB: +11%
    /// interleaved ingest over 8M events; 16 MiB gained +16% but cost single-event HTTP ingest ~2%
    /// (flushes four times as often, on the disk the WAL syncs to) (bench/RESULTS.md, session 8).
    pub memtable_bytes: usize,
    pub background_jobs: i32,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            block_cache_bytes: usize::try_from(crate::memory::default_block_cache_bytes())
                .unwrap_or(usize::MAX),
            memtable_bytes: 32 << 20,
            background_jobs: 2,
        }
    }
}

fn cf_options(cf: Cf, cache: &Cache, tuning: &Tuning) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_format_version(6);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut o = Options::default();
    match cf {
        // Point lookups on every write (idempotency, read-modify-write of the state) and on every
        // order read: a whole-key Bloom filter saves the disk reads of misses.
        Cf::EventIds | Cf::Orders => {
            table.set_bloom_filter(10.0, false);
            if cf == Cf::EventIds {
                partition_filters(&mut table);
            }
            table.set_whole_key_filtering(true);
            o.set_memtable_whole_key_filtering(true);
            o.set_memtable_prefix_bloom_ratio(0.05);
        }
        // Timelines seek one order's keys. Without a filter a seek reads a data block in every
        // level and L0 file (to find where the key would be), although one order's events are
        // usually in one or two of them: a Bloom filter on the order prefix skips the rest
        // (bench/RESULTS.md). Prefix only: nothing reads single `by_order` keys on a hot path.
        Cf::ByOrder => {
            table.set_bloom_filter(10.0, false);
            table.set_whole_key_filtering(false);
            o.set_prefix_extractor(SliceTransform::create(
                "trackstore.by_order.order_prefix",
                keys::by_order_key_prefix,
                Some(keys::by_order_key_has_prefix),
            ));
            o.set_memtable_prefix_bloom_ratio(0.05);
            // Not the prefix hash index (`HashSearch`): +4.5% timelines with 4 KiB blocks, nothing
            // with 16 KiB ones, and its per-order tables live outside the block cache, growing with
            // the number of orders (bench/RESULTS.md, session 8).
        }
        // Time-range pages fetch their events from the log by LSN, mostly events long flushed: a
        // whole-key Bloom filter in the memtable answers those misses without a walk down its
        // skiplist (bench/RESULTS.md, session 10). Single-event reads and erasure read log keys
        // too; the writer never does, so the filter costs it only a hash per insert.
        Cf::Log => {
            o.set_memtable_whole_key_filtering(true);
            o.set_memtable_prefix_bloom_ratio(0.05);
        }
        _ => {}
    }
    // `by_order` serves timelines: random orders, a few KiB each. Every family uses 16 KiB blocks: a
    // timeline of 20 events then crosses one or two blocks instead of three to five, which with a
    // block cache holding the hot orders beat 4 and 8 KiB blocks (bench/RESULTS.md, session 8; 4 KiB
    // had won when a 512 MiB cache missed most timelines and decompression dominated). LZ4 at every
    // level of `by_order` keeps a miss cheap; the other families favour size, ZSTD at the bottom.
    // Every index and filter block is in the block cache (`cache_index_and_filter_blocks`), so the
    // cache bounds their memory too.
    let random_reads = cf == Cf::ByOrder;
    table.set_block_size(16 * 1024);
    o.set_block_based_table_factory(&table);
    o.set_level_compaction_dynamic_level_bytes(true);
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_bottommost_compression_type(if random_reads {
        DBCompressionType::Lz4
    } else {
        DBCompressionType::Zstd
    });
    // L0 is not compressed: a flush's file is merged into the base level within a few flushes,
    // where it is compressed anyway, so compressing it at the flush (LZ4, 5% of a batch fill's
    // instructions) and decompressing it in that compaction was work done twice. Measured: a
    // batch fill −4.1% instructions (bench/RESULTS.md, session 18). With dynamic level bytes the
    // entries after the first apply from the base level down; the bottom level takes
    // `bottommost_compression` below.
    let mut per_level = [DBCompressionType::Lz4; 7];
    per_level[0] = DBCompressionType::None;
    o.set_compression_per_level(&per_level);
    let big = matches!(cf, Cf::Log | Cf::ByOrder);
    o.set_write_buffer_size(if big {
        tuning.memtable_bytes
    } else {
        tuning.memtable_bytes / 4
    });
    o.set_max_write_buffer_number(4);
    o.set_target_file_size_base(64 << 20);
    // The index and state families take keys spread over their whole range (orders, event ids; event
    // times, late and out of order), so every L0 file overlaps most of the base level, and a
    // compaction from L0 rewrites most of it (on a young store the base level is the bottom one,
    // ZSTD). Compacting 8 L0 files at a time instead of RocksDB's 4 halves those rewrites per
    // byte ingested: batches of 1,000 +3–4%, single events +3–10%, server CPU −5%, the delivery day
    // and replication lag unchanged (bench/RESULTS.md, session 13). A point read checks up to 4 more
    // L0 filters; the `log` family (ascending keys, cheap merges) keeps RocksDB's 4, and the status
    // index compacts every 2 (below).
    if cf != Cf::Log {
        o.set_level_zero_file_num_compaction_trigger(L0_FILES_COMPACTION_TRIGGER);
    }
    // The status index is where "orders in status" queries step over hidden entries: an order
    // that entered a status and left it again leaves a put and its single delete, and they vanish
    // only where they meet, in one flush or compaction. Across flushes they sit in different L0
    // files, so the delivery day's queries of a transient status stepped over ~1,000–2,600 of
    // them for a page of 100 orders. Compacting every 2 L0 files (and flushing the memtable after
    // 250 hidden entries in one step, `open`) cut that by 70%: the day's calls/s +7% (3M calls)
    // and +16% (2M), server CPU −8% and −15%, five alternated pairs of six in favour; batches of
    // 1,000 lost 0–3% and some p99 (bench/RESULTS.md, session 15). The family is small (an order's
    // carrier per order). A base level targeted at 16 MiB in 4 MiB files keeps each of those
    // frequent compactions small as the store grows: RocksDB would otherwise size the base level
    // from the bottom one, up to 256 MiB, all of which an L0 file spanning every status overlaps.
    // It is a target (RocksDB raises it while L0 backs up), it adds levels to a large index, and
    // it was not measured at that scale: the day's index stays in the bottom level.
    if cf == Cf::StatusIndex {
        o.set_level_zero_file_num_compaction_trigger(STATUS_INDEX_L0_FILES_COMPACTION_TRIGGER);
        o.set_max_bytes_for_level_base(16 << 20);
        o.set_target_file_size_base(4 << 20);
    }
    o
}

/// L0 files that start a compaction, in every family but `log` and `status_index` (see
/// `cf_options`).
const L0_FILES_COMPACTION_TRIGGER: i32 = 8;

/// L0 files that start a compaction of `status_index` (see `cf_options`).
const STATUS_INDEX_L0_FILES_COMPACTION_TRIGGER: i32 = 2;

/// Filters (and the index) in partitions of about 4 KiB, found through a top-level index pinned in
/// the cache. `event_ids` holds many small keys: one 64 MiB SST of it can hold 8M+ keys, whose full
/// filter (10 MB+) once outgrew a cache shard and was re-read from the file on every lookup
/// (bench/RESULTS.md, the ingest collapse of issue 3). Partitions keep every cached block small
/// whatever the file size; no write or read cost was measurable (bench/RESULTS.md, session 8). The
/// other families keep full filters: their point reads (`orders`) are ~20% faster without the extra
/// index step, and their filters stay small (one key per order, or a prefix per order).
fn partition_filters(table: &mut BlockBasedOptions) {
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
}

/// The MANIFEST (the log of which SST files exist, with each file's first and last key) starts anew
/// past this size. Small, so that `Engine::purge` can make it forget the key ranges of files that held
/// erased data within a few flushes; a new MANIFEST costs one write of the live file list.
pub const MANIFEST_BYTES_MAX: usize = 16 * 1024;
/// Size of one RocksDB info LOG file; `keep_log_file_num` (4) of them are kept.
pub const INFO_LOG_BYTES_MAX: usize = 16 << 20;
/// Flushes `Engine::purge` makes at most while waiting for the MANIFEST to roll over (each adds a
/// few hundred bytes to it).
pub const PURGE_FLUSHES_MAX: usize = 1_000;

/// The name of the MANIFEST in use (the content of `CURRENT`).
pub fn current_manifest(db_dir: &Path) -> Result<String> {
    std::fs::read_to_string(db_dir.join("CURRENT"))
        .map_err(|e| Error::Corrupt(format!("cannot read {}/CURRENT: {e}", db_dir.display())))
}

/// Opens (creating if missing) the database at `path`.
pub fn open(path: &Path, tuning: &Tuning) -> Result<DB> {
    // HyperClockCache: lookups without a mutex. The LRU cache's shard mutexes (4 shards, so that a
    // large full filter fitted in one) made two reader threads slower than one: 303k order reads/s
    // against 374k; 739k with this cache (bench/RESULTS.md, session 8). Its shards are 32 MiB or
    // more; the large filters that needed big LRU shards are partitioned (`partition_filters`).
    // Estimated entry charge 0: the automatically sized variant, recommended by RocksDB.
    let cache = Cache::new_hyper_clock_cache(tuning.block_cache_bytes, 0);
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(tuning.background_jobs);
    // Compactions run at nice 19: on a machine the requests already keep busy, a compaction that
    // takes a core for seconds queued every request behind it. Their work is done in the gaps
    // (RocksDB slows writes down if L0 grows too far). Open loop at 24k events/s: p99 151–213 →
    // 42–79 ms; batches +4–6%; the 3M-call day +3% (bench/RESULTS.md, session 14). Flushes keep
    // their priority: a stalled flush stops every write once the memtables are full. A purge's full
    // compaction runs in the same pool, so on busy cores it takes longer instead. The default Env
    // is the process's: every store opened here shares its pools.
    let mut env = Env::new()?;
    env.lower_thread_pool_cpu_priority();
    db_opts.set_env(&env);
    db_opts.set_bytes_per_sync(1 << 20);
    db_opts.set_max_total_wal_size(512 << 20);
    db_opts.set_keep_log_file_num(4);
    db_opts.set_max_manifest_file_size(MANIFEST_BYTES_MAX);
    // The info LOG rotates by size too (it grows with every flush and compaction, purges included).
    db_opts.set_max_log_file_size(INFO_LOG_BYTES_MAX);
    // Flushes and compactions write each SST file once, and nothing reads it back through the page
    // cache soon (reads go through the block cache): buffered, every byte was also copied into the
    // page cache and written back by the kernel later, in bursts. With O_DIRECT: batches of 1,000
    // +2–8%, a replica's catch-up +3–4%; single events, the open loop and the delivery day within
    // the noise (bench/RESULTS.md, session 13). The WAL stays buffered (it is synced per group).
    if supports_direct_io(path) {
        db_opts.set_use_direct_io_for_flush_and_compaction(true);
    }
    let cfs = Cf::ALL
        .iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache, tuning)));
    let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
    // An "orders in status" query over a transient status (in_transit, out_for_delivery...) steps
    // over every entry that orders left behind in the memtable: put when the order entered the
    // status, single-deleted when it left. RocksDB flushes the status index's memtable once one
    // iterator step has skipped 250 such entries of the active memtable (or, past those 250 since
    // the seek, 100 per `Next` on average), and the flush drops each put with its single delete (a
    // pair split by a live snapshot waits for a compaction). 1,000 beat 5,000 and no flush in the
    // delivery-day mix (bench/RESULTS.md, session 9); with the status index's L0 compacted every
    // 2 files (`cf_options`), 250 skipped a third fewer entries than 1,000 per query; 100 skipped
    // 30% fewer again, but for 25% more flushes and no measurable CPU gain (session 15). Set here:
    // the Rust binding sets it only on an open database.
    db.set_options_cf(
        handle(&db, Cf::StatusIndex)?,
        &[
            ("memtable_op_scan_flush_trigger", "250"),
            ("memtable_avg_op_scan_flush_trigger", "100"),
        ],
    )?;
    Ok(db)
}

/// Whether files in the directory `path` (created if missing) can be written with O_DIRECT, which
/// some filesystems refuse (tmpfs before Linux 6.6, some overlays): RocksDB's flushes would fail
/// there, so the store then writes through the page cache.
fn supports_direct_io(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = path.join(".direct-io-probe");
    let opened = std::fs::create_dir_all(path).and_then(|()| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
    });
    let _ = std::fs::remove_file(&probe);
    opened.is_ok()
}

/// Deletes `key` of `cf` in `batch`. An entry of the status index is put once when its order enters
/// the status and deleted once when the order leaves it, never put twice in a row: the plan and the
/// restatement of erased, expired or truncated orders move it only when the order's stored status
/// or carrier changes, from the state the `orders` family holds (a carrier change alone deletes
/// and puts the same key, in that order, in one batch). At most one put between single deletes is
/// the contract of RocksDB's SingleDelete, which, unlike a Delete, vanishes with the put it meets
/// at a flush or compaction instead of staying as a tombstone down to the bottom level. With Deletes, "orders in status"
/// queries spent 22% of the server's CPU in the delivery-day mix stepping over tombstones
/// (bench/RESULTS.md, session 9). Stores written before hold Deletes of some entries; the entry
/// just older than a SingleDelete is still always its put, so a compaction never finds a
/// SingleDelete directly over a Delete (which RocksDB reports as corruption, poisoning the engine)
/// unless the index disagreed with `orders` already (`verify` reports that).
/// `tests/status_index.rs` covers both histories.
pub fn delete(batch: &mut WriteBatch, cf: Cf, h: &ColumnFamily, key: impl AsRef<[u8]>) {
    if cf == Cf::StatusIndex {
        batch.single_delete_cf(h, key)
    } else {
        batch.delete_cf(h, key)
    }
}

/// Read options for iterating the `by_order` keys of one order: bounded to the order, and in prefix
/// mode (the prefix Bloom filter skips files without the order). Seek with keys that hold the order
/// prefix (`keys::by_order_prefix`, `keys::by_order_last`, ...).
pub fn one_order_read_options(order_id: &str) -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(keys::by_order_prefix(order_id));
    ro.set_iterate_upper_bound(keys::by_order_upper_bound(order_id));
    ro.set_prefix_same_as_start(true);
    ro
}

/// Read options for a scan of a whole column family, across `by_order`'s prefixes too.
pub fn full_scan_read_options() -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_total_order_seek(true);
    // A scan of a whole family (verify) would push the hot blocks out of the cache; HyperClockCache
    // does not protect index and filter blocks the way LRU's high-priority pool did.
    ro.fill_cache(false);
    ro
}

pub fn handle(db: &DB, cf: Cf) -> Result<&ColumnFamily> {
    db.cf_handle(cf.name())
        .ok_or_else(|| Error::Corrupt(format!("column family {} is missing", cf.name())))
}

/// Every column family's handle, in the order of [`Cf::ALL`].
pub fn handles(db: &DB) -> Result<Vec<&ColumnFamily>> {
    Cf::ALL.iter().map(|cf| handle(db, *cf)).collect()
}
