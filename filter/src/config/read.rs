//! Reads the configuration's JSON by hand: the text is checked once by serde_json, then walked with
//! the filter's own member/element scanners, and each field is read by one non-generic getter.
//! serde's derived deserializers (one instance per struct, field type and collection) cost the
//! module 23.5 KB more than this, and serde_path_to_error's field paths ~60 KiB; these getters give
//! the same errors (serde's wording: `missing field `name``, `unknown field `x`, expected one of
//! ...`, `invalid type: string "x", expected u32`), each with the dotted path of the field at fault
//! (`rules[0].backends[1].weight`) and serde_json's location, in the module as in the CLI.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::{Error as _, Unexpected};

use super::ConfigError;

/// One JSON value of the configuration, and where it is (for errors).
#[derive(Clone, Copy)]
pub struct Json<'a> {
    /// The whole configuration text (locations are counted in it).
    doc: &'a [u8],
    /// The value's bytes: a sub-slice of `doc`.
    text: &'a [u8],
}

/// The configuration text as a value, once serde_json has found it to be one JSON text (so the
/// scanners below only ever see valid JSON).
pub fn document(doc: &[u8]) -> Result<Json<'_>, Box<ConfigError>> {
    crate::json::from_bytes::<&serde_json::value::RawValue>(doc).map_err(|e| ConfigError::new("", &e.to_string()))?;
    Ok(Json { doc, text: doc })
}

/// `path` followed by a member name (`backends[0].name`; a bare `name` at the top).
pub fn member_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

impl<'a> Json<'a> {
    pub fn is_null(&self) -> bool {
        self.text == b"null"
    }

    pub fn is_string(&self) -> bool {
        self.text.first() == Some(&b'"')
    }

    pub fn is_object(&self) -> bool {
        self.text.first() == Some(&b'{')
    }

    /// An error of the configuration's own wording at `path`, located at this value.
    pub fn custom(&self, path: &str, message: std::fmt::Arguments<'_>) -> Box<ConfigError> {
        self.fail(path, serde_json::Error::custom(message))
    }

    /// `message` at `path`, located after this value as serde_json locates most errors.
    fn fail(&self, path: &str, message: serde_json::Error) -> Box<ConfigError> {
        self.fail_at(path, message, self.text.len())
    }

    /// `message` at `path`, located `offset` bytes into this value.
    fn fail_at(&self, path: &str, message: serde_json::Error, offset: usize) -> Box<ConfigError> {
        let at = (self.text.as_ptr() as usize + offset).saturating_sub(self.doc.as_ptr() as usize);
        let before = self.doc.get(..at).unwrap_or(self.doc);
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        ConfigError::new_fmt(path, format_args!("{message} at line {line} column {}", at - line_start))
    }

    /// serde's "invalid type: string \"x\", expected u32" for this value.
    pub fn invalid_type(&self, path: &str, expected: &str) -> Box<ConfigError> {
        let decoded;
        let unexpected = match self.text.first() {
            Some(b'"') => {
                decoded = self.decoded_string();
                Unexpected::Str(&decoded)
            }
            Some(b't') => Unexpected::Bool(true),
            Some(b'f') => Unexpected::Bool(false),
            Some(b'n') => Unexpected::Unit,
            Some(b'[') => Unexpected::Seq,
            Some(b'{') => Unexpected::Map,
            _ => self.number(),
        };
        // serde_json locates an array or object where it starts, anything else after its end.
        let offset = if matches!(unexpected, Unexpected::Seq | Unexpected::Map) { 0 } else { self.text.len() };
        self.fail_at(path, serde_json::Error::invalid_type(unexpected, &expected), offset)
    }

    fn decoded_string(&self) -> String {
        serde_json::from_slice::<String>(self.text).unwrap_or_default()
    }

    /// A number as serde_json reports it: unsigned, negative, or (fraction, exponent, too large)
    /// floating point.
    fn number(&self) -> Unexpected<'static> {
        let text = std::str::from_utf8(self.text).unwrap_or_default();
        if let Ok(n) = text.parse::<u64>() {
            Unexpected::Unsigned(n)
        } else if let Ok(n) = text.parse::<i64>() {
            Unexpected::Signed(n)
        } else {
            Unexpected::Float(crate::json::from_bytes::<f64>(self.text).unwrap_or_default())
        }
    }

    pub fn string(&self, path: &str) -> Result<String, Box<ConfigError>> {
        if !self.is_string() {
            return Err(self.invalid_type(path, "a string"));
        }
        Ok(self.decoded_string())
    }

    pub fn boolean(&self, path: &str) -> Result<bool, Box<ConfigError>> {
        match self.text {
            b"true" => Ok(true),
            b"false" => Ok(false),
            _ => Err(self.invalid_type(path, "a boolean")),
        }
    }

    /// A whole number up to `max`; `expected` names its type in errors (`u32`, `usize`).
    pub fn unsigned(&self, path: &str, max: u64, expected: &str) -> Result<u64, Box<ConfigError>> {
        if !matches!(self.text.first(), Some(b'-' | b'0'..=b'9')) {
            return Err(self.invalid_type(path, expected));
        }
        let out_of_range = match self.number() {
            Unexpected::Unsigned(n) if n <= max => return Ok(n),
            number @ (Unexpected::Unsigned(_) | Unexpected::Signed(_)) => number,
            _ => return Err(self.invalid_type(path, expected)),
        };
        Err(self.fail(path, serde_json::Error::invalid_value(out_of_range, &expected)))
    }

    /// The elements of an array, each with its path (`path[i]`).
    pub fn elements(&self, path: &str) -> Result<Vec<(String, Json<'a>)>, Box<ConfigError>> {
        let mut out = Vec::new();
        let doc = self.doc;
        let mut index = 0usize;
        crate::json::for_each_element(self.text, &mut |text| {
            out.push((format!("{path}[{index}]"), Json { doc, text }));
            index += 1;
        })
        .ok_or_else(|| self.invalid_type(path, "a sequence"))?;
        Ok(out)
    }

    /// The members of an object in order, names decoded (a name given twice appears twice).
    pub fn members(&self, path: &str, expected: &str) -> Result<Vec<Member<'a>>, Box<ConfigError>> {
        let mut out = Vec::new();
        let (doc, text) = (self.doc, self.text);
        crate::json::each_member(text, &mut |m| {
            // The key's text ends at the last quote before the value (serde_json locates unknown
            // and repeated names there).
            let key_end = text.get(m.span.start..m.value.start).and_then(|k| k.iter().rposition(|&b| b == b'"'));
            if let (Some(value), Some(key)) =
                (text.get(m.value), key_end.and_then(|end| text.get(m.span.start..=m.span.start + end)))
            {
                out.push(Member { name: m.key, key: Json { doc, text: key }, value: Json { doc, text: value } });
            }
        })
        .ok_or_else(|| self.invalid_type(path, expected))?;
        Ok(out)
    }

    /// An object read as the struct `name` (`expected` in errors: `struct Backend`) with the
    /// members `fields`: an unknown or repeated member is an error, as serde's derive makes it.
    pub fn object(self, path: String, expected: &str, fields: &[&str]) -> Result<Object<'a>, Box<ConfigError>> {
        let members = self.members(&path, expected)?;
        for (i, m) in members.iter().enumerate() {
            if !fields.contains(&m.name.as_ref()) {
                return Err(m.key.fail(&member_path(&path, &m.name), unknown_field(&m.name, fields)));
            }
            if members.iter().take(i).any(|earlier| earlier.name == m.name) {
                let name = &m.name;
                return Err(m.key.fail(&path, serde_json::Error::custom(format_args!("duplicate field `{name}`"))));
            }
        }
        Ok(Object { json: self, path, members, error: None })
    }

    /// The raw text, for values kept as JSON (`body_mutation.set`, `cache`).
    pub fn raw(&self) -> Result<Box<serde_json::value::RawValue>, Box<ConfigError>> {
        crate::json::from_bytes::<&serde_json::value::RawValue>(self.text)
            .map(ToOwned::to_owned)
            .map_err(|e| ConfigError::new("", &e.to_string()))
    }
}

/// serde's wording: "unknown field `x`, expected one of `a`, `b`, `c`" (or "`a` or `b`").
fn unknown_field(name: &str, fields: &[&str]) -> serde_json::Error {
    let mut expected = String::new();
    let last = fields.len().saturating_sub(1);
    for (i, field) in fields.iter().enumerate() {
        let separator = match i {
            0 if fields.len() > 2 => "one of ",
            0 => "",
            _ if i == last && fields.len() == 2 => " or ",
            _ => ", ",
        };
        expected.push_str(separator);
        expected.push('`');
        expected.push_str(field);
        expected.push('`');
    }
    if fields.is_empty() {
        serde_json::Error::custom(format_args!("unknown field `{name}`, there are no fields"))
    } else {
        serde_json::Error::custom(format_args!("unknown field `{name}`, expected {expected}"))
    }
}

/// The struct read from `object` (built first, so its getters' borrows have ended), or the first
/// error met while reading it.
pub fn done<T>(value: T, object: Object<'_>) -> Result<T, Box<ConfigError>> {
    match object.error {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

/// An object's member: its decoded name, its name as written, and its value.
pub struct Member<'a> {
    pub name: Cow<'a, str>,
    key: Json<'a>,
    pub value: Json<'a>,
}

/// An object being read field by field; each getter takes its member out. A getter never fails:
/// the first error is kept and [`done`] returns it. (With `?` after each getter, every
/// struct's reader carried a ladder of drops for the fields read so far: ~20 KiB of the module.)
pub struct Object<'a> {
    json: Json<'a>,
    pub path: String,
    members: Vec<Member<'a>>,
    error: Option<Box<ConfigError>>,
}

impl<'a> Object<'a> {
    /// `read`'s value, or the default after keeping its error.
    fn keep<T: Default>(&mut self, read: Result<T, Box<ConfigError>>) -> T {
        read.unwrap_or_else(|e| {
            self.error.get_or_insert(e);
            T::default()
        })
    }

    /// The member `name` and its path, if given (and nothing once an error is kept).
    fn take(&mut self, name: &str) -> Option<(String, Json<'a>)> {
        if self.error.is_some() {
            return None;
        }
        let at = self.members.iter().position(|m| m.name == name)?;
        let value = self.members.swap_remove(at).value;
        Some((member_path(&self.path, name), value))
    }

    /// The member `name`, if given and not null (serde's `Option`).
    fn optional(&mut self, name: &str) -> Option<(String, Json<'a>)> {
        self.take(name).filter(|(_, value)| !value.is_null())
    }

    /// A field the struct cannot do without: "missing field `name`" at the object's path (unless
    /// an earlier error is kept).
    fn missing(&mut self, name: &str) {
        if self.error.is_none() {
            let e = self.json.fail(&self.path, serde_json::Error::custom(format_args!("missing field `{name}`")));
            self.error = Some(e);
        }
    }

    /// A required string (`null` is a wrong type, not an absence).
    #[inline(never)]
    pub fn string(&mut self, name: &str) -> String {
        match self.take(name) {
            Some((path, value)) => {
                let read = value.string(&path);
                self.keep(read)
            }
            None => {
                self.missing(name);
                String::new()
            }
        }
    }

    #[inline(never)]
    pub fn opt_string(&mut self, name: &str) -> Option<String> {
        let read = self.optional(name).map(|(path, value)| value.string(&path)).transpose();
        self.keep(read)
    }

    #[inline(never)]
    pub fn opt_bool(&mut self, name: &str) -> Option<bool> {
        let read = self.optional(name).map(|(path, value)| value.boolean(&path)).transpose();
        self.keep(read)
    }

    /// `#[serde(default)] bool`: absent is false, `null` is a wrong type.
    #[inline(never)]
    pub fn flag(&mut self, name: &str) -> bool {
        let read = self.take(name).map(|(path, value)| value.boolean(&path)).transpose();
        self.keep(read).unwrap_or(false)
    }

    #[inline(never)]
    fn opt_unsigned(&mut self, name: &str, max: u64, expected: &str) -> Option<u64> {
        let read = self.optional(name).map(|(path, value)| value.unsigned(&path, max, expected)).transpose();
        self.keep(read)
    }

    pub fn opt_u64(&mut self, name: &str) -> Option<u64> {
        self.opt_unsigned(name, u64::MAX, "u64")
    }

    pub fn opt_u32(&mut self, name: &str) -> Option<u32> {
        self.opt_unsigned(name, u32::MAX.into(), "u32").and_then(|n| u32::try_from(n).ok())
    }

    pub fn opt_usize(&mut self, name: &str) -> Option<usize> {
        let max = u64::try_from(usize::MAX).unwrap_or(u64::MAX);
        self.opt_unsigned(name, max, "usize").and_then(|n| usize::try_from(n).ok())
    }

    /// `#[serde(default)] Vec<String>`.
    pub fn strings(&mut self, name: &str) -> Vec<String> {
        self.list(name, false, string_at)
    }

    /// `Option<Vec<String>>`.
    pub fn opt_strings(&mut self, name: &str) -> Option<Vec<String>> {
        self.opt(name, |value, path| value.elements(&path)?.into_iter().map(|(path, s)| s.string(&path)).collect())
    }

    /// `#[serde(default)] BTreeMap<String, String>`: a name given twice keeps its last value.
    #[inline(never)]
    pub fn string_map(&mut self, name: &str) -> BTreeMap<String, String> {
        let read = self.take(name).map(|(path, value)| {
            let mut out = BTreeMap::new();
            for m in value.members(&path, "a map")? {
                let string = m.value.string(&member_path(&path, &m.name))?;
                out.insert(m.name.into_owned(), string);
            }
            Ok(out)
        });
        self.keep(read.transpose()).unwrap_or_default()
    }

    /// The member `name` (not null) read by `read`.
    pub fn opt<T>(&mut self, name: &str, read: fn(Json<'a>, String) -> Result<T, Box<ConfigError>>) -> Option<T> {
        let read = self.optional(name).map(|(path, value)| read(value, path)).transpose();
        self.keep(read)
    }

    /// `#[serde(default)]` of a struct: absent is the default, `null` is a wrong type.
    pub fn or_default<T: Default>(
        &mut self,
        name: &str,
        read: fn(Json<'a>, String) -> Result<T, Box<ConfigError>>,
    ) -> T {
        let read = self.take(name).map(|(path, value)| read(value, path)).transpose();
        self.keep(read).unwrap_or_default()
    }

    /// A list of `read`'s values (`Vec<T>`); absent is empty unless `needed`.
    pub fn list<T>(
        &mut self,
        name: &str,
        needed: bool,
        read: fn(Json<'a>, String) -> Result<T, Box<ConfigError>>,
    ) -> Vec<T> {
        let Some((path, value)) = self.take(name) else {
            if needed {
                self.missing(name);
            }
            return Vec::new();
        };
        let read = value.elements(&path).and_then(|elements| {
            let mut out = Vec::with_capacity(elements.len());
            for (path, element) in elements {
                out.push(read(element, path)?);
            }
            Ok(out)
        });
        self.keep(read)
    }
}

/// A string element, for [`Object::list`].
pub fn string_at(value: Json<'_>, path: String) -> Result<String, Box<ConfigError>> {
    value.string(&path)
}
