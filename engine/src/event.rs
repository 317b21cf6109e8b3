//! The delivery event: its fields, its validation (every rule of DESIGN.md §1) and its JSON form.
//!
//! Pure code: parsing takes bytes and `now`, returns values or errors that name the field.

use std::borrow::Cow;
use std::fmt;

use serde::de;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::limits::{
    ATTRIBUTES_BYTES_MAX, EVENTS_PER_REQUEST_MAX, FUTURE_SKEW_MS_MAX, ID_BYTES_MAX,
    LABEL_CHARS_MAX, LOCATION_NAME_CHARS_MAX, REASON_BYTES_MAX, REQUEST_ERRORS_LISTED_MAX,
};
use crate::time::Timestamp;

/// A position in the log. Strictly increasing, gap-free, never reused; the first event is LSN 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where an order is in its delivery lifecycle. The discriminant is the on-disk byte: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Status {
    Created = 1,
    Allocated = 2,
    Picking = 3,
    Picked = 4,
    Dispatched = 5,
    InTransit = 6,
    OutForDelivery = 7,
    AttemptedDelivery = 8,
    Delivered = 9,
    Exception = 10,
    Returned = 11,
    Cancelled = 12,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Created,
        Status::Allocated,
        Status::Picking,
        Status::Picked,
        Status::Dispatched,
        Status::InTransit,
        Status::OutForDelivery,
        Status::AttemptedDelivery,
        Status::Delivered,
        Status::Exception,
        Status::Returned,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Allocated => "allocated",
            Status::Picking => "picking",
            Status::Picked => "picked",
            Status::Dispatched => "dispatched",
            Status::InTransit => "in_transit",
            Status::OutForDelivery => "out_for_delivery",
            Status::AttemptedDelivery => "attempted_delivery",
            Status::Delivered => "delivered",
            Status::Exception => "exception",
            Status::Returned => "returned",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn to_byte(self) -> u8 {
        self as u8
    }

    pub fn from_byte(b: u8) -> Option<Status> {
        Status::ALL.get(usize::from(b).checked_sub(1)?).copied()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WGS84 position.
#[derive(Clone, Debug, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub name: Option<String>,
}

/// A delivery event as the client sent it (no LSN, no receive time). Two events are the same event, for
/// idempotency, exactly when they are equal as values of this type: timestamps compare as instants, so
/// `+01:00` and `Z` spellings of one moment are equal; attribute order does not matter.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub order_id: String,
    pub status: Status,
    pub occurred_at: Timestamp,
    pub source: Option<String>,
    pub carrier: Option<String>,
    pub reason: Option<String>,
    pub location: Option<Location>,
    pub eta: Option<Timestamp>,
    /// A flat object of string, number and bool values.
    pub attributes: Option<Attributes>,
}

/// An event's `attributes` object, held as its canonical compact JSON (keys in byte order, as a
/// `serde_json::Map` writes them): the form in which it is stored, shipped, compared and answered.
/// Reading an event copies one string instead of building a map of strings and values, and
/// answering it copies the text (bench/RESULTS.md, session 11). Two attribute objects are equal
/// when they are equal as maps (the same text, or for `-0.0` and `0.0`, equal numbers).
#[derive(Clone)]
pub struct Attributes(Box<RawValue>);

impl Attributes {
    /// The canonical form of a parsed object (any values: [`Event::validate`] checks them).
    pub fn from_map(map: &Map<String, Value>) -> Attributes {
        // A map of JSON values always serialises, to JSON that `RawValue` accepts.
        let text = serde_json::to_string(map).expect("a JSON map serialises");
        Attributes(RawValue::from_string(text).expect("serde_json wrote valid JSON"))
    }

    /// From canonical text as stored (see [`Attributes::as_str`]); `None` unless a JSON object.
    /// The text is trusted to be canonical: it was written by `from_map`, in this store or in the
    /// store of the primary it was replicated from (an authenticated peer running this code).
    /// `Event::validate` still checks its keys, values and size.
    pub fn from_stored(text: String) -> Option<Attributes> {
        if !text.starts_with('{') {
            return None;
        }
        RawValue::from_string(text).ok().map(Attributes)
    }

    /// The canonical compact JSON: the stored form, and what `ATTRIBUTES_BYTES_MAX` limits.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The first rule of DESIGN.md §1 the object breaks, in key order (keys non-empty without
    /// control characters; values strings, numbers or bools), read from the text without building
    /// the map.
    fn check(&self) -> Result<(), FieldError> {
        let mut de = serde_json::Deserializer::from_str(self.as_str());
        match de::Deserializer::deserialize_map(&mut de, flat::Object) {
            Ok(found) => found,
            Err(e) => Err(FieldError::new("attributes", e.to_string())),
        }
    }
}

impl PartialEq for Attributes {
    /// Canonical texts differ for equal maps only where numbers compare equal with other spellings
    /// (`-0.0` and `0.0`): rare, so the maps are compared only when the texts differ.
    fn eq(&self, other: &Attributes) -> bool {
        let map = |a: &Attributes| serde_json::from_str::<Map<String, Value>>(a.as_str()).ok();
        self.as_str() == other.as_str() || map(self).is_some_and(|m| Some(m) == map(other))
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// `Attributes::check`'s reader: walks an object's entries, checking each key and each value's
/// kind, keeping nothing.
mod flat {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::FieldError;

    pub(super) struct Object;

    impl<'de> Visitor<'de> for Object {
        type Value = Result<(), FieldError>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }

        /// Reads every entry (the deserializer refuses an object left half-read) and answers the
        /// first problem.
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = Ok(());
            while let Some(key) = map.next_key_seed(Key)? {
                let flat = map.next_value_seed(Scalar)?;
                if found.is_err() {
                    continue;
                }
                found = key.and_then(|key| {
                    if flat {
                        return Ok(());
                    }
                    let key: String = key.chars().take(64).collect();
                    Err(FieldError::new(
                        format!("attributes.{key}"),
                        "must be a string, number or bool (attributes are flat)",
                    ))
                });
            }
            Ok(found)
        }
    }

    /// A key, checked; borrowed from the text unless it holds escapes.
    struct Key;

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = Result<std::borrow::Cow<'de, str>, FieldError>;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key {
        type Value = Result<std::borrow::Cow<'de, str>, FieldError>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a key")
        }

        fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
            Ok(checked(key).map(std::borrow::Cow::Borrowed))
        }

        fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
            Ok(checked(key).map(|k| std::borrow::Cow::Owned(k.to_owned())))
        }
    }

    fn checked(key: &str) -> Result<&str, FieldError> {
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(FieldError::new(
                "attributes",
                "keys must be non-empty and free of control characters",
            ));
        }
        Ok(key)
    }

    /// Whether a value is a string, number or bool (anything else is read through and refused).
    struct Scalar;

    impl<'de> DeserializeSeed<'de> for Scalar {
        type Value = bool;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Scalar {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a value")
        }

        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(true)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(true)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(true)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(true)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(true)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(false)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(false)
        }
    }
}

/// An event as stored: the client's event plus what the server added.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub lsn: Lsn,
    pub received_at: Timestamp,
    pub event: Event,
}

/// A field that failed validation. `field` is a JSON path such as `location.lat` or `attributes.slot`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: Cow<'static, str>,
    pub message: Cow<'static, str>,
}

impl FieldError {
    pub fn new(
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A field error located in a request: `index` is the event's position in the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedFieldError {
    pub index: Option<usize>,
    pub error: FieldError,
}

/// Why an ingest request body was rejected. Nothing of a rejected request is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("malformed JSON{}: {message}", line.map(|l| format!(" on line {l}")).unwrap_or_default())]
    MalformedJson {
        line: Option<usize>,
        message: String,
    },
    #[error("the request holds no event")]
    Empty,
    #[error("the request holds {count} events; at most {EVENTS_PER_REQUEST_MAX} are accepted")]
    TooManyEvents { count: usize },
    #[error("{} invalid field(s){}", errors.len() + omitted, first_error(errors))]
    Invalid {
        errors: Vec<IndexedFieldError>,
        /// Errors beyond `REQUEST_ERRORS_LISTED_MAX`, counted but not listed.
        omitted: usize,
    },
}

fn first_error(errors: &[IndexedFieldError]) -> String {
    match errors.first() {
        Some(IndexedFieldError {
            index: Some(i),
            error,
        }) => format!(", first: event {i}: {error}"),
        Some(IndexedFieldError { index: None, error }) => format!(", first: {error}"),
        None => String::new(),
    }
}

/// The body formats of `POST /v1/events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// One event object or a JSON array of events.
    Json,
    /// One event object per line; blank lines are ignored.
    Ndjson,
}

/// Parses and validates an ingest request body. All events are checked, so the client sees every
/// problem at once (up to a bound), and the request is rejected whole if any event is invalid.
pub fn parse_request(
    body: &[u8],
    format: BodyFormat,
    now: Timestamp,
) -> Result<Vec<Event>, RequestError> {
    let values = match format {
        BodyFormat::Json => match serde_json::from_slice::<fields::Body>(body) {
            Ok(fields::Body::Events { count, .. }) if count > EVENTS_PER_REQUEST_MAX => {
                return Err(RequestError::TooManyEvents { count });
            }
            Ok(fields::Body::Events { items, .. }) => items,
            Ok(fields::Body::Other) => {
                return Err(invalid_one(
                    None,
                    FieldError::new("$", "expected an event object or an array of events"),
                ));
            }
            Err(e) => return Err(malformed(None, &e)),
        },
        BodyFormat::Ndjson => {
            let text = std::str::from_utf8(body).map_err(|e| RequestError::MalformedJson {
                line: None,
                message: format!("invalid UTF-8: {e}"),
            })?;
            let mut items = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                if items.len() == EVENTS_PER_REQUEST_MAX {
                    return Err(RequestError::TooManyEvents {
                        count: items.len()
                            + 1
                            + text
                                .lines()
                                .skip(n + 1)
                                .filter(|l| !l.trim().is_empty())
                                .count(),
                    });
                }
                items.push(
                    serde_json::from_str::<fields::Item>(line)
                        .map_err(|e| malformed(Some(n + 1), &e))?,
                );
            }
            items
        }
    };
    if values.is_empty() {
        return Err(RequestError::Empty);
    }
    if values.len() > EVENTS_PER_REQUEST_MAX {
        return Err(RequestError::TooManyEvents {
            count: values.len(),
        });
    }
    let mut events = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    let mut omitted = 0;
    for (index, value) in values.iter().enumerate() {
        match value.to_event().and_then(|e| e.validate(now).map(|()| e)) {
            Ok(event) => events.push(event),
            Err(error) if errors.len() < REQUEST_ERRORS_LISTED_MAX => {
                errors.push(IndexedFieldError {
                    index: Some(index),
                    error,
                })
            }
            Err(_) => omitted += 1,
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(RequestError::Invalid { errors, omitted })
    }
}

fn malformed(line: Option<usize>, e: &serde_json::Error) -> RequestError {
    RequestError::MalformedJson {
        line,
        message: e.to_string(),
    }
}

fn invalid_one(index: Option<usize>, error: FieldError) -> RequestError {
    RequestError::Invalid {
        errors: vec![IndexedFieldError { index, error }],
        omitted: 0,
    }
}

const EVENT_FIELDS: [&str; 10] = [
    "event_id",
    "order_id",
    "status",
    "occurred_at",
    "source",
    "carrier",
    "reason",
    "location",
    "eta",
    "attributes",
];

impl Event {
    /// Reads an event from its JSON object: shapes and types only (see [`Event::validate`] for values).
    /// Unknown fields are rejected, so a misspelt optional field is an error, not silently dropped.
    /// `null` is the same as an absent optional field.
    pub fn from_json(value: &Value) -> Result<Event, FieldError> {
        let obj = value
            .as_object()
            .ok_or_else(|| FieldError::new("$", "expected an event object"))?;
        let unknown = obj.keys().find(|k| !EVENT_FIELDS.contains(&k.as_str()));
        Event::from_fields(|field| obj.get(field), unknown.map(String::as_str))
    }

    /// `from_json`'s checks over an object's fields (`get`) and the first of its unknown keys in
    /// byte order, whether the fields come from a `Map` or straight from a request body.
    fn from_fields<'v>(
        get: impl Fn(&'static str) -> Option<&'v Value>,
        first_unknown: Option<&str>,
    ) -> Result<Event, FieldError> {
        if let Some(unknown) = first_unknown {
            let name: String = unknown.chars().take(64).collect();
            return Err(FieldError::new(name, "unknown field"));
        }
        let status_text = required_str(get("status"), "status")?;
        let status = Status::parse(status_text).ok_or_else(|| {
            FieldError::new(
                "status",
                format!(
                    "unknown status; expected one of: {}",
                    Status::ALL.map(Status::as_str).join(", ")
                ),
            )
        })?;
        let location = match get("location") {
            None | Some(Value::Null) => None,
            Some(Value::Object(loc)) => Some(parse_location(loc)?),
            Some(_) => {
                return Err(FieldError::new(
                    "location",
                    "expected an object {lat, lon, name?}",
                ));
            }
        };
        let attributes = match get("attributes") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(Attributes::from_map(map)),
            Some(_) => return Err(FieldError::new("attributes", "expected an object")),
        };
        Ok(Event {
            event_id: required_str(get("event_id"), "event_id")?.to_owned(),
            order_id: required_str(get("order_id"), "order_id")?.to_owned(),
            status,
            occurred_at: timestamp(
                required_str(get("occurred_at"), "occurred_at")?,
                "occurred_at",
            )?,
            source: optional_str(get("source"), "source")?,
            carrier: optional_str(get("carrier"), "carrier")?,
            reason: optional_str(get("reason"), "reason")?,
            location,
            eta: optional_str(get("eta"), "eta")?
                .map(|s| timestamp(&s, "eta"))
                .transpose()?,
            attributes,
        })
    }

    /// Checks every value rule of DESIGN.md §1. The engine calls it again right before writing.
    pub fn validate(&self, now: Timestamp) -> Result<(), FieldError> {
        check_id(&self.event_id, "event_id")?;
        check_id(&self.order_id, "order_id")?;
        if self.occurred_at.as_millis() > now.as_millis() + FUTURE_SKEW_MS_MAX {
            return Err(FieldError::new(
                "occurred_at",
                "more than 5 minutes in the future of the server's clock",
            ));
        }
        if let Some(source) = &self.source {
            check_label(source, "source")?;
        }
        if let Some(carrier) = &self.carrier {
            check_label(carrier, "carrier")?;
        }
        if let Some(reason) = &self.reason {
            let ok = !reason.is_empty()
                && reason.len() <= REASON_BYTES_MAX
                && reason
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(FieldError::new(
                    "reason",
                    format!("must be 1 to {REASON_BYTES_MAX} characters of [a-z0-9_]"),
                ));
            }
        }
        if let Some(loc) = &self.location {
            if !(loc.lat.is_finite() && (-90.0..=90.0).contains(&loc.lat)) {
                return Err(FieldError::new(
                    "location.lat",
                    "must be between -90 and 90",
                ));
            }
            if !(loc.lon.is_finite() && (-180.0..=180.0).contains(&loc.lon)) {
                return Err(FieldError::new(
                    "location.lon",
                    "must be between -180 and 180",
                ));
            }
            if let Some(name) = &loc.name {
                check_text(name, "location.name", LOCATION_NAME_CHARS_MAX)?;
            }
        }
        if let Some(attrs) = &self.attributes {
            attrs.check()?;
            if attrs.as_str().len() > ATTRIBUTES_BYTES_MAX {
                return Err(FieldError::new(
                    "attributes",
                    format!("larger than {ATTRIBUTES_BYTES_MAX} bytes once encoded"),
                ));
            }
        }
        Ok(())
    }
}

fn required_str<'a>(value: Option<&'a Value>, field: &'static str) -> Result<&'a str, FieldError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(FieldError::new(field, "required")),
        Some(_) => Err(FieldError::new(field, "expected a string")),
    }
}

fn optional_str(value: Option<&Value>, field: &'static str) -> Result<Option<String>, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::new(field, "expected a string")),
    }
}

fn timestamp(text: &str, field: &'static str) -> Result<Timestamp, FieldError> {
    Timestamp::parse(text).map_err(|e| FieldError::new(field, e.to_string()))
}

fn parse_location(loc: &Map<String, Value>) -> Result<Location, FieldError> {
    if let Some(unknown) = loc
        .keys()
        .find(|k| !["lat", "lon", "name"].contains(&k.as_str()))
    {
        let name: String = unknown.chars().take(64).collect();
        return Err(FieldError::new(format!("location.{name}"), "unknown field"));
    }
    let coord = |field: &'static str, key: &str| match loc.get(key) {
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| FieldError::new(field, "expected a number")),
        None | Some(Value::Null) => Err(FieldError::new(field, "required")),
        Some(_) => Err(FieldError::new(field, "expected a number")),
    };
    let name = match loc.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(FieldError::new("location.name", "expected a string")),
    };
    Ok(Location {
        lat: coord("location.lat", "lat")?,
        lon: coord("location.lon", "lon")?,
        name,
    })
}

/// The rule for `event_id` and `order_id`: 1–128 of `[A-Za-z0-9._:-]`.
pub fn check_id(id: &str, field: &'static str) -> Result<(), FieldError> {
    let ok = !id.is_empty()
        && id.len() <= ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be 1 to {ID_BYTES_MAX} characters of [A-Za-z0-9._:-]"),
        ))
    }
}

fn check_label(text: &str, field: &'static str) -> Result<(), FieldError> {
    check_text(text, field, LABEL_CHARS_MAX)
}

fn check_text(text: &str, field: &'static str, chars_max: usize) -> Result<(), FieldError> {
    if text.is_empty() {
        return Err(FieldError::new(
            field,
            "must not be empty (omit the field instead)",
        ));
    }
    if text.chars().count() > chars_max {
        return Err(FieldError::new(
            field,
            format!("longer than {chars_max} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl StoredEvent {
    /// The event's JSON form as the API returns it (see its `Serialize`), as a value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("an event serialises to JSON")
    }
}

/// The event's JSON form as the API returns it: the client's fields plus `lsn` and `received_at`,
/// times in UTC with milliseconds, absent optional fields omitted, keys in byte order (as
/// `serde_json::Map` orders them). Written straight to the output: list responses of 100 events
/// built a map per event first, then copied it (bench/RESULTS.md, session 10).
impl Serialize for StoredEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = &self.event;
        let mut m = s.serialize_map(None)?;
        if let Some(attrs) = &e.attributes {
            m.serialize_entry("attributes", attrs)?;
        }
        if let Some(c) = &e.carrier {
            m.serialize_entry("carrier", c)?;
        }
        if let Some(eta) = &e.eta {
            m.serialize_entry("eta", eta)?;
        }
        m.serialize_entry("event_id", &e.event_id)?;
        if let Some(loc) = &e.location {
            m.serialize_entry("location", loc)?;
        }
        m.serialize_entry("lsn", &self.lsn.0)?;
        m.serialize_entry("occurred_at", &e.occurred_at)?;
        m.serialize_entry("order_id", &e.order_id)?;
        if let Some(r) = &e.reason {
            m.serialize_entry("reason", r)?;
        }
        m.serialize_entry("received_at", &self.received_at)?;
        if let Some(src) = &e.source {
            m.serialize_entry("source", src)?;
        }
        m.serialize_entry("status", e.status.as_str())?;
        m.end()
    }
}

impl Event {
    /// The event's JSON form as a client sends it: what [`Event::from_json`] reads back to an equal event.
    pub fn to_json(&self) -> Value {
        let mut v = StoredEvent {
            lsn: Lsn(0),
            received_at: Timestamp::MIN,
            event: self.clone(),
        }
        .to_json();
        if let Value::Object(m) = &mut v {
            m.remove("lsn");
            m.remove("received_at");
        }
        v
    }
}

impl Serialize for Location {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("lat", &self.lat)?;
        m.serialize_entry("lon", &self.lon)?;
        if let Some(name) = &self.name {
            m.serialize_entry("name", name)?;
        }
        m.end()
    }
}

/// Ingest bodies read straight into each event's fields: no `Map` of the whole object is built and
/// known keys are matched without being copied (`Event::from_json` on a parsed `Value` built a map
/// with an owned key per field, then copied the strings again). What a body means, and every error,
/// stays `Event::from_json`'s: the same checks run over the same values.
mod fields {
    use std::fmt;

    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    use super::{EVENT_FIELDS, EVENTS_PER_REQUEST_MAX, Event, FieldError};

    /// A request body: its items (one for a single event object; of an array, the first
    /// `EVENTS_PER_REQUEST_MAX + 1` kept and all of them counted: a body of `[{},{},...]` must not
    /// cost 344 bytes per 3), or anything else (refused).
    pub(super) enum Body {
        Events { items: Vec<Item>, count: usize },
        Other,
    }

    /// An element of an array body (or an NDJSON line). Not boxed: nearly every item is an object.
    #[allow(clippy::large_enum_variant)]
    pub(super) enum Item {
        Object(EventFields),
        NotObject,
    }

    /// An event object's known fields by their place in `EVENT_FIELDS` (a repeated key keeps its
    /// last value, as in a `Map`), and the first of its unknown keys in byte order (what
    /// `from_json` reports).
    #[derive(Default)]
    pub(super) struct EventFields {
        values: [Option<Value>; EVENT_FIELDS.len()],
        first_unknown: Option<String>,
    }

    impl Item {
        pub(super) fn to_event(&self) -> Result<Event, FieldError> {
            match self {
                Item::Object(f) => Event::from_fields(
                    |field| {
                        let i = EVENT_FIELDS.iter().position(|f| *f == field)?;
                        f.values[i].as_ref()
                    },
                    f.first_unknown.as_deref(),
                ),
                Item::NotObject => Err(FieldError::new("$", "expected an event object")),
            }
        }
    }

    /// A key of an event object: a known field's place, or an unknown key's text.
    enum Key {
        Known(usize),
        Unknown(String),
    }

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
            struct KeyVisitor;
            impl Visitor<'_> for KeyVisitor {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_str<E: de::Error>(self, k: &str) -> Result<Key, E> {
                    Ok(match EVENT_FIELDS.iter().position(|f| *f == k) {
                        Some(i) => Key::Known(i),
                        None => Key::Unknown(k.to_owned()),
                    })
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    fn read_fields<'de, A: MapAccess<'de>>(mut map: A) -> Result<EventFields, A::Error> {
        let mut fields = EventFields::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Known(i) => fields.values[i] = Some(map.next_value()?),
                Key::Unknown(k) => {
                    map.next_value::<Skip>()?;
                    if fields.first_unknown.as_ref().is_none_or(|u| k < *u) {
                        fields.first_unknown = Some(k);
                    }
                }
            }
        }
        Ok(fields)
    }

    /// Any JSON value other than an object or an array (`Body::Other`, `Item::NotObject`).
    macro_rules! scalars_are {
        ($value:expr, $ret:ty) => {
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<$ret, E> {
                Ok($value)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<$ret, E> {
                Ok($value)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<$ret, E> {
                Ok($value)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<$ret, E> {
                Ok($value)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<$ret, E> {
                Ok($value)
            }
            fn visit_unit<E: de::Error>(self) -> Result<$ret, E> {
                Ok($value)
            }
        };
    }

    /// A value read and checked in full, then dropped: the parts of a body no event keeps (unknown
    /// fields, arrays given as items, items past the event limit). Not `serde::de::IgnoredAny`:
    /// serde_json skips those without checking UTF-8, surrogates, number ranges or the nesting
    /// limit, and such a body must stay malformed JSON, as when it was parsed to a `Value`.
    struct Skip;

    impl<'de> Deserialize<'de> for Skip {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
            struct SkipVisitor;
            impl<'de> Visitor<'de> for SkipVisitor {
                type Value = Skip;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                scalars_are!(Skip, Skip);
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                    while seq.next_element::<Skip>()?.is_some() {}
                    Ok(Skip)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                    while map.next_key::<Skip>()?.is_some() {
                        map.next_value::<Skip>()?;
                    }
                    Ok(Skip)
                }
            }
            d.deserialize_any(SkipVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
            struct ItemVisitor;
            impl<'de> Visitor<'de> for ItemVisitor {
                type Value = Item;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                scalars_are!(Item::NotObject, Item);
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                    while seq.next_element::<Skip>()?.is_some() {}
                    Ok(Item::NotObject)
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                    read_fields(map).map(Item::Object)
                }
            }
            d.deserialize_any(ItemVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Body {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Body, D::Error> {
            struct BodyVisitor;
            impl<'de> Visitor<'de> for BodyVisitor {
                type Value = Body;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                scalars_are!(Body::Other, Body);
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
                    let mut items = Vec::new();
                    while items.len() <= EVENTS_PER_REQUEST_MAX {
                        match seq.next_element::<Item>()? {
                            Some(item) => items.push(item),
                            None => {
                                let count = items.len();
                                return Ok(Body::Events { items, count });
                            }
                        }
                    }
                    let mut count = items.len();
                    while seq.next_element::<Skip>()?.is_some() {
                        count += 1;
                    }
                    Ok(Body::Events { items, count })
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body, A::Error> {
                    let items = vec![Item::Object(read_fields(map)?)];
                    Ok(Body::Events { items, count: 1 })
                }
            }
            d.deserialize_any(BodyVisitor)
        }
    }
}

#[cfg(test)]
mod attributes_tests {
    use serde_json::json;

    use super::*;

    fn attrs(v: Value) -> Attributes {
        match v {
            Value::Object(map) => Attributes::from_map(&map),
            other => panic!("not an object: {other}"),
        }
    }

    /// `check` reads the canonical text; it must decide as the map walk it replaced did: the first
    /// offending key in byte order, with the same field and message.
    fn map_walk(map: &Map<String, Value>) -> Result<(), FieldError> {
        for (key, value) in map {
            if key.is_empty() || key.chars().any(char::is_control) {
                return Err(FieldError::new(
                    "attributes",
                    "keys must be non-empty and free of control characters",
                ));
            }
            if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                let key: String = key.chars().take(64).collect();
                return Err(FieldError::new(
                    format!("attributes.{key}"),
                    "must be a string, number or bool (attributes are flat)",
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn the_text_check_decides_as_the_map_walk() {
        let long_key = "k".repeat(100);
        let cases = [
            json!({}),
            json!({"slot": "18-20", "bags": 3, "cold": true, "temp": -1.5, "big": u64::MAX}),
            json!({"slot": {"from": 9}}),
            json!({"tags": ["a"], "a": 1}),
            json!({"z": null, "b": [1, {"c": 2}]}),
            json!({"": 1}),
            json!({"tab\there": 1}),
            json!({"a\u{1}": {"x": 1}}),
            json!({"quote\"d": [], "é": 1}),
            json!({"zz": 1, "b": {}, "a\n": 2}),
            json!({ long_key: [] }),
            json!({ "é".repeat(100): {} }),
            json!({"del\u{7f}": 1, "c1\u{85}": 2}),
            json!({"min": i64::MIN, "big": 1e300, "neg": -0.0, "tiny": 5e-324}),
        ];
        for case in cases {
            let Value::Object(map) = &case else {
                unreachable!()
            };
            assert_eq!(attrs(case.clone()).check(), map_walk(map), "{case}");
        }
    }

    #[test]
    fn canonical_text_is_sorted_compact_and_compares_as_the_map() {
        let a = attrs(json!({"b": 1, "a": "x", "c": 2.50}));
        assert_eq!(a.as_str(), r#"{"a":"x","b":1,"c":2.5}"#);
        assert_eq!(a, attrs(json!({"c": 2.5, "a": "x", "b": 1})));
        assert_ne!(a, attrs(json!({"a": "x", "b": 1.0, "c": 2.5})));
        // Equal as maps though spelt differently: the same event for idempotency, as before.
        assert_eq!(attrs(json!({"t": -0.0})), attrs(json!({"t": 0.0})));
        assert_ne!(attrs(json!({"t": 0})), attrs(json!({"t": 0.0})));
        // A text no store holds (a replicated number out of range) is unequal, not a panic.
        let huge = Attributes::from_stored(r#"{"t":1e999}"#.into()).expect("valid JSON syntax");
        assert_ne!(huge, attrs(json!({"t": 1.0})));
        assert_eq!(serde_json::to_string(&a).unwrap(), a.as_str());
        assert_eq!(
            Attributes::from_stored(a.as_str().to_owned()),
            Some(a.clone())
        );
        assert_eq!(Attributes::from_stored("[1]".into()), None);
        assert_eq!(Attributes::from_stored("{\"a\":".into()), None);
    }
}
