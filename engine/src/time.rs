//! Timestamps: milliseconds since the Unix epoch, parsed from and printed as RFC 3339.
//!
//! Input accepts any offset (`Z`, `z`, `+01:00`, `-05:30`) and 0 to 3 fractional digits; more digits
//! than milliseconds are rejected rather than silently truncated, because a truncated time would make
//! two different inputs the same event (and an idempotent retry a conflict). Output is always UTC with
//! exactly three fractional digits: `2026-11-21T09:30:00.000Z`.
//!
//! The range is 1970-01-01T00:00:00.000Z to 9999-12-31T23:59:59.999Z, after conversion to UTC.

use std::fmt;

/// Milliseconds since 1970-01-01T00:00:00Z, within [`Timestamp::MIN`, `Timestamp::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a string is not an accepted timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimestampError {
    #[error("not an RFC 3339 timestamp (expected e.g. 2026-11-21T09:30:00.000Z)")]
    Syntax,
    #[error("more than 3 fractional digits: timestamps have millisecond precision")]
    TooPrecise,
    #[error("date or time field out of range")]
    FieldRange,
    #[error("outside the supported range 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z")]
    OutOfRange,
}

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(0);
    /// 9999-12-31T23:59:59.999Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// A timestamp from milliseconds since the epoch, if within range.
    pub fn from_millis(ms: i64) -> Option<Timestamp> {
        (Self::MIN.0..=Self::MAX.0)
            .contains(&ms)
            .then_some(Timestamp(ms))
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time (the edge of the pure core: callers pass `now` inward).
    pub fn now() -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms.clamp(Self::MIN.0, Self::MAX.0))
    }

    /// Parses an RFC 3339 date-time with an optional fraction of at most 3 digits.
    pub fn parse(s: &str) -> Result<Timestamp, TimestampError> {
        let b = s.as_bytes();
        if b.len() < 20 {
            return Err(TimestampError::Syntax);
        }
        let num = |range: std::ops::Range<usize>| -> Result<i64, TimestampError> {
            let mut v = 0i64;
            for &c in &b[range] {
                if !c.is_ascii_digit() {
                    return Err(TimestampError::Syntax);
                }
                v = v * 10 + i64::from(c - b'0');
            }
            Ok(v)
        };
        let sep_ok = b[4] == b'-'
            && b[7] == b'-'
            && matches!(b[10], b'T' | b't')
            && b[13] == b':'
            && b[16] == b':';
        if !sep_ok {
            return Err(TimestampError::Syntax);
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut i = 19;
        let mut millis = 0i64;
        if b[i] == b'.' {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            let digits = end - start;
            if digits == 0 {
                return Err(TimestampError::Syntax);
            }
            if digits > 3 {
                return Err(TimestampError::TooPrecise);
            }
            millis = num(start..end)? * 10i64.pow(3 - digits as u32);
            i = end;
        }
        let offset_minutes = match &b[i..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let digits = [*h1, *h2, *m1, *m2];
                if !digits.iter().all(u8::is_ascii_digit) {
                    return Err(TimestampError::Syntax);
                }
                let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
                let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
                if h > 23 || m > 59 {
                    return Err(TimestampError::FieldRange);
                }
                let total = h * 60 + m;
                if *sign == b'-' { -total } else { total }
            }
            _ => return Err(TimestampError::Syntax),
        };
        let month_ok = (1..=12).contains(&month);
        if !month_ok || day < 1 || day > days_in_month(year, month as u32) {
            return Err(TimestampError::FieldRange);
        }
        // Leap seconds (":60") are not representable in Unix time; reject rather than guess.
        if hour > 23 || minute > 59 || second > 59 {
            return Err(TimestampError::FieldRange);
        }
        let days = days_from_civil(year, month as u32, day as u32);
        let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
        Timestamp::from_millis(secs * 1_000 + millis).ok_or(TimestampError::OutOfRange)
    }
}

/// As its RFC 3339 text (`Display`), written without an intermediate `String`.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digit by digit into a fixed buffer: `write!` with padded integers took 4% of the CPU of
        // an order read (every state and event carries timestamps).
        let ms = self.0;
        let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
        let (y, m, d) = civil_from_days(days);
        let secs = ms_of_day / 1_000;
        let mut text = *b"0000-00-00T00:00:00.000Z";
        for (range, value) in [
            (0..4, y),
            (5..7, i64::from(m)),
            (8..10, i64::from(d)),
            (11..13, secs / 3_600),
            (14..16, secs / 60 % 60),
            (17..19, secs % 60),
            (20..23, ms_of_day % 1_000),
        ] {
            let mut v = value; // within 0..=9999 by the range of `Timestamp`
            for digit in text[range].iter_mut().rev() {
                *digit = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        f.write_str(std::str::from_utf8(&text).expect("ASCII digits"))
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_offsets_and_fractions() {
        let t = |s| Timestamp::parse(s).map(|t| t.to_string());
        assert_eq!(
            t("2026-11-21T09:30:00Z").unwrap(),
            "2026-11-21T09:30:00.000Z"
        );
        assert_eq!(
            t("2026-11-21T09:30:00.5Z").unwrap(),
            "2026-11-21T09:30:00.500Z"
        );
        assert_eq!(
            t("2026-11-21t10:30:00.123+01:00").unwrap(),
            "2026-11-21T09:30:00.123Z"
        );
        assert_eq!(
            t("2026-11-21T04:00:00-05:30").unwrap(),
            "2026-11-21T09:30:00.000Z"
        );
        assert_eq!(
            t("2024-02-29T00:00:00Z").unwrap(),
            "2024-02-29T00:00:00.000Z"
        );
        assert_eq!(
            t("1970-01-01T00:00:00Z").unwrap(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            t("9999-12-31T23:59:59.999Z").unwrap(),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn rejects_bad_input_with_the_reason() {
        use TimestampError::*;
        let cases = [
            ("", Syntax),
            ("2026-11-21", Syntax),
            ("2026-11-21 09:30:00Z", Syntax),
            ("2026-11-21T09:30:00", Syntax),
            ("2026-11-21T09:30:00.Z", Syntax),
            ("2026-11-21T09:30:00.1234Z", TooPrecise),
            ("2026-11-21T09:30:00+0100", Syntax),
            ("2026-13-01T00:00:00Z", FieldRange),
            ("2025-02-29T00:00:00Z", FieldRange),
            ("2026-11-21T24:00:00Z", FieldRange),
            ("2026-11-21T23:59:60Z", FieldRange),
            ("2026-11-21T09:30:00+24:00", FieldRange),
            ("1969-12-31T23:59:59.999Z", OutOfRange),
            ("1970-01-01T00:30:00+01:00", OutOfRange),
            ("２026-11-21T09:30:00Z", Syntax),
        ];
        for (input, want) in cases {
            assert_eq!(Timestamp::parse(input), Err(want), "{input:?}");
        }
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(ms in Timestamp::MIN.0..=Timestamp::MAX.0) {
            let t = Timestamp(ms);
            prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        }

        #[test]
        fn civil_days_round_trip(days in 0i64..2_932_897) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
