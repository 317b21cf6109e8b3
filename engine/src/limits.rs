//! Every bound the engine enforces, in one place, with the relations between them checked at compile time.
//!
//! Each limit is documented for users in `docs/limits.md`; change both together.

/// `event_id` and `order_id`: 1 to this many bytes of `[A-Za-z0-9._:-]`.
pub const ID_BYTES_MAX: usize = 128;
/// `source` and `carrier`: at most this many characters.
pub const LABEL_CHARS_MAX: usize = 64;
/// `reason`: at most this many bytes of `[a-z0-9_]`.
pub const REASON_BYTES_MAX: usize = 64;
/// `location.name`: at most this many characters.
pub const LOCATION_NAME_CHARS_MAX: usize = 128;
/// `attributes`: at most this many bytes once encoded as compact JSON.
pub const ATTRIBUTES_BYTES_MAX: usize = 4096;
/// `occurred_at` may lie at most this far in the future of the server's clock (clock skew allowance).
pub const FUTURE_SKEW_MS_MAX: i64 = 5 * 60 * 1000;

/// Events in one append request (the API's "too many events" limit).
pub const EVENTS_PER_REQUEST_MAX: usize = 10_000;
/// Append requests waiting for the writer thread; past this, `try_append` answers `Overloaded`.
pub const WRITER_QUEUE_REQUESTS_MAX: usize = 1_024;
/// Events committed in one group (one `WriteBatch`, one WAL sync). A single request is never split, so
/// a group holds at least one whole request.
pub const GROUP_EVENTS_MAX: usize = 20_000;
/// Encoded bytes of the events of one group; the second bound, so that large events make small groups.
pub const GROUP_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Results in one page of a query.
pub const PAGE_LIMIT_MAX: usize = 10_000;
/// Index entries examined for one page of a filtered query. A selective filter can make a page shorter
/// than `limit` (even empty) while `next_cursor` still points further: the bound keeps every request's
/// cost finite.
pub const SCAN_ENTRIES_PER_PAGE_MAX: usize = 100_000;
/// Memory-only reads (`*_in_memory`, run by async callers on their own threads): the largest page
/// they answer, and the internal keys (tombstones of erased or expired events, older versions) a
/// memory-only iterator may skip before it gives up. Beyond either, they answer `NeedsDisk` and
/// the caller takes the blocking path: the work an async worker does stays small.
pub const IN_MEMORY_PAGE_LIMIT_MAX: usize = 100;
pub const IN_MEMORY_SKIPPED_KEYS_MAX: u64 = 1_000;
/// Log entries returned by one `read_log` call, and their encoded bytes.
pub const READ_LOG_ENTRIES_MAX: usize = 10_000;
pub const READ_LOG_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Validation errors reported for one request; the rest are counted, not listed.
pub const REQUEST_ERRORS_LISTED_MAX: usize = 100;

const _: () = assert!(GROUP_EVENTS_MAX >= EVENTS_PER_REQUEST_MAX);
const _: () = assert!(SCAN_ENTRIES_PER_PAGE_MAX >= PAGE_LIMIT_MAX);
const _: () = assert!(IN_MEMORY_PAGE_LIMIT_MAX <= PAGE_LIMIT_MAX);
const _: () = assert!(
    ID_BYTES_MAX < 256,
    "ids are length-prefixed with one byte in some values"
);

/// Entries one truncation (an old primary's divergent tail at rejoin) may remove; a longer tail is
/// better rebuilt from a snapshot than held in one batch.
pub const TRUNCATE_ENTRIES_MAX: usize = 1_000_000;

/// Events one removal entry removes: the most events one erasure can remove (an order with more is
/// refused, nothing erased) and the cap of one retention step (a sweep runs many steps). 100,000 LSNs
/// make an 800 KB log entry, below the replication frame bound.
pub const REMOVAL_EVENTS_MAX: usize = 100_000;

/// Log entries one removal examines to drop the log's prefix of tombstones and removal entries; a
/// longer prefix is dropped over the following removals.
pub const TRIM_SCAN_ENTRIES_MAX: usize = 200_000;

/// Erasures committed together in one write (they queue between groups of appends).
pub const ERASURES_PER_BATCH_MAX: usize = 256;
