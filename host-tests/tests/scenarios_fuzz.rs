//! Scenarios: malformed and hostile request bodies, generated deterministically. Every case
//! must end in a well-formed 4xx OpenAI error, or (when the body is in fact acceptable) be
//! forwarded consistently; never a trap.

mod common;

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{no_violations, plugin, CHAT};
use llmgw_host_tests::Plugin;
use serde_json::Value;

const ONE: &str = "backends: [{name: only, schema: OpenAI}]";
const OVERRIDE: &str = "backends: [{name: only, schema: OpenAI, model_override: real-model}]";

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const SEEDS: &[&str] = &[
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hi"}],"temperature":0.2}"#,
    r#"{"model":"llama-3","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"x"},{"role":"user","content":[{"type":"text","text":"y"}]}]}"#,
    r#"{"input":["a","b"],"model":"text-embedding-3-small","encoding_format":"float"}"#,
    r#"{"model":"m","prompt":"once upon","max_tokens":5,"stream":false,"logit_bias":{"50256":-100}}"#,
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Exactly this error status.
    Status(u32),
    /// A 4xx error, or forwarded if the body happens to be acceptable.
    Anything,
}

/// The exact input, escaped (non-ASCII bytes as `\xNN`), cut when long.
fn show(body: &[u8]) -> String {
    let head = &body[..body.len().min(300)];
    let more = if body.len() > 300 { format!("... ({} bytes)", body.len()) } else { String::new() };
    format!("b\"{}\"{more}", head.escape_ascii())
}

/// Sends `body` split into `parts` chunks, with or without content-length, and checks the
/// outcome. The error names the case and the exact input.
fn check(p: &mut Plugin, case: &str, body: &[u8], parts: usize, with_length: bool, expect: Expect) -> Result<()> {
    run(p, body, parts, with_length, expect).with_context(|| format!("case {case}: body {}", show(body)))
}

fn run(p: &mut Plugin, body: &[u8], parts: usize, with_length: bool, expect: Expect) -> Result<()> {
    let len = body.len().to_string();
    let mut headers =
        vec![(":method", "POST"), (":path", CHAT), (":authority", "g"), ("content-type", "application/json")];
    if with_length {
        headers.push(("content-length", &len));
    }
    let mut s = p.stream();
    s.request_headers(&headers, body.is_empty())?;
    if !body.is_empty() {
        let size = body.len().div_ceil(parts.max(1)).max(1);
        let chunks: Vec<&[u8]> = body.chunks(size).collect();
        for (i, c) in chunks.iter().enumerate() {
            s.request_body(c, i + 1 == chunks.len())?;
        }
    }
    if let Some(reply) = s.local_reply() {
        let v = reply.json().map_err(|e| anyhow!("reply is not JSON ({e}): {}", reply.body_str()))?;
        ensure!((400..500).contains(&reply.status), "status {} {}", reply.status, reply.body_str());
        ensure!(v["error"]["message"].is_string() && v["error"]["code"].is_string(), "not OpenAI-shaped: {v}");
        if let Expect::Status(want) = expect {
            ensure!(reply.status == want, "status {}, want {want}: {}", reply.status, reply.body_str());
        }
        ensure!(s.forwarded_request_headers().is_none(), "answered and forwarded");
        return Ok(());
    }
    if let Expect::Status(want) = expect {
        bail!("forwarded; want a {want}");
    }
    // Accepted: it must be a JSON object with a string model, routed consistently.
    ensure!(s.request_complete(), "neither answered nor forwarded");
    let fwd = s.forwarded_request_headers().cloned().unwrap_or_default();
    ensure!(fwd.get("x-llmgw-backend") == Some("only"), "{fwd:?}");
    // See the FILTER BUG note on `filter_bug_non_utf8_outside_model_is_forwarded`.
    ensure!(std::str::from_utf8(body).is_ok(), "accepted a body that is not UTF-8, so not JSON (RFC 8259 §8.1)");
    let original: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // Deeper than this checker's parser goes: valid JSON, so it must pass untouched.
        Err(e) if e.to_string().contains("recursion limit") => {
            // Valid JSON deeper than this checker goes: it passes untouched, but for the model a
            // backend's `model_override` rewrites in place (the deep cases all name model "m").
            let overridden = String::from_utf8_lossy(body).replacen(r#""model":"m""#, r#""model":"real-model""#, 1);
            let forwarded = s.forwarded_request_body();
            ensure!(forwarded == body || forwarded == overridden.as_bytes(), "a deep body was changed");
            return Ok(());
        }
        Err(e) => bail!("accepted a body that is not JSON: {e}"),
    };
    let model = original["model"].as_str().ok_or_else(|| anyhow!("accepted without a string model"))?;
    ensure!(
        fwd.get("x-ai-eg-model") == Some(model),
        "x-ai-eg-model {:?} for model {model:?}",
        fwd.get("x-ai-eg-model")
    );
    let out = s.forwarded_request_body();
    if let Some(len) = fwd.get("content-length") {
        ensure!(len == out.len().to_string(), "content-length {len} for {} bytes", out.len());
    }
    if out != body {
        let v: Value = serde_json::from_slice(out).context("rewritten body is not JSON")?;
        ensure!(v["model"].is_string(), "rewritten body without model");
    }
    Ok(())
}

/// Runs every case, then fails listing the failures by kind (with the first inputs), so one
/// failing class does not hide the others.
#[derive(Default)]
struct Failures {
    kinds: std::collections::BTreeMap<String, usize>,
    first: Vec<String>,
}

impl Failures {
    fn record(&mut self, r: Result<()>) {
        if let Err(e) = r {
            *self.kinds.entry(e.root_cause().to_string()).or_default() += 1;
            if self.first.len() < 6 {
                self.first.push(format!("{e:#}"));
            }
        }
    }

    fn finish(self, cases: usize) -> Result<()> {
        let failed: usize = self.kinds.values().sum();
        ensure!(
            failed == 0,
            "{failed} of {cases} cases failed; by kind: {:#?}\nfirst ones:\n{}",
            self.kinds,
            self.first.join("\n")
        );
        Ok(())
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.next() as u8;
            }
            1 => b.insert(at, rng.next() as u8),
            2 => {
                let end = (at + rng.below(8)).min(b.len());
                b.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(16)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
            4 => b.truncate(at),
            5 => {
                let tok: &[&[u8]] =
                    &[b"{", b"}", b"[", b"]", b"\"", b",", b":", b"\\", b"null", b"\"model\":", b"\\u0000", b"\r\n"];
                let t = tok[rng.below(tok.len())];
                b.splice(at..at, t.iter().copied());
            }
            _ => b.insert(at, 0x80 + (rng.next() % 0x80) as u8),
        }
    }
    b
}

#[test]
fn truncated_json_is_400_at_every_length() -> Result<()> {
    let mut p = plugin(ONE)?;
    for (n, seed) in SEEDS.iter().enumerate() {
        let seed = seed.as_bytes();
        for k in 0..seed.len() {
            check(
                &mut p,
                &format!("seed {n} truncated to {k}"),
                &seed[..k],
                1 + k % 3,
                k % 2 == 0,
                Expect::Status(400),
            )?;
        }
        check(&mut p, &format!("seed {n} whole"), seed, 2, true, Expect::Anything)?;
    }
    no_violations(&p)
}

/// FILTER BUG (reported; the filter is not fixed here): bytes that are not UTF-8 outside the
/// fields the gateway reads (a key, a message) are forwarded; the README says a body that is
/// not JSON gets 400, and JSON text is UTF-8 (RFC 8259 §8.1). Bodies the gateway rewrites are
/// refused correctly. Minimal input: `b"{\"model\":\"m\",\"x\xff\":1}"`.
#[test]
fn filter_bug_non_utf8_outside_model_is_forwarded() -> Result<()> {
    let mut p = plugin(ONE)?;
    for body in [&b"{\"model\":\"m\",\"x\xff\":1}"[..], b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xc3(\"}]}"] {
        check(&mut p, "minimal non-UTF-8", body, 1, true, Expect::Status(400))?;
    }
    Ok(())
}

/// Fails while the FILTER BUG above stands.
#[test]
fn invalid_utf8_is_400() -> Result<()> {
    let mut p = plugin(ONE)?;
    let mut rng = Rng(0x5eed_0001);
    let mut failures = Failures::default();
    for i in 0..600 {
        let seed = SEEDS[i % SEEDS.len()].as_bytes();
        let mut b = seed.to_vec();
        // A lone byte >= 0x80 between ASCII bytes is never valid UTF-8.
        let at = 1 + rng.below(b.len() - 1);
        b.insert(at, 0x80 + (rng.next() % 0x80) as u8);
        failures.record(check(&mut p, &format!("utf8 {i}"), &b, 1 + i % 4, i % 3 != 0, Expect::Status(400)));
    }
    let fixed = [
        &b"{\"model\":\"\xff\"}"[..],
        b"{\"model\":\"gpt\xc3\"}",
        b"{\"model\":\"\xed\xa0\x80\"}",
        b"\xef\xbb\xbf{\"model\":\"m\"}",
        // Invalid UTF-8 where the gateway does not look (a key, an unread value).
        b"{\"model\":\"m\",\"x\xff\":1}",
        b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xc3(\"}]}",
    ];
    for (i, b) in fixed.iter().enumerate() {
        failures.record(check(&mut p, &format!("utf8 fixed {i}"), b, 1, true, Expect::Status(400)));
    }
    failures.finish(600 + fixed.len())?;
    no_violations(&p)
}

#[test]
fn deep_nesting_never_traps() -> Result<()> {
    let mut p = plugin(ONE)?;
    let mut q = plugin(OVERRIDE)?;
    const N: usize = 100_000;
    let open = "[".repeat(N);
    let close = "]".repeat(N);
    let objects = format!("{}1{}", r#"{"a":"#.repeat(N), "}".repeat(N));
    let cases: Vec<(String, Expect)> = vec![
        (format!("{open}{close}"), Expect::Status(400)),
        (open.clone(), Expect::Status(400)),
        (format!(r#"{{"model":{open}{close}}}"#), Expect::Status(400)),
        (format!(r#"{{"model":"m","x":{open}"#), Expect::Status(400)),
        (format!(r#"{{"x":{objects}}}"#), Expect::Status(400)),
        // Valid JSON with a fine model: forwarding it untouched, or refusing it, are both fine.
        (format!(r#"{{"model":"m","x":{open}{close}}}"#), Expect::Anything),
        (format!(r#"{{"model":"m","x":{objects}}}"#), Expect::Anything),
    ];
    for (i, (body, expect)) in cases.iter().enumerate() {
        for (name, plugin) in [("plain", &mut p), ("override", &mut q)] {
            check(plugin, &format!("deep {i} {name}"), body.as_bytes(), 3, true, *expect)?;
        }
    }
    no_violations(&p)?;
    no_violations(&q)
}

#[test]
fn ten_megabyte_bodies() -> Result<()> {
    let big = "x".repeat(10 << 20);
    let body = format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{big}"}}]}}"#);
    let mut p = plugin(ONE)?;
    // Fed like Envoy feeds a large body: 64 KiB at a time.
    let parts = body.len().div_ceil(64 << 10);
    check(&mut p, "10MB valid", body.as_bytes(), parts, true, Expect::Anything)?;
    {
        let mut s = p.stream();
        s.send_request(&[(":method", "POST"), (":path", CHAT), (":authority", "g")], body.as_bytes())?;
        ensure!(s.forwarded_request_body() == body.as_bytes(), "10 MB body not forwarded byte for byte");
    }
    // Streaming: the body is rewritten to ask for usage.
    let streaming = format!(r#"{{"model":"gpt-4o","stream":true,"messages":[{{"role":"user","content":"{big}"}}]}}"#);
    check(&mut p, "10MB streaming", streaming.as_bytes(), parts, true, Expect::Anything)?;
    // Garbage of the same size.
    let garbage = format!("{{\"model\":\"gpt-4o\",\"x\":\"{big}");
    check(&mut p, "10MB truncated", garbage.as_bytes(), parts, false, Expect::Status(400))?;
    no_violations(&p)?;
    // Over a 1 MiB limit.
    let mut p = plugin("backends: [{name: only, schema: OpenAI}]\nmax_request_body_bytes: 1048576")?;
    check(&mut p, "10MB over limit, content-length", body.as_bytes(), parts, true, Expect::Status(413))?;
    check(&mut p, "10MB over limit, chunked", body.as_bytes(), parts, false, Expect::Status(413))?;
    no_violations(&p)
}

#[test]
fn hostile_models_and_duplicate_keys() -> Result<()> {
    let mut p = plugin(ONE)?;
    let long = "m".repeat(10 * 1024);
    let models =
        ["a\rb", "a\nb", "\r\n", "gpt\r\nx-evil: 1", "a\u{0}b", "a\u{7f}b", "\t", "a\u{1b}[31m", &long, " ", ""];
    for (i, m) in models.iter().enumerate() {
        let body = serde_json::json!({"model": m, "messages": []}).to_string();
        check(&mut p, &format!("model {i}"), body.as_bytes(), 2, true, Expect::Status(400))?;
    }
    for body in [
        r#"{"model":"a","model":"a"}"#,
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"a","messages":[],"model":"b"}"#,
        r#"{"model":"a","stream":true,"model":"a"}"#,
        r#"{"mod\u0065l":"a","model":"b"}"#,
    ] {
        check(&mut p, "duplicate model", body.as_bytes(), 1, true, Expect::Status(400))?;
    }
    no_violations(&p)
}

/// Random bytes and mutated valid bodies. Fails while the FILTER BUG above stands (its only
/// failures are non-UTF-8 bodies that were forwarded).
#[test]
fn random_and_mutated_bodies() -> Result<()> {
    let mut p = plugin(ONE)?;
    let mut q = plugin(OVERRIDE)?;
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut failures = Failures::default();
    for i in 0..800 {
        let n = rng.below(300);
        let b = rng.bytes(n);
        let parts = 1 + rng.below(4);
        failures.record(check(&mut p, &format!("random {i}"), &b, parts, i % 2 == 0, Expect::Anything));
    }
    for i in 0..2400 {
        let seed = SEEDS[rng.below(SEEDS.len())].as_bytes();
        let b = mutate(&mut rng, seed);
        let parts = 1 + rng.below(4);
        let target = if i % 2 == 0 { &mut p } else { &mut q };
        failures.record(check(target, &format!("mutation {i}"), &b, parts, i % 3 != 0, Expect::Anything));
    }
    failures.finish(3200)?;
    no_violations(&p)?;
    no_violations(&q)
}
