//! The layout of an exchange target's input, chosen so that seeds stay readable JSON and that
//! libFuzzer's mutations of a body do not shift the other fields:
//!
//! ```text
//! byte 0      selector: which backend (schema) and client path the target uses
//! byte 1      flags (F_* below)
//! bytes 2..6  seed of the chunk-size generator (u32 LE)
//! byte 6      chunk-size class (CHUNK_CLASSES)
//! bytes 7..   client body [SEP response head [SEP response body]]
//! ```
//!
//! The response head is `STATUS CONTENT-TYPE` on its first line, then optional `name: value`
//! lines. With `F_FRAMES` and an eventstream content type, the response body is written as lines
//! the harness encodes into AWS eventstream messages with valid checksums (see [`frames`]).

use crate::check::{base64, frame};

pub const SEP: &[u8] = b"\n--8<--\n";
pub const HEADER_LEN: usize = 7;

/// Configuration variant B: `model_override` on every backend, no usage injection, 2 KiB bodies.
pub const F_CONFIG_B: u8 = 1;
/// The client sends `content-length`.
pub const F_CONTENT_LENGTH: u8 = 2;
/// The request body arrives in chunks (Envoy buffers them while the filter pauses).
pub const F_SPLIT_REQUEST: u8 = 4;
/// The response ends with trailers instead of an end-of-stream body chunk.
pub const F_TRAILERS: u8 = 8;
/// An eventstream response body is written as lines (see [`frames`]).
pub const F_FRAMES: u8 = 16;
/// The response has no body: its headers end the stream.
pub const F_HEADERS_EOS: u8 = 32;
/// The client sends its own credentials and billing headers.
pub const F_CLIENT_AUTH: u8 = 64;
/// The client's path carries a query string.
pub const F_QUERY: u8 = 128;

pub const CHUNK_CLASSES: [usize; 7] = [1, 3, 16, 64, 512, 4096, usize::MAX];

pub struct Case<'a> {
    pub selector: u8,
    pub flags: u8,
    pub seed: u32,
    pub chunk_class: usize,
    pub request: &'a [u8],
    pub response: Option<Response<'a>>,
}

pub struct Response<'a> {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body as it appeared in the input (before frame encoding).
    pub raw_body: &'a [u8],
}

fn split_once<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], Option<&'a [u8]>) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (&data[..at], Some(&data[at + sep.len()..])),
        None => (data, None),
    }
}

impl<'a> Case<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Case<'a>> {
        let head = data.get(..HEADER_LEN)?;
        let rest = &data[HEADER_LEN..];
        let (request, after) = split_once(rest, SEP);
        let response = after.map(|after| {
            let (head, body) = split_once(after, SEP);
            let body = body.unwrap_or_default();
            let head = String::from_utf8_lossy(head);
            let mut lines = head.lines();
            let first = lines.next().unwrap_or("");
            let (status, content_type) = first.split_once(' ').unwrap_or((first, ""));
            let mut headers = Vec::new();
            if !content_type.is_empty() {
                headers.push(("content-type".to_string(), content_type.to_string()));
            }
            let mut framed = false;
            for line in lines {
                if let Some((n, v)) = line.split_once(':') {
                    let name = n.trim().to_ascii_lowercase();
                    // Envoy frames the body itself: it forwards a content-length only when it is the
                    // body's, and never hop-by-hop framing headers.
                    match name.as_str() {
                        "content-length" => framed = true,
                        "transfer-encoding" | "connection" => {}
                        _ => headers.push((name, v.trim().to_string())),
                    }
                }
            }
            let eventstream = content_type.to_ascii_lowercase().contains("amazon.eventstream");
            let body = if head_flag(data, F_HEADERS_EOS) { &[][..] } else { body };
            let encoded = if eventstream && head_flag(data, F_FRAMES) { frames(body) } else { body.to_vec() };
            // Envoy only hands a filter final statuses it parsed: three digits, 200..=599 (1xx are
            // not given to filters). Anything else in the input means 200.
            let status = status.parse::<u16>().ok().filter(|s| (200..=599).contains(s)).unwrap_or(200);
            if framed {
                headers.push(("content-length".to_string(), encoded.len().to_string()));
            }
            Response { status, headers, body: encoded, raw_body: body }
        });
        Some(Case {
            selector: head[0],
            flags: head[1],
            seed: u32::from_le_bytes([head[2], head[3], head[4], head[5]]),
            chunk_class: CHUNK_CLASSES[head[6] as usize % CHUNK_CLASSES.len()],
            request,
            response,
        })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub fn chunker(&self) -> Chunker {
        Chunker { state: u64::from(self.seed) | 1 << 40, class: self.chunk_class }
    }
}

fn head_flag(data: &[u8], flag: u8) -> bool {
    data.get(1).is_some_and(|f| f & flag != 0)
}

/// Cuts bodies into pseudo-random chunk sizes (xorshift64*), deterministic per input.
pub struct Chunker {
    state: u64,
    class: usize,
}

impl Chunker {
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `body` in chunks of 1..=class bytes (at least one chunk, possibly empty).
    pub fn split<'b>(&mut self, body: &'b [u8]) -> Vec<&'b [u8]> {
        let mut out = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = if self.class == usize::MAX { rest.len() } else { 1 + (self.next() as usize % self.class) };
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push(a);
            rest = b;
        }
        if out.is_empty() {
            out.push(rest);
        }
        out
    }
}

/// Encodes eventstream lines into messages, one per line:
/// - `event NAME PAYLOAD`, `exception NAME PAYLOAD`: `:message-type` event/exception with
///   `:event-type`/`:exception-type` NAME (`-` leaves the header out) and a JSON content type;
/// - `chunk PAYLOAD`: a Bedrock invoke-stream `chunk` event, `{"bytes":"<base64 of PAYLOAD>"}`;
/// - `error CODE MESSAGE`: `:message-type: error` with `:error-code`/`:error-message`;
/// - `bare PAYLOAD`: no headers at all;
/// - any other first word is used as the `:message-type` itself.
pub fn frames(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for line in text.split('\n') {
        if line.is_empty() {
            continue;
        }
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (name, payload) = rest.split_once(' ').unwrap_or((rest, ""));
        let ct = (":content-type", "application/json");
        let msg = match kind {
            "chunk" => {
                let wrapped = format!("{{\"bytes\":\"{}\"}}", base64(rest.as_bytes()));
                frame(&[(":event-type", "chunk"), ct, (":message-type", "event")], wrapped.as_bytes())
            }
            "error" => frame(&[(":message-type", "error"), (":error-code", name), (":error-message", payload)], b""),
            "bare" => frame(&[], rest.as_bytes()),
            _ => {
                let name_header = if kind == "exception" { ":exception-type" } else { ":event-type" };
                let mut headers = vec![(":message-type", kind), ct];
                if name != "-" {
                    headers.insert(0, (name_header, name));
                }
                frame(&headers, payload.as_bytes())
            }
        };
        out.extend_from_slice(&msg);
    }
    out
}
