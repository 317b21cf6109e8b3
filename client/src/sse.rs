//! Server-Sent Events: an incremental parser of the `text/event-stream` format (bounded line length)
//! and the reader of `GET /v1/stream` on top of it.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::api::StoredEvent;
use crate::transport::BodyReader;

/// One dispatched event of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseFrame {
    /// The `id:` of this event, if it carried one (trackstore: the LSN).
    pub id: Option<String>,
    /// The `event:` type, `message` when absent (trackstore: `delivery` or `error`).
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// The incremental `text/event-stream` parser (WHATWG HTML §9.2.6): lines end in LF, CRLF or CR
/// (even split across chunks), `:` lines are comments, an empty line dispatches the event. A line
/// longer than the bound is an error rather than unbounded memory.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    max_line_bytes: usize,
    /// The previous chunk ended in CR: a LF starting this one belongs to that line end.
    skip_lf: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn new(max_line_bytes: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            max_line_bytes,
            skip_lf: false,
            id: None,
            event: None,
            data: None,
        }
    }

    /// Feeds bytes; appends every event completed by them to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut VecDeque<SseFrame>) -> Result<(), Error> {
        if self.skip_lf && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.skip_lf = false;
        while let Some(i) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.extend(&bytes[..i])?;
            if bytes[i] == b'\r' {
                match bytes.get(i + 1) {
                    Some(b'\n') => bytes = &bytes[i + 2..],
                    Some(_) => bytes = &bytes[i + 1..],
                    None => {
                        self.skip_lf = true;
                        bytes = &[];
                    }
                }
            } else {
                bytes = &bytes[i + 1..];
            }
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
        }
        self.extend(bytes)
    }

    fn extend(&mut self, part: &[u8]) -> Result<(), Error> {
        if self.line.len() + part.len() > self.max_line_bytes {
            return Err(Error::Stream(format!(
                "a line is longer than {} bytes",
                self.max_line_bytes
            )));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut VecDeque<SseFrame>) -> Result<(), Error> {
        if line.is_empty() {
            if let Some(mut data) = self.data.take() {
                data.pop();
                out.push_back(SseFrame {
                    id: self.id.clone(),
                    event: self.event.take().unwrap_or_else(|| "message".into()),
                    data,
                });
            }
            self.event = None;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let text =
            std::str::from_utf8(line).map_err(|_| Error::Stream("a line is not UTF-8".into()))?;
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                // The spec appends value + LF per line and drops the last LF at dispatch.
                let data = self.data.get_or_insert_with(String::new);
                if data.len() + value.len() >= self.max_line_bytes {
                    return Err(Error::Stream(format!(
                        "an event's data is longer than {} bytes",
                        self.max_line_bytes
                    )));
                }
                data.push_str(value);
                data.push('\n');
            }
            // The spec ignores ids containing NUL.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }

    /// The last `id:` seen, which a reconnect sends as `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

/// The final `event: error` of a trackstore stream: why it ended and where to resume.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StreamEnd {
    /// `too_slow`, `shutdown`, `storage_failure`...
    pub reason: String,
    #[serde(default)]
    pub detail: String,
    /// The first LSN not yet examined for this subscriber.
    #[serde(default)]
    pub next_lsn: Option<u64>,
}

/// What a live stream yields.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum StreamItem {
    /// A committed event matching the subscription (`event: delivery`).
    Event(Box<StoredEvent>),
    /// The server ended the stream and said why (`event: error`); reconnect with `Last-Event-ID`.
    End(StreamEnd),
    /// Any other event type, passed through.
    Other(SseFrame),
}

/// An open `GET /v1/stream`. Read it with [`EventStream::next`]; drop it to unsubscribe.
pub struct EventStream {
    body: BodyReader,
    parser: SseParser,
    queue: VecDeque<SseFrame>,
    idle_timeout: Duration,
    last_lsn: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("last_lsn", &self.last_lsn)
            .field("queued", &self.queue.len())
            .field("done", &self.done)
            .finish()
    }
}

impl EventStream {
    pub(crate) fn new(body: BodyReader, max_line_bytes: usize, idle_timeout: Duration) -> Self {
        EventStream {
            body,
            parser: SseParser::new(max_line_bytes),
            queue: VecDeque::new(),
            idle_timeout,
            last_lsn: None,
            done: false,
        }
    }

    /// The next raw frame; `None` when the server closed the stream. Fails with
    /// [`Error::Timeout`] after `stream_idle_timeout` without a byte (keep-alives count).
    pub async fn next_frame(&mut self) -> Result<Option<SseFrame>, Error> {
        loop {
            if let Some(frame) = self.queue.pop_front() {
                if let Some(lsn) = frame.id.as_deref().and_then(|id| id.parse().ok()) {
                    self.last_lsn = Some(lsn);
                }
                return Ok(Some(frame));
            }
            if self.done {
                return Ok(None);
            }
            let chunk = tokio::time::timeout(self.idle_timeout, self.body.chunk())
                .await
                .map_err(|_| Error::Timeout(self.idle_timeout))??;
            match chunk {
                Some(bytes) => self.parser.push(&bytes, &mut self.queue)?,
                None => self.done = true,
            }
        }
    }

    /// The next item, decoded; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, Error> {
        let Some(frame) = self.next_frame().await? else {
            return Ok(None);
        };
        let item = match frame.event.as_str() {
            "delivery" => StreamItem::Event(Box::new(serde_json::from_str(&frame.data).map_err(
                |e| Error::Decode(format!("a delivery event is not a stored event ({e})")),
            )?)),
            "error" => StreamItem::End(serde_json::from_str(&frame.data).map_err(|e| {
                Error::Decode(format!("an error event is not {{reason, detail}} ({e})"))
            })?),
            _ => StreamItem::Other(frame),
        };
        Ok(Some(item))
    }

    /// The LSN of the last event read (its `id:`): send it as `Last-Event-ID` to resume.
    pub fn last_lsn(&self) -> Option<u64> {
        self.last_lsn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_chunks(text: &[u8], chunk: usize) -> Vec<SseFrame> {
        let mut p = SseParser::new(1024);
        let mut out = VecDeque::new();
        for c in text.chunks(chunk) {
            p.push(c, &mut out).unwrap();
        }
        out.into()
    }

    #[test]
    fn frames_survive_any_chunking_and_line_ending() {
        let lf = b": keep-alive\n\nid: 7\nevent: delivery\ndata: {\"a\":1}\n\ndata: x\ndata: y\n\n";
        let crlf: Vec<u8> = String::from_utf8_lossy(lf)
            .replace('\n', "\r\n")
            .into_bytes();
        let cr: Vec<u8> = String::from_utf8_lossy(lf).replace('\n', "\r").into_bytes();
        let want = vec![
            SseFrame {
                id: Some("7".into()),
                event: "delivery".into(),
                data: "{\"a\":1}".into(),
            },
            SseFrame {
                id: Some("7".into()),
                event: "message".into(),
                data: "x\ny".into(),
            },
        ];
        for text in [lf.to_vec(), crlf, cr] {
            for chunk in 1..text.len() {
                assert_eq!(parse_in_chunks(&text, chunk), want, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn field_without_space_and_unknown_fields() {
        let frames = parse_in_chunks(b"event:error\nretry: 10\nfoo\ndata:{}\n\n", 3);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].event, "error");
        assert_eq!(frames[0].data, "{}");
        assert_eq!(frames[0].id, None);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        assert!(parse_in_chunks(b"event: x\n\n", 4).is_empty());
    }

    #[test]
    fn long_lines_are_refused() {
        let mut p = SseParser::new(16);
        let mut out = VecDeque::new();
        p.push(b"data: 0123456", &mut out).unwrap();
        let e = p.push(b"789abcdef\n", &mut out).unwrap_err();
        assert!(e.to_string().contains("longer than 16"), "{e}");
    }
}
