//! Bodies as bytes. Nothing here builds a whole document in memory:
//! - [`members`] finds the top-level members of a JSON object as byte ranges, so a body can be
//!   edited in place ([`Splice`]) and every other byte travels as it came;
//! - [`each`] walks the elements of a JSON array one at a time (translators stream large arrays
//!   without collecting them);
//! - [`ChunkedBody`] writes a new body in fixed-size chunks: it never reallocates or doubles;
//! - [`TopLevelCapture`] picks one top-level member's value out of a body arriving in chunks (usage
//!   from a response that is never held whole).
//!
//! The scanners assume the body was validated as JSON already (`request::read` does) but never
//! panic on anything else: on bytes that are not JSON they return `None`.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

mod objects_only;
pub use objects_only::ObjectsOnly;

/// One top-level member of an object: its key (decoded) and byte ranges in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: Cow<'a, str>,
    /// From the key's opening quote to the value's last byte.
    pub span: Range<usize>,
    /// The value's bytes.
    pub value: Range<usize>,
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `i` (its opening quote).
fn skip_string(body: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match body.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// The end (exclusive) of the value starting at `i`. Iterative: nesting depth costs nothing.
fn skip_value(body: &[u8], i: usize) -> Option<usize> {
    match body.get(i)? {
        b'"' => skip_string(body, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match body.get(j)? {
                    b'"' => {
                        j = skip_string(body, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while body.get(j).is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The length of the JSON value `body` starts with (`None` when it starts with none).
pub fn value_len(body: &[u8]) -> Option<usize> {
    skip_value(body, 0)
}

fn decode_key(raw: &[u8]) -> Option<Cow<'_, str>> {
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

/// Calls `f` with each top-level member of the object `body`, in order, with its index; nothing is
/// collected, so a body with millions of members costs nothing here. Returns the offset of the
/// opening brace and the number of members; `None` when `body` is not an object.
pub fn for_each_member<'a>(body: &'a [u8], mut f: impl FnMut(usize, Member<'a>)) -> Option<(usize, usize)> {
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    let mut i = skip_ws(body, open + 1);
    if body.get(i) == Some(&b'}') {
        return Some((open, 0));
    }
    let mut index = 0usize;
    loop {
        if body.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(body, i)?;
        let key = decode_key(body.get(i..key_end)?)?;
        let colon = skip_ws(body, key_end);
        if body.get(colon) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(body, colon + 1);
        let value_end = skip_value(body, value_start)?;
        f(index, Member { key, span: i..value_end, value: value_start..value_end });
        index += 1;
        let next = skip_ws(body, value_end);
        match body.get(next)? {
            b',' => i = skip_ws(body, next + 1),
            b'}' => return Some((open, index)),
            _ => return None,
        }
    }
}

/// Calls `f` with the bytes of each element of the array `body`, in order; `None` when `body` is
/// not an array. Not generic (`dyn`): one copy serves every caller.
pub fn for_each_element<'a>(body: &'a [u8], f: &mut dyn FnMut(&'a [u8])) -> Option<usize> {
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'[') {
        return None;
    }
    let mut i = skip_ws(body, open + 1);
    if body.get(i) == Some(&b']') {
        return Some(0);
    }
    let mut count = 0usize;
    loop {
        let end = skip_value(body, i)?;
        f(body.get(i..end)?);
        count += 1;
        let next = skip_ws(body, end);
        match body.get(next)? {
            b',' => i = skip_ws(body, next + 1),
            b']' => return Some(count),
            _ => return None,
        }
    }
}

/// The value bytes of the object member `key` (the first of that name); `None` when absent or
/// `body` is not an object.
pub fn member_value<'a>(body: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut found = None;
    each_member(body, &mut |m| {
        if found.is_none() && m.key == key {
            found = Some(m.value);
        }
    })?;
    body.get(found?)
}

/// [`for_each_member`] behind `dyn`: one copy in the module for the callers that use it.
pub fn each_member<'a>(body: &'a [u8], f: &mut dyn FnMut(Member<'a>)) -> Option<usize> {
    for_each_member(body, |_, m| f(m)).map(|(_, count)| count)
}

/// The top-level members of the object `body` (tests and small objects: this one collects).
pub fn members(body: &[u8]) -> Option<(usize, Vec<Member<'_>>)> {
    let mut out = Vec::new();
    let (open, _) = for_each_member(body, |_, m| out.push(m))?;
    Some((open, out))
}

/// How many unknown member names a log line lists.
const UNKNOWN_LISTED: usize = 16;

/// The names of the top-level members of `body` that `known` does not list, for a log line: the
/// first few, then how many more. Nothing else is collected, whatever the body holds.
pub fn unknown_members(body: &[u8], known: &[&str]) -> Vec<String> {
    let mut names = Vec::new();
    let mut more = 0usize;
    for_each_member(body, |_, m| {
        if known.contains(&m.key.as_ref()) {
            return;
        }
        if names.len() < UNKNOWN_LISTED {
            names.push(m.key.chars().take(64).collect());
        } else {
            more += 1;
        }
    });
    if more > 0 {
        names.push(format!("({more} more)"));
    }
    names
}

/// In-place edits of a JSON object's top-level members. Applied as one replacement of the body's
/// head (up to the last edited byte): the rest of the body is never copied.
#[derive(Debug)]
pub struct Splice<'a> {
    body: &'a [u8],
    open: usize,
    /// How many members the object has.
    count: usize,
    /// The members named at construction and their neighbours, with their indices.
    members: Vec<(usize, Member<'a>)>,
    /// Non-overlapping (range, replacement) pairs.
    edits: Vec<(Range<usize>, Vec<u8>)>,
    /// Members inserted right after the opening brace.
    inserted: Vec<u8>,
    /// Indices of members to remove.
    removed: Vec<usize>,
}

impl<'a> Splice<'a> {
    /// `None` when `body` is not a JSON object. Only the members named in `keys` (the ones to be
    /// read or edited) and their neighbours are remembered: memory does not grow with the body.
    pub fn new(body: &'a [u8], keys: &[&str]) -> Option<Self> {
        let mut members: Vec<(usize, Member<'a>)> = Vec::new();
        let mut previous: Option<(usize, Member<'a>)> = None;
        let mut last_wanted: Option<usize> = None;
        let (open, count) = for_each_member(body, |index, m| {
            let stored = |members: &Vec<(usize, Member<'a>)>, i: usize| members.iter().any(|(j, _)| *j == i);
            if keys.contains(&m.key.as_ref()) {
                if let Some(p) = previous.take() {
                    if !stored(&members, p.0) {
                        members.push(p); // the neighbour before
                    }
                }
                members.push((index, m.clone()));
                last_wanted = Some(index);
            } else if last_wanted.is_some_and(|w| w + 1 == index) {
                members.push((index, m.clone())); // the neighbour after
            }
            previous = Some((index, m));
        })?;
        Some(Splice { body, open, count, members, edits: Vec::new(), inserted: Vec::new(), removed: Vec::new() })
    }

    /// The value bytes of the last member named `key` (JSON keeps the last of duplicates).
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        let (_, m) = self.members.iter().rev().find(|(_, m)| m.key == key)?;
        self.body.get(m.value.clone())
    }

    /// Sets `key` to the JSON `value`: replaces every member of that name in place, or inserts it.
    pub fn set(&mut self, key: &str, value: &[u8]) {
        let mut found = false;
        for (_, m) in self.members.iter().filter(|(_, m)| m.key == key) {
            found = true;
            self.edits.push((m.value.clone(), value.to_vec()));
        }
        if !found {
            self.insert(key, value);
        }
    }

    /// Inserts a member (the caller knows it is absent) right after the opening brace.
    pub fn insert(&mut self, key: &str, value: &[u8]) {
        if !self.inserted.is_empty() {
            self.inserted.push(b',');
        }
        self.inserted.extend_from_slice(&json_string(key));
        self.inserted.push(b':');
        self.inserted.extend_from_slice(value);
    }

    /// Removes every member named `key`, with its comma.
    pub fn remove(&mut self, key: &str) {
        for (index, m) in &self.members {
            if m.key == key && !self.removed.contains(index) {
                self.removed.push(*index);
            }
        }
    }

    /// The byte ranges that removing members takes out, separators included: up to the next kept
    /// member, or (for trailing members) from the end of the last kept one.
    fn removal_ranges(&self) -> Vec<Range<usize>> {
        let kept = |i: usize| !self.removed.contains(&i);
        let span = |i: usize| self.members.iter().find(|(j, _)| *j == i).map(|(_, m)| m.span.clone());
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for &i in &self.removed {
            let Some(own) = span(i) else { continue };
            // Removed members are all remembered, and so are their neighbours: the nearest kept
            // member on either side is always known.
            let next_kept = (i + 1..self.count).find(|&j| kept(j)).and_then(span);
            let previous_kept = (0..i).rev().find(|&j| kept(j)).and_then(span);
            let range = match (next_kept, previous_kept) {
                (Some(next), _) => own.start..next.start,
                (None, Some(previous)) => previous.end..own.end,
                // Nothing is kept: everything between the braces goes.
                (None, None) => {
                    let first = span(0).map_or(own.start, |f| f.start);
                    let last = self.count.checked_sub(1).and_then(span).map_or(own.end, |l| l.end);
                    first..last
                }
            };
            ranges.push(range);
        }
        crate::sort::sort_unstable_by(&mut ranges, |a, b| (a.start, a.end) < (b.start, b.end));
        let mut merged: Vec<Range<usize>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// True when nothing was changed.
    pub fn is_unchanged(&self) -> bool {
        self.edits.is_empty() && self.inserted.is_empty() && self.removed.is_empty()
    }

    /// The edits as a head replacement; `None` when nothing changed.
    pub fn finish(mut self) -> Option<crate::body::NewBody> {
        if self.is_unchanged() {
            return None;
        }
        let all_removed = self.removed.len() == self.count;
        let removals = self.removal_ranges();
        // A value set on a removed member is dropped with it.
        self.edits.retain(|(r, _)| !removals.iter().any(|d| d.start <= r.start && r.end <= d.end));
        self.edits.extend(removals.into_iter().map(|r| (r, Vec::new())));
        crate::sort::sort_unstable_by(&mut self.edits, |(a, _), (b, _)| (a.start, a.end) < (b.start, b.end));
        let head_end = self.edits.last().map_or(self.open + 1, |(r, _)| r.end.max(self.open + 1));
        let mut head = Vec::with_capacity(head_end + self.inserted.len() + 1);
        head.extend_from_slice(self.body.get(..=self.open)?);
        if !self.inserted.is_empty() {
            head.extend_from_slice(&self.inserted);
            if self.count > 0 && !all_removed {
                head.push(b',');
            }
        }
        let mut at = self.open + 1;
        for (range, replacement) in &self.edits {
            head.extend_from_slice(self.body.get(at..range.start)?);
            head.extend_from_slice(replacement);
            at = range.end;
        }
        head.extend_from_slice(self.body.get(at..head_end)?);
        Some(crate::body::NewBody::Head { replaced: head_end, head })
    }
}

/// Whether `body` looks like a JSON object (its first non-blank byte is `{`): a JSON body, not an
/// upload's `multipart/form-data`.
pub fn looks_like_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// Why [`each`] stopped.
#[derive(Debug)]
pub enum EachError<E> {
    /// An element did not have the expected shape (or the value is not an array).
    Json(serde_json::Error),
    /// The callback refused an element.
    Stopped(E),
}

struct EachVisitor<'f, T, F, E> {
    f: &'f mut F,
    stopped: &'f mut Option<E>,
    item: PhantomData<T>,
}

impl<'de, T, F, E> Visitor<'de> for EachVisitor<'_, T, F, E>
where
    T: Deserialize<'de>,
    F: FnMut(T) -> Result<(), E>,
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<T>()? {
            if let Err(e) = (self.f)(item) {
                *self.stopped = Some(e);
                return Err(de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

/// Calls `f` with each element of the JSON array `raw`, deserialized as `T` (borrowing from `raw`
/// where `T` borrows), one at a time: memory does not grow with the number of elements.
pub fn each<'a, T, E>(raw: &'a RawValue, mut f: impl FnMut(T) -> Result<(), E>) -> Result<(), EachError<E>>
where
    T: Deserialize<'a>,
{
    let mut stopped = None;
    let mut de = serde_json::Deserializer::from_slice(raw.get().as_bytes());
    let result =
        ObjectsOnly(&mut de).deserialize_seq(EachVisitor { f: &mut f, stopped: &mut stopped, item: PhantomData });
    match (stopped, result) {
        (Some(e), _) => Err(EachError::Stopped(e)),
        (None, Err(e)) => Err(EachError::Json(e)),
        (None, Ok(())) => Ok(()),
    }
}

/// Picks the value of one top-level member (e.g. `usage`) out of a JSON object arriving in
/// chunks, keeping only that value's bytes (up to `cap`). Nothing else is held.
#[derive(Debug)]
pub struct TopLevelCapture {
    key: &'static [u8],
    cap: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1: the next string is a key (after `{` or `,`), not a value.
    expect_key: bool,
    /// Bytes of the key being read at depth 1 (only while it can still equal `key`).
    key_buf: Vec<u8>,
    key_matches: bool,
    /// The last key read at depth 1 was `key`; its value starts after the colon.
    awaiting_colon: bool,
    /// The value of `key` is being captured.
    capturing: bool,
    value: Vec<u8>,
    overflow: bool,
    done: Option<Vec<u8>>,
}

impl TopLevelCapture {
    pub fn new(key: &'static str, cap: usize) -> Self {
        TopLevelCapture {
            key: key.as_bytes(),
            cap,
            depth: 0,
            in_string: false,
            escaped: false,
            expect_key: false,
            key_buf: Vec::new(),
            key_matches: false,
            awaiting_colon: false,
            capturing: false,
            value: Vec::new(),
            overflow: false,
            done: None,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        // Where the value being captured starts in this chunk: it is copied in slices, not bytes.
        let mut captured_from = self.capturing.then_some(0);
        let mut at = 0;
        loop {
            // Bytes that cannot change the state are skipped in bulk: inside a string, all but a
            // quote or backslash (unless it is a key being read); outside strings, all but the
            // structure.
            let rest = chunk.get(at..).unwrap_or_default();
            let next = if self.in_string {
                if self.escaped || (self.depth == 1 && self.expect_key) {
                    Some(0)
                } else {
                    memchr::memchr2(b'"', b'\\', rest)
                }
            } else {
                rest.iter().position(|&c| matches!(c, b'"' | b'{' | b'}' | b'[' | b']' | b',' | b':'))
            };
            let Some(skip) = next else { break };
            at += skip;
            let Some(&b) = chunk.get(at) else { break };
            let was_capturing = self.capturing;
            if was_capturing && self.depth == 1 && !self.in_string && (b == b',' || b == b'}') {
                let part = captured_from.and_then(|from| chunk.get(from..at)).unwrap_or_default();
                self.take_captured(part);
                self.capturing = false;
                self.done = (!self.overflow).then(|| std::mem::take(&mut self.value));
                self.value = Vec::new();
                self.overflow = false;
                captured_from = None;
            }
            self.byte(b);
            at += 1;
            if self.capturing && !was_capturing {
                captured_from = Some(at);
            }
        }
        if self.capturing {
            let part = captured_from.and_then(|from| chunk.get(from..)).unwrap_or_default();
            self.take_captured(part);
        }
    }

    fn take_captured(&mut self, part: &[u8]) {
        if self.overflow || self.value.len() + part.len() > self.cap {
            self.overflow = true;
        } else {
            self.value.extend_from_slice(part);
        }
    }

    /// One byte that may change the state (the capture itself is copied by `push`).
    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.depth == 1 && self.expect_key {
                    self.expect_key = false;
                    self.awaiting_colon = self.key_matches && self.key_buf == self.key;
                    self.key_buf.clear();
                }
                return;
            }
            if self.depth == 1 && self.expect_key {
                if self.key_matches && self.key_buf.len() < self.key.len() {
                    self.key_buf.push(b);
                } else {
                    self.key_matches = false;
                }
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.key_buf.clear();
                    self.key_matches = true;
                }
            }
            b'{' | b'[' => {
                self.depth = self.depth.saturating_add(1);
                if self.depth == 1 {
                    self.expect_key = b == b'{';
                }
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b',' if self.depth == 1 => self.expect_key = true,
            b':' if self.depth == 1 && self.awaiting_colon => {
                self.awaiting_colon = false;
                self.capturing = true;
            }
            _ => {}
        }
    }

    /// The captured value's bytes (the last occurrence), trimmed; `None` if absent or over the cap.
    pub fn value(&self) -> Option<&[u8]> {
        let v = self.done.as_deref()?;
        let start = v.iter().position(|b| !b.is_ascii_whitespace())?;
        let end = v.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
        v.get(start..end)
    }
}

/// Reads `T` from a whole JSON text: serde_json's `from_slice`, read through [`ObjectsOnly`]. Every
/// read in the filter goes through this one reader type, so each view's deserializer is compiled
/// once, not once per reader (`from_str` and `from_slice` were two: ~35 KiB of the module).
pub fn from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(ObjectsOnly(&mut de))?;
    de.end()?;
    Ok(value)
}

/// [`from_bytes`] for text.
pub fn from_text<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, serde_json::Error> {
    from_bytes(text.as_bytes())
}

/// Deserializes `T` from a raw value that borrows from the body.
pub fn from_raw<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, serde_json::Error> {
    T::deserialize(ObjectsOnly(&mut serde_json::Deserializer::from_slice(raw.get().as_bytes())))
}

/// Reads an internally tagged enum (`#[serde(tag = "...")]`) without the derive, which buffers the
/// object in serde's private content tree and compiles every variant's deserializer a second time
/// for it (Anthropic's stream event alone cost the .wasm over 100 KiB). The object is read once as
/// raw JSON; `K`, an enum of the variants' names (`#[serde(variant_identifier)]`, or for one with
/// a `#[serde(other)]` variant, which that refuses, `#[serde(field_identifier, expecting = "variant
/// identifier")]`), is read from its `tag` member: an error when missing, repeated, not a string,
/// or unknown without `other`, as with the derive (which took a variant's index as well, but only
/// where the enum was nested in another internally tagged one). `body` then reads the variant's
/// members from the same text, where the tag is one more member to ignore. Errors read as the
/// derive's (their position may differ): `expecting` names what a value other than an object is
/// not ("internally tagged enum NAME"). Unlike the derive, an array (the tag, then the members in
/// order) is refused. JSON only, read from a slice or a string (the object is borrowed).
pub fn by_tag<'de, D, K, T>(
    d: D,
    tag: &'static str,
    expecting: &'static str,
    body: impl FnOnce(K, &'de str) -> Result<T, serde_json::Error>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de>,
{
    let text = <&'de RawValue>::deserialize(d)?.get();
    let mut de = serde_json::Deserializer::from_slice(text.as_bytes());
    let kind = de::Deserializer::deserialize_map(ObjectsOnly(&mut de), TagProbe { tag, expecting, kind: PhantomData })
        .map_err(relay)?;
    body(kind, text).map_err(relay)
}

/// A variant's members, from the object's text (for [`by_tag`]).
pub fn tagged_body<'de, B: Deserialize<'de>>(text: &'de str) -> Result<B, serde_json::Error> {
    B::deserialize(ObjectsOnly(&mut serde_json::Deserializer::from_slice(text.as_bytes())))
}

/// An error from reading a value's own text, without its position there: the outer deserializer
/// puts its own position on it, as on the derive's errors.
fn relay<E: de::Error>(e: serde_json::Error) -> E {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    E::custom(if e.line() == 0 { &text[..] } else { text.strip_suffix(&suffix[..]).unwrap_or(&text) })
}

/// Reads the tag member of an object, skipping the others.
struct TagProbe<K> {
    tag: &'static str,
    expecting: &'static str,
    kind: PhantomData<K>,
}

impl<'de, K: Deserialize<'de>> Visitor<'de> for TagProbe<K> {
    type Value = K;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<K, A::Error> {
        let mut kind = None;
        while let Some(is_tag) = map.next_key_seed(IsKey(self.tag))? {
            if !is_tag {
                map.next_value::<de::IgnoredAny>()?;
            } else if kind.is_some() {
                return Err(de::Error::duplicate_field(self.tag));
            } else {
                kind = Some(map.next_value()?);
            }
        }
        kind.ok_or_else(|| de::Error::missing_field(self.tag))
    }
}

/// Whether a key is the given one.
struct IsKey(&'static str);

impl<'de> de::DeserializeSeed<'de> for IsKey {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsKey {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// Borrowed view of a raw JSON value as bytes.
pub fn raw_bytes(raw: &RawValue) -> &[u8] {
    raw.get().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(body: &[u8], edit: impl FnOnce(&mut Splice)) -> Vec<u8> {
        let mut s = Splice::new(body, &["model", "z", "a", "b", "k", "v", "anthropic_version"]).unwrap();
        edit(&mut s);
        match s.finish() {
            None => body.to_vec(),
            Some(new) => new.apply_to(body),
        }
    }

    #[test]
    fn members_are_found_with_their_ranges() {
        let body = br#" { "model" : "a\"b", "x":[1,{"y":"}"}], "n":-1.5e3 ,"t":true}"#;
        let (open, ms) = members(body).unwrap();
        assert_eq!(open, 1);
        let keys: Vec<_> = ms.iter().map(|m| m.key.to_string()).collect();
        assert_eq!(keys, ["model", "x", "n", "t"]);
        assert_eq!(&body[ms[0].value.clone()], br#""a\"b""#);
        assert_eq!(&body[ms[1].value.clone()], br#"[1,{"y":"}"}]"#);
        assert_eq!(&body[ms[2].value.clone()], b"-1.5e3");
        assert_eq!(members(b"{}").unwrap().1, vec![]);
        assert_eq!(members(b"[1]"), None);
        assert_eq!(members(b"{\"a\":1"), None);
        assert_eq!(members(br#"{"mod\u0065l":1}"#).unwrap().1[0].key, "model");
    }

    #[test]
    fn splice_edits_only_what_it_must() {
        let body = br#"{"a":1, "model":"m",  "z" : [1, 2]}"#;
        assert_eq!(head(body, |s| s.set("model", br#""real""#)), br#"{"a":1, "model":"real",  "z" : [1, 2]}"#);
        assert_eq!(head(body, |s| s.remove("model")), br#"{"a":1, "z" : [1, 2]}"#);
        assert_eq!(head(body, |s| s.remove("z")), br#"{"a":1, "model":"m"}"#);
        assert_eq!(head(body, |s| s.remove("a")), br#"{"model":"m",  "z" : [1, 2]}"#);
        assert_eq!(head(body, |s| s.set("v", b"2")), br#"{"v":2,"a":1, "model":"m",  "z" : [1, 2]}"#);
        assert_eq!(
            head(body, |s| {
                s.remove("model");
                s.remove("z");
                s.insert("anthropic_version", br#""x""#);
            }),
            br#"{"anthropic_version":"x","a":1}"#
        );
        assert_eq!(
            head(br#"{"model":"m"}"#, |s| {
                s.remove("model");
                s.insert("k", b"1")
            }),
            br#"{"k":1}"#
        );
        assert_eq!(head(b"{ }", |s| s.insert("k", b"1")), b"{\"k\":1 }");
        assert_eq!(
            head(br#"{"a":1,"b":2}"#, |s| {
                s.remove("a");
                s.remove("b")
            }),
            b"{}"
        );
        // The head replacement stops at the last edit: the tail is never copied.
        let s = {
            let mut s = Splice::new(body, &["model"]).unwrap();
            s.set("model", b"1");
            s.finish().unwrap()
        };
        let crate::body::NewBody::Head { replaced, .. } = s else { panic!() };
        assert_eq!(replaced, body.windows(3).position(|w| w == b"\"m\"").unwrap() + 3);
    }

    #[test]
    fn splice_remembers_only_what_it_edits() {
        let mut body = b"{".to_vec();
        for i in 0..100_000 {
            body.extend_from_slice(format!("\"k{i}\":{i},").as_bytes());
            if i == 500 {
                body.extend_from_slice(br#""model":"m","stream":true,"#);
            }
        }
        body.extend_from_slice(b"\"end\":0}");
        let mut s = Splice::new(&body, &["model", "stream"]).unwrap();
        assert_eq!(s.members.len(), 4, "the two members and their two neighbours");
        s.remove("model");
        s.remove("stream");
        let out = s.finish().unwrap().apply_to(&body);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 100_001);
        assert!(v.get("model").is_none() && v["k501"] == 501);
    }

    #[test]
    fn each_walks_elements_without_collecting() {
        let raw: &RawValue = serde_json::from_str(r#"[{"a":"x"},{"a":"y\n"}]"#).unwrap();
        #[derive(serde::Deserialize)]
        struct E<'a> {
            #[serde(borrow)]
            a: Cow<'a, str>,
        }
        let mut seen = Vec::new();
        each(raw, |e: E| -> Result<(), ()> {
            seen.push((e.a.to_string(), matches!(e.a, Cow::Borrowed(_))));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [("x".to_string(), true), ("y\n".to_string(), false)]);
        let r = each(raw, |_: E| Err("no"));
        assert!(matches!(r, Err(EachError::Stopped("no"))));
        let not_array: &RawValue = serde_json::from_str("{}").unwrap();
        assert!(matches!(each(not_array, |_: E| Ok::<(), ()>(())), Err(EachError::Json(_))));
    }

    #[test]
    fn top_level_capture_at_every_split() {
        let body =
            br#"{"id":"x","choices":[{"usage":{"bad":1},"t":"\"usage\":"}],"usage" : {"prompt_tokens":3,"s":"},"} }"#;
        for split in 0..body.len() {
            let mut c = TopLevelCapture::new("usage", 1024);
            c.push(&body[..split]);
            c.push(&body[split..]);
            assert_eq!(c.value(), Some(&br#"{"prompt_tokens":3,"s":"},"}"#[..]), "split {split}");
        }
        // Escapes next to quotes, at every split and pushed a byte at a time.
        let body = br#"{"a\"usage":"x\\","b":"\"usage\":1","usage":{"n":"\\\""},"z":[{"usage":0}]}"#;
        for split in 0..body.len() {
            let mut c = TopLevelCapture::new("usage", 1024);
            c.push(&body[..split]);
            c.push(&body[split..]);
            assert_eq!(c.value(), Some(&br#"{"n":"\\\""}"#[..]), "split {split}");
        }
        let mut c = TopLevelCapture::new("usage", 1024);
        body.chunks(1).for_each(|b| c.push(b));
        assert_eq!(c.value(), Some(&br#"{"n":"\\\""}"#[..]));
        let mut c = TopLevelCapture::new("usage", 4);
        c.push(br#"{"usage":{"prompt_tokens":3}}"#);
        assert_eq!(c.value(), None);
        let mut c = TopLevelCapture::new("usage", 64);
        c.push(br#"{"usagex":1,"usag":2}"#);
        assert_eq!(c.value(), None);
    }
}
