//! Reading a parsed YAML document with the path of every value at hand, so each error names the
//! field (`spec.rules[0].backendRefs[1].weight: expected an integer, found "x"`).

use serde_yaml_ng::Value;

use crate::diag;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

pub type NResult<T> = Result<T, FieldError>;

/// A value and its path from the document root.
#[derive(Debug, Clone)]
pub struct At<'a> {
    pub value: &'a Value,
    pub path: String,
}

impl<'a> At<'a> {
    pub fn root(value: &'a Value) -> At<'a> {
        At { value, path: String::new() }
    }

    pub fn err(&self, reason: impl Into<String>) -> FieldError {
        FieldError { field: self.path.clone(), reason: reason.into() }
    }

    pub fn field(&self) -> &str {
        &self.path
    }

    /// A child value (`None` when missing or null).
    pub fn get(&self, key: &str) -> Option<At<'a>> {
        match self.value.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(At { value: v, path: diag::join(&self.path, key) }),
        }
    }

    pub fn req(&self, key: &str) -> NResult<At<'a>> {
        self.get(key).ok_or_else(|| FieldError {
            field: diag::join(&self.path, key),
            reason: "required field is missing".into(),
        })
    }

    pub fn str(&self) -> NResult<&'a str> {
        self.value.as_str().ok_or_else(|| self.err(format!("expected a string, found {}", describe(self.value))))
    }

    pub fn u64(&self) -> NResult<u64> {
        match self.value {
            Value::Number(n) => {
                n.as_u64().ok_or_else(|| self.err(format!("expected a non-negative integer, found {n}")))
            }
            other => Err(self.err(format!("expected an integer, found {}", describe(other)))),
        }
    }

    pub fn port(&self) -> NResult<u16> {
        match self.u64()? {
            n @ 1..=65535 => Ok(n as u16),
            n => Err(self.err(format!("port {n} is not between 1 and 65535"))),
        }
    }

    pub fn bool(&self) -> NResult<bool> {
        self.value.as_bool().ok_or_else(|| self.err(format!("expected true or false, found {}", describe(self.value))))
    }

    pub fn items(&self) -> NResult<Vec<At<'a>>> {
        let seq = self
            .value
            .as_sequence()
            .ok_or_else(|| self.err(format!("expected a list, found {}", describe(self.value))))?;
        Ok(seq.iter().enumerate().map(|(i, v)| At { value: v, path: format!("{}[{i}]", self.path) }).collect())
    }

    /// Items of an optional list field (missing = empty).
    pub fn list(&self, key: &str) -> NResult<Vec<At<'a>>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(v) => v.items(),
        }
    }

    pub fn opt_str(&self, key: &str) -> NResult<Option<&'a str>> {
        self.get(key).map(|v| v.str()).transpose()
    }

    pub fn req_str(&self, key: &str) -> NResult<&'a str> {
        self.req(key)?.str()
    }

    pub fn entries(&self) -> NResult<Vec<(String, At<'a>)>> {
        let map = self
            .value
            .as_mapping()
            .ok_or_else(|| self.err(format!("expected a mapping, found {}", describe(self.value))))?;
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            let key = k.as_str().ok_or_else(|| self.err(format!("keys must be strings, found {}", describe(k))))?;
            out.push((key.to_string(), At { value: v, path: diag::join(&self.path, key) }));
        }
        Ok(out)
    }

    /// Paths of keys not in `known`, for "ignored field" warnings.
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<String> {
        let Some(map) = self.value.as_mapping() else { return Vec::new() };
        map.keys().filter_map(Value::as_str).filter(|k| !known.contains(k)).map(|k| diag::join(&self.path, k)).collect()
    }
}

pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Kubernetes quantities for byte sizes: `50Mi`, `1Gi`, `32768`, `10M`, `64k`.
pub fn quantity_bytes(at: &At<'_>) -> NResult<u64> {
    if let Value::Number(_) = at.value {
        return at.u64();
    }
    let s = at.str()?.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().map_err(|_| at.err(format!("{s:?} is not a size such as 50Mi or 1048576")))?;
    let mult: u64 = match &s[digits..] {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "Ki" => 1024,
        "Mi" => 1024_u64.pow(2),
        "Gi" => 1024_u64.pow(3),
        unit => return Err(at.err(format!("unknown size unit {unit:?}; use Ki, Mi, Gi, k, M or G"))),
    };
    n.checked_mul(mult).ok_or_else(|| at.err(format!("{s:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn paths_follow_the_walk() {
        let v = yaml("spec:\n  rules:\n    - backendRefs:\n        - name: a\n          weight: x\n");
        let root = At::root(&v);
        let refs = root.req("spec").unwrap().list("rules").unwrap()[0].list("backendRefs").unwrap();
        let e = refs[0].req("weight").unwrap().u64().unwrap_err();
        assert_eq!(e.field, "spec.rules[0].backendRefs[0].weight");
        assert_eq!(e.reason, "expected an integer, found \"x\"");
        let e = refs[0].req("port").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("spec.rules[0].backendRefs[0].port", "required field is missing")
        );
        assert_eq!(refs[0].unknown_keys(&["name"]), vec!["spec.rules[0].backendRefs[0].weight"]);
    }

    #[test]
    fn quantities() {
        let q = |s: &str| quantity_bytes(&At::root(&yaml(s)));
        assert_eq!(q("50Mi").unwrap(), 52_428_800);
        assert_eq!(q("1048576").unwrap(), 1_048_576);
        assert_eq!(q("\"10M\"").unwrap(), 10_000_000);
        assert!(q("5Ti").unwrap_err().reason.contains("unit"));
        assert!(q("lots").is_err());
    }
}
