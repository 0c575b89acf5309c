//! Scenarios: routing, weights, request edits, credentials, paths and `GET /v1/models`, on the
//! built filter, against filter/README.md.

mod common;

use anyhow::{ensure, Result};
use common::{chat, no_violations, plugin, post, route, send, CHAT};
use llmgw_host_tests::Plugin;
use serde_json::Value;

const ROUTING: &str = r#"
backends:
  - name: openai
    schema: OpenAI
    auth: {bearer: sk-live-secret}
    headers:
      set: {OpenAI-Organization: org-123}
      remove: [x-debug]
  - name: vllm
    schema: OpenAI
    prefix: /serve/v1/
    model_override: meta-llama/Llama-3.1-8B-Instruct
  - name: ollama
    schema: OpenAI
  - name: azure
    schema: OpenAI
    auth: {api_key: az-secret}
  - name: anthropicish
    schema: OpenAI
    auth: {x_api_key: ak-secret}
    pass_through_authorization: true
rules:
  - name: exact
    match: {model: {exact: gpt-4o-mini}}
    backends: [{name: openai}]
  - match:
      model: {prefix: "llama-"}
      headers: [{name: x-team, exact: research}]
    backends: [{name: vllm}]
  - match: {model: {glob: "claude-?-*"}}
    backends: [{name: anthropicish}]
  - match: {model: {regex: "az-[0-9]+"}}
    backends: [{name: azure}]
  - match: {headers: [{name: x-tenant, prefix: acme-}]}
    backends: [{name: azure}]
  - match: {headers: [{name: x-canary, present: true}]}
    backends: [{name: vllm}]
  - match: {headers: [{name: x-region, regex: "eu-(west|north)"}]}
    backends: [{name: openai}]
  - backends: [{name: ollama}]
models: [my-extra-model]
"#;

/// (model, request headers, expected backend)
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

fn routing() -> Result<Plugin> {
    plugin(ROUTING)
}

#[test]
fn model_matches_exact_prefix_glob_regex_and_default() -> Result<()> {
    let mut p = routing()?;
    let research = [("x-team", "research")];
    let cases: &[Case] = &[
        ("gpt-4o-mini", &[], "openai"),
        ("gpt-4o-mini-2024", &[], "ollama"), // exact is exact
        ("GPT-4o-mini", &[], "ollama"),      // and case-sensitive
        ("llama-3.1-8b", &research, "vllm"),
        ("llama-", &research, "vllm"),
        ("xllama-3", &research, "ollama"),
        ("claude-3-opus", &[], "anthropicish"),
        ("claude-3-", &[], "anthropicish"),  // `*` matches an empty run
        ("claude-35-sonnet", &[], "ollama"), // `?` is exactly one char
        ("claude--x", &[], "ollama"),
        ("az-1", &[], "azure"),
        ("az-20240101", &[], "azure"),
        ("xaz-1", &[], "ollama"), // the regex is anchored at both ends
        ("az-1x", &[], "ollama"),
        ("az-", &[], "ollama"),
        ("anything-else", &[], "ollama"),
    ];
    for (model, headers, want) in cases {
        let got = route(&mut p, model, headers)?;
        ensure!(got == *want, "model {model:?} with {headers:?}: routed to {got}, want {want}");
    }
    no_violations(&p)
}

#[test]
fn header_matches_all_must_hold() -> Result<()> {
    let mut p = routing()?;
    let cases: &[Case] = &[
        ("llama-3", &[("x-team", "research")], "vllm"),
        ("llama-3", &[("X-Team", "research")], "vllm"), // header names are case-insensitive
        ("llama-3", &[("x-team", "Research")], "ollama"), // values are not
        ("llama-3", &[("x-team", "research-2")], "ollama"), // exact is exact
        ("llama-3", &[], "ollama"),
        ("m", &[("x-tenant", "acme-7")], "azure"),
        ("m", &[("x-tenant", "acme")], "ollama"),
        ("m", &[("x-canary", "")], "vllm"), // present, even empty
        ("m", &[("x-canary", "0")], "vllm"),
        ("m", &[("x-region", "eu-west")], "openai"),
        ("m", &[("x-region", "eu-north")], "openai"),
        ("m", &[("x-region", "eu-west-1")], "ollama"), // anchored
        ("m", &[("x-region", "us-eu-west")], "ollama"),
        // First match wins: the exact-model rule comes before the header rules.
        ("gpt-4o-mini", &[("x-canary", "1"), ("x-tenant", "acme-1")], "openai"),
    ];
    for (model, headers, want) in cases {
        let got = route(&mut p, model, headers)?;
        ensure!(got == *want, "model {model:?} with {headers:?}: routed to {got}, want {want}");
    }
    Ok(())
}

#[test]
fn one_backend_needs_no_rules_and_no_selector() -> Result<()> {
    for config in ["backends: [{name: only, schema: OpenAI}]", r#"{"backends":[{"name":"only","schema":"OpenAI"}]}"#] {
        let mut p = plugin(config)?;
        for model in ["gpt-4o", "llama-3", "x", &"m".repeat(256)] {
            ensure!(route(&mut p, model, &[])? == "only", "{model}");
        }
        // A client's selector header changes nothing.
        let sent = post(&mut p, CHAT, &[("x-llmgw-backend", "other")], &chat("gpt-4o"))?;
        ensure!(sent.routed()? == "only");
        no_violations(&p)?;
    }
    Ok(())
}

#[test]
fn weights_split_exactly_and_weight_zero_disables() -> Result<()> {
    let config = r#"
backends:
  - {name: a, schema: OpenAI}
  - {name: b, schema: OpenAI}
  - {name: c, schema: OpenAI}
rules:
  - match: {model: {exact: split}}
    backends: [{name: a, weight: 3}, {name: b, weight: 1}, {name: c, weight: 0}]
  - match: {model: {exact: even}}
    backends: [{name: b, weight: 80}, {name: c, weight: 20}]
  - backends: [{name: c}]
"#;
    let mut p = plugin(config)?;
    let mut picks = Vec::new();
    for i in 0..400 {
        picks.push(route(&mut p, "split", &[])?);
        // Another rule's traffic in between must not disturb this rule's sequence.
        if i % 7 == 0 {
            route(&mut p, "even", &[])?;
        }
    }
    let count = |v: &[String], b: &str| v.iter().filter(|x| *x == b).count();
    ensure!(count(&picks, "a") == 300 && count(&picks, "b") == 100, "3:1 over 400 gave {picks:?}");
    ensure!(count(&picks, "c") == 0, "a weight of 0 was chosen");
    // Exact over any window of sum(weights) requests, not just in total.
    for (i, w) in picks.windows(4).enumerate() {
        ensure!(count(w, "a") == 3, "window at {i}: {w:?}");
    }

    // 80:20 over 100 requests of a fresh VM.
    let mut p = plugin(config)?;
    let picks: Vec<String> = (0..100).map(|_| route(&mut p, "even", &[])).collect::<Result<_>>()?;
    ensure!(count(&picks, "b") == 80 && count(&picks, "c") == 20, "80:20 gave {picks:?}");
    // Smooth: never a long run of the heavy backend.
    let longest = picks.split(|x| x == "c").map(<[String]>::len).max().unwrap_or(0);
    ensure!(longest <= 4, "runs of {longest} b's: not smooth");
    Ok(())
}

#[test]
fn internal_headers_are_always_set_by_the_gateway() -> Result<()> {
    let mut p = routing()?;
    let spoof = [
        ("x-llmgw-backend", "azure"),
        ("X-LLMGW-Backend", "openai"),
        ("x-ai-eg-model", "spoofed"),
        ("X-AI-EG-Model", "spoofed-too"),
    ];
    let sent = post(&mut p, CHAT, &spoof, &chat("anything"))?;
    ensure!(sent.routed()? == "ollama");
    let fwd = sent.forwarded.clone().unwrap_or_default();
    ensure!(fwd.get_all("x-llmgw-backend") == ["ollama"], "{fwd:?}");
    ensure!(fwd.get_all("x-ai-eg-model") == ["anything"], "{fwd:?}");

    // Outside /v1/ they are removed, and nothing else changes.
    let sent = send(&mut p, "GET", "/healthz", &spoof, b"")?;
    let fwd = sent.forwarded.clone().unwrap_or_default();
    ensure!(!fwd.contains("x-llmgw-backend") && !fwd.contains("x-ai-eg-model"), "{fwd:?}");
    ensure!(fwd.get(":path") == Some("/healthz") && sent.reply.is_none() && sent.complete);

    // Refused requests: nothing is forwarded at all.
    let sent = post(&mut p, CHAT, &spoof, b"not json")?;
    sent.error(400, "invalid_request")?;
    no_violations(&p)
}

#[test]
fn model_override_rewrites_the_body_and_fixes_content_length() -> Result<()> {
    let mut p = routing()?;
    let body =
        br#"{"model":"llama-3","messages":[{"role":"user","content":"h\u00e9llo \"q\""}],"temperature":0.5,"n":1}"#;
    let sent = post(&mut p, CHAT, &[("x-team", "research")], body)?;
    ensure!(sent.routed()? == "vllm");
    let v = sent.json()?;
    ensure!(v["model"] == "meta-llama/Llama-3.1-8B-Instruct", "{v}");
    let original: Value = serde_json::from_slice(body)?;
    for key in ["messages", "temperature", "n"] {
        ensure!(v[key] == original[key], "{key} changed: {v}");
    }
    // Key order is kept (serde_json here sorts keys, so look at the text).
    let text = String::from_utf8_lossy(&sent.body);
    let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap_or(usize::MAX);
    ensure!(
        at("model") < at("messages") && at("messages") < at("temperature") && at("temperature") < at("n"),
        "{text}"
    );
    ensure!(sent.header("content-length") == Some(sent.body.len().to_string().as_str()));
    // The routing header names the model the client asked for.
    ensure!(sent.header("x-ai-eg-model") == Some("llama-3"));

    // Without content-length (chunked), none is invented.
    let sent = send(&mut p, "POST", CHAT, &[("x-team", "research")], body)?;
    ensure!(sent.routed()? == "vllm" && sent.header("content-length").is_none());
    ensure!(sent.json()?["model"] == "meta-llama/Llama-3.1-8B-Instruct");

    // A backend without override forwards the body byte for byte.
    let sent = post(&mut p, CHAT, &[], body)?;
    ensure!(sent.routed()? == "ollama" && sent.body == body);
    no_violations(&p)
}

#[test]
fn backend_header_mutations() -> Result<()> {
    let mut p = routing()?;
    let headers = [
        ("openai-organization", "client-org"),
        ("x-debug", "1"),
        ("X-Debug", "2"),
        ("x-request-id", "r1"),
        ("x-not-listed", "k"),
    ];
    let sent = post(&mut p, CHAT, &headers, &chat("gpt-4o-mini"))?;
    ensure!(sent.routed()? == "openai");
    let fwd = sent.forwarded.clone().unwrap_or_default();
    ensure!(fwd.get_all("openai-organization") == ["org-123"], "{fwd:?}");
    ensure!(!fwd.contains("x-debug"), "{fwd:?}");
    // Client headers pass an allowlist (filter README, "What the filter does to a request").
    ensure!(fwd.get("x-request-id") == Some("r1") && !fwd.contains("x-not-listed"), "{fwd:?}");
    // Other backends don't get the mutations, and a client's billing header needs the
    // backend's `forward_billing_headers`.
    let sent = post(&mut p, CHAT, &headers, &chat("other"))?;
    ensure!(sent.header("openai-organization").is_none() && sent.header("x-debug").is_none(), "{:?}", sent.forwarded);
    ensure!(sent.header("x-request-id") == Some("r1"));
    Ok(())
}

#[test]
fn credentials_replace_client_keys_unless_passed_through() -> Result<()> {
    let mut p = routing()?;
    let client = [("authorization", "Bearer client-gw-key"), ("api-key", "client-az"), ("x-api-key", "client-ak")];

    // bearer: Authorization replaced, the other client keys removed.
    let s = post(&mut p, CHAT, &client, &chat("gpt-4o-mini"))?;
    ensure!(s.routed()? == "openai");
    let fwd = s.forwarded.clone().unwrap_or_default();
    ensure!(fwd.get_all("authorization") == ["Bearer sk-live-secret"], "{fwd:?}");
    ensure!(!fwd.contains("api-key") && !fwd.contains("x-api-key"), "{fwd:?}");

    // api_key: api-key set, Authorization removed.
    let s = post(&mut p, CHAT, &client, &chat("az-1"))?;
    ensure!(s.routed()? == "azure");
    ensure!(s.header("api-key") == Some("az-secret") && s.header("authorization").is_none());
    ensure!(s.header("x-api-key").is_none());

    // x_api_key with pass_through_authorization: the client's Authorization stays.
    let s = post(&mut p, CHAT, &client, &chat("claude-3-opus"))?;
    ensure!(s.routed()? == "anthropicish");
    ensure!(s.header("x-api-key") == Some("ak-secret"), "{:?}", s.forwarded);
    ensure!(s.header("authorization") == Some("Bearer client-gw-key"));
    ensure!(s.header("api-key") == Some("client-az"));

    // No auth and no pass-through: every client key is removed.
    let s = post(&mut p, CHAT, &client, &chat("other"))?;
    ensure!(s.routed()? == "ollama");
    for h in ["authorization", "api-key", "x-api-key"] {
        ensure!(s.header(h).is_none(), "{h} reached the provider: {:?}", s.forwarded);
    }

    // Keys are never logged.
    for l in p.logs() {
        ensure!(!l.message.contains("secret"), "a key was logged: {}", l.message);
    }
    no_violations(&p)
}

#[test]
fn env_credentials_are_read_at_configure_time() -> Result<()> {
    let config = r#"
backends:
  - {name: b, schema: OpenAI, auth: {bearer_env: B_KEY}}
  - {name: a, schema: OpenAI, auth: {api_key_env: A_KEY}}
  - {name: x, schema: OpenAI, auth: {x_api_key_env: X_KEY}}
rules:
  - {match: {model: {exact: b}}, backends: [{name: b}]}
  - {match: {model: {exact: a}}, backends: [{name: a}]}
  - {match: {model: {exact: x}}, backends: [{name: x}]}
"#;
    let h = common::harness()?;
    let mut p = h.builder().env("B_KEY", "env-bearer").env("A_KEY", "env-az").env("X_KEY", "env-ak").build(config)?;
    let s = post(&mut p, CHAT, &[("authorization", "Bearer c")], &chat("b"))?;
    ensure!(s.header("authorization") == Some("Bearer env-bearer"), "{:?}", s.forwarded);
    let s = post(&mut p, CHAT, &[("authorization", "Bearer c")], &chat("a"))?;
    ensure!(s.header("api-key") == Some("env-az") && s.header("authorization").is_none());
    let s = post(&mut p, CHAT, &[], &chat("x"))?;
    ensure!(s.header("x-api-key") == Some("env-ak"));
    for l in p.logs() {
        ensure!(!l.message.contains("env-"), "a key was logged: {}", l.message);
    }

    // A missing variable is a configuration error that names it.
    let p = h.builder().env("B_KEY", "1").env("A_KEY", "2").start(config)?;
    ensure!(!p.configured(), "configured without X_KEY");
    ensure!(p.logs().iter().any(|l| l.message.contains("X_KEY")), "{:?}", p.logs());
    Ok(())
}

#[test]
fn path_prefix_and_query_are_kept() -> Result<()> {
    let mut p = routing()?;
    let research = [("x-team", "research")];
    let cases = [
        ("/v1/chat/completions", "/serve/v1/chat/completions"),
        ("/v1/chat/completions?foo=bar&x=%20y", "/serve/v1/chat/completions?foo=bar&x=%20y"),
        ("/v1/completions?a=1", "/serve/v1/completions?a=1"),
        ("/v1/embeddings", "/serve/v1/embeddings"),
    ];
    for (path, want) in cases {
        let s = post(&mut p, path, &research, &chat("llama-3"))?;
        ensure!(s.routed()? == "vllm");
        ensure!(s.header(":path") == Some(want), "{path} -> {:?}, want {want}", s.header(":path"));
    }
    // The default prefix /v1 leaves paths as they are.
    let s = post(&mut p, "/v1/embeddings?x=1", &[], br#"{"model":"m","input":"hi"}"#)?;
    ensure!(s.routed()? == "ollama" && s.header(":path") == Some("/v1/embeddings?x=1"));

    let mut p = plugin("backends: [{name: b, schema: OpenAI, prefix: /}]")?;
    let s = post(&mut p, "/v1/chat/completions?q", &[], &chat("m"))?;
    ensure!(s.header(":path") == Some("/chat/completions?q"), "{:?}", s.header(":path"));
    Ok(())
}

#[test]
fn the_route_cache_is_cleared_for_routed_requests() -> Result<()> {
    let mut p = routing()?;
    let s = post(&mut p, CHAT, &[], &chat("m"))?;
    let calls: Vec<_> = p.foreign_calls().iter().filter(|c| c.context_id == s.id).collect();
    ensure!(calls.iter().any(|c| c.name == "clear_route_cache"), "{:?}", p.foreign_calls());
    Ok(())
}

#[test]
fn models_lists_exact_rules_and_extras() -> Result<()> {
    let mut p = routing()?;
    for path in ["/v1/models", "/v1/models?limit=5"] {
        let s = send(&mut p, "GET", path, &[("authorization", "Bearer c")], b"")?;
        let reply = s.reply.clone().ok_or_else(|| anyhow::anyhow!("no reply for {path}"))?;
        ensure!(reply.status == 200, "{} {}", reply.status, reply.body_str());
        ensure!(reply.headers.get("content-type") == Some("application/json"));
        let v = reply.json()?;
        ensure!(v["object"] == "list", "{v}");
        let data = v["data"].as_array().cloned().unwrap_or_default();
        let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
        ensure!(ids.contains(&"gpt-4o-mini") && ids.contains(&"my-extra-model"), "{ids:?}");
        // Patterns are not model ids.
        ensure!(ids.len() == 2, "{ids:?}");
        for m in &data {
            ensure!(m["object"] == "model", "{m}");
        }
        ensure!(s.forwarded.is_none());
    }
    no_violations(&p)
}
