//! `${VAR}` substitution in configuration text, before YAML parsing (like `aigw run`'s envsubst).
//!
//! Forms: `${VAR}` (an error when unset: a config that silently loses a key is worse than one that
//! does not start), `${VAR:-default}` / `${VAR:=default}` (default when unset or empty),
//! `${VAR-default}` / `${VAR=default}` (default only when unset). `$${` writes a literal `${`.
//! A bare `$VAR` is left alone, so regular expressions such as `.*$` survive. Text after a YAML
//! comment marker (`#` at the start of a line or after a space, outside quotes) is not substituted.

use crate::model::Env;

/// A substitution that could not be made, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstError {
    pub line: usize,
    pub reason: String,
}

pub fn substitute(text: &str, env: &dyn Env) -> Result<String, SubstError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        substitute_line(line, index + 1, env, &mut out)?;
    }
    Ok(out)
}

fn substitute_line(line: &str, line_no: usize, env: &dyn Env, out: &mut String) -> Result<(), SubstError> {
    let mut rest = line;
    let mut quote: Option<char> = None;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        match c {
            '#' if quote.is_none() && prev.is_none_or(char::is_whitespace) => {
                // A comment: copied as is.
                out.push_str(rest);
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
                out.push_str("${");
                rest = &rest[3..];
                prev = Some('{');
                continue;
            }
            '$' if rest.starts_with("${") => {
                let Some(end) = rest.find('}') else {
                    return Err(SubstError { line: line_no, reason: "`${` without a closing `}`".into() });
                };
                let expr = &rest[2..end];
                out.push_str(&expand(expr, env).map_err(|reason| SubstError { line: line_no, reason })?);
                rest = &rest[end + 1..];
                prev = Some('}');
                continue;
            }
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
        prev = Some(c);
    }
    Ok(())
}

fn expand(expr: &str, env: &dyn Env) -> Result<String, String> {
    let name_len = expr.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_len);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`${{{expr}}}`: expected a variable name"));
    }
    let value = env.var(name);
    let (default, when_empty) = if let Some(d) = op.strip_prefix(":-").or_else(|| op.strip_prefix(":=")) {
        (Some(d), true)
    } else if let Some(d) = op.strip_prefix('-').or_else(|| op.strip_prefix('=')) {
        (Some(d), false)
    } else if op.is_empty() {
        (None, false)
    } else {
        return Err(format!(
            "`${{{expr}}}`: unsupported form; use ${{{name}}}, ${{{name}:-default}} or ${{{name}:=default}}"
        ));
    };
    match (value, default) {
        (Some(v), Some(d)) if v.is_empty() && when_empty => Ok(d.to_string()),
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set (referenced as ${{{name}}}); export it, or give a default \
             with ${{{name}:-default}}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapEnv;

    fn env() -> MapEnv {
        MapEnv::from([("KEY", "sk-1"), ("EMPTY", ""), ("MODEL", "qwen2.5:0.5b")])
    }

    fn sub(text: &str) -> Result<String, SubstError> {
        substitute(text, &env())
    }

    #[test]
    fn plain_and_defaults() {
        assert_eq!(sub("apiKey: ${KEY}\n").unwrap(), "apiKey: sk-1\n");
        assert_eq!(sub("v: ${MISSING:=deepseek-r1:1.5b}").unwrap(), "v: deepseek-r1:1.5b");
        assert_eq!(sub("v: ${MISSING:-x}").unwrap(), "v: x");
        assert_eq!(sub("v: ${EMPTY:-x}").unwrap(), "v: x");
        assert_eq!(sub("v: ${EMPTY:=x}").unwrap(), "v: x");
        assert_eq!(sub("v: ${EMPTY-x}").unwrap(), "v: ");
        assert_eq!(sub("v: ${MISSING-x}").unwrap(), "v: x");
        assert_eq!(sub("v: ${MODEL:=other}").unwrap(), "v: qwen2.5:0.5b");
        assert_eq!(sub("a${KEY}b${KEY}").unwrap(), "ask-1bsk-1");
        assert_eq!(sub("v: ${MISSING:-}").unwrap(), "v: ");
    }

    #[test]
    fn leaves_other_dollars_alone() {
        assert_eq!(sub("value: .*$\nb: $KEY\n").unwrap(), "value: .*$\nb: $KEY\n");
        assert_eq!(sub("v: $${KEY}").unwrap(), "v: ${KEY}");
    }

    #[test]
    fn comments_are_not_substituted() {
        assert_eq!(sub("# set ${UNSET}\nk: v # ${UNSET}\n").unwrap(), "# set ${UNSET}\nk: v # ${UNSET}\n");
        assert_eq!(sub("k: \"a # ${KEY}\"\n").unwrap(), "k: \"a # sk-1\"\n");
        assert_eq!(sub("k: a#${KEY}\n").unwrap(), "k: a#sk-1\n");
    }

    #[test]
    fn errors_name_line_and_variable() {
        let e = sub("a: 1\nb: ${OPENAI_API_KEY}\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("OPENAI_API_KEY is not set"), "{}", e.reason);
        assert!(sub("b: ${KEY").unwrap_err().reason.contains("closing"));
        assert!(sub("b: ${1X}").unwrap_err().reason.contains("variable name"));
        assert!(sub("b: ${KEY:?err}").unwrap_err().reason.contains("unsupported form"));
    }
}
