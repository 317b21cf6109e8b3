//! The delivery event: its fields, its validation (every rule of DESIGN.md §1) and its JSON form.
//!
//! Pure code: parsing takes bytes and `now`, returns values or errors that name the field. A body
//! is read as plain JSON: serde_json's raw-value token is an ordinary key (see `fields`), and
//! reserved in `attributes` (`RESERVED_ATTRIBUTE_KEY`).

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
pub struct Attributes {
    text: Box<RawValue>,
    /// Read back from a store (`from_stored`): accepted by the build that wrote it, so exempt from
    /// the rule added since, `RESERVED_ATTRIBUTE_KEY` (a log holding one must still replicate).
    stored: bool,
}

/// The one attribute key refused (since the request parser stopped treating it specially): with
/// its `raw_value` feature, which the workspace enables, serde_json's `Value` reads an object
/// whose first key is this one as the JSON text in that key's value, and the canonical text puts
/// `$` before any letter. Attributes holding it would be misread, or refused, wherever their text
/// is parsed back into a `Value` (a client reading the API, `serde_json::to_value`).
const RESERVED_ATTRIBUTE_KEY: &str = "$serde_json::private::RawValue";

impl Attributes {
    /// The canonical form of a parsed object (any values: [`Event::validate`] checks them).
    pub fn from_map(map: &Map<String, Value>) -> Attributes {
        // A map of JSON values always serialises, to JSON that `RawValue` accepts.
        let text = serde_json::to_string(map).expect("a JSON map serialises");
        Attributes::new(RawValue::from_string(text).expect("serde_json wrote valid JSON"))
    }

    fn new(text: Box<RawValue>) -> Attributes {
        Attributes {
            text,
            stored: false,
        }
    }

    /// From canonical text as stored (see [`Attributes::as_str`]); `None` unless a JSON object.
    /// The text is trusted to be canonical: it was written by `from_map`, in this store or in the
    /// store of the primary it was replicated from (an authenticated peer running this code).
    /// `Event::validate` still checks its keys, values and size, but lets `RESERVED_ATTRIBUTE_KEY`
    /// pass: builds before the rule stored it.
    pub fn from_stored(text: String) -> Option<Attributes> {
        if !text.starts_with('{') {
            return None;
        }
        let text = RawValue::from_string(text).ok()?;
        Some(Attributes { text, stored: true })
    }

    /// The canonical compact JSON: the stored form, and what `ATTRIBUTES_BYTES_MAX` limits.
    pub fn as_str(&self) -> &str {
        self.text.get()
    }

    /// The object as a `Value`, read as a `Map`: a `Map` takes every key as a key, where a `Value`
    /// reads an object starting with `RESERVED_ATTRIBUTE_KEY` as JSON text (serde_json's
    /// map.rs, `impl Deserialize for Map<String, Value>`), and attributes are flat, so no `Value`
    /// is read from an object in them. A text no `Map` holds (never written by this code: a
    /// number out of range or nesting past serde_json's limit, from a damaged store) is answered
    /// as itself, a string.
    fn to_value(&self) -> Value {
        match serde_json::from_str::<Map<String, Value>>(self.as_str()) {
            Ok(map) => Value::Object(map),
            Err(_) => Value::String(self.as_str().to_owned()),
        }
    }

    /// The first rule of DESIGN.md §1 the object breaks, in key order (keys non-empty without
    /// control characters, and not `RESERVED_ATTRIBUTE_KEY` unless `stored`; values strings,
    /// numbers or bools), read from the text without building the map.
    fn check(&self) -> Result<(), FieldError> {
        let mut de = serde_json::Deserializer::from_str(self.as_str());
        let object = flat::Object {
            stored: self.stored,
        };
        match de::Deserializer::deserialize_map(&mut de, object) {
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

/// The text as it is, to a serde_json writer; any other serializer (`serde_json::to_value`) parses
/// it as a `Value` (see `Attributes::to_value`).
impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(s)
    }
}

/// `Attributes::check`'s reader: walks an object's entries, checking each key and each value's
/// kind, keeping nothing.
mod flat {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::FieldError;

    pub(super) struct Object {
        /// `Attributes::stored`.
        pub(super) stored: bool,
    }

    impl<'de> Visitor<'de> for Object {
        type Value = Result<(), FieldError>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }

        /// Reads every entry (the deserializer refuses an object left half-read) and answers the
        /// first problem.
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = Ok(());
            while let Some(key) = map.next_key_seed(Key {
                stored: self.stored,
            })? {
                let flat = map.next_value_seed(Scalar)?;
                if found.is_err() {
                    continue;
                }
                found = key.and_then(|key| {
                    if flat {
                        return Ok(());
                    }
                    Err(super::attribute_not_flat(&key))
                });
            }
            Ok(found)
        }
    }

    /// A key, checked; borrowed from the text unless it holds escapes.
    struct Key {
        stored: bool,
    }

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
            Ok(super::check_attribute_key(key, self.stored)
                .map(|()| std::borrow::Cow::Borrowed(key)))
        }

        fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
            let key = super::check_attribute_key(key, self.stored).map(|()| key.to_owned());
            Ok(key.map(std::borrow::Cow::Owned))
        }
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
    for (index, value) in values.into_iter().enumerate() {
        match value.into_event(now) {
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

impl Event {
    /// Reads an event from its JSON object: shapes and types only (see [`Event::validate`] for values).
    /// Unknown fields are rejected, so a misspelt optional field is an error, not silently dropped.
    /// `null` is the same as an absent optional field.
    pub fn from_json(value: &Value) -> Result<Event, FieldError> {
        let obj = value
            .as_object()
            .ok_or_else(|| FieldError::new("$", "expected an event object"))?;
        // Attributes from a map are checked by `validate`: no verdict yet.
        Event::from_fields(fields::EventFields::of_map(obj)).map(|(event, _)| event)
    }

    /// `from_json`'s checks over an object's fields, whether they come from a `Map` or straight
    /// from a request body; also the error `validate` will give for the `attributes` when reading
    /// them found it already (the request parser checks them as it reads them, see
    /// `fields::Attrs`).
    fn from_fields(f: fields::EventFields<'_>) -> Result<(Event, Option<FieldError>), FieldError> {
        use fields::{Attrs, Place};
        if let Some(unknown) = f.first_unknown {
            let name: String = unknown.chars().take(64).collect();
            return Err(FieldError::new(name, "unknown field"));
        }
        let status_text = required(f.status, "status")?;
        let status = Status::parse(&status_text).ok_or_else(|| {
            FieldError::new(
                "status",
                format!(
                    "unknown status; expected one of: {}",
                    Status::ALL.map(Status::as_str).join(", ")
                ),
            )
        })?;
        let location = match f.location {
            Place::Absent => None,
            Place::Object(loc) => Some(parse_location(loc)?),
            Place::Other => {
                return Err(FieldError::new(
                    "location",
                    "expected an object {lat, lon, name?}",
                ));
            }
        };
        let (attributes, attributes_error) = match f.attributes {
            Attrs::Absent => (None, None),
            Attrs::Object(Ok(attrs)) => (Some(attrs), None),
            Attrs::Object(Err(error)) => (None, Some(error)),
            Attrs::Other => return Err(FieldError::new("attributes", "expected an object")),
        };
        let event = Event {
            event_id: required(f.event_id, "event_id")?.into_owned(),
            order_id: required(f.order_id, "order_id")?.into_owned(),
            status,
            occurred_at: timestamp(&required(f.occurred_at, "occurred_at")?, "occurred_at")?,
            source: optional(f.source, "source")?,
            carrier: optional(f.carrier, "carrier")?,
            reason: optional(f.reason, "reason")?,
            location,
            eta: optional(f.eta, "eta")?
                .map(|s| timestamp(&s, "eta"))
                .transpose()?,
            attributes,
        };
        Ok((event, attributes_error))
    }

    /// Checks every value rule of DESIGN.md §1. The engine calls it again right before writing.
    pub fn validate(&self, now: Timestamp) -> Result<(), FieldError> {
        self.validate_all_but_attributes(now)?;
        if let Some(attrs) = &self.attributes {
            attrs.check()?;
            if attrs.as_str().len() > ATTRIBUTES_BYTES_MAX {
                return Err(attributes_too_large());
            }
        }
        Ok(())
    }

    /// `validate` up to the `attributes`, which it checks last: the request parser checks them as
    /// it reads them, then runs this and answers their error after any of these.
    fn validate_all_but_attributes(&self, now: Timestamp) -> Result<(), FieldError> {
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
        Ok(())
    }
}

/// The rules of an attribute key (non-empty, no control characters, not `RESERVED_ATTRIBUTE_KEY`
/// unless the attributes were `stored`), and the errors of the `attributes` rules, shared by
/// [`Attributes::check`] and the request parser.
fn check_attribute_key(key: &str, stored: bool) -> Result<(), FieldError> {
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(FieldError::new(
            "attributes",
            "keys must be non-empty and free of control characters",
        ));
    }
    if key == RESERVED_ATTRIBUTE_KEY && !stored {
        return Err(FieldError::new(
            "attributes",
            format!("keys must not be \"{RESERVED_ATTRIBUTE_KEY}\" (reserved)"),
        ));
    }
    Ok(())
}

fn attribute_not_flat(key: &str) -> FieldError {
    let key: String = key.chars().take(64).collect();
    FieldError::new(
        format!("attributes.{key}"),
        "must be a string, number or bool (attributes are flat)",
    )
}

fn attributes_too_large() -> FieldError {
    FieldError::new(
        "attributes",
        format!("larger than {ATTRIBUTES_BYTES_MAX} bytes once encoded"),
    )
}

fn required<'a>(value: fields::Text<'a>, field: &'static str) -> Result<Cow<'a, str>, FieldError> {
    match value {
        fields::Text::Str(s) => Ok(s),
        fields::Text::Absent => Err(FieldError::new(field, "required")),
        fields::Text::Other => Err(FieldError::new(field, "expected a string")),
    }
}

fn optional(value: fields::Text<'_>, field: &'static str) -> Result<Option<String>, FieldError> {
    match value {
        fields::Text::Absent => Ok(None),
        fields::Text::Str(s) => Ok(Some(s.into_owned())),
        fields::Text::Other => Err(FieldError::new(field, "expected a string")),
    }
}

fn timestamp(text: &str, field: &'static str) -> Result<Timestamp, FieldError> {
    Timestamp::parse(text).map_err(|e| FieldError::new(field, e.to_string()))
}

fn parse_location(loc: fields::LocationFields<'_>) -> Result<Location, FieldError> {
    if let Some(unknown) = loc.first_unknown {
        let name: String = unknown.chars().take(64).collect();
        return Err(FieldError::new(format!("location.{name}"), "unknown field"));
    }
    let name = optional(loc.name, "location.name")?;
    let coord = |value: fields::Coord, field: &'static str| match value {
        fields::Coord::Number(n) => Ok(n),
        fields::Coord::Absent => Err(FieldError::new(field, "required")),
        fields::Coord::Other => Err(FieldError::new(field, "expected a number")),
    };
    Ok(Location {
        lat: coord(loc.lat, "location.lat")?,
        lon: coord(loc.lon, "location.lon")?,
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
    /// The event's JSON form as the API returns it (see its `Serialize`), as a value. Whatever the
    /// stored attributes hold (see `Attributes::to_value`).
    pub fn to_json(&self) -> Value {
        /// The event with its attributes already a `Value`: `to_value` of `Attributes` would
        /// parse their text as a `Value`, which fails or misreads one starting with
        /// `RESERVED_ATTRIBUTE_KEY` (stored by an older build).
        struct WithAttributes<'a>(&'a StoredEvent, Option<Value>);
        impl Serialize for WithAttributes<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize_with(s, self.1.as_ref())
            }
        }
        let attributes = self.event.attributes.as_ref().map(Attributes::to_value);
        // `serde_json::to_value` fails only on a map key that is not a string and on a raw value
        // that is not valid JSON (or misread): this writes neither.
        serde_json::to_value(WithAttributes(self, attributes))
            .expect("an event without raw values serialises to a `Value`")
    }

    /// `Serialize`, with `attributes` as given.
    fn serialize_with<S: Serializer>(
        &self,
        s: S,
        attributes: Option<&impl Serialize>,
    ) -> Result<S::Ok, S::Error> {
        let e = &self.event;
        let mut m = s.serialize_map(None)?;
        if let Some(attrs) = attributes {
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

/// The event's JSON form as the API returns it: the client's fields plus `lsn` and `received_at`,
/// times in UTC with milliseconds, absent optional fields omitted, keys in byte order (as
/// `serde_json::Map` orders them). Written straight to the output: list responses of 100 events
/// built a map per event first, then copied it (bench/RESULTS.md, session 10).
impl Serialize for StoredEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_with(s, self.event.attributes.as_ref())
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

/// Ingest bodies read straight into each event's fields, in memory proportional to the body: no
/// `Value` is built, of the whole object or of any field in it (a `Value` takes 32 bytes per
/// element, and `{"source":[0,0,...]}` took 16 bytes per byte of body). Each known field is read
/// into a slot for the JSON type it expects; a value of another type is read through, with every
/// check serde_json makes (a malformed body stays malformed), keeping only that it was of another
/// type, which is all `from_json`'s errors say. `attributes` are packed into an `AttrLog` and
/// checked at their end. What a body means, and every error, is what reading it as plain JSON to a
/// `Value` and `Event::from_json` then `Event::validate` decide (engine/tests/invalid_events.rs
/// compares them on random bodies).
///
/// Plain JSON: an object is an object, whatever its keys. With its `raw_value` feature (which the
/// workspace enables), serde_json's own `Value` reads an object whose first key is
/// `$serde_json::private::RawValue` as the JSON text in that key's string value. This parser did
/// the same, at the cost of a copy of that text and a fresh depth limit per nested object; it no
/// longer does (a deliberate change of what such a body means). So in
/// `"source":{"$serde_json::private::RawValue":"\"dms\""}`, `source` is an object where it takes
/// a string; in `location` the key is an unknown key, and in `attributes` a reserved one
/// (`RESERVED_ATTRIBUTE_KEY`). A body is one pass of one serde_json deserializer, within its
/// nesting limit of 128.
///
/// Memory, beyond the body and the events it yields: a string is borrowed from the body unless it
/// holds escapes; serde_json unescapes such a string into its scratch buffer (one per body, reused:
/// it grows to the longest escaped string, known field or not, up to twice its length as it
/// doubles, three times while a doubling copies it), and a field that keeps it copies it from
/// there once. A value of another type keeps nothing, whatever its size, beyond that buffer;
/// `attributes` cost up to 3 bytes per byte of body in their log (6 while its vectors double; see
/// `AttrLog`), and each item a fixed size (~350 bytes; at most `EVENTS_PER_REQUEST_MAX + 1` of
/// them): at most ~6 bytes per byte of body, plus the items. engine/tests/parse_memory.rs measures
/// these bounds.
mod fields {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{
        self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
    };
    use serde::ser::{Serialize, Serializer};
    use serde_json::value::RawValue;
    use serde_json::{Map, Value};

    use super::{
        ATTRIBUTES_BYTES_MAX, Attributes, EVENTS_PER_REQUEST_MAX, Event, FieldError,
        attribute_not_flat, attributes_too_large, check_attribute_key,
    };
    use crate::time::Timestamp;

    /// A visitor's answer to numbers and bools.
    macro_rules! numbers_and_bools_are {
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
        };
    }

    /// Any JSON value other than an object or an array.
    macro_rules! scalars_are {
        ($value:expr, $ret:ty) => {
            numbers_and_bools_are!($value, $ret);
            fn visit_str<E: de::Error>(self, _: &str) -> Result<$ret, E> {
                Ok($value)
            }
            fn visit_unit<E: de::Error>(self) -> Result<$ret, E> {
                Ok($value)
            }
        };
    }

    /// A request body: its items (one for a single event object; of an array, the first
    /// `EVENTS_PER_REQUEST_MAX + 1` kept and all of them counted: a body of `[{},{},...]` must not
    /// cost an `Item` per 3 bytes), or anything else (refused).
    pub(super) enum Body<'de> {
        Events { items: Vec<Item<'de>>, count: usize },
        Other,
    }

    /// An element of an array body (or an NDJSON line). Not boxed: nearly every item is an object.
    #[allow(clippy::large_enum_variant)]
    pub(super) enum Item<'de> {
        Object(EventFields<'de>),
        NotObject,
    }

    impl Item<'_> {
        /// The event, or the first rule it breaks: what `Event::from_json` then `Event::validate`
        /// decide for the object.
        pub(super) fn into_event(self, now: Timestamp) -> Result<Event, FieldError> {
            match self {
                Item::Object(f) => {
                    let (event, attributes_error) = Event::from_fields(f)?;
                    event.validate_all_but_attributes(now)?;
                    attributes_error.map_or(Ok(event), Err)
                }
                Item::NotObject => Err(FieldError::new("$", "expected an event object")),
            }
        }
    }

    /// An event object's known fields (a repeated key keeps its last value, as in a `Map`), and
    /// the first of its unknown keys in byte order (what `from_json` reports).
    #[derive(Default)]
    pub(super) struct EventFields<'a> {
        pub(super) event_id: Text<'a>,
        pub(super) order_id: Text<'a>,
        pub(super) status: Text<'a>,
        pub(super) occurred_at: Text<'a>,
        pub(super) source: Text<'a>,
        pub(super) carrier: Text<'a>,
        pub(super) reason: Text<'a>,
        pub(super) location: Place<'a>,
        pub(super) eta: Text<'a>,
        pub(super) attributes: Attrs,
        pub(super) first_unknown: Option<Cow<'a, str>>,
    }

    impl<'a> EventFields<'a> {
        /// The fields of a parsed object (`from_json`).
        pub(super) fn of_map(obj: &'a Map<String, Value>) -> EventFields<'a> {
            let mut f = EventFields::default();
            // Keys come in byte order: the first unknown one is the one to report.
            for (key, value) in obj {
                match Field::of(key) {
                    Some(Field::EventId) => f.event_id = Text::of(value),
                    Some(Field::OrderId) => f.order_id = Text::of(value),
                    Some(Field::Status) => f.status = Text::of(value),
                    Some(Field::OccurredAt) => f.occurred_at = Text::of(value),
                    Some(Field::Source) => f.source = Text::of(value),
                    Some(Field::Carrier) => f.carrier = Text::of(value),
                    Some(Field::Reason) => f.reason = Text::of(value),
                    Some(Field::Location) => f.location = Place::of(value),
                    Some(Field::Eta) => f.eta = Text::of(value),
                    Some(Field::Attributes) => f.attributes = Attrs::of(value),
                    None if f.first_unknown.is_none() => f.first_unknown = Some(Cow::Borrowed(key)),
                    None => {}
                }
            }
            f
        }
    }

    /// The fields of an event object.
    #[derive(Clone, Copy)]
    enum Field {
        EventId,
        OrderId,
        Status,
        OccurredAt,
        Source,
        Carrier,
        Reason,
        Location,
        Eta,
        Attributes,
    }

    impl Field {
        fn of(key: &str) -> Option<Field> {
            Some(match key {
                "event_id" => Field::EventId,
                "order_id" => Field::OrderId,
                "status" => Field::Status,
                "occurred_at" => Field::OccurredAt,
                "source" => Field::Source,
                "carrier" => Field::Carrier,
                "reason" => Field::Reason,
                "location" => Field::Location,
                "eta" => Field::Eta,
                "attributes" => Field::Attributes,
                _ => return None,
            })
        }
    }

    /// A key of an event object: a known field, or an unknown key's text (borrowed from the body
    /// unless it holds escapes).
    enum Key<'de> {
        Known(Field),
        Unknown(Cow<'de, str>),
    }

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_borrowed_str<E: de::Error>(self, k: &'de str) -> Result<Key<'de>, E> {
                    Ok(Field::of(k).map_or(Key::Unknown(Cow::Borrowed(k)), Key::Known))
                }
                fn visit_str<E: de::Error>(self, k: &str) -> Result<Key<'de>, E> {
                    Ok(Field::of(k)
                        .map_or_else(|| Key::Unknown(Cow::Owned(k.to_owned())), Key::Known))
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    fn read_fields<'de, A: MapAccess<'de>>(mut map: A) -> Result<EventFields<'de>, A::Error> {
        let mut f = EventFields::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key {
                Key::Known(Field::EventId) => f.event_id = map.next_value()?,
                Key::Known(Field::OrderId) => f.order_id = map.next_value()?,
                Key::Known(Field::Status) => f.status = map.next_value()?,
                Key::Known(Field::OccurredAt) => f.occurred_at = map.next_value()?,
                Key::Known(Field::Source) => f.source = map.next_value()?,
                Key::Known(Field::Carrier) => f.carrier = map.next_value()?,
                Key::Known(Field::Reason) => f.reason = map.next_value()?,
                Key::Known(Field::Location) => f.location = map.next_value()?,
                Key::Known(Field::Eta) => f.eta = map.next_value()?,
                Key::Known(Field::Attributes) => f.attributes = map.next_value()?,
                Key::Unknown(k) => {
                    map.next_value::<Skip>()?;
                    if f.first_unknown.as_ref().is_none_or(|u| k < *u) {
                        f.first_unknown = Some(k);
                    }
                }
            }
        }
        Ok(f)
    }

    /// A field that must be a string (`null` is the same as absent).
    #[derive(Default)]
    pub(super) enum Text<'a> {
        #[default]
        Absent,
        /// Borrowed from the body unless it holds escapes.
        Str(Cow<'a, str>),
        /// Any other type, read through.
        Other,
    }

    impl<'a> Text<'a> {
        fn of(value: &'a Value) -> Text<'a> {
            match value {
                Value::String(s) => Text::Str(Cow::Borrowed(s)),
                Value::Null => Text::Absent,
                _ => Text::Other,
            }
        }
    }

    impl<'de> Deserialize<'de> for Text<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'de>, D::Error> {
            struct TextVisitor;
            impl<'de> Visitor<'de> for TextVisitor {
                type Value = Text<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                    Ok(Text::Str(Cow::Borrowed(s)))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                    Ok(Text::Str(Cow::Owned(s.to_owned())))
                }
                fn visit_unit<E: de::Error>(self) -> Result<Text<'de>, E> {
                    Ok(Text::Absent)
                }
                numbers_and_bools_are!(Text::Other, Text<'de>);
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'de>, A::Error> {
                    skip_elements(seq)?;
                    Ok(Text::Other)
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'de>, A::Error> {
                    skip_entries(map)?;
                    Ok(Text::Other)
                }
            }
            d.deserialize_any(TextVisitor)
        }
    }

    /// `location`.
    #[derive(Default)]
    pub(super) enum Place<'a> {
        #[default]
        Absent,
        Object(LocationFields<'a>),
        Other,
    }

    /// A `location` object's keys (a repeated key keeps its last value), and the first of its
    /// unknown keys in byte order.
    #[derive(Default)]
    pub(super) struct LocationFields<'a> {
        pub(super) lat: Coord,
        pub(super) lon: Coord,
        pub(super) name: Text<'a>,
        pub(super) first_unknown: Option<Cow<'a, str>>,
    }

    impl<'a> Place<'a> {
        fn of(value: &'a Value) -> Place<'a> {
            match value {
                Value::Null => Place::Absent,
                Value::Object(map) => {
                    let mut loc = LocationFields::default();
                    for (key, value) in map {
                        match key.as_str() {
                            "lat" => loc.lat = Coord::of(value),
                            "lon" => loc.lon = Coord::of(value),
                            "name" => loc.name = Text::of(value),
                            _ if loc.first_unknown.is_none() => {
                                loc.first_unknown = Some(Cow::Borrowed(key))
                            }
                            _ => {}
                        }
                    }
                    Place::Object(loc)
                }
                _ => Place::Other,
            }
        }
    }

    impl<'de> Deserialize<'de> for Place<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Place<'de>, D::Error> {
            struct PlaceVisitor;
            impl<'de> Visitor<'de> for PlaceVisitor {
                type Value = Place<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Place<'de>, E> {
                    Ok(Place::Other)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Place<'de>, E> {
                    Ok(Place::Absent)
                }
                numbers_and_bools_are!(Place::Other, Place<'de>);
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Place<'de>, A::Error> {
                    skip_elements(seq)?;
                    Ok(Place::Other)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Place<'de>, A::Error> {
                    let mut loc = LocationFields::default();
                    while let Some(key) = map.next_key::<LocationKey<'de>>()? {
                        let unknown = match key {
                            LocationKey::Lat => {
                                loc.lat = map.next_value()?;
                                None
                            }
                            LocationKey::Lon => {
                                loc.lon = map.next_value()?;
                                None
                            }
                            LocationKey::Name => {
                                loc.name = map.next_value()?;
                                None
                            }
                            LocationKey::Other(k) => {
                                map.next_value::<Skip>()?;
                                Some(k)
                            }
                        };
                        if let Some(k) = unknown
                            && loc.first_unknown.as_ref().is_none_or(|u| k < *u)
                        {
                            loc.first_unknown = Some(k);
                        }
                    }
                    Ok(Place::Object(loc))
                }
            }
            d.deserialize_any(PlaceVisitor)
        }
    }

    enum LocationKey<'de> {
        Lat,
        Lon,
        Name,
        Other(Cow<'de, str>),
    }

    impl<'de> Deserialize<'de> for LocationKey<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LocationKey<'de>, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = LocationKey<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string key")
                }
                fn visit_borrowed_str<E: de::Error>(
                    self,
                    k: &'de str,
                ) -> Result<LocationKey<'de>, E> {
                    Ok(LocationKey::of(k).unwrap_or(LocationKey::Other(Cow::Borrowed(k))))
                }
                fn visit_str<E: de::Error>(self, k: &str) -> Result<LocationKey<'de>, E> {
                    Ok(LocationKey::of(k)
                        .unwrap_or_else(|| LocationKey::Other(Cow::Owned(k.to_owned()))))
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    impl LocationKey<'_> {
        fn of(key: &str) -> Option<LocationKey<'static>> {
            match key {
                "lat" => Some(LocationKey::Lat),
                "lon" => Some(LocationKey::Lon),
                "name" => Some(LocationKey::Name),
                _ => None,
            }
        }
    }

    /// `location.lat` and `location.lon`: a number (`null` is the same as absent).
    #[derive(Clone, Copy, Default)]
    pub(super) enum Coord {
        #[default]
        Absent,
        Number(f64),
        Other,
    }

    impl Coord {
        fn of(value: &Value) -> Coord {
            match value {
                Value::Null => Coord::Absent,
                Value::Number(n) => n.as_f64().map_or(Coord::Other, Coord::Number),
                _ => Coord::Other,
            }
        }
    }

    impl<'de> Deserialize<'de> for Coord {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Coord, D::Error> {
            struct CoordVisitor;
            impl<'de> Visitor<'de> for CoordVisitor {
                type Value = Coord;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                // As `Value` reads numbers, and `Number::as_f64` converts them.
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<Coord, E> {
                    Ok(Coord::Number(n as f64))
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<Coord, E> {
                    Ok(Coord::Number(n as f64))
                }
                fn visit_f64<E: de::Error>(self, n: f64) -> Result<Coord, E> {
                    // `Value` reads a number that is not finite as `null`.
                    Ok(if n.is_finite() {
                        Coord::Number(n)
                    } else {
                        Coord::Absent
                    })
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Coord, E> {
                    Ok(Coord::Other)
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Coord, E> {
                    Ok(Coord::Other)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Coord, E> {
                    Ok(Coord::Absent)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Coord, A::Error> {
                    skip_elements(seq)?;
                    Ok(Coord::Other)
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Coord, A::Error> {
                    skip_entries(map)?;
                    Ok(Coord::Other)
                }
            }
            d.deserialize_any(CoordVisitor)
        }
    }

    /// `attributes`. From a body, an object is checked as it is read, and `Object` holds the
    /// event's attributes or the error `Event::validate` gives for them (`AttrLog::finish`);
    /// from a parsed `Map`, its canonical text, not yet checked (`validate` checks it).
    #[derive(Default)]
    pub(super) enum Attrs {
        #[default]
        Absent,
        Object(Result<Attributes, FieldError>),
        Other,
    }

    impl Attrs {
        fn of(value: &Value) -> Attrs {
            match value {
                Value::Null => Attrs::Absent,
                Value::Object(map) => Attrs::Object(Ok(Attributes::from_map(map))),
                _ => Attrs::Other,
            }
        }
    }

    impl<'de> Deserialize<'de> for Attrs {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Attrs, D::Error> {
            struct AttrsVisitor;
            impl<'de> Visitor<'de> for AttrsVisitor {
                type Value = Attrs;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Attrs, E> {
                    Ok(Attrs::Other)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Attrs, E> {
                    Ok(Attrs::Absent)
                }
                numbers_and_bools_are!(Attrs::Other, Attrs);
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Attrs, A::Error> {
                    skip_elements(seq)?;
                    Ok(Attrs::Other)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attrs, A::Error> {
                    let mut log = AttrLog::new();
                    while map.next_key_seed(LogKey(&mut log))?.is_some() {
                        map.next_value_seed(LogValue(&mut log))?;
                    }
                    Ok(Attrs::Object(log.finish()))
                }
            }
            d.deserialize_any(AttrsVisitor)
        }
    }

    /// An `attributes` object's entries in body order, packed into bytes: a key, then a value
    /// that is a string, a number, a bool or anything else (read through, not kept). At the end
    /// of the object, `finish` decides as `Attributes::from_map` then `Event::validate` do on the
    /// `Map` a `Value` would hold (the last value of each key, keys in byte order) without
    /// building it, and writes the canonical text only while it is within the size bound.
    ///
    /// Size: per entry, its key and any string value as text, a tag, a number in 1 to 10 bytes,
    /// and its position (8 bytes) for the final sort. The smallest entries in a body, `"":0,` (5
    /// bytes) and `"":-0,` (6, a float), take 11 and 18: at most 3 bytes per byte of body, and
    /// twice that while the vectors double. (A map of `Value`s kept only the last of a repeated
    /// key, but took 14 bytes per byte of `"a":0,"b":0,...`.)
    struct AttrLog {
        bytes: Vec<u8>,
        /// Where each entry starts in `bytes`.
        entries: Vec<usize>,
    }

    /// The kinds of a logged value (the byte after its key).
    const NOT_FLAT: u8 = 0;
    const FALSE: u8 = 1;
    const TRUE: u8 = 2;
    /// A varint.
    const POS_INT: u8 = 3;
    /// `!n` as a varint.
    const NEG_INT: u8 = 4;
    /// 8 bytes, little-endian.
    const FLOAT: u8 = 5;
    /// A varint length, then the text.
    const STRING: u8 = 6;

    /// A logged value, read back.
    #[derive(Clone, Copy)]
    enum Logged<'a> {
        NotFlat,
        Bool(bool),
        PosInt(u64),
        NegInt(i64),
        Float(f64),
        String(&'a str),
    }

    impl AttrLog {
        /// Room for a typical event's few attributes without growing.
        fn new() -> AttrLog {
            AttrLog {
                bytes: Vec::with_capacity(64),
                entries: Vec::with_capacity(4),
            }
        }

        fn key(&mut self, key: &str) {
            self.entries.push(self.bytes.len());
            self.text(key);
        }

        fn text(&mut self, text: &str) {
            put_varint(&mut self.bytes, text.len() as u64);
            self.bytes.extend_from_slice(text.as_bytes());
        }

        /// The entry at `at`: its key and its value.
        fn entry(&self, at: usize) -> (&str, Logged<'_>) {
            let (key, tag) = self.text_at(at);
            let payload = tag + 1;
            let value = match self.bytes[tag] {
                NOT_FLAT => Logged::NotFlat,
                FALSE => Logged::Bool(false),
                TRUE => Logged::Bool(true),
                POS_INT => Logged::PosInt(get_varint(&self.bytes[payload..]).0),
                NEG_INT => Logged::NegInt(!(get_varint(&self.bytes[payload..]).0 as i64)),
                FLOAT => {
                    let bits = &self.bytes[payload..payload + 8];
                    Logged::Float(f64::from_le_bytes(bits.try_into().expect("8 bytes")))
                }
                STRING => Logged::String(self.text_at(payload).0),
                tag => unreachable!("no value is logged with tag {tag}"),
            };
            (key, value)
        }

        /// The text at `at`, and where it ends.
        fn text_at(&self, at: usize) -> (&str, usize) {
            let (len, n) = get_varint(&self.bytes[at..]);
            let (start, end) = (at + n, at + n + len as usize);
            let text = std::str::from_utf8(&self.bytes[start..end]).expect("logged from a str");
            (text, end)
        }

        fn key_bytes(&self, at: usize) -> &[u8] {
            let (len, n) = get_varint(&self.bytes[at..]);
            &self.bytes[at + n..at + n + len as usize]
        }

        /// The object's attributes, or the error `Event::validate` gives for them.
        fn finish(mut self) -> Result<Attributes, FieldError> {
            // The entries a `Map` keeps: the last of each key, in key order.
            let mut entries = std::mem::take(&mut self.entries);
            entries.sort_unstable_by(|&a, &b| {
                self.key_bytes(a).cmp(self.key_bytes(b)).then(b.cmp(&a))
            });
            entries.dedup_by(|a, b| self.key_bytes(*a) == self.key_bytes(*b));
            self.entries = entries;
            // `Attributes::check` (the first key, in key order, that is invalid or not flat), then
            // the size: the canonical text is written only while it is within the bound.
            let size = self.bytes.len() + 3 * self.entries.len() + 2;
            let mut text = Vec::with_capacity(size.min(ATTRIBUTES_BYTES_MAX + 2));
            text.push(b'{');
            let mut fits = true;
            for &at in &self.entries {
                let (key, value) = self.entry(at);
                check_attribute_key(key, false)?;
                if let Logged::NotFlat = value {
                    return Err(attribute_not_flat(key));
                }
                if !fits {
                    continue;
                }
                // (Escaping only lengthens a text.)
                if key.len() > ATTRIBUTES_BYTES_MAX
                    || matches!(value, Logged::String(s) if s.len() > ATTRIBUTES_BYTES_MAX)
                {
                    fits = false;
                    continue;
                }
                if text.len() > 1 {
                    text.push(b',');
                }
                // As a `Map` of `Value`s serialises: the same text as `Attributes::from_map`.
                serde_json::to_writer(&mut text, key).expect("a Vec takes any write");
                text.push(b':');
                serde_json::to_writer(&mut text, &value).expect("a Vec takes any write");
                // Room for the closing brace?
                fits = text.len() < ATTRIBUTES_BYTES_MAX;
            }
            if !fits {
                return Err(attributes_too_large());
            }
            text.push(b'}');
            let text = String::from_utf8(text).expect("serde_json writes UTF-8");
            Ok(Attributes::new(
                RawValue::from_string(text).expect("serde_json writes valid JSON"),
            ))
        }
    }

    impl Serialize for Logged<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match *self {
                Logged::NotFlat => s.serialize_unit(),
                Logged::Bool(b) => s.serialize_bool(b),
                Logged::PosInt(n) => s.serialize_u64(n),
                Logged::NegInt(n) => s.serialize_i64(n),
                Logged::Float(n) => s.serialize_f64(n),
                Logged::String(text) => s.serialize_str(text),
            }
        }
    }

    fn put_varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// A varint `put_varint` wrote, and its length.
    fn get_varint(bytes: &[u8]) -> (u64, usize) {
        let mut n = 0;
        for (i, &b) in bytes.iter().enumerate() {
            n |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return (n, i + 1);
            }
        }
        unreachable!("a logged varint ends")
    }

    /// Logs an attribute's key.
    struct LogKey<'a>(&'a mut AttrLog);

    impl<'de> DeserializeSeed<'de> for LogKey<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for LogKey<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string key")
        }
        fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
            self.0.key(key);
            Ok(())
        }
    }

    /// Logs an attribute's value, read as `Value` reads it.
    struct LogValue<'a>(&'a mut AttrLog);

    impl<'de> DeserializeSeed<'de> for LogValue<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for LogValue<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
            self.0.bytes.push(if b { TRUE } else { FALSE });
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
            if n >= 0 {
                return self.visit_u64(n as u64);
            }
            self.0.bytes.push(NEG_INT);
            put_varint(&mut self.0.bytes, !n as u64);
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
            self.0.bytes.push(POS_INT);
            put_varint(&mut self.0.bytes, n);
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
            // `Value` reads a number that is not finite as `null`.
            if !n.is_finite() {
                return self.visit_unit();
            }
            self.0.bytes.push(FLOAT);
            self.0.bytes.extend_from_slice(&n.to_le_bytes());
            Ok(())
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
            self.0.bytes.push(STRING);
            self.0.text(text);
            Ok(())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            self.0.bytes.push(NOT_FLAT);
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
            skip_elements(seq)?;
            self.visit_unit()
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
            skip_entries(map)?;
            self.visit_unit()
        }
    }

    fn skip_elements<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(())
    }

    fn skip_entries<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(())
    }

    /// A value read and checked in full, then dropped: the parts of a body no event keeps (unknown
    /// fields, values of another type than their field's, arrays given as items, items past the
    /// event limit). Not `serde::de::IgnoredAny`: serde_json skips those without checking UTF-8,
    /// surrogates, number ranges or the nesting limit, and such a body must stay malformed JSON,
    /// as when it was parsed to a `Value`.
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
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Skip, A::Error> {
                    skip_elements(seq)?;
                    Ok(Skip)
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Skip, A::Error> {
                    skip_entries(map)?;
                    Ok(Skip)
                }
            }
            d.deserialize_any(SkipVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Item<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Item<'de>, D::Error> {
            struct ItemVisitor;
            impl<'de> Visitor<'de> for ItemVisitor {
                type Value = Item<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                scalars_are!(Item::NotObject, Item<'de>);
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item<'de>, A::Error> {
                    skip_elements(seq)?;
                    Ok(Item::NotObject)
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item<'de>, A::Error> {
                    read_fields(map).map(Item::Object)
                }
            }
            d.deserialize_any(ItemVisitor)
        }
    }

    impl<'de> Deserialize<'de> for Body<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Body<'de>, D::Error> {
            struct BodyVisitor;
            impl<'de> Visitor<'de> for BodyVisitor {
                type Value = Body<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                scalars_are!(Body::Other, Body<'de>);
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body<'de>, A::Error> {
                    let mut items = Vec::new();
                    while items.len() <= EVENTS_PER_REQUEST_MAX {
                        match seq.next_element::<Item<'de>>()? {
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
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body<'de>, A::Error> {
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
            if key == "$serde_json::private::RawValue" {
                return Err(FieldError::new(
                    "attributes",
                    r#"keys must not be "$serde_json::private::RawValue" (reserved)"#,
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
            json!({"$serde_json::private::RawValue": "x", "a": 1}),
            json!({"$serde_json::private::RawValue": 1, "!": []}),
            json!({"$serde_json::private::RawValuf": 1, "$serde_json::private::RawValu": 1}),
            json!({"\u{1}": 1, "$serde_json::private::RawValue": 1}),
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

    const TOKEN: &str = "$serde_json::private::RawValue";

    fn stored_event(attributes: &str) -> StoredEvent {
        let at = Timestamp::parse("2026-01-01T00:00:00Z").expect("valid");
        StoredEvent {
            lsn: Lsn(7),
            received_at: at,
            event: Event {
                event_id: "e1".into(),
                order_id: "o1".into(),
                status: Status::Created,
                occurred_at: at,
                source: None,
                carrier: None,
                reason: None,
                location: None,
                eta: None,
                attributes: Some(Attributes::from_stored(attributes.into()).expect("an object")),
            },
        }
    }

    /// The reserved key is refused in new attributes, but not in stored ones: a build before the
    /// rule may have stored it, and a replica validates what it applies.
    #[test]
    fn the_reserved_key_is_refused_unless_stored() {
        let reserved = Err(FieldError::new(
            "attributes",
            format!("keys must not be \"{TOKEN}\" (reserved)"),
        ));
        let new = attrs(json!({ TOKEN: "x", "a": 1 }));
        assert_eq!(new.as_str(), format!(r#"{{"{TOKEN}":"x","a":1}}"#));
        assert_eq!(new.check(), reserved);
        let stored = Attributes::from_stored(new.as_str().to_owned()).expect("an object");
        assert_eq!(stored.check(), Ok(()));
        assert_eq!(stored, new);
        let mut event = stored_event(new.as_str()).event;
        let now = event.occurred_at;
        assert_eq!(event.validate(now), Ok(()));
        event.attributes = Some(new);
        assert_eq!(event.validate(now), reserved);
        // Other rules still apply to stored attributes.
        let flat = stored_event(&format!(r#"{{"{TOKEN}":[1]}}"#))
            .event
            .validate(now);
        assert_eq!(
            flat.expect_err("not flat").field,
            format!("attributes.{TOKEN}")
        );
    }

    /// `to_json` used `serde_json::to_value`, which parses the attributes' text as a `Value`: one
    /// starting with the reserved key (as an older build may have stored it) panicked.
    #[test]
    fn to_json_takes_any_stored_attributes() {
        let e = stored_event(&format!(r#"{{"{TOKEN}":"x","a":1}}"#));
        assert!(serde_json::to_value(&e).is_err(), "serde_json misreads it");
        let v = e.to_json();
        assert_eq!(v["attributes"], json!({ TOKEN: "x", "a": 1 }));
        assert_eq!(v["lsn"], 7);
        // As the API writes it.
        let text = serde_json::to_string(&e).expect("json");
        assert!(text.starts_with(&format!(r#"{{"attributes":{{"{TOKEN}":"x","a":1}},"#)));
        let e = stored_event(&format!(r#"{{"{TOKEN}":"[1,2]"}}"#));
        assert_eq!(e.to_json()["attributes"], json!({ TOKEN: "[1,2]" }));
        assert_eq!(e.event.to_json()["attributes"], json!({ TOKEN: "[1,2]" }));
        // A text no `Map` holds (never written by this code) is answered as text.
        let e = stored_event(r#"{"t":1e999}"#);
        assert_eq!(e.to_json()["attributes"], json!(r#"{"t":1e999}"#));
        // The rest is what the API writes.
        let e = stored_event(r#"{"a":"x","b":2.5,"c":true}"#);
        let text = serde_json::to_string(&e).expect("json");
        assert_eq!(
            e.to_json(),
            serde_json::from_str::<Value>(&text).expect("json")
        );
    }
}

/// The request parser reads known fields into typed slots, never into `Value`s: it must decide as
/// reading the object as plain JSON to a `Value` and `Event::from_json` then `Event::validate` do,
/// for values of every type, and in memory proportional to the body.
#[cfg(test)]
mod parser_tests {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::json;

    use super::*;

    /// A JSON text read as plain JSON: as `Value` reads it, but an object is an object whatever
    /// its first key (a `Value` reads one starting with serde_json's raw-value token as the JSON
    /// text in it; see `fields`). engine/tests/invalid_events.rs has the same.
    struct Plain(Value);

    impl<'de> Deserialize<'de> for Plain {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Plain, D::Error> {
            struct PlainVisitor;
            impl<'de> Visitor<'de> for PlainVisitor {
                type Value = Plain;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any valid JSON value")
                }
                fn visit_bool<E>(self, b: bool) -> Result<Plain, E> {
                    Ok(Plain(b.into()))
                }
                fn visit_i64<E>(self, n: i64) -> Result<Plain, E> {
                    Ok(Plain(n.into()))
                }
                fn visit_u64<E>(self, n: u64) -> Result<Plain, E> {
                    Ok(Plain(n.into()))
                }
                fn visit_f64<E>(self, n: f64) -> Result<Plain, E> {
                    Ok(Plain(n.into()))
                }
                fn visit_str<E>(self, s: &str) -> Result<Plain, E> {
                    Ok(Plain(s.into()))
                }
                fn visit_unit<E>(self) -> Result<Plain, E> {
                    Ok(Plain(Value::Null))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Plain, A::Error> {
                    let mut items = Vec::new();
                    while let Some(Plain(item)) = seq.next_element()? {
                        items.push(item);
                    }
                    Ok(Plain(Value::Array(items)))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Plain, A::Error> {
                    let mut entries = Map::new();
                    while let Some((key, Plain(value))) = map.next_entry()? {
                        entries.insert(key, value);
                    }
                    Ok(Plain(Value::Object(entries)))
                }
            }
            d.deserialize_any(PlainVisitor)
        }
    }

    const IDS: &str = concat!(
        r#""event_id":"e1","order_id":"o1","status":"created","#,
        r#""occurred_at":"2026-01-01T00:00:00Z""#
    );

    fn now() -> Timestamp {
        Timestamp::parse("2026-06-01T00:00:00Z").expect("valid")
    }

    /// What the body's single event gives: the parser's answer, after checking that reading it
    /// as plain JSON to a `Value` first gives the same.
    fn parse_one(body: &str) -> Result<Event, FieldError> {
        let parsed = match parse_request(body.as_bytes(), BodyFormat::Json, now()) {
            Ok(mut events) => {
                assert_eq!(events.len(), 1);
                Ok(events.remove(0))
            }
            Err(RequestError::Invalid { mut errors, .. }) => {
                assert_eq!(errors.len(), 1);
                Err(errors.remove(0).error)
            }
            Err(other) => panic!("{body}: {other:?}"),
        };
        let Plain(value) = serde_json::from_str(body).expect("valid JSON");
        let reference = Event::from_json(&value).and_then(|e| e.validate(now()).map(|()| e));
        assert_eq!(parsed, reference, "{body}");
        parsed
    }

    fn error(field: &str, message: &str) -> Result<Event, FieldError> {
        Err(FieldError::new(field.to_owned(), message.to_owned()))
    }

    const WRONG_TYPES: [&str; 12] = [
        "17",
        "-1.5",
        "true",
        "[]",
        r#"["created"]"#,
        "[[[1, {\"a\": [2]}]]]",
        "{}",
        r#"{"a": "b", "c": [1]}"#,
        // Objects, though serde_json's `Value` reads the first as the number 5 and the second as
        // the string "dms" (see `fields`).
        r#"{"$serde_json::private::RawValue": "5"}"#,
        r#"{"$serde_json::private::RawValue": "\"dms\""}"#,
        r#"{"$serde_json::private::RawValue": 5}"#,
        r#"{"a": 1, "$serde_json::private::RawValue": "\"x\""}"#,
    ];

    #[test]
    fn values_of_a_wrong_type_give_the_errors_a_value_gave() {
        for field in ["event_id", "order_id", "status", "occurred_at"] {
            for wrong in WRONG_TYPES {
                let body = format!("{{{IDS},\"{field}\":{wrong}}}");
                assert_eq!(
                    parse_one(&body),
                    error(field, "expected a string"),
                    "{body}"
                );
            }
            let body = format!("{{{IDS},\"{field}\":null}}");
            assert_eq!(parse_one(&body), error(field, "required"));
        }
        for field in ["source", "carrier", "reason", "eta"] {
            for wrong in WRONG_TYPES {
                let body = format!("{{{IDS},\"{field}\":{wrong}}}");
                assert_eq!(
                    parse_one(&body),
                    error(field, "expected a string"),
                    "{body}"
                );
            }
            assert!(parse_one(&format!("{{{IDS},\"{field}\":null}}")).is_ok());
        }
        for wrong in ["17", "true", "\"x\"", "[51.5, -0.12]", "[]"] {
            let body = format!("{{{IDS},\"location\":{wrong}}}");
            let want = error("location", "expected an object {lat, lon, name?}");
            assert_eq!(parse_one(&body), want, "{body}");
            let body = format!("{{{IDS},\"attributes\":{wrong}}}");
            assert_eq!(parse_one(&body), error("attributes", "expected an object"));
        }
        for wrong in ["\"51.5\"", "true", "[1]", "{}", "{\"lat\": 1}"] {
            let body = format!("{{{IDS},\"location\":{{\"lat\":{wrong},\"lon\":0}}}}");
            assert_eq!(parse_one(&body), error("location.lat", "expected a number"));
            let body = format!("{{{IDS},\"location\":{{\"lat\":0,\"lon\":{wrong}}}}}");
            assert_eq!(parse_one(&body), error("location.lon", "expected a number"));
        }
        for wrong in ["1", "true", "[\"Depot\"]", "{}"] {
            let body = format!("{{{IDS},\"location\":{{\"lat\":\"x\",\"name\":{wrong}}}}}");
            // `name` is checked before the coordinates.
            assert_eq!(
                parse_one(&body),
                error("location.name", "expected a string")
            );
        }
        let body = format!("{{{IDS},\"location\":{{\"zz\":[1],\"alt\":{{}},\"lat\":\"x\"}}}}");
        assert_eq!(parse_one(&body), error("location.alt", "unknown field"));
        let body = format!("{{{IDS},\"location\":{{\"lon\":0}}}}");
        assert_eq!(parse_one(&body), error("location.lat", "required"));
        let body = format!("{{{IDS},\"location\":{{\"lat\":null,\"lon\":0}}}}");
        assert_eq!(parse_one(&body), error("location.lat", "required"));
        // The checks' order is `from_json`'s: unknown key, status, location, attributes, ...
        let body = r#"{"status":1,"event_id":[],"location":1,"attributes":1}"#;
        assert_eq!(parse_one(body), error("status", "expected a string"));
        let body = r#"{"status":"created","event_id":[],"location":1,"attributes":1,"zz":1}"#;
        assert_eq!(parse_one(body), error("zz", "unknown field"));
        let body = r#"{"status":"created","event_id":[],"location":1,"attributes":1}"#;
        assert_eq!(
            parse_one(body),
            error("location", "expected an object {lat, lon, name?}")
        );
        let body = r#"{"status":"created","event_id":[],"attributes":1}"#;
        assert_eq!(parse_one(body), error("attributes", "expected an object"));
        // A repeated key keeps its last value, whatever the types.
        let body = format!("{{{IDS},\"source\":[1],\"source\":\"dms\"}}");
        assert_eq!(
            parse_one(&body).expect("valid").source.as_deref(),
            Some("dms")
        );
        let body = format!("{{{IDS},\"source\":\"dms\",\"source\":{{}}}}");
        assert_eq!(parse_one(&body), error("source", "expected a string"));
    }

    /// Values a known field does not keep are read through, not built: a 4 MiB array costs
    /// nothing (as a `Value`, 32 bytes per element: 64 MiB), and its error is the same.
    #[test]
    fn a_huge_value_of_a_wrong_type_is_refused_as_before() {
        let zeros = vec!["0"; 2 << 20].join(",");
        let cases = [
            (
                format!("{{\"source\":[{zeros}],{IDS}}}"),
                error("source", "expected a string"),
            ),
            (
                format!("{{{IDS},\"location\":{{\"alt\":[{zeros}]}}}}"),
                error("location.alt", "unknown field"),
            ),
            (
                format!("{{{IDS},\"attributes\":{{\"a\":[{zeros}],\"b\":1}}}}"),
                error(
                    "attributes.a",
                    "must be a string, number or bool (attributes are flat)",
                ),
            ),
            (
                format!(
                    "{{{IDS},\"attributes\":{{\"a\":\"{}\"}}}}",
                    "x".repeat(4 << 20)
                ),
                error("attributes", "larger than 4096 bytes once encoded"),
            ),
        ];
        for (body, want) in cases {
            assert!(body.len() >= 4 << 20);
            match parse_request(body.as_bytes(), BodyFormat::Json, now()) {
                Err(RequestError::Invalid { errors, omitted: 0 }) => {
                    assert_eq!(errors.len(), 1);
                    assert_eq!(Err(errors[0].error.clone()), want);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A body's `attributes` are never built as a map; what is kept, and every error, is what the
    /// map gives (`Attributes::from_map`, then `validate`).
    #[test]
    fn attributes_read_from_a_body_are_what_their_map_gives() {
        let at_bound = format!(r#"{{"k":"{}"}}"#, "x".repeat(4096 - 8));
        let past_bound = format!(r#"{{"k":"{}"}}"#, "x".repeat(4096 - 7));
        let many_keys = (0..600)
            .map(|i| format!("\"k{i}\":{i}"))
            .collect::<Vec<_>>();
        let many_keys = format!("{{{}}}", many_keys.join(","));
        let cases = [
            "{}",
            r#"{"slot":"09-11","crates":3,"fragile":true,"temp":-1.5}"#,
            r#"{"b":1,"a":"x","c":2.50,"d":1e1,"e":1E15,"f":-0,"g":-0.0,"h":5e-324,"i":1e308}"#,
            r#"{"max":18446744073709551615,"min":-9223372036854775808,"big":18446744073709551616}"#,
            r#"{"a":1,"a":"two","b":[1],"b":2}"#,
            r#"{"a":[1],"b":1,"a":2}"#,
            r#"{"a":1,"a":[1]}"#,
            r#"{"\u0061":1,"a":2}"#,
            r#"{"é":"\u00e9t\u00e9","q\"uote":"a\/b\n\t\u0001","":1}"#,
            r#"{"z":null,"b":{"c":1},"a":[]}"#,
            r#"{"tab\there":1,"a":[]}"#,
            r#"{"b":[],"tab\there":1}"#,
            r#"{"":[]}"#,
            r#"{"$serde_json::private::RawValue":"{\"b\":1,\"a\":[2]}"}"#,
            r#"{"$serde_json::private::RawValue":"{\"b\":1,\"a\":2}"}"#,
            r#"{"a":{"$serde_json::private::RawValue":"\"x\""}}"#,
            r#"{"a":{"$serde_json::private::RawValue":"[1]"}}"#,
            r#"{"a":1,"$serde_json::private::RawValue":"x"}"#,
            r#"{"a":1,"\u0024serde_json::private::RawValue":2}"#,
            r#"{"$serde_json::private::RawValue":[],"":1}"#,
            r#"{"$serde_json::private::RawValuE":"x","$serde_json::private::RawValue ":1}"#,
            &at_bound,
            &past_bound,
            &many_keys,
        ];
        for attrs in cases {
            let body = format!("{{{IDS},\"attributes\":{attrs}}}");
            // `parse_one` compares with reading a `Value` first.
            let got = parse_one(&body);
            if let Ok(event) = &got {
                let text = event.attributes.as_ref().expect("attributes").as_str();
                assert!(text.len() <= ATTRIBUTES_BYTES_MAX, "{attrs}");
            }
        }
        assert_eq!(
            parse_one(&format!("{{{IDS},\"attributes\":{at_bound}}}"))
                .expect("valid")
                .attributes
                .expect("attributes")
                .as_str()
                .len(),
            ATTRIBUTES_BYTES_MAX
        );
    }

    const TOKEN: &str = "$serde_json::private::RawValue";

    /// serde_json's `Value` reads an object whose first key is its private raw-value token as the
    /// JSON text in the token's value: that is why the key is reserved in `attributes` (should
    /// serde_json stop, this test says so). The parser reads it as an ordinary key (see `fields`).
    #[test]
    fn serde_json_raw_value_token_is_an_ordinary_key() {
        let token = format!(r#"{{"{TOKEN}":"[1,{{\"a\":2}}]"}}"#);
        let value: Value = serde_json::from_str(&token).expect("valid");
        assert_eq!(value, json!([1, {"a": 2}]));
        // Where a string is expected: an object, the wrong type (`Value` read the string "dms").
        for field in ["source", "event_id", "eta"] {
            let body = format!(r#"{{{IDS},"{field}":{{"{TOKEN}":"\"dms\""}}}}"#);
            assert_eq!(parse_one(&body), error(field, "expected a string"));
        }
        // In `location`, an unknown key (`Value` read the location in it).
        let text = serde_json::to_string(r#"{"lat":1,"lon":2}"#).expect("a string");
        let body = format!(r#"{{{IDS},"location":{{"{TOKEN}":{text}}}}}"#);
        let field = format!("location.{TOKEN}");
        assert_eq!(parse_one(&body), error(&field, "unknown field"));
        let body = format!(r#"{{{IDS},"location":{{"lat":{{"{TOKEN}":"1"}},"lon":2}}}}"#);
        assert_eq!(parse_one(&body), error("location.lat", "expected a number"));
        // In `attributes`, a reserved key, wherever it is and however it is spelt; an object.
        let reserved = format!(r#"keys must not be "{TOKEN}" (reserved)"#);
        for attributes in [
            format!(r#"{{"{TOKEN}":"{{\"a\":1}}"}}"#),
            format!(r#"{{"a":1,"{TOKEN}":"x"}}"#),
            r#"{"a":1,"\u0024serde_json::private::RawValue":true}"#.to_owned(),
        ] {
            let body = format!(r#"{{{IDS},"attributes":{attributes}}}"#);
            assert_eq!(parse_one(&body), error("attributes", &reserved), "{body}");
        }
        let body = format!(r#"{{{IDS},"attributes":{{"a":{{"{TOKEN}":"1"}}}}}}"#);
        let not_flat = "must be a string, number or bool (attributes are flat)";
        assert_eq!(parse_one(&body), error("attributes.a", not_flat));
        // Its value is not read as JSON: not malformed, whatever it holds.
        for inner in [r#""[1""#, "5", r#""\"\\ud800\"""#] {
            let body = format!(r#"{{{IDS},"source":{{"{TOKEN}":{inner}}}}}"#);
            assert_eq!(parse_one(&body), error("source", "expected a string"));
        }
        // Nested tokens: one object in another's string, each level escaped once more. `Value`
        // copied the text at each level, and started its depth limit again at each.
        let mut nested = "[0]".to_owned();
        for _ in 0..17 {
            let text = serde_json::to_string(&nested).expect("a string");
            nested = format!(r#"{{"{TOKEN}":{text}}}"#);
        }
        let body = format!(r#"{{{IDS},"source":{nested}}}"#);
        assert_eq!(parse_one(&body), error("source", "expected a string"));
    }
}
