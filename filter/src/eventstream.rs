//! AWS eventstream (`application/vnd.amazon.eventstream`), incrementally: push upstream bytes cut
//! anywhere, get whole messages. A message is a 12-byte prelude (total length, headers length, CRC32
//! of those 8 bytes), typed headers, a payload and a CRC32 of everything before it. Each message is
//! decoded and both checksums verified by AWS's `aws-smithy-eventstream`; this module only frames
//! the stream and checks the prelude early, so a corrupt length fails at once instead of waiting
//! for bytes that will never come.

use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::event_stream::{HeaderValue, Message as AwsMessage};

const PRELUDE_BYTES: usize = 12;
/// Prelude and message CRC.
const MIN_MESSAGE_BYTES: usize = 16;
/// AWS caps a message at 16 MiB of payload and 128 KiB of headers.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 128 * 1024 + MIN_MESSAGE_BYTES;

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message(AwsMessage);

/// What a message is, from its `:message-type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `:message-type: event`, with its `:event-type`.
    Event(&'a str),
    /// `:message-type: exception`, with its `:exception-type` (the payload holds the message).
    Exception(&'a str),
    /// `:message-type: error`, with `:error-code` and `:error-message` headers.
    Error {
        code: &'a str,
        message: &'a str,
    },
    Unknown,
}

impl Message {
    /// A string header's value (`None` if absent or of another type).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0.headers().iter().find(|h| h.name().as_str() == name).and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn kind(&self) -> Kind<'_> {
        match self.header(":message-type") {
            Some("event") => Kind::Event(self.header(":event-type").unwrap_or("")),
            Some("exception") => Kind::Exception(self.header(":exception-type").unwrap_or("")),
            Some("error") => Kind::Error {
                code: self.header(":error-code").unwrap_or(""),
                message: self.header(":error-message").unwrap_or(""),
            },
            _ => Kind::Unknown,
        }
    }

    pub fn payload(&self) -> &[u8] {
        self.0.payload()
    }
}

/// A stream that is not valid eventstream; the decoder stops at the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid AWS eventstream: {}", self.0)
    }
}

/// Cuts a byte stream into messages; correct for any split of the input into chunks.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// The prelude at the front of `buffer` has been checked.
    prelude_checked: bool,
    failed: Option<DecodeError>,
}

impl Decoder {
    /// Feeds a chunk; calls `on_message` with every message completed by it, in order. After an
    /// error, every later call returns it again and decodes nothing.
    pub fn push(&mut self, chunk: &[u8], mut on_message: impl FnMut(Message)) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        let result = loop {
            let rest = self.buffer.get(start..).unwrap_or_default();
            let Some(total) = frame_length(rest, &mut self.prelude_checked) else { break Ok(()) };
            let total = match total {
                Ok(total) => total,
                Err(e) => break Err(e),
            };
            let Some(frame) = rest.get(..total) else { break Ok(()) };
            match read_message_from(frame) {
                Ok(message) => on_message(Message(message)),
                Err(e) => break Err(DecodeError(e.to_string())),
            }
            start += total;
            self.prelude_checked = false;
        };
        self.buffer.drain(..start.min(self.buffer.len()));
        if let Err(e) = &result {
            self.buffer = Vec::new();
            self.failed = Some(e.clone());
        }
        result
    }

    /// End of the stream: bytes of an unfinished message are an error.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        let e = DecodeError(format!("the stream ended inside a message ({} bytes left over)", self.buffer.len()));
        self.buffer = Vec::new();
        self.failed = Some(e.clone());
        Err(e)
    }

    /// Bytes held for an unfinished message.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// The total length of the message at the front of `rest`, once its prelude is there and valid.
fn frame_length(rest: &[u8], prelude_checked: &mut bool) -> Option<Result<usize, DecodeError>> {
    let prelude = rest.get(..PRELUDE_BYTES)?;
    let word =
        |i: usize| prelude.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes).unwrap_or_default();
    let (total, headers, crc) = (word(0), word(4), word(8));
    if !*prelude_checked {
        let computed = crc32fast::hash(prelude.get(..8).unwrap_or_default());
        if computed != crc {
            return Some(Err(DecodeError(format!(
                "prelude checksum mismatch (computed {computed:#010x}, message says {crc:#010x})"
            ))));
        }
        let total = total as usize;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&total) {
            return Some(Err(DecodeError(format!("message length {total} is out of bounds"))));
        }
        if headers as usize > total - MIN_MESSAGE_BYTES {
            return Some(Err(DecodeError(format!("headers length {headers} exceeds the message"))));
        }
        *prelude_checked = true;
    }
    Some(Ok(total as usize))
}

/// A hand-rolled encoder for tests, independent of the AWS crates (string headers only).
#[cfg(test)]
pub(crate) fn encode_for_test(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.push(7); // string
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = PRELUDE_BYTES + head.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out
}

/// An event message as Bedrock sends it, for tests.
#[cfg(test)]
pub(crate) fn event_for_test(event_type: &str, payload: &str) -> Vec<u8> {
    encode_for_test(
        &[(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<(String, Vec<u8>)>, DecodeError> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, |m| out.push((format!("{:?}", m.kind()), m.payload().to_vec())))?;
        }
        d.finish()?;
        Ok(out)
    }

    fn stream() -> Vec<u8> {
        let mut s = event_for_test("messageStart", r#"{"role":"assistant"}"#);
        s.extend(event_for_test("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hé"}}"#));
        s.extend(encode_for_test(&[(":message-type", "event"), (":event-type", "empty")], b""));
        s.extend(encode_for_test(
            &[(":message-type", "exception"), (":exception-type", "throttlingException")],
            br#"{"message":"slow down"}"#,
        ));
        s
    }

    #[test]
    fn decodes_messages_with_headers_and_payloads() {
        let got = decode_all(&[&stream()]).unwrap();
        let kinds: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "Event(\"messageStart\")",
                "Event(\"contentBlockDelta\")",
                "Event(\"empty\")",
                "Exception(\"throttlingException\")"
            ]
        );
        assert_eq!(got[1].1, r#"{"contentBlockIndex":0,"delta":{"text":"Hé"}}"#.as_bytes());
        assert!(got[2].1.is_empty());
        let mut d = Decoder::default();
        let mut headers = Vec::new();
        d.push(&stream(), |m| headers.push(m.header(":content-type").map(String::from))).unwrap();
        assert_eq!(headers[0].as_deref(), Some("application/json"));
        assert_eq!(headers[2], None);
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let s = stream();
        let want = decode_all(&[&s]).unwrap();
        for cut in 0..=s.len() {
            let (a, b) = s.split_at(cut);
            assert_eq!(decode_all(&[a, b]).unwrap(), want, "cut {cut}");
            for cut2 in (cut..=s.len()).step_by(7) {
                let (b1, b2) = b.split_at(cut2 - cut);
                assert_eq!(decode_all(&[a, b1, b2]).unwrap(), want, "cuts {cut} {cut2}");
            }
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(decode_all(&bytes).unwrap(), want);
    }

    #[test]
    fn messages_are_delivered_as_soon_as_complete() {
        let s = stream();
        let first = event_for_test("messageStart", r#"{"role":"assistant"}"#).len();
        let mut d = Decoder::default();
        let mut n = 0;
        d.push(s.get(..first - 1).unwrap(), |_| n += 1).unwrap();
        assert_eq!((n, d.pending()), (0, first - 1));
        d.push(s.get(first - 1..first).unwrap(), |_| n += 1).unwrap();
        assert_eq!((n, d.pending()), (1, 0));
    }

    #[test]
    fn any_corrupted_byte_is_an_error() {
        let s = event_for_test("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"hello"}}"#);
        for i in 0..s.len() {
            let mut bad = s.clone();
            bad[i] ^= 0x20;
            let result = decode_all(&[&bad]);
            assert!(result.is_err(), "flipping byte {i} went unnoticed: {result:?}");
        }
    }

    #[test]
    fn checksum_errors_are_named_and_sticky() {
        let mut s = stream();
        let last = s.len() - 1;
        s[last] ^= 1; // the message CRC of the last message
        let mut d = Decoder::default();
        let mut n = 0;
        let e = d.push(&s, |_| n += 1).unwrap_err();
        assert_eq!(n, 3, "the messages before the bad one are delivered");
        assert!(e.0.to_lowercase().contains("checksum"), "{e}");
        assert_eq!(d.push(&event_for_test("x", "{}"), |_| n += 1), Err(e.clone()));
        assert_eq!(n, 3);
        assert_eq!(d.finish(), Err(e));

        let mut s = stream();
        s[9] ^= 1; // prelude CRC: fails before the rest arrives
        let mut d = Decoder::default();
        let e = d.push(s.get(..12).unwrap(), |_| {}).unwrap_err();
        assert!(e.to_string().contains("prelude checksum mismatch"), "{e}");
    }

    #[test]
    fn bad_lengths_and_truncation_are_errors() {
        // A valid prelude CRC over an absurd length.
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&u32::MAX.to_be_bytes());
        prelude.extend_from_slice(&0u32.to_be_bytes());
        prelude.extend_from_slice(&crc32fast::hash(&prelude).to_be_bytes());
        assert!(decode_all(&[&prelude]).unwrap_err().0.contains("out of bounds"));
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&20u32.to_be_bytes());
        prelude.extend_from_slice(&10u32.to_be_bytes());
        prelude.extend_from_slice(&crc32fast::hash(&prelude).to_be_bytes());
        assert!(decode_all(&[&prelude]).unwrap_err().0.contains("headers length"));
        let s = stream();
        let e = decode_all(&[s.get(..s.len() - 3).unwrap()]).unwrap_err();
        assert!(e.0.contains("ended inside a message"), "{e}");
        assert_eq!(decode_all(&[]).unwrap(), vec![]);
    }
}
