//! JSON text without building values: string literals copied as they are, decoded as a stream
//! ([`Unescape`]), and JSON documents written as the body of a string literal ([`write_as_string`]).
//! Large strings (tool arguments, tool inputs) go through these without a second copy in memory.

use std::borrow::Cow;
use std::io::{self, Read, Write};

use serde_json::value::RawValue;

/// The inside of a raw JSON string literal (between its quotes, escapes kept); `None` when `raw`
/// is not a string.
pub fn string_body(raw: &RawValue) -> Option<&str> {
    raw.get().strip_prefix('"')?.strip_suffix('"')
}

/// Decodes the inside of a JSON string literal as a byte stream: memory does not grow with it.
pub struct Unescape<'a> {
    src: &'a [u8],
    pos: usize,
    pending: [u8; 4],
    pending_len: usize,
    pending_pos: usize,
}

impl<'a> Unescape<'a> {
    pub fn new(body: &'a str) -> Self {
        Unescape { src: body.as_bytes(), pos: 0, pending: [0; 4], pending_len: 0, pending_pos: 0 }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.src.get(at..at.checked_add(4)?)?;
        let text = std::str::from_utf8(digits).ok()?;
        u32::from_str_radix(text, 16).ok()
    }

    /// Decodes the escape at `pos` (a backslash) into `pending`.
    fn escape(&mut self) -> io::Result<()> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "invalid escape in a JSON string");
        let code = *self.src.get(self.pos + 1).ok_or_else(bad)?;
        let simple = match code {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return Err(bad()),
        };
        if let Some(byte) = simple {
            self.pending = [byte, 0, 0, 0];
            self.pending_len = 1;
            self.pending_pos = 0;
            self.pos += 2;
            return Ok(());
        }
        let first = self.hex4(self.pos + 2).ok_or_else(bad)?;
        let mut consumed = 6;
        let scalar = if (0xD800..0xDC00).contains(&first) {
            let second = (self.src.get(self.pos + 6) == Some(&b'\\') && self.src.get(self.pos + 7) == Some(&b'u'))
                .then(|| self.hex4(self.pos + 8))
                .flatten()
                .filter(|low| (0xDC00..0xE000).contains(low));
            match second {
                Some(low) => {
                    consumed = 12;
                    0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
                }
                None => 0xFFFD,
            }
        } else {
            first
        };
        let c = char::from_u32(scalar).unwrap_or('\u{FFFD}');
        let len = c.encode_utf8(&mut self.pending).len();
        self.pending_len = len;
        self.pending_pos = 0;
        self.pos += consumed;
        Ok(())
    }
}

impl Read for Unescape<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < out.len() {
            if self.pending_pos < self.pending_len {
                let take = (self.pending_len - self.pending_pos).min(out.len() - n);
                let (Some(dst), Some(src)) =
                    (out.get_mut(n..n + take), self.pending.get(self.pending_pos..self.pending_pos + take))
                else {
                    break;
                };
                dst.copy_from_slice(src);
                n += take;
                self.pending_pos += take;
                continue;
            }
            let rest = self.src.get(self.pos..).unwrap_or_default();
            match rest.first() {
                None => break,
                Some(b'\\') => self.escape()?,
                Some(_) => {
                    // Only as far as `out` has room: a reader asking for one byte at a time (serde_json's
                    // `from_reader`) must not rescan the rest of the string on every call.
                    let room = out.len() - n;
                    let run = rest.iter().take(room).position(|&b| b == b'\\').unwrap_or(room.min(rest.len()));
                    let (Some(dst), Some(src)) = (out.get_mut(n..n + run), rest.get(..run)) else { break };
                    dst.copy_from_slice(src);
                    n += run;
                    self.pos += run;
                }
            }
        }
        Ok(n)
    }
}

/// A small string literal's inside, decoded (media types, ids in messages).
pub fn unescape_small(body: &str) -> Cow<'_, str> {
    if !body.contains('\\') {
        return Cow::Borrowed(body);
    }
    let mut out = String::new();
    match Unescape::new(body).read_to_string(&mut out) {
        Ok(_) => Cow::Owned(out),
        Err(_) => Cow::Borrowed(body),
    }
}

/// Whether the decoded string is empty or only whitespace (read until the first other byte).
pub fn decodes_to_blank(body: &str) -> bool {
    if !body.contains('\\') {
        return body.bytes().all(|b| b.is_ascii_whitespace());
    }
    let mut reader = Unescape::new(body);
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                if !buf.get(..n).unwrap_or_default().iter().all(u8::is_ascii_whitespace) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// Checks that a string literal's inside, decoded, is one JSON document (streamed: no copy).
pub fn check_json_inside(body: &str) -> Result<(), serde_json::Error> {
    use serde::Deserialize;
    if !body.contains('\\') {
        return crate::json::from_text::<serde::de::IgnoredAny>(body).map(|_| ());
    }
    // serde_json reads a reader one byte at a time: buffered, that is a copy from memory, not a
    // call into the decoder. The decoded text is never longer than `body`.
    let reader = io::BufReader::with_capacity(body.len().clamp(1, 4096), Unescape::new(body));
    let mut de = serde_json::Deserializer::from_reader(reader);
    serde::de::IgnoredAny::deserialize(&mut de)?;
    de.end()
}

/// Writes a string literal's inside, decoded, to `out` (streamed: no copy).
pub fn write_decoded(body: &str, out: &mut impl Write) -> io::Result<()> {
    if !body.contains('\\') {
        return out.write_all(body.as_bytes());
    }
    io::copy(&mut Unescape::new(body), out).map(|_| ())
}

/// Writes the JSON document `json` as the inside of a string literal, without the whitespace
/// between tokens (`{"q": 1}` → `{\"q\":1}`), as OpenAI's `arguments` carry it.
pub fn write_as_string(json: &[u8], out: &mut impl Write) -> io::Result<()> {
    write_compact(json, true, out)
}

/// The JSON document `json` without the whitespace between tokens.
pub fn compact(json: &[u8]) -> String {
    let mut out = Vec::with_capacity(json.len());
    let _ = write_compact(json, false, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn write_compact(json: &[u8], escape: bool, out: &mut impl Write) -> io::Result<()> {
    let (quote, backslash): (&[u8], &[u8]) = if escape { (b"\\\"", b"\\\\") } else { (b"\"", b"\\") };
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, &b) in json.iter().enumerate() {
        let replacement: Option<&[u8]> = if in_string {
            if escaped {
                escaped = false;
                if b == b'\\' {
                    Some(backslash)
                } else if b == b'"' {
                    Some(quote)
                } else {
                    None
                }
            } else {
                match b {
                    b'\\' => {
                        escaped = true;
                        Some(backslash)
                    }
                    b'"' => {
                        in_string = false;
                        Some(quote)
                    }
                    _ => None,
                }
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    Some(quote)
                }
                b' ' | b'\t' | b'\n' | b'\r' => Some(b""),
                _ => None,
            }
        };
        if let Some(r) = replacement {
            out.write_all(json.get(start..i).unwrap_or_default())?;
            out.write_all(r)?;
            start = i + 1;
        }
    }
    out.write_all(json.get(start..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> String {
        let mut out = Vec::new();
        write_decoded(s, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decodes_like_serde() {
        for lit in
            [r#""plain""#, r#""{\"q\":1,\"s\":\"a\\\"b\"}""#, r#""tab\tnl\nuni\u00e9\ud83d\ude00 \/ \b\f\r""#, r#""""#]
        {
            let want: String = serde_json::from_str(lit).unwrap();
            let body = &lit[1..lit.len() - 1];
            assert_eq!(decode(body), want, "{lit}");
            // Read in one-byte steps too.
            let mut r = Unescape::new(body);
            let mut bytes = Vec::new();
            let mut b = [0u8; 1];
            while r.read(&mut b).unwrap() == 1 {
                bytes.push(b[0]);
            }
            assert_eq!(String::from_utf8(bytes).unwrap(), want);
        }
        assert_eq!(decode(r#"lone\ud800x"#), "lone\u{fffd}x");
        assert!(decodes_to_blank(r#" \n\t "#) && !decodes_to_blank(r#" \n{} "#));
        assert!(check_json_inside(r#"{\"a\":[1,\"x\"]}"#).is_ok());
        assert!(check_json_inside(r#"{\"a\":"#).is_err());
        assert!(check_json_inside(r#"{} x"#).is_err());
        assert_eq!(unescape_small(r#"image\/png"#), "image/png");
    }

    #[test]
    fn writes_json_as_a_compact_string() {
        let json = br#"{ "q" : "a \"b\" \\ c", "n": [1, 2] }"#;
        let mut out = Vec::new();
        write_as_string(json, &mut out).unwrap();
        let lit = format!("\"{}\"", String::from_utf8(out).unwrap());
        let text: String = serde_json::from_str(&lit).unwrap();
        assert_eq!(text, r#"{"q":"a \"b\" \\ c","n":[1,2]}"#);
    }
}
