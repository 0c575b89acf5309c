//! Oracles, written independently of the filter: a strict RFC 8259 JSON validator (iterative, no
//! depth limit), an SSE event reader, and encoders the harness uses to build provider answers.

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the string starting at `i` (its opening quote), if it is a valid JSON string.
fn string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => match *b.get(j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' => {
                    let hex = b.get(j + 2..j + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    j += 6;
                }
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let j = digits(b, i + 1);
        if j == i + 1 {
            return None;
        }
        i = j;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits(b, i);
        if j == i {
            return None;
        }
        i = j;
    }
    Some(i)
}

/// Whether `b` is exactly one JSON text (RFC 8259), UTF-8, any nesting depth.
pub fn is_json(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok() && scan(b).is_some()
}

/// Whether `b` is a JSON text whose top-level value is an object.
pub fn is_json_object(b: &[u8]) -> bool {
    b.get(ws(b, 0)) == Some(&b'{') && is_json(b)
}

fn key_colon(b: &[u8], i: usize) -> Option<usize> {
    let i = string(b, i)?;
    let i = ws(b, i);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

fn scan(b: &[u8]) -> Option<()> {
    let mut stack: Vec<u8> = Vec::new();
    let mut i = 0;
    let mut want_value = true;
    loop {
        i = ws(b, i);
        if want_value {
            match *b.get(i)? {
                b'{' => {
                    i = ws(b, i + 1);
                    if b.get(i) == Some(&b'}') {
                        i += 1;
                        want_value = false;
                    } else {
                        stack.push(b'{');
                        i = key_colon(b, i)?;
                    }
                }
                b'[' => {
                    i = ws(b, i + 1);
                    if b.get(i) == Some(&b']') {
                        i += 1;
                        want_value = false;
                    } else {
                        stack.push(b'[');
                    }
                }
                b'"' => {
                    i = string(b, i)?;
                    want_value = false;
                }
                b't' | b'f' | b'n' => {
                    let word: &[u8] = match b[i] {
                        b't' => b"true",
                        b'f' => b"false",
                        _ => b"null",
                    };
                    if !b.get(i..)?.starts_with(word) {
                        return None;
                    }
                    i += word.len();
                    want_value = false;
                }
                _ => {
                    i = number(b, i)?;
                    want_value = false;
                }
            }
        } else {
            match stack.last() {
                None => return (i == b.len()).then_some(()),
                Some(&open) => match (open, b.get(i)) {
                    (b'{', Some(b',')) => {
                        i = key_colon(b, ws(b, i + 1))?;
                        want_value = true;
                    }
                    (b'[', Some(b',')) => {
                        i += 1;
                        want_value = true;
                    }
                    (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                        stack.pop();
                        i += 1;
                    }
                    _ => return None,
                },
            }
        }
    }
}

/// One SSE event as a client would read it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: Option<String>,
}

/// Reads an SSE stream the way the WHATWG spec does. Returns the events, and the bytes of a last
/// event that was never ended by a blank line (empty if the stream ends cleanly).
pub fn sse_events(body: &[u8]) -> (Vec<Event>, Vec<u8>) {
    let text = String::from_utf8_lossy(body);
    let mut events = Vec::new();
    let mut current = Event::default();
    let mut pending_start = 0;
    let mut pos = 0;
    let bytes = text.as_bytes();
    let mut line_start = 0;
    while pos <= bytes.len() {
        let end_here = pos == bytes.len();
        let c = bytes.get(pos).copied();
        if end_here || c == Some(b'\n') || c == Some(b'\r') {
            if end_here {
                break;
            }
            let line = &text[line_start..pos];
            let mut next = pos + 1;
            if c == Some(b'\r') && bytes.get(next) == Some(&b'\n') {
                next += 1;
            }
            if line.is_empty() {
                if current.data.is_some() || current.event.is_some() {
                    events.push(std::mem::take(&mut current));
                }
                current = Event::default();
                pending_start = next;
            } else if !line.starts_with(':') {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "data" => match current.data.as_mut() {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(value);
                        }
                        None => current.data = Some(value.to_string()),
                    },
                    "event" => current.event = Some(value.to_string()),
                    _ => {}
                }
            }
            pos = next;
            line_start = next;
        } else {
            pos += 1;
        }
    }
    let tail = bytes.get(pending_start..).unwrap_or_default().to_vec();
    (events, tail)
}

/// Standard base64 with padding.
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// Standard base64 decoding (padding optional); `None` on other characters.
pub fn unbase64(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// One AWS eventstream message (string headers only), with correct checksums.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        let value = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        head.push(name.len() as u8);
        head.extend_from_slice(name);
        head.push(7);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value);
    }
    let total = 12 + head.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_validator() {
        for ok in ["{}", " [1, -0.5e+3, \"a\\u00e9\", true, null, {\"k\": []}] ", "\"x\"", "0", "[[[[]]]]"] {
            assert!(is_json(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "1.", "\"\\x\"", "\"\u{1}\"", "[1] x", "tru", "{,}", "-"] {
            assert!(!is_json(bad.as_bytes()), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(is_json(deep.as_bytes()));
    }

    #[test]
    fn sse_reader() {
        let (events, tail) = sse_events(b"data: a\n\nevent: x\r\ndata: b\r\ndata: c\r\n\r\ndata: part");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data.as_deref(), Some("b\nc"));
        assert_eq!(tail, b"data: part");
        assert_eq!(unbase64(&base64(b"hello!?")).unwrap(), b"hello!?");
    }
}
