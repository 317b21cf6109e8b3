//! The RocksDB database: column families, their tuning, and small typed accessors.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    LruCacheOptions, Options, ReadOptions, SliceTransform,
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

/// Tuning knobs, with defaults sized for the 2-core, 24 GiB development machine.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Shared block cache for all column families.
    pub block_cache_bytes: usize,
    /// Memtable size of the large families (`log`, `by_order`); the others use a quarter.
    pub memtable_bytes: usize,
    pub background_jobs: i32,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            block_cache_bytes: 512 << 20,
            memtable_bytes: 64 << 20,
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
        }
        _ => {}
    }
    // `by_order` serves timelines: random orders, a few KiB each. Small blocks and LZ4 at every level
    // keep the bytes decompressed per timeline low (measured in bench/RESULTS.md: with 16 KiB ZSTD
    // blocks, decompression dominated timeline reads after compaction). The other families favour
    // size: big blocks, ZSTD at the bottom.
    let random_reads = cf == Cf::ByOrder;
    table.set_block_size(if random_reads { 4 * 1024 } else { 16 * 1024 });
    o.set_block_based_table_factory(&table);
    o.set_level_compaction_dynamic_level_bytes(true);
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_bottommost_compression_type(if random_reads {
        DBCompressionType::Lz4
    } else {
        DBCompressionType::Zstd
    });
    let big = matches!(cf, Cf::Log | Cf::ByOrder);
    o.set_write_buffer_size(if big {
        tuning.memtable_bytes
    } else {
        tuning.memtable_bytes / 4
    });
    o.set_max_write_buffer_number(4);
    o.set_target_file_size_base(64 << 20);
    o
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

/// log2 of the block cache's shard count; see `open`.
const CACHE_SHARD_BITS: i32 = 2;

/// Opens (creating if missing) the database at `path`.
pub fn open(path: &Path, tuning: &Tuning) -> Result<DB> {
    // Few, large shards. A block bigger than its shard is evicted as soon as it is released, and the
    // default sharding (64 shards: 8 MiB each for 512 MiB) is smaller than the one full Bloom filter
    // of a large `event_ids` SST (10 bits/key: 6.8M keys = 8.5 MB). Past that size every append's
    // idempotency lookup re-read and re-checksummed the whole filter from the file: the writer thread
    // went CPU-bound at ~800 events/s (bench/RESULTS.md, issue 3). Four shards of 128 MiB hold a
    // filter of ~100M keys; the cache's mutex is not contended on 2 cores.
    let mut cache_opts = LruCacheOptions::default();
    cache_opts.set_capacity(tuning.block_cache_bytes);
    cache_opts.set_num_shard_bits(CACHE_SHARD_BITS);
    let cache = Cache::new_lru_cache_opts(&cache_opts);
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(tuning.background_jobs);
    db_opts.set_bytes_per_sync(1 << 20);
    db_opts.set_max_total_wal_size(512 << 20);
    db_opts.set_keep_log_file_num(4);
    db_opts.set_max_manifest_file_size(MANIFEST_BYTES_MAX);
    // The info LOG rotates by size too (it grows with every flush and compaction, purges included).
    db_opts.set_max_log_file_size(INFO_LOG_BYTES_MAX);
    let cfs = Cf::ALL
        .iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache, tuning)));
    Ok(DB::open_cf_descriptors(&db_opts, path, cfs)?)
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
