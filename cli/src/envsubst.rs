//! `${VAR}` substitution in configuration files, compatible with `aigw run`'s envsubst, but
//! unable to change the YAML's structure.
//!
//! Forms: `${VAR}` (unset: an empty string and a warning naming the variable, as `aigw run`
//! does), `${VAR:-default}` / `${VAR:=default}` (default when unset or empty), `${VAR-default}` /
//! `${VAR=default}` (default only when unset), `${VAR:?message}` (an error with the message when
//! unset or empty) and `${VAR?message}` (when unset). `$${` writes a literal `${`. A bare `$VAR` is
//! left alone, so regular expressions such as `.*$` survive. Text after a YAML comment marker (`#`
//! at the start of a line or after a space, outside quotes) is not substituted.
//!
//! How structure is kept: [`prepare`] replaces each `${...}` of the raw text with a placeholder
//! made of letters, digits and underscores (a plain scalar everywhere in YAML) and evaluates it;
//! the text is then parsed, and [`Prepared::apply`] puts the values into the parsed strings. A value
//! with `#`, `: `, newlines, `*`, quotes, `{` or `[` therefore stays one string. A scalar that was
//! nothing but an unquoted `${VAR}` is typed like a plain YAML scalar (`port: ${PORT}` with
//! `PORT=1975` is the number 1975, as with text substitution); anything else stays a string.

use serde_yaml_ng::{Mapping, Value};

use crate::model::Env;

/// A substitution that could not be made, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstError {
    pub line: usize,
    pub reason: String,
}

/// One `${...}` of the text: its value, where it was, and whether it was quoted on its own.
#[derive(Debug, Clone)]
struct Expansion {
    value: String,
    quoted: bool,
}

/// The text with placeholders, ready to parse, and what each placeholder becomes.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub text: String,
    prefix: String,
    expansions: Vec<Expansion>,
    /// `(line, message)` for every unset `${VAR}` that became an empty string.
    pub warnings: Vec<(usize, String)>,
}

/// Evaluates every `${...}` of `text` (errors for `${VAR:?}` and malformed forms say the line) and
/// puts placeholders in their place.
pub fn prepare(text: &str, env: &dyn Env) -> Result<Prepared, SubstError> {
    // A placeholder prefix that does not occur in the text, so nothing else is mistaken for one.
    let mut prefix = String::from("__llmgw_subst_");
    while text.contains(&prefix) {
        prefix.push('x');
    }
    let mut p =
        Prepared { text: String::with_capacity(text.len()), prefix, expansions: Vec::new(), warnings: Vec::new() };
    for (index, line) in text.split_inclusive('\n').enumerate() {
        p.line(line, index + 1, env)?;
    }
    Ok(p)
}

impl Prepared {
    fn placeholder(&self, n: usize) -> String {
        format!("{}{n}__", self.prefix)
    }

    fn line(&mut self, line: &str, line_no: usize, env: &dyn Env) -> Result<(), SubstError> {
        let mut rest = line;
        let mut quote: Option<char> = None;
        let mut prev: Option<char> = None;
        while let Some(c) = rest.chars().next() {
            match c {
                '#' if quote.is_none() && prev.is_none_or(char::is_whitespace) => {
                    // A comment: copied as is.
                    self.text.push_str(rest);
                    return Ok(());
                }
                '\'' | '"' => {
                    quote = match quote {
                        None => Some(c),
                        Some(q) if q == c => None,
                        other => other,
                    };
                }
                '$' if rest.starts_with("$${") => {
                    self.text.push_str("${");
                    rest = &rest[3..];
                    prev = Some('{');
                    continue;
                }
                '$' if rest.starts_with("${") => {
                    let Some(end) = rest.find('}') else {
                        return Err(SubstError { line: line_no, reason: "`${` without a closing `}`".into() });
                    };
                    let expr = &rest[2..end];
                    let value = match expand(expr, env).map_err(|reason| SubstError { line: line_no, reason })? {
                        Expanded::Value(v) => v,
                        Expanded::Unset(name) => {
                            self.warnings.push((
                                line_no,
                                format!(
                                    "environment variable {name} is not set: ${{{name}}} becomes an empty string \
                                     (as in `aigw run`); write ${{{name}:?message}} to make it required"
                                ),
                            ));
                            String::new()
                        }
                    };
                    let after = rest[end + 1..].chars().next();
                    let quoted = matches!((prev, after), (Some(a), Some(b)) if a == b && (a == '"' || a == '\''));
                    let n = self.expansions.len();
                    self.expansions.push(Expansion { value, quoted });
                    let ph = self.placeholder(n);
                    self.text.push_str(&ph);
                    rest = &rest[end + 1..];
                    prev = Some('_');
                    continue;
                }
                _ => {}
            }
            self.text.push(c);
            rest = &rest[c.len_utf8()..];
            prev = Some(c);
        }
        Ok(())
    }

    /// `value` with every placeholder replaced by its value.
    pub fn apply(&self, value: Value) -> Value {
        if self.expansions.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => self.scalar(s),
            Value::Sequence(items) => Value::Sequence(items.into_iter().map(|v| self.apply(v)).collect()),
            Value::Mapping(map) => {
                let mut out = Mapping::with_capacity(map.len());
                for (k, v) in map {
                    let k = match k {
                        Value::String(s) => Value::String(self.replace(&s)),
                        other => other,
                    };
                    out.insert(k, self.apply(v));
                }
                Value::Mapping(out)
            }
            Value::Tagged(mut t) => {
                t.value = self.apply(std::mem::take(&mut t.value));
                Value::Tagged(t)
            }
            other => other,
        }
    }

    fn scalar(&self, s: String) -> Value {
        if !s.contains(&self.prefix) {
            return Value::String(s);
        }
        // A scalar that was only an unquoted `${VAR}`: typed as the plain scalar its value is.
        if let Some(e) = self.whole(&s) {
            if !e.quoted {
                return plain(&e.value);
            }
        }
        Value::String(self.replace(&s))
    }

    /// The expansion `s` consists of, if it is exactly one placeholder.
    fn whole(&self, s: &str) -> Option<&Expansion> {
        let n: usize = s.strip_prefix(&self.prefix)?.strip_suffix("__")?.parse().ok()?;
        self.expansions.get(n)
    }

    fn replace(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(at) = rest.find(&self.prefix) {
            out.push_str(&rest[..at]);
            let after = &rest[at + self.prefix.len()..];
            let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
            match (
                after[..digits].parse::<usize>().ok().and_then(|n| self.expansions.get(n)),
                after[digits..].strip_prefix("__"),
            ) {
                (Some(e), Some(tail)) => {
                    out.push_str(&e.value);
                    rest = tail;
                }
                _ => {
                    out.push_str(&self.prefix);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// The value of an unquoted scalar: a number, boolean or null when YAML reads it so, else a string.
fn plain(text: &str) -> Value {
    // One token only: a value with spaces or `#` (a comment, were it raw text) stays a string.
    if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '#') {
        return Value::String(text.to_string());
    }
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => v,
        _ => Value::String(text.to_string()),
    }
}

enum Expanded {
    Value(String),
    /// `${VAR}` of an unset variable.
    Unset(String),
}

fn expand(expr: &str, env: &dyn Env) -> Result<Expanded, String> {
    let name_len = expr.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_len);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`${{{expr}}}`: expected a variable name"));
    }
    let value = env.var(name);
    let unset_or_empty = value.as_deref().is_none_or(str::is_empty);
    if op.is_empty() {
        return Ok(value.map_or_else(|| Expanded::Unset(name.to_string()), Expanded::Value));
    }
    if let Some(d) = op.strip_prefix(":-").or_else(|| op.strip_prefix(":=")) {
        return Ok(Expanded::Value(if unset_or_empty { d.to_string() } else { value.unwrap_or_default() }));
    }
    if let Some(message) = op.strip_prefix(":?") {
        return match value {
            Some(v) if !v.is_empty() => Ok(Expanded::Value(v)),
            _ => Err(required(name, message, "set and non-empty")),
        };
    }
    if let Some(message) = op.strip_prefix('?') {
        return value.map(Expanded::Value).ok_or_else(|| required(name, message, "set"));
    }
    if let Some(d) = op.strip_prefix('-').or_else(|| op.strip_prefix('=')) {
        return Ok(Expanded::Value(value.unwrap_or_else(|| d.to_string())));
    }
    Err(format!(
        "`${{{expr}}}`: unsupported form; use ${{{name}}}, ${{{name}:-default}}, ${{{name}:=default}} or \
         ${{{name}:?message}}"
    ))
}

fn required(name: &str, message: &str, what: &str) -> String {
    if message.trim().is_empty() {
        format!("environment variable {name} must be {what}")
    } else {
        format!("environment variable {name}: {}", message.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapEnv;

    fn env() -> MapEnv {
        MapEnv::from([
            ("KEY", "sk-1"),
            ("EMPTY", ""),
            ("MODEL", "qwen2.5:0.5b"),
            ("PORT", "1975"),
            ("NASTY", "a # b: c\n- d *e 'f\" {g} [h] &i !j |k >l"),
            ("TRUE", "true"),
            ("NUM_COMMENT", "1 # 2"),
        ])
    }

    /// The text substituted, parsed and with values in place; and the warnings.
    fn sub(text: &str) -> Result<(Value, Vec<(usize, String)>), SubstError> {
        let p = prepare(text, &env())?;
        let v: Value = serde_yaml_ng::from_str(&p.text).unwrap();
        Ok((p.apply(v), p.warnings))
    }

    fn v(text: &str) -> Value {
        sub(text).unwrap().0
    }

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn plain_and_defaults() {
        assert_eq!(v("apiKey: ${KEY}\n"), yaml("apiKey: sk-1"));
        assert_eq!(v("v: ${MISSING:=deepseek-r1:1.5b}"), yaml("v: 'deepseek-r1:1.5b'"));
        assert_eq!(v("v: ${MISSING:-x}"), yaml("v: x"));
        assert_eq!(v("v: ${EMPTY:-x}"), yaml("v: x"));
        assert_eq!(v("v: ${EMPTY:=x}"), yaml("v: x"));
        assert_eq!(v("v: ${EMPTY-x}"), yaml("v: ''"));
        assert_eq!(v("v: ${MISSING-x}"), yaml("v: x"));
        assert_eq!(v("v: ${MODEL:=other}"), yaml("v: 'qwen2.5:0.5b'"));
        assert_eq!(v("v: a${KEY}b${KEY}"), yaml("v: ask-1bsk-1"));
        assert_eq!(v("v: ${MISSING:-}"), yaml("v: ''"));
        assert_eq!(v("${KEY}: v"), yaml("sk-1: v"));
    }

    #[test]
    fn unquoted_whole_scalars_are_typed_like_plain_yaml() {
        assert_eq!(v("port: ${PORT}"), yaml("port: 1975"));
        assert_eq!(v("port: \"${PORT}\""), yaml("port: '1975'"));
        assert_eq!(v("port: '${PORT}'"), yaml("port: '1975'"));
        assert_eq!(v("port: x${PORT}"), yaml("port: x1975"));
        assert_eq!(v("on: ${TRUE}"), yaml("on: true"));
        assert_eq!(v("list: [${PORT}, \"${PORT}\"]"), yaml("list: [1975, '1975']"));
        assert_eq!(v("n: ${NUM_COMMENT}"), yaml("n: '1 # 2'"));
    }

    #[test]
    fn values_never_change_the_structure() {
        let nasty = "a # b: c\n- d *e 'f\" {g} [h] &i !j |k >l";
        for text in [
            "k: ${NASTY}\nafter: 1\n",
            "k: \"${NASTY}\"\nafter: 1\n",
            "k: '${NASTY}'\nafter: 1\n",
            "k: [${NASTY}]\nafter: 1\n",
            "k: {x: ${NASTY}}\nafter: 1\n",
            "k: |\n  ${NASTY}\nafter: 1\n",
        ] {
            let got = v(text);
            let map = got.as_mapping().unwrap();
            assert_eq!(map.len(), 2, "{text}: {got:?}");
            assert_eq!(got["after"], yaml("1"), "{text}");
            let k = &got["k"];
            let s = k.as_str().or_else(|| k[0].as_str()).or_else(|| k["x"].as_str()).unwrap();
            assert_eq!(s.trim_end(), nasty, "{text}");
        }
        // Embedded in a longer scalar too.
        assert_eq!(v("k: pre-${NASTY}-post\n")["k"].as_str().unwrap(), format!("pre-{nasty}-post"));
    }

    #[test]
    fn unset_variables_become_empty_with_a_warning() {
        let (got, warnings) = sub("a: 1\nkey: ${OPENAI_API_KEY}\nother: x${ALSO_UNSET}y\n").unwrap();
        assert_eq!(got, yaml("a: 1\nkey: ''\nother: xy"));
        assert_eq!(warnings.len(), 2);
        assert_eq!(warnings[0].0, 2);
        assert!(warnings[0].1.starts_with("environment variable OPENAI_API_KEY is not set"), "{warnings:?}");
        assert!(warnings[1].1.contains("ALSO_UNSET"), "{warnings:?}");
        // Set but empty is no warning.
        assert!(sub("key: ${EMPTY}").unwrap().1.is_empty());
    }

    #[test]
    fn required_variables() {
        let e = sub("a: 1\nb: ${OPENAI_API_KEY:?set it to your OpenAI key}\n").unwrap_err();
        assert_eq!(
            e,
            SubstError { line: 2, reason: "environment variable OPENAI_API_KEY: set it to your OpenAI key".into() }
        );
        let e = sub("b: ${EMPTY:?}").unwrap_err();
        assert_eq!(e.reason, "environment variable EMPTY must be set and non-empty");
        assert_eq!(v("b: ${EMPTY?must be set}"), yaml("b: ''"));
        assert!(sub("b: ${MISSING?must be set}").unwrap_err().reason.contains("must be set"));
        assert_eq!(v("b: ${KEY:?x}"), yaml("b: sk-1"));
    }

    #[test]
    fn leaves_other_dollars_alone() {
        assert_eq!(v("value: .*$\nb: $KEY\n"), yaml("value: .*$\nb: $KEY"));
        assert_eq!(v("v: $${KEY}"), yaml("v: ${KEY}"));
    }

    #[test]
    fn comments_are_not_substituted() {
        let (got, warnings) = sub("# set ${UNSET}\nk: v # ${UNSET}\n").unwrap();
        assert_eq!((got, warnings), (yaml("k: v"), vec![]));
        assert_eq!(v("k: \"a # ${KEY}\"\n"), yaml("k: 'a # sk-1'"));
        assert_eq!(v("k: a#${KEY}\n"), yaml("k: a#sk-1"));
    }

    #[test]
    fn text_that_looks_like_a_placeholder_is_kept() {
        assert_eq!(v("a: __llmgw_subst_0__\nb: ${KEY}"), yaml("a: __llmgw_subst_0__\nb: sk-1"));
    }

    #[test]
    fn errors_name_line_and_variable() {
        assert!(sub("b: ${KEY").unwrap_err().reason.contains("closing"));
        assert!(sub("b: ${1X}").unwrap_err().reason.contains("variable name"));
        assert!(sub("b: ${KEY:+alt}").unwrap_err().reason.contains("unsupported form"));
    }
}
