//! Opaque pagination cursors. A cursor is the position after which the next page starts, bound to the
//! query that made it and authenticated with a key kept in the store, so that a cursor that was altered,
//! truncated or made for another query is refused with a clear error instead of silently paging
//! somewhere else.
//!
//! ```text
//! base64url( u8 version=1 ‖ u8 kind ‖ position bytes ‖ tag[16] )
//! tag = HMAC-SHA256(key, version ‖ kind ‖ position ‖ query binding)[..16]
//! ```
//! The query binding (order id, filters, range) is not carried in the cursor, only authenticated.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const TAG_BYTES: usize = 16;
/// Longest cursor text accepted; real cursors are far shorter.
pub const CURSOR_CHARS_MAX: usize = 512;

/// Which query a cursor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CursorKind {
    TimelineAsc = 1,
    TimelineDesc = 2,
    TimeRange = 3,
    OrdersByStatus = 4,
}

/// A cursor that is not one this store issued for this query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid cursor: {0}; use the next_cursor value of the previous page of the same query unchanged"
)]
pub struct CursorError(pub &'static str);

/// Seals and opens cursors with the store's secret key.
#[derive(Clone)]
pub struct CursorSealer {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorSealer { .. }")
    }
}

impl CursorSealer {
    pub fn new(key: [u8; 32]) -> CursorSealer {
        CursorSealer { key }
    }

    fn tag(&self, header_and_position: &[u8], binding: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(header_and_position);
        mac.update(&(binding.len() as u64).to_be_bytes());
        mac.update(binding);
        let full = mac.finalize().into_bytes();
        full[..TAG_BYTES]
            .try_into()
            .expect("SHA-256 output is 32 bytes")
    }

    pub fn seal(&self, kind: CursorKind, position: &[u8], binding: &[u8]) -> String {
        let mut raw = Vec::with_capacity(2 + position.len() + TAG_BYTES);
        raw.push(VERSION);
        raw.push(kind as u8);
        raw.extend_from_slice(position);
        let tag = self.tag(&raw, binding);
        raw.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The position of a cursor sealed for this `kind` and `binding`.
    pub fn open(
        &self,
        cursor: &str,
        kind: CursorKind,
        binding: &[u8],
    ) -> Result<Vec<u8>, CursorError> {
        if cursor.len() > CURSOR_CHARS_MAX {
            return Err(CursorError("too long"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| CursorError("not base64url"))?;
        if raw.len() < 2 + TAG_BYTES {
            return Err(CursorError("too short"));
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_BYTES);
        if body[0] != VERSION {
            return Err(CursorError("unknown version"));
        }
        // Constant-time comparison through the MAC API.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        mac.update(&(binding.len() as u64).to_be_bytes());
        mac.update(binding);
        mac.verify_truncated_left(tag)
            .map_err(|_| CursorError("altered, or issued for a different query or store"))?;
        if body[1] != kind as u8 {
            return Err(CursorError("issued for a different query"));
        }
        Ok(body[2..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_refuses_other_queries_and_stores() {
        let s = CursorSealer::new([7; 32]);
        let c = s.seal(CursorKind::TimeRange, b"position", b"q1");
        assert_eq!(
            s.open(&c, CursorKind::TimeRange, b"q1").as_deref(),
            Ok(&b"position"[..])
        );
        assert!(s.open(&c, CursorKind::TimeRange, b"q2").is_err());
        assert!(s.open(&c, CursorKind::TimelineAsc, b"q1").is_err());
        assert!(
            CursorSealer::new([8; 32])
                .open(&c, CursorKind::TimeRange, b"q1")
                .is_err()
        );
        assert!(s.open("", CursorKind::TimeRange, b"q1").is_err());
        assert!(s.open("!!!", CursorKind::TimeRange, b"q1").is_err());
        assert!(
            s.open(&"A".repeat(600), CursorKind::TimeRange, b"q1")
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn any_single_character_change_is_refused(pos in proptest::collection::vec(any::<u8>(), 0..40), at in any::<prop::sample::Index>(), ch in "[A-Za-z0-9_-]") {
            let s = CursorSealer::new([1; 32]);
            let c = s.seal(CursorKind::OrdersByStatus, &pos, b"b");
            let i = at.index(c.len());
            let mut altered: Vec<char> = c.chars().collect();
            let new = ch.chars().next().expect("one char");
            prop_assume!(altered[i] != new);
            altered[i] = new;
            let altered: String = altered.into_iter().collect();
            // A change in the last character can hit only padding bits that base64 ignores; then the
            // decoded bytes, and so the cursor, are the same.
            let same_bytes = URL_SAFE_NO_PAD.decode(&altered).ok() == URL_SAFE_NO_PAD.decode(&c).ok();
            prop_assume!(!same_bytes);
            prop_assert!(s.open(&altered, CursorKind::OrdersByStatus, b"b").is_err());
        }
    }
}
