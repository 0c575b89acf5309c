//! Incremental Server-Sent Events: splits a byte stream into whole events, correct for any split of
//! the input into chunks, and parses an event's fields (WHATWG HTML, "Parsing an event stream").

/// One event's fields. `data` lines are joined with `\n`, as the spec says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
    pub has_data: bool,
}

/// Cuts a byte stream into raw event blocks (each ends with its blank line).
#[derive(Debug, Default)]
pub struct Splitter {
    /// Bytes of the event being received.
    pending: Vec<u8>,
    /// Where scanning for line ends resumes in `pending`.
    scanned: usize,
    /// Start of the current line in `pending`.
    line_start: usize,
    /// The last byte seen was a CR that ended a line; a following LF belongs to it.
    after_cr: bool,
}

/// An event larger than this is not held back whole; it is given up on (see `Splitter::push`).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

impl Splitter {
    /// Feeds a chunk; calls `on_block` with every event block completed by it, raw bytes included.
    /// Returns false if an event grew past `MAX_EVENT_BYTES` (its bytes are dropped from the splitter).
    pub fn push(&mut self, chunk: &[u8], mut on_block: impl FnMut(&[u8])) -> bool {
        self.pending.extend_from_slice(chunk);
        let mut block_start = 0;
        let mut i = self.scanned;
        while let Some(&b) = self.pending.get(i) {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    // Second half of a CRLF split across chunks: not a line of its own.
                    i += 1;
                    self.line_start = i;
                    continue;
                }
            }
            if b == b'\n' || b == b'\r' {
                let line_empty = i == self.line_start;
                let mut end = i + 1;
                if b == b'\r' {
                    match self.pending.get(end) {
                        Some(b'\n') => end += 1,
                        Some(_) => {}
                        None => self.after_cr = true,
                    }
                }
                self.line_start = end;
                if line_empty {
                    if let Some(block) = self.pending.get(block_start..end) {
                        on_block(block);
                    }
                    block_start = end;
                }
                i = end;
            } else {
                i += 1;
            }
        }
        self.pending.drain(..block_start);
        self.scanned = self.pending.len();
        self.line_start -= block_start.min(self.line_start);
        if self.pending.len() > MAX_EVENT_BYTES {
            self.pending.clear();
            self.scanned = 0;
            self.line_start = 0;
            return false;
        }
        true
    }

    /// Bytes of an event not yet ended by a blank line.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Takes the bytes of an unfinished event (at end of stream).
    pub fn take_pending(&mut self) -> Vec<u8> {
        self.scanned = 0;
        self.line_start = 0;
        self.after_cr = false;
        std::mem::take(&mut self.pending)
    }
}

/// Parses one raw event block into its fields. Unknown fields and comments are ignored.
pub fn parse_event(block: &[u8]) -> Event {
    let mut event = Event::default();
    let text = String::from_utf8_lossy(block);
    for line in text.split(['\n', '\r']) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if event.has_data {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                event.has_data = true;
            }
            "event" => event.event = Some(value.to_string()),
            _ => {}
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            assert!(s.push(c, |b| out.push(b.to_vec())));
        }
        out
    }

    const STREAM: &[u8] = b"data: {\"a\":1}\n\nevent: x\r\ndata: l1\r\ndata: l2\r\n\r\n: comment\n\ndata: last\r\r";

    #[test]
    fn splits_events_with_every_line_ending() {
        let whole = blocks(&[STREAM]);
        let parsed: Vec<Event> = whole.iter().map(|b| parse_event(b)).collect();
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[0].data, "{\"a\":1}");
        assert_eq!(parsed[1], Event { event: Some("x".into()), data: "l1\nl2".into(), has_data: true });
        assert!(!parsed[2].has_data);
        assert_eq!(parsed[3].data, "last");
        assert_eq!(whole.concat(), STREAM);
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let reference: Vec<Event> = blocks(&[STREAM]).iter().map(|b| parse_event(b)).collect();
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            let got: Vec<Event> = blocks(&[a, b]).iter().map(|b| parse_event(b)).collect();
            assert_eq!(got, reference, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        let got: Vec<Event> = blocks(&bytes).iter().map(|b| parse_event(b)).filter(|e| e.has_data).collect();
        let want: Vec<Event> = reference.into_iter().filter(|e| e.has_data).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn keeps_unfinished_event_pending() {
        let mut s = Splitter::default();
        let mut n = 0;
        s.push(b"data: par", |_| n += 1);
        assert_eq!((n, s.pending()), (0, &b"data: par"[..]));
        s.push(b"tial\n\n", |_| n += 1);
        assert_eq!((n, s.pending()), (1, &b""[..]));
        s.push(b"data: tail", |_| {});
        assert_eq!(s.take_pending(), b"data: tail");
    }
}
