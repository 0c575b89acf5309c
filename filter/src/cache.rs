//! Response cache, exact mode: a rule with `cache:` answers a repeated request from proxy-wasm
//! shared data (one store for every worker of the gateway) without calling the provider.
//!
//! **Key** (SHA-256): the client endpoint, the response shape (JSON, SSE, SSE with a usage chunk),
//! the rule's backends (name, schema, `model_override`: the effective model), the consumer (unless
//! the rule says `shared: true`) and the request body as canonical JSON: object keys sorted at
//! every depth, whitespace outside strings dropped, strings with escapes re-encoded, and the
//! top-level members of [`EXCLUDED_FIELDS`] left out (they do not change the answer; `stream` and
//! `stream_options` are the shape). Numbers are compared as written (`1` and `1.0` differ).
//!
//! **Store**: one index per rule (`llmgw.cache.<rule>.index`) lists its entries as fixed 64-byte
//! records (hash, slot, size, generation, expiry, last use); each entry lives in a slot key
//! (`llmgw.cache.<rule>.<slot>`) holding its generation, hash, shape and the bytes the client got.
//! Shared data has no delete: slots are numbered `0..max_entries` and reused, a freed slot is
//! overwritten with an empty value, so keys and bytes stay bounded. The index changes only by
//! compare-and-swap; an entry is served only when its generation and hash match the index record,
//! so a slot reused by another worker mid-way is a miss, never another request's answer. Least
//! recently used entries are evicted past `max_bytes` or `max_entries`; use is recorded at second
//! granularity (a hit writes the index at most once a second per entry).

use sha2::{Digest, Sha256};

use crate::api::{ClientApi, Endpoint};
use crate::body::NewBody;
use crate::config::Compiled;
use crate::host::Host;
use crate::json::{json_string, Splice};
use crate::metrics::{Kind, Sample};
use crate::plan::PlanInput;
use crate::routing::Rule;

/// Top-level request members left out of the key: who asks and how the answer travels, not what
/// it says. `stream` and `stream_options` decide the stored shape instead.
pub const EXCLUDED_FIELDS: &[&str] =
    &["stream", "stream_options", "user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"];

pub const HITS: &str = "llmgw.cache_hits_total";
pub const MISSES: &str = "llmgw.cache_misses_total";
pub const EVICTIONS: &str = "llmgw.cache_evictions_total";
/// Bytes held by the cache entries of all rules (a gauge every store moves by its change).
pub const BYTES: &str = "llmgw.cache_bytes";
/// The response header saying `hit` or `miss`.
pub const CACHE_HEADER: &str = "x-llmgw-cache";

/// Deeper JSON is not cached (the key walks it recursively).
const MAX_DEPTH: usize = 64;
/// An object with more members is not cached (its members are sorted by insertion).
const MAX_MEMBERS: usize = 256;
const RECORD: usize = 64;
const ENTRY_HEAD: usize = 8 + 32 + 1;
/// Compare-and-swap attempts on the index before a store is given up.
const CAS_ATTEMPTS: usize = 8;

/// A rule's `cache:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub ttl_secs: u64,
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
    pub max_entries: u32,
    /// Cache requests with `temperature > 0` (or none: the providers' default is 1).
    pub nonzero_temperature: bool,
    /// One store for every consumer (else each consumer only ever gets its own answers).
    pub shared: bool,
}

/// How the stored answer is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Json = 0,
    Sse = 1,
    /// OpenAI SSE with the final usage chunk (`stream_options.include_usage`).
    SseWithUsage = 2,
}

/// A request the cache is consulted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub rule: usize,
    pub store: String,
    pub key: [u8; 32],
    pub shape: Shape,
    pub api: ClientApi,
    /// Read the cache (not on `Cache-Control: no-cache`).
    pub read: bool,
    /// Store the answer (not on `no-store`).
    pub write: bool,
}

/// Endpoints whose answers are cached: the others are stateful (Responses), uploads or audio.
fn cacheable(endpoint: Endpoint) -> bool {
    matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Messages | Endpoint::Embeddings)
}

/// Whether the request samples (so two identical requests may get different answers).
fn samples(endpoint: Endpoint, body: &[u8]) -> bool {
    if endpoint == Endpoint::Embeddings {
        return false;
    }
    let members = crate::json::members(body).map(|(_, m)| m).unwrap_or_default();
    let temperature = members.iter().rev().find(|m| m.key == "temperature").and_then(|m| body.get(m.value.clone()));
    // Absent, or not a number: the provider's default (1).
    !temperature.is_some_and(is_zero)
}

/// Whether the JSON number `text` is zero (`0`, `-0.0`, `0e5`), without parsing floats.
fn is_zero(text: &[u8]) -> bool {
    let text = text.strip_prefix(b"-").unwrap_or(text);
    let mantissa = text.split(|&b| b == b'e' || b == b'E').next().unwrap_or_default();
    mantissa.first() == Some(&b'0') && mantissa.iter().all(|&b| b == b'0' || b == b'.')
}

/// What the client's `Cache-Control` allows: (read, write).
fn client_allows(cache_control: Option<&str>) -> (bool, bool) {
    let mut allows = (true, true);
    for directive in cache_control.unwrap_or_default().split(',') {
        match directive.trim().to_ascii_lowercase().as_str() {
            "no-store" => allows = (false, false),
            "no-cache" => allows.0 = false,
            _ => {}
        }
    }
    allows
}

/// Decides whether and how the cache serves this request (pure). `None`: the rule has no cache,
/// or this request is not cached (endpoint, sampling, `no-store`, a body the key cannot take).
pub fn lookup(input: &PlanInput, rule_index: usize, rule: &Rule, consumer: &str) -> Option<Lookup> {
    let PlanInput { config, endpoint, info, body, .. } = *input;
    let policy = rule.cache.as_ref()?;
    let (read, write) = client_allows(crate::plan::header(input.headers, "cache-control"));
    if !cacheable(endpoint) || !(read || write) || (!policy.nonzero_temperature && samples(endpoint, body)) {
        return None;
    }
    let api = endpoint.client_api();
    let shape = match (info.stream, info.client_wants_usage && api == ClientApi::OpenAI) {
        (false, _) => Shape::Json,
        (true, false) => Shape::Sse,
        (true, true) => Shape::SseWithUsage,
    };
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"llmgw-cache-v1");
    field(endpoint.pattern().as_bytes());
    field(&[shape as u8, u8::from(api == ClientApi::Anthropic)]);
    for target in &rule.targets {
        let backend = config.backends.get(target.backend)?;
        field(backend.name.as_bytes());
        field(backend.schema().name().as_bytes());
        field(backend.model_override.as_deref().unwrap_or_default().as_bytes());
    }
    field(if policy.shared { b"*" } else { consumer.as_bytes() });
    let mut canonical = Vec::with_capacity(body.len());
    write_canonical(body, &mut canonical, 0, EXCLUDED_FIELDS)?;
    field(&canonical);
    let store = match &rule.name {
        Some(name) => format!("llmgw.cache.{name}"),
        None => format!("llmgw.cache.#{rule_index}"),
    };
    Some(Lookup { rule: rule_index, store, key: hash.finalize().into(), shape, api, read, write })
}

/// Writes the JSON `value` canonically (see the module doc); `skip`: top-level members left out.
/// `None` on bytes that are not JSON or nest deeper than `MAX_DEPTH`.
pub fn write_canonical(value: &[u8], out: &mut Vec<u8>, depth: usize, skip: &[&str]) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let start = value.iter().position(|b| !b.is_ascii_whitespace())?;
    let value = value.get(start..)?;
    match value.first()? {
        b'{' => {
            let (_, mut members) = crate::json::members(value)?;
            members.retain(|m| !skip.contains(&m.key.as_ref()));
            if members.len() > MAX_MEMBERS {
                return None;
            }
            sort_by_key(&mut members);
            out.push(b'{');
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&json_string(&m.key));
                out.push(b':');
                write_canonical(value.get(m.value.clone())?, out, depth + 1, &[])?;
            }
            out.push(b'}');
        }
        b'[' => {
            out.push(b'[');
            let mut i = 1;
            let mut first = true;
            loop {
                i += value.get(i..)?.iter().position(|b| !b.is_ascii_whitespace())?;
                match value.get(i)? {
                    b']' => break,
                    b',' if !first => i += 1,
                    _ => {
                        let end = i + crate::json::value_len(value.get(i..)?)?;
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        write_canonical(value.get(i..end)?, out, depth + 1, &[])?;
                        i = end;
                    }
                }
            }
            out.push(b']');
        }
        b'"' => {
            let raw = value.get(..crate::json::value_len(value)?)?;
            if raw.contains(&b'\\') {
                let text: String = serde_json::from_slice(raw).ok()?;
                out.extend_from_slice(&json_string(&text));
            } else {
                out.extend_from_slice(raw);
            }
        }
        _ => out.extend_from_slice(value.get(..crate::json::value_len(value)?)?),
    }
    Some(())
}

/// Insertion sort by key: small code, and objects are capped at `MAX_MEMBERS`.
fn sort_by_key(members: &mut [crate::json::Member]) {
    for i in 1..members.len() {
        let mut j = i;
        while j > 0 && members.get(j - 1).map(|m| &m.key) > members.get(j).map(|m| &m.key) {
            members.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// One index record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    key: [u8; 32],
    slot: u32,
    size: u32,
    generation: u64,
    expires: u64,
    last_used: u64,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// The index: the next generation, then the records.
fn decode_index(bytes: &[u8]) -> (u64, Vec<Record>) {
    let records = bytes
        .get(8..)
        .unwrap_or_default()
        .chunks_exact(RECORD)
        .filter_map(|r| {
            Some(Record {
                key: r.get(..32)?.try_into().ok()?,
                slot: u32_at(r, 32),
                size: u32_at(r, 36),
                generation: u64_at(r, 40),
                expires: u64_at(r, 48),
                last_used: u64_at(r, 56),
            })
        })
        .collect();
    (u64_at(bytes, 0), records)
}

fn encode_index(next_generation: u64, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + records.len() * RECORD);
    out.extend_from_slice(&next_generation.to_le_bytes());
    for r in records {
        out.extend_from_slice(&r.key);
        out.extend_from_slice(&r.slot.to_le_bytes());
        out.extend_from_slice(&r.size.to_le_bytes());
        for n in [r.generation, r.expires, r.last_used] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out
}

fn index_key(store: &str) -> String {
    format!("{store}.index")
}

fn slot_key(store: &str, slot: u32) -> String {
    format!("{store}.{slot}")
}

/// A cached answer: its shape and the bytes the client gets.
pub struct Entry {
    pub shape: u8,
    pub body: Vec<u8>,
}

/// The live entry for `lookup`, if any; records its use (LRU).
pub fn get(host: &mut dyn Host, lookup: &Lookup, now_ms: u64) -> Option<Entry> {
    let (index, cas) = host.shared_data(&index_key(&lookup.store))?;
    let (next, mut records) = decode_index(&index);
    let position = records.iter().position(|r| r.key == lookup.key && r.expires > now_ms)?;
    let record = *records.get(position)?;
    let (mut value, _) = host.shared_data(&slot_key(&lookup.store, record.slot))?;
    if u64_at(&value, 0) != record.generation || value.get(8..40) != Some(&record.key[..]) {
        return None;
    }
    let shape = *value.get(40)?;
    if record.last_used.saturating_add(1000) <= now_ms {
        // Once a second at most; one attempt: a lost race only leaves the use a second older.
        if let Some(r) = records.get_mut(position) {
            r.last_used = now_ms;
        }
        host.set_shared_data(&index_key(&lookup.store), &encode_index(next, &records), cas);
    }
    value.drain(..ENTRY_HEAD);
    Some(Entry { shape, body: value })
}

/// What a store did, for the metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub evicted: u64,
    /// How the bytes the rule's entries hold changed.
    pub bytes_delta: i64,
}

/// Stores `body` under `lookup` (replacing an entry of the same key), evicting expired entries,
/// then least recently used ones, until it fits. `None`: too large, or the index stayed contended.
pub fn put(host: &mut dyn Host, policy: &Policy, lookup: &Lookup, body: &[u8], now_ms: u64) -> Option<Stored> {
    let size = u32::try_from(body.len()).ok().filter(|&s| u64::from(s) <= policy.max_entry_bytes)?;
    let key = index_key(&lookup.store);
    for _ in 0..CAS_ATTEMPTS {
        let (current, cas) = host.shared_data(&key).unwrap_or_default();
        let (next, mut records) = decode_index(&current);
        let total = |records: &[Record]| records.iter().map(|r| u64::from(r.size)).sum::<u64>();
        let before = total(&records);
        // Generation 0 stands for an empty slot.
        let next = next.max(1);
        let mut freed: Vec<Record> = Vec::new();
        let mut evicted = 0;
        records.retain(|r| {
            let keep = r.key != lookup.key && r.expires > now_ms;
            if !keep {
                freed.push(*r);
            }
            keep
        });
        while !records.is_empty()
            && (total(&records) + u64::from(size) > policy.max_bytes || records.len() >= policy.max_entries as usize)
        {
            let lru = records.iter().enumerate().min_by_key(|(_, r)| (r.last_used, r.generation)).map(|(i, _)| i)?;
            freed.push(records.swap_remove(lru));
            evicted += 1;
        }
        let slot = (0..policy.max_entries).find(|s| !records.iter().any(|r| r.slot == *s))?;
        let record = Record {
            key: lookup.key,
            slot,
            size,
            generation: next,
            expires: now_ms.saturating_add(policy.ttl_secs.saturating_mul(1000)),
            last_used: now_ms,
        };
        records.push(record);
        if !host.set_shared_data(&key, &encode_index(next + 1, &records), cas) {
            continue;
        }
        let mut entry = Vec::with_capacity(ENTRY_HEAD + body.len());
        entry.extend_from_slice(&record.generation.to_le_bytes());
        entry.extend_from_slice(&record.key);
        entry.push(lookup.shape as u8);
        entry.extend_from_slice(body);
        // Another worker may have taken the slot since (a newer generation): leave its entry.
        write_slot(host, &lookup.store, slot, &entry, &|g| g < record.generation);
        for gone in freed.iter().filter(|f| f.slot != slot) {
            write_slot(host, &lookup.store, gone.slot, &[], &|g| g == gone.generation);
        }
        let bytes_delta = total(&records) as i64 - before as i64;
        return Some(Stored { evicted, bytes_delta });
    }
    None
}

/// Writes slot `slot` if the generation it holds passes `replaces` (an empty slot holds 0).
fn write_slot(host: &mut dyn Host, store: &str, slot: u32, value: &[u8], replaces: &dyn Fn(u64) -> bool) {
    let key = slot_key(store, slot);
    let (current, cas) = host.shared_data(&key).unwrap_or_default();
    if replaces(u64_at(&current, 0)) {
        host.set_shared_data(&key, value, cas);
    }
}

/// Records the answer of a missed request as the client gets it, up to the entry limit.
#[derive(Debug)]
pub struct Recorder {
    pub lookup: Lookup,
    pub body: Vec<u8>,
    limit: usize,
    pub overflowed: bool,
}

impl Recorder {
    pub fn new(lookup: Lookup, policy: &Policy) -> Self {
        let limit = usize::try_from(policy.max_entry_bytes).unwrap_or(usize::MAX);
        Recorder { lookup, body: Vec::new(), limit, overflowed: false }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.overflowed || self.body.len().saturating_add(bytes.len()) > self.limit {
            // Too large to keep: the answer still streams on, it is only not cached.
            self.overflowed = true;
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }
}

/// Stores a recorded answer (its usage marked as cached) and records the metrics.
pub fn store(host: &mut dyn Host, config: &Compiled, recorder: Recorder, now_ms: u64) {
    let Some(policy) = config.rules.get(recorder.lookup.rule).and_then(|r| r.cache.as_ref()) else { return };
    if recorder.overflowed || recorder.body.is_empty() {
        return;
    }
    let body = mark_usage_cached(&recorder.body, recorder.lookup.api, recorder.lookup.shape != Shape::Json);
    if let Some(stored) = put(host, policy, &recorder.lookup, &body, now_ms) {
        if stored.evicted > 0 {
            count(host, EVICTIONS, Kind::Counter, stored.evicted);
        }
        count(host, BYTES, Kind::GaugeDelta, stored.bytes_delta as u64);
    }
}

pub fn count(host: &mut dyn Host, name: &str, kind: Kind, value: u64) {
    host.record(&Sample { name: name.to_string(), kind, value });
}

/// The answer with its usage reported as read from a cache: OpenAI's
/// `prompt_tokens_details.cached_tokens` is every prompt token; Anthropic's input tokens all
/// become `cache_read_input_tokens`. In a stream, every `data:` line carrying usage is edited.
pub fn mark_usage_cached(body: &[u8], api: ClientApi, stream: bool) -> Vec<u8> {
    if !stream {
        return mark_json(body, api).unwrap_or_else(|| body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    for line in body.split_inclusive(|&b| b == b'\n') {
        let edited = line.strip_prefix(b"data: ").and_then(|data| {
            let end = data.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
            let json = data.get(..end)?;
            let mut edited = mark_json(json, api)?;
            edited.splice(0..0, b"data: ".iter().copied());
            edited.extend_from_slice(data.get(end..)?);
            Some(edited)
        });
        out.extend_from_slice(edited.as_deref().unwrap_or(line));
    }
    out
}

/// `object` with member `key` replaced by `edit(value)`.
fn edit_member(object: &[u8], key: &str, edit: &dyn Fn(&[u8]) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    let mut splice = Splice::new(object, &[key])?;
    let value = edit(splice.get(key)?)?;
    splice.set(key, &value);
    edit_member_finish(object, splice)
}

fn number(object: &[u8], key: &str) -> Option<u64> {
    std::str::from_utf8(Splice::new(object, &[key])?.get(key)?).ok()?.parse().ok()
}

fn mark_json(json: &[u8], api: ClientApi) -> Option<Vec<u8>> {
    match api {
        ClientApi::OpenAI => edit_member(json, "usage", &|usage| {
            let prompt = number(usage, "prompt_tokens")?.to_string();
            let with_details = edit_member(usage, "prompt_tokens_details", &|details| {
                let mut s = Splice::new(details, &["cached_tokens"])?;
                s.set("cached_tokens", prompt.as_bytes());
                edit_member_finish(details, s)
            });
            with_details.or_else(|| {
                let mut s = Splice::new(usage, &[])?;
                s.insert("prompt_tokens_details", format!("{{\"cached_tokens\":{prompt}}}").as_bytes());
                edit_member_finish(usage, s)
            })
        }),
        ClientApi::Anthropic => {
            let mark = |usage: &[u8]| {
                let read: u64 = ["input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]
                    .iter()
                    .map(|k| number(usage, k).unwrap_or(0))
                    .sum();
                number(usage, "input_tokens")?;
                let mut s =
                    Splice::new(usage, &["input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"])?;
                s.set("input_tokens", b"0");
                s.set("cache_read_input_tokens", read.to_string().as_bytes());
                if s.get("cache_creation_input_tokens").is_some() {
                    s.set("cache_creation_input_tokens", b"0");
                }
                edit_member_finish(usage, s)
            };
            // `message_start` carries it in its message; a message and `message_delta` at the top.
            edit_member(json, "usage", &mark)
                .or_else(|| edit_member(json, "message", &|m| edit_member(m, "usage", &mark)))
        }
    }
}

fn edit_member_finish(object: &[u8], splice: Splice) -> Option<Vec<u8>> {
    match splice.finish()? {
        NewBody::Head { replaced, head } => Some([head.as_slice(), object.get(replaced..)?].concat()),
        NewBody::Whole(_) => None,
    }
}

/// A hit's reply headers.
pub fn content_type(shape: u8) -> &'static str {
    if shape == Shape::Json as u8 {
        "application/json"
    } else {
        "text/event-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::testing::FakeHost;

    use crate::testing::NoEnv;

    fn config(cache: &str) -> Compiled {
        let text = format!(
            "{{\"backends\":[{{\"name\":\"o\",\"schema\":\"OpenAI\"}}],\"rules\":[{{\"name\":\"r\",\"backends\":[{{\"name\":\"o\"}}],\"cache\":{cache}}}]}}"
        );
        parse(text.as_bytes(), &NoEnv, 0).unwrap()
    }

    use crate::request::RequestInfo;

    fn info(stream: bool) -> RequestInfo {
        RequestInfo { model: "m".into(), stream, client_wants_usage: false, has_stream_options: false }
    }

    fn ask(
        c: &Compiled,
        endpoint: Endpoint,
        stream: bool,
        body: &str,
        control: Option<&str>,
        consumer: &str,
    ) -> Option<Lookup> {
        let headers: Vec<(String, String)> =
            control.map(|v| ("cache-control".to_string(), v.to_string())).into_iter().collect();
        let info = info(stream);
        let input = PlanInput {
            config: c,
            endpoint,
            query: "",
            headers: &headers,
            body: body.as_bytes(),
            info: &info,
            now_nanos: 0,
            attempt: None,
            pinned_backend: None,
        };
        lookup(&input, 0, c.rules.first().unwrap(), consumer)
    }

    fn key_of(c: &Compiled, body: &str, control: Option<&str>, consumer: &str) -> Option<Lookup> {
        ask(c, Endpoint::ChatCompletions, false, body, control, consumer)
    }

    #[test]
    fn canonical_json_sorts_keys_drops_whitespace_and_excluded_fields() {
        let mut out = Vec::new();
        let body = br#" { "b" : [ 1 , {"y":2, "x" : "\u0041"} ], "a":null, "stream":true, "user":"u" } "#;
        write_canonical(body, &mut out, 0, EXCLUDED_FIELDS).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":null,"b":[1,{"x":"A","y":2}]}"#);
        let mut deep = Vec::new();
        let nested = "[".repeat(100) + &"]".repeat(100);
        assert!(write_canonical(nested.as_bytes(), &mut deep, 0, &[]).is_none(), "too deep: not cached");
        assert!(write_canonical(b"{\"a\":}", &mut Vec::new(), 0, &[]).is_none());
        let wide: Vec<String> = (0..300).map(|i| format!("\"k{i}\":1")).collect();
        let wide = format!("{{{}}}", wide.join(","));
        assert!(write_canonical(wide.as_bytes(), &mut Vec::new(), 0, &[]).is_none(), "too wide: not cached");
    }

    #[test]
    fn the_key_ignores_order_and_excluded_fields_but_not_content_consumer_or_shape() {
        let c = config(r#"{"mode":"exact"}"#);
        let a = key_of(&c, r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#, None, "x");
        let b = key_of(
            &c,
            r#"{"messages":[{"content":"hi","role":"user"}],"user":"bob","temperature":0,"model":"m","metadata":{"k":1}}"#,
            None,
            "x",
        );
        let a = a.unwrap();
        assert_eq!(a.key, b.unwrap().key);
        let other =
            key_of(&c, r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"ho"}]}"#, None, "x");
        assert_ne!(a.key, other.unwrap().key);
        let body = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
        assert_ne!(a.key, key_of(&c, body, None, "y").unwrap().key, "consumers are isolated");
        let shared = config(r#"{"mode":"exact","shared":true}"#);
        assert_eq!(key_of(&shared, body, None, "x").unwrap().key, key_of(&shared, body, None, "y").unwrap().key);
        let streamed = ask(&c, Endpoint::ChatCompletions, true, body, None, "x").unwrap();
        assert_ne!((streamed.key, streamed.shape), (a.key, Shape::Json));
        let messages = ask(&c, Endpoint::Messages, false, body, None, "x").unwrap();
        assert_ne!(messages.key, a.key);
        assert_eq!(a.store, "llmgw.cache.r");
    }

    #[test]
    fn sampled_requests_and_client_cache_control() {
        let c = config(r#"{"mode":"exact"}"#);
        let zero = r#"{"model":"m","temperature":0.0}"#;
        assert!(key_of(&c, r#"{"model":"m","temperature":0.7}"#, None, "").is_none());
        assert!(key_of(&c, r#"{"model":"m"}"#, None, "").is_none(), "no temperature: the default of 1");
        let sampled = config(r#"{"mode":"exact","nonzero_temperature":true}"#);
        assert!(key_of(&sampled, r#"{"model":"m","temperature":0.7}"#, None, "").is_some());
        let l = key_of(&c, zero, None, "").unwrap();
        assert!(l.read && l.write);
        let l = key_of(&c, zero, Some("max-age=0, No-Cache"), "").unwrap();
        assert!(!l.read && l.write);
        assert!(key_of(&c, zero, Some("no-store"), "").is_none());
        let embed = ask(&c, Endpoint::Embeddings, false, r#"{"model":"m","input":"x"}"#, None, "");
        assert!(embed.is_some(), "embeddings do not sample");
        assert!(ask(&c, Endpoint::Responses, false, zero, None, "").is_none());
        for (zero, is) in
            [("0", true), ("-0.00", true), ("0e3", true), ("0.1", false), ("1e-9", false), ("00.5", false)]
        {
            assert_eq!(is_zero(zero.as_bytes()), is, "{zero}");
        }
    }

    fn policy(max_bytes: u64, max_entries: u32) -> Policy {
        Policy {
            ttl_secs: 60,
            max_bytes,
            max_entry_bytes: max_bytes,
            max_entries,
            nonzero_temperature: false,
            shared: false,
        }
    }

    fn entry(n: u8) -> Lookup {
        Lookup {
            rule: 0,
            store: "llmgw.cache.t".into(),
            key: [n; 32],
            shape: Shape::Json,
            api: ClientApi::OpenAI,
            read: true,
            write: true,
        }
    }

    fn slot_bytes(host: &FakeHost) -> usize {
        host.shared.iter().filter(|(k, _)| !k.ends_with(".index")).map(|(_, (v, _))| v.len()).sum()
    }

    #[test]
    fn a_ttl_counts_from_the_store_to_the_millisecond() {
        let mut host = FakeHost::default();
        let p = Policy { ttl_secs: 1, ..policy(300, 8) };
        // Stored late in a second: whole seconds would end it 10 ms later.
        put(&mut host, &p, &entry(1), b"x", 5_990).unwrap();
        assert!(get(&mut host, &entry(1), 6_010).is_some());
        assert!(get(&mut host, &entry(1), 6_989).is_some());
        assert!(get(&mut host, &entry(1), 6_990).is_none());
    }

    #[test]
    fn entries_expire_and_the_least_recently_used_is_evicted_with_slots_reused() {
        let mut host = FakeHost::default();
        let p = policy(300, 8);
        assert_eq!(put(&mut host, &p, &entry(1), &[b'a'; 100], 10_000), Some(Stored { evicted: 0, bytes_delta: 100 }));
        put(&mut host, &p, &entry(2), &[b'b'; 100], 11_000).unwrap();
        put(&mut host, &p, &entry(3), &[b'c'; 100], 12_000).unwrap();
        // Entry 1 is used: entry 2 is now the least recently used.
        assert_eq!(get(&mut host, &entry(1), 13_000).unwrap().body, [b'a'; 100]);
        assert_eq!(put(&mut host, &p, &entry(4), &[b'd'; 100], 14_000), Some(Stored { evicted: 1, bytes_delta: 0 }));
        assert!(get(&mut host, &entry(2), 14_000).is_none());
        assert!(get(&mut host, &entry(1), 14_000).is_some() && get(&mut host, &entry(4), 14_000).is_some());
        let slot_keys = host.shared.keys().filter(|k| !k.ends_with(".index")).count();
        assert_eq!(slot_keys, 3, "entry 4 reused entry 2's slot");
        // Past its TTL an entry is a miss, and its bytes are freed by the next store.
        assert!(get(&mut host, &entry(3), (12 + 60) * 1000).is_none());
        put(&mut host, &p, &entry(5), b"e", 80_000).unwrap();
        assert_eq!(slot_bytes(&host), ENTRY_HEAD + 1, "expired entries' slots are emptied");
        // Too large for an entry: not stored. The entry count is bounded too.
        assert!(put(&mut host, &p, &entry(6), &[0; 301], 80_000).is_none());
        let one = policy(1000, 1);
        let mut host = FakeHost::default();
        put(&mut host, &one, &entry(1), b"x", 0_000).unwrap();
        assert_eq!(put(&mut host, &one, &entry(2), b"y", 0_000).map(|s| s.evicted), Some(1));
    }

    #[test]
    fn a_slot_taken_by_another_generation_is_a_miss_not_another_answer() {
        let mut host = FakeHost::default();
        let p = policy(1000, 4);
        put(&mut host, &p, &entry(1), b"one", 0_000).unwrap();
        // Another worker overwrote the slot with a newer entry the index does not list.
        let (mut value, _) = host.shared_data("llmgw.cache.t.0").unwrap();
        value.splice(0..8, 99u64.to_le_bytes());
        host.set_shared_data("llmgw.cache.t.0", &value, 0);
        assert!(get(&mut host, &entry(1), 1_000).is_none());
        // A store that loses the compare-and-swap retries.
        host.cas_conflicts = 2;
        assert!(put(&mut host, &p, &entry(2), b"two", 0_000).is_some());
        host.cas_conflicts = CAS_ATTEMPTS;
        assert!(put(&mut host, &p, &entry(3), b"three", 0_000).is_none());
    }

    #[test]
    fn usage_is_reported_as_cached() {
        let chat = br#"{"id":"c","usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
        let v: serde_json::Value = serde_json::from_slice(&mark_usage_cached(chat, ClientApi::OpenAI, false)).unwrap();
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 9);
        assert_eq!(v["usage"]["prompt_tokens"], 9);
        let detailed = br#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0}}}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&mark_usage_cached(detailed, ClientApi::OpenAI, false)).unwrap();
        assert_eq!(v["usage"]["prompt_tokens_details"], serde_json::json!({"cached_tokens":9,"audio_tokens":0}));
        let stream =
            b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4}}\n\ndata: [DONE]\n\n";
        let out = String::from_utf8(mark_usage_cached(stream, ClientApi::OpenAI, true)).unwrap();
        assert_eq!(
            out,
            "data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":4},\"prompt_tokens\":4}}\n\ndata: [DONE]\n\n"
        );
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":1,\"output_tokens\":1}}}\n\n";
        let out = mark_usage_cached(start, ClientApi::Anthropic, true);
        let text = String::from_utf8(out).unwrap();
        let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            v["message"]["usage"],
            serde_json::json!({"input_tokens":0,"cache_read_input_tokens":8,"output_tokens":1})
        );
        let message = br#"{"type":"message","usage":{"input_tokens":5,"output_tokens":3}}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&mark_usage_cached(message, ClientApi::Anthropic, false)).unwrap();
        assert_eq!(v["usage"], serde_json::json!({"cache_read_input_tokens":5,"input_tokens":0,"output_tokens":3}));
        assert_eq!(mark_usage_cached(b"not json", ClientApi::OpenAI, false), b"not json");
    }

    #[test]
    fn cache_settings_are_validated() {
        let c = config(r#"{"mode":"exact","ttl":"2m","max_bytes":"1Mi","max_entries":10}"#);
        let p = c.rules.first().unwrap().cache.clone().unwrap();
        assert_eq!((p.ttl_secs, p.max_bytes, p.max_entry_bytes, p.max_entries), (120, 1 << 20, 1 << 20, 10));
        let defaults = config(r#"{"mode":"exact"}"#).rules.first().unwrap().cache.clone().unwrap();
        assert_eq!((defaults.ttl_secs, defaults.max_bytes, defaults.max_entry_bytes), (600, 64 << 20, 1 << 20));
        for (cache, field) in [
            (r#"{"mode":"semantic"}"#, "rules[0].cache.mode"),
            (r#"{"mode":"fuzzy"}"#, "rules[0].cache.mode"),
            (r#"{"mode":"exact","ttl":"0s"}"#, "rules[0].cache.ttl"),
            (r#"{"mode":"exact","max_bytes":"12Xi"}"#, "rules[0].cache.max_bytes"),
            (r#"{"ttl":"1m"}"#, "rules[0].cache.mode"),
            (r#"{"mode":"exact","shared":"yes"}"#, "rules[0].cache.shared"),
            (r#"{"mode":"exact","max_bytes":10}"#, "rules[0].cache.max_bytes"),
            (r#"{"mode":"exact","max_bytes":"1Mi","max_entry_bytes":"2Mi"}"#, "rules[0].cache.max_entry_bytes"),
            (r#"{"mode":"exact","max_entries":0}"#, "rules[0].cache.max_entries"),
            (r#"{"mode":"exact","similarity":0.9}"#, "rules[0].cache.similarity"),
        ] {
            let text = format!(
                "{{\"backends\":[{{\"name\":\"o\",\"schema\":\"OpenAI\"}}],\"rules\":[{{\"backends\":[{{\"name\":\"o\"}}],\"cache\":{cache}}}]}}"
            );
            let e = parse(text.as_bytes(), &NoEnv, 0).unwrap_err();
            if !field.is_empty() {
                assert_eq!(e.field, field, "{cache}: {e}");
            }
        }
    }
}
