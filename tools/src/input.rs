//! Reading events to ingest from a JSON array or NDJSON, streamed in batches so that memory stays
//! bounded by the batch size and the line length, whatever the input size.

use std::io::BufRead;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;

use crate::Error;

/// The longest NDJSON line read; longer lines are rejected without being held in memory.
pub const LINE_BYTES_MAX: usize = 8 << 20;

/// How the input is laid out, told by its first non-blank byte: `[` is an array, anything else
/// NDJSON (one object per line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Array,
    Ndjson,
}

/// One input event: its position (1-based element number in an array, line number in NDJSON) and
/// the event, or why it cannot be sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub position: u64,
    pub event: Result<Value, String>,
}

impl Item {
    /// The `event_id`, if the item has a string one (for reports).
    pub fn event_id(&self) -> Option<&str> {
        self.event.as_ref().ok()?.get("event_id")?.as_str()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    pub batch_size: usize,
    /// Drop `lsn` and `received_at` (stored events, as in quarantine files, back to events).
    pub strip_stored_fields: bool,
    pub max_line_bytes: usize,
}

fn item(position: u64, value: Value, opts: &ReadOptions) -> Item {
    let event = match value {
        Value::Object(mut m) => {
            if opts.strip_stored_fields {
                m.remove("lsn");
                m.remove("received_at");
            }
            Ok(Value::Object(m))
        }
        other => Err(format!(
            "not a JSON object but {}",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )),
    };
    Item { position, event }
}

/// Reads `reader` and hands batches of at most `batch_size` items (with the input's format) to `emit`, which returns `false`
/// to stop early. A syntax error inside an array ends the input (there is no resynchronising in a
/// JSON document); a bad NDJSON line is an item with its reason and reading goes on.
pub fn read_batches<R: BufRead>(
    mut reader: R,
    opts: &ReadOptions,
    emit: &mut dyn FnMut(Format, Vec<Item>) -> bool,
) -> Result<Format, Error> {
    let io = |e: std::io::Error| Error::Input(format!("read the input: {e}"));
    let batch_size = opts.batch_size.max(1);
    // Skip leading blanks to see the first significant byte, counting lines for NDJSON positions.
    let mut skipped_lines = 0u64;
    let format = loop {
        let buf = reader.fill_buf().map_err(io)?;
        if buf.is_empty() {
            return Ok(Format::Ndjson);
        }
        match buf.iter().position(|b| !b" \t\r\n".contains(b)) {
            Some(i) => {
                skipped_lines += buf[..i].iter().filter(|&&b| b == b'\n').count() as u64;
                let first = buf[i];
                reader.consume(i);
                break if first == b'[' {
                    Format::Array
                } else {
                    Format::Ndjson
                };
            }
            None => {
                let n = buf.len();
                skipped_lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
                reader.consume(n);
            }
        }
    };
    match format {
        Format::Array => {
            let mut de = serde_json::Deserializer::from_reader(reader);
            let seed = ArraySeed {
                opts,
                batch_size,
                emit,
            };
            seed.deserialize(&mut de)
                .and_then(|()| de.end())
                .map_err(|e| Error::Input(format!("the JSON array does not parse: {e}")))?;
        }
        Format::Ndjson => read_ndjson(reader, opts, batch_size, skipped_lines, emit)?,
    }
    Ok(format)
}

fn read_ndjson<R: BufRead>(
    mut reader: R,
    opts: &ReadOptions,
    batch_size: usize,
    mut line_no: u64,
    emit: &mut dyn FnMut(Format, Vec<Item>) -> bool,
) -> Result<(), Error> {
    use std::io::Read as _;
    let io = |e: std::io::Error| Error::Input(format!("read the input: {e}"));
    let limit = opts.max_line_bytes;
    let mut batch = Vec::with_capacity(batch_size.min(10_000));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(limit as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.len() > limit && line.last() != Some(&b'\n') {
            skip_line(&mut reader).map_err(io)?;
            batch.push(Item {
                position: line_no,
                event: Err(format!("the line is longer than {limit} bytes")),
            });
        } else {
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            batch.push(match serde_json::from_slice::<Value>(text) {
                Ok(v) => item(line_no, v, opts),
                Err(e) => Item {
                    position: line_no,
                    event: Err(format!("not JSON: {e}")),
                },
            });
        }
        if batch.len() >= batch_size && !emit(Format::Ndjson, std::mem::take(&mut batch)) {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        emit(Format::Ndjson, batch);
    }
    Ok(())
}

/// Consumes the rest of an over-long line, up to and including its newline.
fn skip_line<R: BufRead>(reader: &mut R) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// Visits the array one element at a time, so only one batch is in memory.
struct ArraySeed<'a> {
    opts: &'a ReadOptions,
    batch_size: usize,
    emit: &'a mut dyn FnMut(Format, Vec<Item>) -> bool,
}

impl<'de> DeserializeSeed<'de> for ArraySeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArraySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut batch = Vec::with_capacity(self.batch_size.min(10_000));
        let mut position = 0u64;
        while let Some(v) = seq.next_element::<Value>()? {
            position += 1;
            batch.push(item(position, v, self.opts));
            if batch.len() >= self.batch_size
                && !(self.emit)(Format::Array, std::mem::take(&mut batch))
            {
                // The receiver is gone: drain nothing more.
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        if !batch.is_empty() {
            (self.emit)(Format::Array, batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, batch_size: usize, strip: bool) -> (Format, Vec<Vec<Item>>) {
        let mut batches = Vec::new();
        let opts = ReadOptions {
            batch_size,
            strip_stored_fields: strip,
            max_line_bytes: 64,
        };
        let f = read_batches(text.as_bytes(), &opts, &mut |_, b| {
            batches.push(b);
            true
        })
        .unwrap();
        (f, batches)
    }

    #[test]
    fn arrays_are_streamed_in_batches() {
        let (f, b) = read(
            " \n[{\"event_id\":\"a\"},{\"event_id\":\"b\"}, 3]",
            2,
            false,
        );
        assert_eq!(f, Format::Array);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0][1].event_id(), Some("b"));
        assert_eq!(b[1][0].position, 3);
        assert!(b[1][0].event.as_ref().unwrap_err().contains("a number"));
    }

    #[test]
    fn ndjson_lines_keep_their_numbers_and_bad_lines_are_items() {
        let long = format!("{{\"x\":\"{}\"}}", "y".repeat(100));
        let text = format!(
            "\n{{\"event_id\":\"a\",\"lsn\":4,\"received_at\":\"t\"}}\n\nnot json\n{long}\n{{\"event_id\":\"c\"}}"
        );
        let (f, b) = read(&text, 10, true);
        assert_eq!(f, Format::Ndjson);
        let items = &b[0];
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].position, 2);
        assert_eq!(
            items[0].event.as_ref().unwrap(),
            &serde_json::json!({"event_id":"a"})
        );
        assert_eq!(items[1].position, 4);
        assert!(items[1].event.as_ref().unwrap_err().starts_with("not JSON"));
        assert_eq!(items[2].position, 5);
        assert!(
            items[2]
                .event
                .as_ref()
                .unwrap_err()
                .contains("longer than 64")
        );
        assert_eq!(items[3].position, 6);
        assert_eq!(items[3].event_id(), Some("c"));
    }

    #[test]
    fn a_broken_array_is_an_error_naming_the_place() {
        let opts = ReadOptions {
            batch_size: 10,
            strip_stored_fields: false,
            max_line_bytes: 64,
        };
        let e =
            read_batches("[{\"a\":1},\n{\"b\":".as_bytes(), &opts, &mut |_, _| true).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let (_, b) = read("", 10, false);
        assert!(b.is_empty());
    }
}
