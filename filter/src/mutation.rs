//! Body mutation: top-level JSON fields a backend (or a rule's reference to it) sets or removes in
//! the body the provider receives, after translation. Edited in place with [`Splice`]: the other
//! bytes of the body travel as they were.
//!
//! Envoy AI Gateway's `bodyMutation` (AIServiceBackend and AIGatewayRoute `backendRefs[]`): at most
//! 16 `set` and 16 `remove`, top-level names only; the reference's wins over the backend's where
//! both name a field.

use crate::body::NewBody;
use crate::error::{ApiError, ErrorKind};
use crate::json::Splice;
use serde_json::value::RawValue;

/// Envoy AI Gateway's limit on each of `set` and `remove`.
pub const MAX_ITEMS: usize = 16;
/// Fields the gateway itself reads to route and translate: mutating them would make the request
/// the provider gets disagree with the one the gateway answers for (`model_override` exists).
const RESERVED: &[&str] = &["model", "stream"];

/// A validated mutation: names are distinct across `set` and `remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyMutation {
    /// Field name and its value as compact JSON.
    pub set: Vec<(String, Vec<u8>)>,
    pub remove: Vec<String>,
}

/// A mutation problem at configuration time: the sub-field at fault (`set.temperature`,
/// `remove[2]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationError {
    pub field: String,
    pub reason: String,
}

fn error(field: impl Into<String>, reason: impl Into<String>) -> MutationError {
    MutationError { field: field.into(), reason: reason.into() }
}

fn check_name(name: &str, field: &str) -> Result<(), MutationError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(error(field, "must be a top-level field name of 1 to 256 characters, without control characters"));
    }
    if name.contains('.') {
        return Err(error(field, format!("{name:?}: only top-level fields can be mutated, not nested paths")));
    }
    if RESERVED.contains(&name) {
        return Err(error(
            field,
            format!("{name:?} cannot be mutated: the gateway routes and translates by it (use model_override for the model)"),
        ));
    }
    Ok(())
}

impl BodyMutation {
    /// Validates `set` (name, JSON value) and `remove` as configured.
    pub fn compile(set: Vec<(String, Box<RawValue>)>, remove: Vec<String>) -> Result<Self, MutationError> {
        if set.len() > MAX_ITEMS {
            return Err(error("set", format!("at most {MAX_ITEMS} fields")));
        }
        if remove.len() > MAX_ITEMS {
            return Err(error("remove", format!("at most {MAX_ITEMS} fields")));
        }
        let mut out = BodyMutation::default();
        for (name, value) in set {
            let field = format!("set.{name}");
            check_name(&name, &field)?;
            // Duplicate keys in the configuration's object are caught where it is deserialized;
            // the value is JSON already (the parser checked it) and goes in as written.
            out.set.push((name, value.get().trim().as_bytes().to_vec()));
        }
        for (i, name) in remove.into_iter().enumerate() {
            let field = format!("remove[{i}]");
            check_name(&name, &field)?;
            if out.remove.contains(&name) {
                return Err(error(field, format!("{name:?} is listed twice")));
            }
            if out.set.iter().any(|(n, _)| *n == name) {
                return Err(error(field, format!("{name:?} is both set and removed")));
            }
            out.remove.push(name);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.set.iter().map(|(n, _)| n.as_str()).chain(self.remove.iter().map(String::as_str))
    }

    /// This (a backend's) mutation with `over` (a rule reference's) on top: where both name a
    /// field, `over` decides it.
    pub fn overlaid_by(&self, over: &BodyMutation) -> BodyMutation {
        let decided = |name: &str| over.names().any(|n| n == name);
        let mut out = over.clone();
        out.set.extend(self.set.iter().filter(|(n, _)| !decided(n)).cloned());
        out.remove.extend(self.remove.iter().filter(|n| !decided(n)).cloned());
        out
    }

    /// Applies the mutation to the body the provider would get: `original` as edited by the
    /// translator (`translated`: `None` when it kept the body). Returns the new body (`None`: it
    /// is unchanged).
    ///
    /// The top-level scan needs the body in one buffer: the client's body costs nothing; a body
    /// the translator edited or wrote is joined once (a translator hands nothing to the host when
    /// a mutation follows, so a whole new body is all in memory).
    pub fn apply(&self, original: &[u8], translated: Option<NewBody>) -> Result<Option<NewBody>, ApiError> {
        match translated {
            None => self.splice(original),
            Some(NewBody::Head { replaced, head }) => {
                let joined = [head.as_slice(), original.get(replaced..).unwrap_or_default()].concat();
                Ok(Some(match self.splice(&joined)? {
                    None => NewBody::Head { replaced, head },
                    Some(mutated) => compose_heads(replaced, &head, mutated),
                }))
            }
            Some(NewBody::Whole(body)) => {
                if body.handed_out() > 0 {
                    return Err(ApiError::new(
                        500,
                        ErrorKind::Server,
                        "internal",
                        "a translated body left before its mutation was applied",
                    ));
                }
                let mut joined = body.to_vec();
                drop(body);
                Ok(Some(match self.splice(&joined)? {
                    Some(NewBody::Head { replaced, head }) => {
                        // Only the head changes: the tail moves in place.
                        joined.splice(..replaced.min(joined.len()), head).for_each(drop);
                        NewBody::whole(joined)
                    }
                    _ => NewBody::whole(joined),
                }))
            }
        }
    }

    fn splice(&self, body: &[u8]) -> Result<Option<NewBody>, ApiError> {
        let keys: Vec<&str> = self.names().collect();
        let mut splice = Splice::new(body, &keys)
            .ok_or_else(|| ApiError::bad_request("invalid_request", "request body must be a JSON object"))?;
        for name in &self.remove {
            splice.remove(name);
        }
        for (name, value) in &self.set {
            splice.set(name, value);
        }
        Ok(splice.finish())
    }
}

/// `second` (a head replacement of `first_head + original[first_replaced..]`) as one head
/// replacement of `original`: the tail is never copied.
fn compose_heads(first_replaced: usize, first_head: &[u8], second: NewBody) -> NewBody {
    match second {
        NewBody::Head { replaced, mut head } => {
            if replaced <= first_head.len() {
                head.extend_from_slice(first_head.get(replaced..).unwrap_or_default());
                NewBody::Head { replaced: first_replaced, head }
            } else {
                NewBody::Head { replaced: first_replaced + (replaced - first_head.len()), head }
            }
        }
        whole @ NewBody::Whole(_) => whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: &serde_json::Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    fn mutation(set: &[(&str, serde_json::Value)], remove: &[&str]) -> BodyMutation {
        BodyMutation::compile(
            set.iter().map(|(n, v)| (n.to_string(), raw(v))).collect(),
            remove.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
    }

    fn applied(m: &BodyMutation, body: &[u8]) -> Vec<u8> {
        match m.apply(body, None).unwrap() {
            Some(new) => new.apply_to(body),
            None => body.to_vec(),
        }
    }

    #[test]
    fn sets_and_removes_top_level_fields_in_place() {
        let m = mutation(&[("temperature", json!(0.5)), ("service_tier", json!("scale"))], &["stream_options"]);
        let body = br#"{"model":"m",  "temperature" : 1 ,"messages":[{"temperature":9,"stream_options":{}}],"stream_options":{"include_usage":true}}"#;
        let out = applied(&m, body);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"service_tier":"scale","model":"m",  "temperature" : 0.5 ,"messages":[{"temperature":9,"stream_options":{}}]}"#
        );
    }

    #[test]
    fn escaped_keys_duplicates_and_whitespace() {
        let m = mutation(&[("temperature", json!({"a": [1, 2]}))], &["user"]);
        // An escaped key is the same field; every duplicate is edited; whitespace around members
        // stays; nested values are untouched.
        let body = b"{ \"temp\\u0065rature\" :\n 1, \"user\":\"a\", \"x\":{\"user\":1},\"temperature\":2,\t\"user\" : [\"b\"] }";
        let out = applied(&m, body);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "{ \"temp\\u0065rature\" :\n {\"a\":[1,2]}, \"x\":{\"user\":1},\"temperature\":{\"a\":[1,2]} }"
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, json!({"temperature": {"a": [1, 2]}, "x": {"user": 1}}));
    }

    #[test]
    fn unchanged_bodies_are_not_copied() {
        let m = mutation(&[], &["absent"]);
        assert_eq!(m.apply(br#"{"a":1}"#, None).unwrap(), None);
        // Everything removed, and a field added to an empty object.
        let m = mutation(&[("n", json!(null))], &["a", "b"]);
        assert_eq!(applied(&m, br#"{"a":1,"b":2}"#), br#"{"n":null}"#);
        assert_eq!(applied(&m, b"{}"), br#"{"n":null}"#);
    }

    #[test]
    fn hostile_bodies_are_refused_not_panicked_on() {
        let m = mutation(&[("t", json!(1))], &["u"]);
        for body in [&b""[..], b"[]", b"\"x\"", b"{", b"{\"a\":", b"{\"a\" 1}", b"{\"a\":1,}", b"{\"a\":[}", b"\xff"] {
            // The scanner may accept what it can read (then it edits it); what it cannot is a 400.
            if let Err(e) = m.apply(body, None) {
                assert_eq!(e.status, 400);
            }
        }
        // Deep nesting costs nothing (the scan is iterative) and is left alone.
        let deep = format!("{{\"u\":1,\"d\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let out = applied(&m, deep.as_bytes());
        assert!(out.starts_with(b"{\"t\":1,\"d\":[[[") && out.len() == deep.len() - 6 + 6);
    }

    #[test]
    fn applies_after_a_head_edit_without_copying_the_tail() {
        let original = br#"{"model":"a","stream":true,"messages":[],"stream_options":{"x":1},"tail":"0123456789"}"#;
        let translated = NewBody::Head { replaced: 12, head: br#"{"model":"bb""#.to_vec() };
        let expected_input = translated.apply_to(original);
        let m = mutation(&[("top_p", json!(0.1))], &["stream_options"]);
        let out = m.apply(original, Some(translated)).unwrap().unwrap();
        assert!(matches!(&out, NewBody::Head { replaced, .. } if *replaced < original.len() - 10));
        assert_eq!(out.apply_to(original), applied(&m, &expected_input));
        assert_eq!(
            String::from_utf8(out.apply_to(original)).unwrap(),
            r#"{"top_p":0.1,"model":"bb","stream":true,"messages":[],"tail":"0123456789"}"#
        );
        // A mutation that reaches only inside the first head.
        let translated = NewBody::Head { replaced: 12, head: br#"{"model":"bb","k":1"#.to_vec() };
        let m = mutation(&[], &["k"]);
        let out = m.apply(original, Some(translated)).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(out.apply_to(original)).unwrap(),
            r#"{"model":"bb","stream":true,"messages":[],"stream_options":{"x":1},"tail":"0123456789"}"#
        );
    }

    #[test]
    fn applies_to_a_whole_new_body() {
        let m = mutation(&[("temperature", json!(0.5))], &["system"]);
        let whole = NewBody::whole(br#"{"system":"s","max_tokens":5,"messages":[]}"#.to_vec());
        let out = m.apply(b"{}", Some(whole)).unwrap().unwrap();
        assert_eq!(out.apply_to(b"{}"), br#"{"temperature":0.5,"max_tokens":5,"messages":[]}"#);
    }

    #[test]
    fn configuration_is_validated_once() {
        let bad = |set: Vec<(&str, serde_json::Value)>, remove: Vec<&str>| {
            BodyMutation::compile(
                set.into_iter().map(|(n, v)| (n.to_string(), raw(&v))).collect(),
                remove.into_iter().map(String::from).collect(),
            )
            .unwrap_err()
        };
        assert_eq!(bad(vec![("model", json!("x"))], vec![]).field, "set.model");
        assert_eq!(bad(vec![], vec!["stream"]).field, "remove[0]");
        assert_eq!(bad(vec![("", json!(1))], vec![]).field, "set.");
        assert!(bad(vec![("a.b", json!(1))], vec![]).reason.contains("top-level"));
        assert!(bad(vec![("a", json!(1))], vec!["a"]).reason.contains("both set and removed"));
        assert!(bad(vec![], vec!["a", "a"]).reason.contains("twice"));
        let many: Vec<&str> = ["a"; 17].to_vec();
        assert_eq!(bad(vec![], many).field, "remove");
    }

    #[test]
    fn the_reference_wins_where_both_name_a_field() {
        let backend = mutation(&[("a", json!(1)), ("b", json!(1))], &["c", "d"]);
        let reference = mutation(&[("c", json!(2))], &["a"]);
        let merged = backend.overlaid_by(&reference);
        assert_eq!(merged.set, vec![("c".to_string(), b"2".to_vec()), ("b".to_string(), b"1".to_vec())]);
        assert_eq!(merged.remove, vec!["a".to_string(), "d".to_string()]);
    }
}
