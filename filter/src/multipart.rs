//! Reads one field of a `multipart/form-data` body (RFC 7578 over RFC 2046) in place: the gateway
//! needs the `model` part to route an upload, and nothing else. Never edits or copies the body.
//!
//! Bounded: every step moves forward through the body (a search for the next delimiter, a header
//! block capped at `MAX_PART_HEADERS`), so a hostile body costs one linear pass and allocates only
//! small, capped strings (the boundary, a header line's parameter values).

use memchr::memmem;

/// A part's headers longer than this are refused (real ones are a few hundred bytes).
const MAX_PART_HEADERS: usize = 16 * 1024;
/// RFC 2046: a boundary is 1 to 70 characters.
const MAX_BOUNDARY: usize = 70;

/// Why a body is not the multipart body its content type announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// The boundary of a `multipart/form-data` content type; `Ok(None)` if it is another type.
pub fn boundary(content_type: &str) -> Result<Option<String>, Malformed> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    let boundary = param(content_type, "boundary")?.ok_or(Malformed("the content type has no boundary"))?;
    if boundary.is_empty()
        || boundary.len() > MAX_BOUNDARY
        || boundary.ends_with(' ')
        || !boundary.bytes().all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b))
    {
        return Err(Malformed("the boundary is not 1 to 70 allowed characters"));
    }
    Ok(Some(boundary))
}

/// The content of the part named `name`, if the body has one. A body whose parts cannot be told
/// apart, or that names the field twice (the provider might read the other one), is refused.
pub fn field<'a>(body: &'a [u8], boundary: &str, name: &str) -> Result<Option<&'a [u8]>, Malformed> {
    let dash = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    // The first boundary opens the body, or ends a preamble.
    let mut at = if body.starts_with(dash.as_bytes()) {
        dash.len()
    } else {
        memmem::find(body, delimiter.as_bytes()).ok_or(Malformed("no boundary line"))? + delimiter.len()
    };
    let mut found = None;
    loop {
        let rest = body.get(at..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Ok(found);
        }
        // Transport padding, then the line end that closes the boundary line.
        let padding = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        let rest = rest.get(padding..).unwrap_or_default();
        let rest = rest.strip_prefix(b"\r\n").ok_or(Malformed("a boundary line does not end with CRLF"))?;
        let (headers, content_and_after) = if let Some(after) = rest.strip_prefix(b"\r\n") {
            (&[][..], after)
        } else {
            let window = rest.get(..MAX_PART_HEADERS.min(rest.len())).unwrap_or(rest);
            let end = memmem::find(window, b"\r\n\r\n").ok_or(Malformed("a part's headers do not end"))?;
            (rest.get(..end).unwrap_or_default(), rest.get(end + 4..).unwrap_or_default())
        };
        let length = memmem::find(content_and_after, delimiter.as_bytes())
            .ok_or(Malformed("the body ends inside a part (no closing boundary)"))?;
        let content = content_and_after.get(..length).unwrap_or_default();
        if part_name(headers)?.as_deref() == Some(name) {
            if found.is_some() {
                return Err(Malformed("a field is sent twice"));
            }
            found = Some(content);
        }
        // Where the next boundary's own line goes on, in `body`.
        let consumed = body.len() - content_and_after.len() + length + delimiter.len();
        at = consumed;
    }
}

/// The `name` of a part, from its `Content-Disposition: form-data; name="..."` header.
fn part_name(headers: &[u8]) -> Result<Option<String>, Malformed> {
    let mut name = None;
    for line in headers.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        let Some((header, value)) = line.split_once(':') else { continue };
        if !header.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        if name.is_some() {
            return Err(Malformed("a part has two Content-Disposition headers"));
        }
        let kind = value.split(';').next().unwrap_or_default().trim();
        if !kind.eq_ignore_ascii_case("form-data") {
            return Err(Malformed("a part is not form-data"));
        }
        name = Some(param(value, "name")?.ok_or(Malformed("a part has no name"))?);
    }
    Ok(name)
}

/// The parameter `key` of a header value `type; key=value; key2="quoted \" value"`. Parameters are
/// read as RFC 2045 tokens and quoted strings, so a quoted `;` or `name=` is never mistaken for one;
/// a parameter given twice is refused.
fn param(value: &str, key: &str) -> Result<Option<String>, Malformed> {
    let mut chars = value.chars().peekable();
    // The media type or disposition type, up to the first `;`.
    for c in chars.by_ref() {
        if c == ';' {
            break;
        }
    }
    let mut result = None;
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace() || *c == ';').is_some() {}
        if chars.peek().is_none() {
            return Ok(result);
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ';') {
            name.push(c);
        }
        let mut text = String::new();
        if chars.next_if_eq(&'=').is_some() {
            while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
            if chars.next_if_eq(&'"').is_some() {
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => text.extend(chars.next()),
                        c => text.push(c),
                    }
                }
                if !closed {
                    return Err(Malformed("a quoted parameter does not end"));
                }
                // Nothing but space may follow a quoted value before the next `;`.
                while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
                if chars.peek().is_some_and(|c| *c != ';') {
                    return Err(Malformed("text follows a quoted parameter"));
                }
            } else {
                while let Some(c) = chars.next_if(|c| *c != ';') {
                    text.push(c);
                }
                text.truncate(text.trim_end().len());
            }
        }
        if name.trim().eq_ignore_ascii_case(key) {
            if result.is_some() {
                return Err(Malformed("a parameter is given twice"));
            }
            result = Some(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ";

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (headers, content) in parts {
            body.extend_from_slice(format!("--{B}\r\n{headers}\r\n\r\n").as_bytes());
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        body
    }

    fn model(body: &[u8]) -> Result<Option<&[u8]>, Malformed> {
        field(body, B, "model")
    }

    #[test]
    fn reads_the_boundary_of_form_data_only() {
        assert_eq!(boundary("multipart/form-data; boundary=abc").unwrap().as_deref(), Some("abc"));
        assert_eq!(boundary("Multipart/Form-Data;boundary=\"a b:c\"").unwrap().as_deref(), Some("a b:c"));
        assert_eq!(boundary("application/json").unwrap(), None);
        assert!(boundary("multipart/form-data").is_err());
        assert!(boundary("multipart/form-data; boundary=").is_err());
        assert!(boundary(&format!("multipart/form-data; boundary={}", "a".repeat(71))).is_err());
        assert!(boundary("multipart/form-data; boundary=a\r\nb").is_err());
        assert!(boundary("multipart/form-data; boundary=a; boundary=b").is_err());
    }

    #[test]
    fn finds_the_model_whatever_its_place() {
        let audio: &[u8] = b"ID3\x00\r\n--Xy\r\n\xff\xfe binary with \"quotes\" and name=\"model\"";
        let file = r#"Content-Disposition: form-data; name="file"; filename="a.mp3""#;
        let body = form(&[
            (file, audio),
            ("Content-Disposition: form-data; name=\"model\"", b"whisper-1"),
            ("content-disposition: form-data; name=language", b"en"),
        ]);
        assert_eq!(model(&body).unwrap(), Some(&b"whisper-1"[..]));
        assert_eq!(field(&body, B, "file").unwrap(), Some(audio));
        assert_eq!(field(&body, B, "language").unwrap(), Some(&b"en"[..]));
        assert_eq!(field(&body, B, "prompt").unwrap(), None);
        // A preamble, padding after the boundary, an empty part, an epilogue.
        let mut body = b"preamble\r\n".to_vec();
        body.extend_from_slice(format!("--{B}  \r\n\r\nno headers\r\n").as_bytes());
        body.extend_from_slice(&form(&[("Content-Disposition: form-data; name=\"model\"", b"")]));
        body.extend_from_slice(b"epilogue");
        assert_eq!(model(&body).unwrap(), Some(&b""[..]));
    }

    #[test]
    fn a_name_is_read_as_the_provider_reads_it() {
        // `name=` inside a quoted filename is not the part's name.
        let tricky = r#"Content-Disposition: form-data; filename="x; name=model"; name="file""#;
        assert_eq!(model(&form(&[(tricky, b"not a model")])).unwrap(), None);
        let escaped = r#"Content-Disposition: form-data; name="mo\"del""#;
        assert_eq!(field(&form(&[(escaped, b"x")]), B, "mo\"del").unwrap(), Some(&b"x"[..]));
    }

    #[test]
    fn refuses_what_cannot_be_read_safely() {
        let m = "Content-Disposition: form-data; name=\"model\"";
        assert_eq!(model(&form(&[(m, b"a"), (m, b"b")])), Err(Malformed("a field is sent twice")));
        let twice = "Content-Disposition: form-data; name=\"model\"; name=\"x\"";
        assert!(model(&form(&[(twice, b"a")])).is_err());
        let two_headers = format!("{m}\r\nContent-Disposition: form-data; name=\"x\"");
        assert!(model(&form(&[(&two_headers, b"a")])).is_err());
        assert!(model(&form(&[("Content-Disposition: attachment; name=\"model\"", b"a")])).is_err());
        assert!(model(&form(&[("Content-Disposition: form-data; name=\"model", b"a")])).is_err());
        assert!(model(b"").is_err());
        assert!(model(b"not multipart at all").is_err());
        assert!(model(format!("--{B}").as_bytes()).is_err());
        assert!(model(format!("--{B}\r\n{m}\r\n\r\nunterminated").as_bytes()).is_err());
        assert!(model(format!("--{B}x\r\n").as_bytes()).is_err());
        let huge_headers = format!("--{B}\r\nX: {}\r\n\r\na\r\n--{B}--", "a".repeat(MAX_PART_HEADERS));
        assert!(model(huge_headers.as_bytes()).is_err());
    }

    #[test]
    fn any_prefix_or_byte_flip_is_answered_without_panic() {
        let m = "Content-Disposition: form-data; name=\"model\"";
        let body = form(&[(m, b"gpt-4o-transcribe"), ("Content-Disposition: form-data; name=\"file\"", b"\x00\r\n")]);
        for end in 0..=body.len() {
            let _ = model(body.get(..end).unwrap());
        }
        for i in 0..body.len() {
            for flip in [b'\r', b'\n', b'-', b'"', b';', 0xff] {
                let mut broken = body.clone();
                broken[i] = flip;
                let _ = model(&broken);
            }
        }
        // Many tiny parts: one pass, no growth.
        let many = form(&vec![("Content-Disposition: form-data; name=\"x\"", &b""[..]); 10_000]);
        assert_eq!(model(&many).unwrap(), None);
    }
}
