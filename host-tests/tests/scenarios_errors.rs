//! Scenarios: every error of the README's table, configuration errors, and upstream errors
//! wrapped into OpenAI errors.

mod common;

use anyhow::{anyhow, ensure, Result};
use common::{chat, harness, no_violations, plugin, post, send, CHAT};
use llmgw_host_tests::{Action, Plugin};
use serde_json::Value;

const CONFIG: &str = r#"
backends:
  - {name: openai, schema: OpenAI}
rules:
  - match: {model: {exact: gpt-4o}}
    backends: [{name: openai}]
  - match: {model: {prefix: "gpt-"}}
    backends: [{name: openai}]
max_request_body_bytes: 1000
"#;

fn gateway() -> Result<Plugin> {
    plugin(CONFIG)
}

/// A 400 whose code is one the README lists for bad bodies.
fn bad_request(p: &mut Plugin, body: &[u8], code: Option<&str>) -> Result<Value> {
    let s = post(p, CHAT, &[], body)?;
    let reply = s.reply.clone().ok_or_else(|| anyhow!("body {:?} was forwarded", String::from_utf8_lossy(body)))?;
    let v = reply.json()?;
    let got = v["error"]["code"].as_str().unwrap_or_default().to_string();
    let want = code.map_or(["invalid_request", "missing_model", "invalid_model"].contains(&got.as_str()), |c| c == got);
    ensure!(
        reply.status == 400 && want,
        "body {:?}: got {} {}, want 400 {code:?}",
        String::from_utf8_lossy(body),
        reply.status,
        reply.body_str()
    );
    s.error(400, &got)
}

#[test]
fn bodies_that_are_not_a_json_object_get_400() -> Result<()> {
    let mut p = gateway()?;
    for body in
        [&b"nope"[..], b"[1,2]", b"\"gpt-4o\"", b"42", b"null", b"true", b"{", b"{\"model\":\"gpt-4o\"", b"  \n"]
    {
        bad_request(&mut p, body, Some("invalid_request"))?;
    }
    // No body at all.
    let s = send(&mut p, "POST", CHAT, &[("content-type", "application/json")], b"")?;
    s.error(400, "invalid_request")?;
    no_violations(&p)
}

#[test]
fn bad_models_get_400() -> Result<()> {
    let mut p = gateway()?;
    bad_request(&mut p, br#"{"messages":[]}"#, Some("missing_model"))?;
    for body in [
        &br#"{"model":5}"#[..],
        br#"{"model":["gpt-4o"]}"#,
        br#"{"model":{"name":"gpt-4o"}}"#,
        br#"{"model":true}"#,
        br#"{"model":""}"#,
        br#"{"model":"gpt-4o\r\nx-evil: 1"}"#,
        br#"{"model":"gpt-\u0000"}"#,
        br#"{"model":"gpt-4o\n"}"#,
        br#"{"model":"gpt-\t4o"}"#,
    ] {
        bad_request(&mut p, body, Some("invalid_model"))?;
    }
    // null is neither a model nor a string.
    bad_request(&mut p, br#"{"model":null}"#, None)?;
    // 256 bytes is the longest allowed model.
    let ok = format!("gpt-{}", "x".repeat(252));
    let s = post(&mut p, CHAT, &[], &chat(&ok))?;
    ensure!(s.routed()? == "openai");
    let long = format!("gpt-{}", "x".repeat(253));
    bad_request(&mut p, &chat(&long), Some("invalid_model"))?;
    // A duplicate `model` key: the gateway and the provider could disagree on it.
    bad_request(&mut p, br#"{"model":"gpt-4o","model":"gpt-x"}"#, None)?;
    bad_request(&mut p, br#"{"model":"gpt-4o","messages":[],"model":"gpt-4o"}"#, None)?;
    no_violations(&p)
}

#[test]
fn stream_must_be_a_boolean() -> Result<()> {
    let mut p = gateway()?;
    for stream in [r#""yes""#, "1", "[]", "{}", r#""true""#] {
        let body = format!(r#"{{"model":"gpt-4o","stream":{stream}}}"#);
        bad_request(&mut p, body.as_bytes(), Some("invalid_request"))?;
    }
    for stream in ["true", "false"] {
        let body = format!(r#"{{"model":"gpt-4o","stream":{stream},"messages":[]}}"#);
        ensure!(post(&mut p, CHAT, &[], body.as_bytes())?.routed()? == "openai", "stream {stream}");
    }
    Ok(())
}

#[test]
fn unknown_model_gets_404_naming_it() -> Result<()> {
    let mut p = gateway()?;
    let s = post(&mut p, CHAT, &[], &chat("claude-3-opus"))?;
    let v = s.error(404, "model_not_found")?;
    let message = v["error"]["message"].as_str().unwrap_or_default();
    ensure!(message.contains("claude-3-opus"), "{message}");
    // ... and says how to configure it.
    ensure!(message.contains("rule") || message.contains("match"), "{message}");
    no_violations(&p)
}

#[test]
fn unknown_endpoints_under_v1_get_404() -> Result<()> {
    let mut p = gateway()?;
    for (method, path) in [
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("POST", "/v1/chat"),
        ("POST", "/v1"),
        ("POST", "/v1/"),
        ("POST", "/v1/chat/completions/extra"),
        ("POST", "/v1/batches?x=1"),
        ("POST", "/v1/responses/r1/unknown"),
        ("DELETE", "/v1/assistants/a1"),
    ] {
        let s = send(&mut p, method, path, &[], &chat("gpt-4o"))?;
        s.error(404, "unknown_endpoint").map_err(|e| anyhow!("{method} {path}: {e}"))?;
    }
    // Not /v1/: passed through.
    for path in ["/v10/chat/completions", "/v2/chat/completions", "/chat/completions", "/"] {
        let s = send(&mut p, "POST", path, &[], b"x")?;
        ensure!(s.reply.is_none() && s.complete && s.header(":path") == Some(path), "{path}");
    }
    no_violations(&p)
}

#[test]
fn wrong_methods_get_405_with_allow() -> Result<()> {
    let mut p = gateway()?;
    for (method, path, allow) in [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/chat/completions?x=1", "POST"),
        ("DELETE", "/v1/completions", "POST"),
        ("GET", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models", "GET"),
    ] {
        let body = if method == "GET" { Vec::new() } else { chat("gpt-4o") };
        let s = send(&mut p, method, path, &[], &body)?;
        s.error(405, "method_not_allowed").map_err(|e| anyhow!("{method} {path}: {e}"))?;
        let got = s.reply.as_ref().and_then(|r| r.headers.get("allow"));
        ensure!(got == Some(allow), "{method} {path}: Allow {got:?}");
    }
    no_violations(&p)
}

#[test]
fn bodies_over_the_limit_get_413() -> Result<()> {
    let mut p = gateway()?;
    let pad = |n: usize| {
        let mut b = chat("gpt-4o");
        b.pop();
        let fill = n - b.len() - 8;
        b.extend_from_slice(format!(r#","x":"{}"}}"#, "a".repeat(fill)).as_bytes());
        assert_eq!(b.len(), n);
        b
    };
    // Exactly at the limit: fine.
    ensure!(post(&mut p, CHAT, &[], &pad(1000))?.routed()? == "openai");
    // One byte over, announced by content-length: refused before buffering.
    let s = post(&mut p, CHAT, &[], &pad(1001))?;
    s.error(413, "request_too_large")?;
    // Without content-length, in chunks: refused once the buffer passes the limit.
    let body = pad(1001);
    let mut s = p.stream();
    s.request_headers(&[(":method", "POST"), (":path", CHAT), (":authority", "g")], false)?;
    let mut actions = Vec::new();
    for chunk in body.chunks(100) {
        actions.push(s.request_body(chunk, false)?);
    }
    actions.push(s.request_body(b"", true)?);
    let reply = s.local_reply().cloned().ok_or_else(|| anyhow!("no 413; actions {actions:?}"))?;
    ensure!(reply.status == 413 && reply.json()?["error"]["code"] == "request_too_large", "{}", reply.body_str());
    ensure!(s.forwarded_request_headers().is_none() && s.forwarded_request_body().is_empty());
    ensure!(actions.last() == Some(&Action::NotCalled), "the filter was called after its reply: {actions:?}");
    no_violations(&p)
}

#[test]
fn configuration_errors_name_the_field() -> Result<()> {
    let h = harness()?;
    let cases: &[(&str, &[&str])] = &[
        // The README's own example.
        (
            "backends: [{name: openai, schema: OpenAI}, {name: b, schema: OpenAI}]\nrules:\n  - backends: [{name: b}]\n  - backends: [{name: opeanai}]",
            &["rules[1].backends[0].name", "unknown backend", "opeanai"],
        ),
        ("backends: [{name: a, schema: OpenAl}]", &["backends[0].schema", "OpenAl"]),
        ("backends: []", &["backends"]),
        ("rules: []", &["backends"]),
        ("backends: [{name: a, schema: OpenAI}, {name: b, schema: OpenAI}]", &["rules"]),
        ("backends: [{name: a, schema: OpenAI}, {name: a, schema: OpenAI}]\nrules: [{backends: [{name: a}]}]", &["backends[1].name"]),
        ("backends: [{name: a, schema: OpenAI, prefix: v1}]", &["backends[0].prefix"]),
        ("backends: [{name: a, schema: OpenAI, auth: {bearer: k, api_key: k}}]", &["backends[0].auth"]),
        ("backends: [{name: a, schema: OpenAI, auth: {}}]", &["backends[0].auth"]),
        ("backends: [{name: a, schema: OpenAI, auth: {bearer_env: NOPE_NOT_SET}}]", &["NOPE_NOT_SET"]),
        ("backends: [{name: a, schema: OpenAI}]\nrules: [{backends: [{name: a, weight: 0}]}]", &["rules[0]"]),
        ("backends: [{name: a, schema: OpenAI}]\nrules: [{match: {model: {regex: '(' }}, backends: [{name: a}]}]", &["rules[0]"]),
        ("backends: [{name: a, schema: OpenAI}]\nrules: [{match: {model: {exact: a, prefix: b}}, backends: [{name: a}]}]", &["rules[0]"]),
        ("backends: [{name: a, schema: OpenAI}]\nrules: [{backends: []}]", &["rules[0]"]),
        ("backends: [{name: a, schema: OpenAI, colour: blue}]", &["colour"]),
        ("", &[]),
        ("{\"backends\": [", &[]),
        ("\u{0}\u{1}binary", &[]),
    ];
    for (config, words) in cases {
        let p = h.try_plugin(config)?;
        ensure!(!p.configured(), "accepted: {config}");
        let line = p
            .logs()
            .iter()
            .find(|l| l.message.contains("invalid plugin config"))
            .ok_or_else(|| anyhow!("no config error logged for {config:?}: {:?}", p.logs()))?;
        for w in *words {
            ensure!(line.message.contains(w), "{config:?}: {:?} lacks {w:?}", line.message);
        }
    }
    // The same configuration as JSON is fine.
    let p = h.try_plugin(
        r#"{"backends":[{"name":"a","schema":"OpenAI"}],"rules":[{"backends":[{"name":"a","weight":2}]}]}"#,
    )?;
    ensure!(p.configured());
    Ok(())
}

/// Sends a routed request, then an upstream response; returns the stream's id.
fn upstream(p: &mut Plugin, status: &str, content_type: &str, chunks: &[&[u8]]) -> Result<u32> {
    let len: usize = chunks.iter().map(|c| c.len()).sum();
    let len = len.to_string();
    let mut s = p.stream();
    s.send_request(&[(":method", "POST"), (":path", CHAT), (":authority", "g")], &chat("gpt-4o"))?;
    ensure!(s.forwarded_request_headers().is_some(), "not routed");
    s.send_response(&[(":status", status), ("content-type", content_type), ("content-length", &len)], chunks)?;
    Ok(s.id())
}

fn downstream(p: &mut Plugin, id: u32) -> Result<(llmgw_host_tests::Headers, Vec<u8>)> {
    let s = p.resume(id).ok_or_else(|| anyhow!("stream {id}"))?;
    ensure!(s.response_complete(), "response not complete");
    let headers = s.forwarded_response_headers().cloned().ok_or_else(|| anyhow!("no response headers"))?;
    let body = s.forwarded_response_body().to_vec();
    if let Some(len) = headers.get("content-length") {
        ensure!(len == body.len().to_string(), "content-length {len} for {} bytes", body.len());
    }
    Ok((headers, body))
}

#[test]
fn upstream_errors_that_are_not_openai_shaped_are_wrapped() -> Result<()> {
    let mut p = gateway()?;
    let cases: &[(&str, &str, &[&[u8]], &str)] = &[
        ("503", "text/plain", &[b"no healthy upstream"], "no healthy upstream"),
        ("502", "text/html", &[b"<html>bad ", b"gateway</html>"], "<html>bad gateway</html>"),
        ("500", "application/json", &[br#"{"detail":"boom"}"#], "boom"),
        ("429", "text/plain", &[b"slow ", b"down"], "slow down"),
    ];
    for (status, ct, chunks, message) in cases {
        let id = upstream(&mut p, status, ct, chunks)?;
        let (headers, body) = downstream(&mut p, id)?;
        ensure!(headers.get(":status") == Some(*status), "status changed: {headers:?}");
        ensure!(headers.get("content-type") == Some("application/json"), "{headers:?}");
        let v: Value = serde_json::from_slice(&body).map_err(|e| anyhow!("{e}: {}", String::from_utf8_lossy(&body)))?;
        ensure!(v["error"]["code"] == "upstream_error", "{v}");
        ensure!(v["error"]["message"].as_str().is_some_and(|m| m.contains(message)), "{v}");
        ensure!(v["error"]["type"].is_string(), "{v}");
    }
    // An OpenAI-shaped error passes untouched.
    let openai = br#"{"error":{"message":"Rate limit reached","type":"rate_limit_error","code":"rate_limit_exceeded","param":null}}"#;
    let id = upstream(&mut p, "429", "application/json", &[&openai[..20], &openai[20..]])?;
    let (headers, body) = downstream(&mut p, id)?;
    ensure!(body == openai, "{}", String::from_utf8_lossy(&body));
    ensure!(headers.get(":status") == Some("429"));
    no_violations(&p)
}

#[test]
fn upstream_errors_count_as_failures() -> Result<()> {
    let mut p = gateway()?;
    let id = upstream(&mut p, "500", "text/plain", &[b"oops"])?;
    p.resume(id).ok_or_else(|| anyhow!("stream"))?.finish()?;
    let id = upstream(&mut p, "200", "application/json", &[br#"{"id":"x","choices":[]}"#])?;
    p.resume(id).ok_or_else(|| anyhow!("stream"))?.finish()?;
    let m = p.metrics();
    let count = |outcome| {
        m.all()
            .iter()
            .filter(|x| {
                let t = llmgw_host_tests::stats::parse(&x.name);
                t.metric.replace('.', "_") == "llmgw_requests_total" && t.label("outcome") == Some(outcome)
            })
            .map(|x| x.value)
            .sum::<i64>()
    };
    ensure!(count("failure") == 1 && count("success") == 1, "{:#?}", m.all());
    Ok(())
}
