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
/// Embedding calls that failed (refused, timed out, unreadable): their requests went uncached.
pub const EMBEDDING_FAILURES: &str = "llmgw.cache_embedding_failures_total";
/// Bytes held by the cache entries of all rules (a gauge every store moves by its change).
pub const BYTES: &str = "llmgw.cache_bytes";
/// The response header saying `hit` or `miss`.
pub const CACHE_HEADER: &str = "x-llmgw-cache";

/// Deeper JSON is not cached (the key walks it recursively).
const MAX_DEPTH: usize = 64;
/// An object with more members is not cached (its members are sorted by insertion).
const MAX_MEMBERS: usize = 256;
const RECORD: usize = 64;
/// Generation, key, shape, then the answer's tokens (reported as cached by a hit's metrics).
const ENTRY_HEAD: usize = 8 + 32 + 1 + 8;
/// Bytes of a partition hash in a vector row (128 bits: collisions are out of reach).
pub const PARTITION: usize = 16;
/// Longer last user turns are cached exactly only: an embedding model reads a few hundred tokens,
/// and prompts alike in those but not after must not share an answer.
pub const MAX_PROMPT: usize = 2048;
/// Largest embedding kept (dimensions).
pub const MAX_DIMENSIONS: usize = 4096;
/// Compare-and-swap attempts on the index before a store is given up.
const CAS_ATTEMPTS: usize = 8;

/// A rule's `cache:` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub ttl_secs: u64,
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
    pub max_entries: u32,
    /// Cache requests with `temperature > 0` (or none: the providers' default is 1).
    pub nonzero_temperature: bool,
    /// One store for every consumer (else each consumer only ever gets its own answers).
    pub shared: bool,
    /// `mode: semantic`: a prompt near enough to a cached one's is answered with it.
    pub semantic: Option<Semantic>,
}

/// Semantic mode's settings: the embeddings backend (its index), model and call timeout, and the
/// cosine similarity from which a cached prompt's answer is served.
#[derive(Debug, Clone, PartialEq)]
pub struct Semantic {
    pub similarity: f32,
    pub backend: usize,
    pub model: String,
    pub timeout_ms: u64,
}

/// A semantic lookup: its partition (the hash of everything in the key but the last user turn's
/// text) and that text, to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub partition: [u8; PARTITION],
    pub prompt: String,
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
    /// Semantic mode, when the request has a last user turn of text.
    pub probe: Option<Box<Probe>>,
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
    let keyed = |hash: &Sha256, body: &[u8]| -> Option<[u8; 32]> {
        let mut canonical = Vec::with_capacity(body.len());
        write_canonical(body, &mut canonical, 0, EXCLUDED_FIELDS)?;
        let mut hash = hash.clone();
        hash.update((canonical.len() as u64).to_le_bytes());
        hash.update(&canonical);
        Some(hash.finalize().into())
    };
    let key = keyed(&hash, body)?;
    // Semantic mode: the same key without the last user turn's text is the partition searched.
    let probe = policy.semantic.as_ref().and_then(|_| {
        let (range, prompt) = last_user_turn(endpoint, body)?;
        let blanked = [body.get(..range.start)?, b"\"\"", body.get(range.end..)?].concat();
        hash.update(b"semantic");
        let partition = keyed(&hash, &blanked)?;
        Some(Box::new(Probe { partition: partition.get(..PARTITION)?.try_into().ok()?, prompt }))
    });
    let store = match &rule.name {
        Some(name) => format!("llmgw.cache.{name}"),
        None => format!("llmgw.cache.#{rule_index}"),
    };
    Some(Lookup { rule: rule_index, store, key, shape, api, read, write, probe })
}

/// The last user turn of a chat or Messages request: its `content`'s byte range in `body` and its
/// text (a string, or text parts joined by newlines). `None` for other endpoints, a turn with any
/// other part (an image: its text alone does not say what is asked) or text over `MAX_PROMPT`.
pub fn last_user_turn(endpoint: Endpoint, body: &[u8]) -> Option<(std::ops::Range<usize>, String)> {
    if !matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Messages) {
        return None;
    }
    let messages = crate::json::member_value(body, "messages")?;
    let mut last = None;
    crate::json::for_each_element(messages, &mut |m| {
        if crate::json::member_value(m, "role") == Some(b"\"user\"") {
            last = Some(m);
        }
    })?;
    let content = crate::json::member_value(last?, "content")?;
    let start = (content.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let text = match content.first()? {
        b'"' => serde_json::from_slice::<String>(content).ok()?,
        _ => {
            let mut parts: Vec<String> = Vec::new();
            let mut other = false;
            crate::json::for_each_element(content, &mut |part| {
                let text = crate::json::member_value(part, "text").and_then(|t| serde_json::from_slice(t).ok());
                match (crate::json::member_value(part, "type"), text) {
                    (Some(b"\"text\""), Some(text)) => parts.push(text),
                    _ => other = true,
                }
            })?;
            if other {
                return None;
            }
            parts.join("\n")
        }
    };
    (!text.trim().is_empty() && text.len() <= MAX_PROMPT).then_some((start..start + content.len(), text))
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

/// A cached answer: its shape, the bytes the client gets and the tokens its usage reports.
pub struct Entry {
    pub shape: u8,
    pub body: Vec<u8>,
    pub tokens: u64,
}

/// The live entry for `lookup`, if any; records its use (LRU).
pub fn get(host: &mut dyn Host, lookup: &Lookup, now_ms: u64) -> Option<Entry> {
    get_where(host, &lookup.store, now_ms, &|r| r.key == lookup.key)
}

/// The live entry the first record passing `wanted` indexes; records its use (LRU).
fn get_where(host: &mut dyn Host, store: &str, now_ms: u64, wanted: &dyn Fn(&Record) -> bool) -> Option<Entry> {
    let (index, cas) = host.shared_data(&index_key(store))?;
    let (next, mut records) = decode_index(&index);
    let position = records.iter().position(|r| wanted(r) && r.expires > now_ms)?;
    let record = *records.get(position)?;
    let (mut value, _) = host.shared_data(&slot_key(store, record.slot))?;
    if u64_at(&value, 0) != record.generation || value.get(8..40) != Some(&record.key[..]) {
        return None;
    }
    let shape = *value.get(40)?;
    let tokens = u64_at(&value, 41);
    if record.last_used.saturating_add(1000) <= now_ms {
        // Once a second at most; one attempt: a lost race only leaves the use a second older.
        if let Some(r) = records.get_mut(position) {
            r.last_used = now_ms;
        }
        host.set_shared_data(&index_key(store), &encode_index(next, &records), cas);
    }
    value.drain(..ENTRY_HEAD);
    Some(Entry { shape, body: value, tokens })
}

// --- semantic mode -------------------------------------------------------------------------------
//
// Each rule with `mode: semantic` keeps one more key, `<store>.vectors`: the dimensions (u32), then
// one row per entry stored with a vector: its generation (u64), its partition and its embedding
// quantized to i8 (cosine needs no scale: it cancels). Rows of entries the index no longer lists
// are dropped by the next store, so the table holds at most `max_entries` rows (plus those other
// workers added meanwhile).

/// The embedding scaled to i8 (each vector by its own largest component), as the bytes of its
/// components: 4x smaller than f32, and cosines move by about 1e-3
/// (`quantized_cosines_stay_near_the_float_ones`).
pub fn quantize(vector: &[f32]) -> Vec<u8> {
    let max = vector.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
    vector.iter().map(|v| (v * scale).round() as i8 as u8).collect()
}

/// Cosine similarity of two quantized vectors (0 when either is zero or their lengths differ).
pub fn cosine(a: &[u8], b: &[u8]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut aa, mut bb) = (0i64, 0i64, 0i64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (i64::from(*x as i8), i64::from(*y as i8));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0 || bb == 0 {
        return 0.0;
    }
    dot as f32 / ((aa as f32).sqrt() * (bb as f32).sqrt())
}

fn vectors_key(store: &str) -> String {
    format!("{store}.vectors")
}

fn row_len(dimensions: usize) -> usize {
    8 + PARTITION + dimensions
}

/// The rows of a vectors table: (generation, partition, vector), for tables of `dimensions`.
fn rows(table: &[u8], dimensions: usize) -> impl Iterator<Item = (u64, &[u8], &[u8])> {
    let rows = if u32_at(table, 0) as usize == dimensions { table.get(4..).unwrap_or_default() } else { &[] };
    rows.chunks_exact(row_len(dimensions).max(1)).map(|row| {
        let vector = row.get(8 + PARTITION..).unwrap_or_default();
        (u64_at(row, 0), row.get(8..8 + PARTITION).unwrap_or_default(), vector)
    })
}

/// The generation of the row nearest `query` in `partition` (and its similarity), among those
/// `live` accepts, if at least `similarity` (pure: the decision of a semantic lookup).
pub fn nearest(
    table: &[u8],
    partition: &[u8],
    query: &[u8],
    similarity: f32,
    live: &dyn Fn(u64) -> bool,
) -> Option<(u64, f32)> {
    rows(table, query.len())
        .filter(|(generation, p, _)| *p == partition && live(*generation))
        .map(|(generation, _, vector)| (generation, cosine(query, vector)))
        .filter(|(_, s)| *s >= similarity)
        .fold(None, |best: Option<(u64, f32)>, row| if best.is_some_and(|b| b.1 >= row.1) { best } else { Some(row) })
}

/// The vectors table after a store: rows `keep` accepts, then the new row (pure). A table of
/// other dimensions (the model changed) is started again.
pub fn table_with(table: &[u8], row: (u64, &[u8], &[u8]), keep: &dyn Fn(u64) -> bool) -> Vec<u8> {
    let vector = row.2;
    let mut out = (vector.len() as u32).to_le_bytes().to_vec();
    for (g, p, v) in rows(table, vector.len()).filter(|r| keep(r.0)).chain([row]) {
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(v);
    }
    out
}

/// An embeddings call: the cluster it goes to, its headers and body.
pub struct EmbeddingCall {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The OpenAI-compatible `POST {prefix}/embeddings` asking the embeddings backend for `prompt`'s
/// vector, with that backend's headers and credential (a header: SigV4 backends are refused at
/// configuration).
pub fn embedding_call(config: &Compiled, semantic: &Semantic, prompt: &str) -> Option<EmbeddingCall> {
    let backend = config.backends.get(semantic.backend)?;
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), format!("{}/embeddings", backend.prefix)),
        (":authority".to_string(), backend.authority.clone().unwrap_or_else(|| backend.name.clone())),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    headers.extend(backend.set_headers.iter().cloned());
    if let Some(crate::config::Credential::Header(h)) = backend.credential() {
        headers.push((h.header.to_string(), h.value.expose().to_string()));
    }
    let mut body = b"{\"model\":".to_vec();
    body.extend_from_slice(&json_string(&semantic.model));
    body.extend_from_slice(b",\"input\":");
    body.extend_from_slice(&json_string(prompt));
    body.push(b'}');
    Some(EmbeddingCall { cluster: backend.name.clone(), headers, body })
}

/// The first vector of an OpenAI embeddings answer (`data[0].embedding`), quantized; `None` when
/// the answer holds none (or one of over `MAX_DIMENSIONS`, or not numbers).
pub fn read_embedding(answer: &[u8]) -> Option<Vec<u8>> {
    let mut first = None;
    crate::json::for_each_element(crate::json::member_value(answer, "data")?, &mut |e| {
        first = first.or(Some(e));
    })?;
    let array = crate::json::member_value(first?, "embedding")?;
    let inner = array.strip_prefix(b"[")?.strip_suffix(b"]")?;
    let text = std::str::from_utf8(inner).ok()?;
    let vector = text.split(',').map(|n| number_f32(n.trim()));
    let vector: Option<Vec<f32>> = vector.take(MAX_DIMENSIONS + 1).collect();
    vector.filter(|v| !v.is_empty() && v.len() <= MAX_DIMENSIONS).map(|v| quantize(&v))
}

/// A JSON number as f32, without core's float parser (its tables would cost the module ~10 KB):
/// exact to about 1e-7 relative, far below what i8 quantization keeps. `None` when not a number.
pub fn number_f32(text: &str) -> Option<f32> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (number, exponent) = match text.find(['e', 'E']) {
        Some(at) => (text.get(..at)?, text.get(at + 1..)?.trim_start_matches('+').parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (mut mantissa, mut scale) = (0u64, exponent.clamp(-400, 400));
    for (i, digit) in whole.bytes().chain(fraction.bytes()).enumerate() {
        if mantissa < 1 << 60 {
            mantissa = mantissa * 10 + u64::from(digit - b'0');
            scale -= i32::from(i >= whole.len());
        } else {
            scale += i32::from(i < whole.len());
        }
    }
    let value = mantissa as f64 * 10f64.powi(scale);
    let value = if negative { -value } else { value } as f32;
    value.is_finite().then_some(value)
}

/// The live entry whose prompt is nearest `query` in the lookup's partition, if near enough.
pub fn get_similar(host: &mut dyn Host, lookup: &Lookup, query: &[u8], similarity: f32, now_ms: u64) -> Option<Entry> {
    let probe = lookup.probe.as_ref()?;
    let (table, _) = host.shared_data(&vectors_key(&lookup.store))?;
    let (index, _) = host.shared_data(&index_key(&lookup.store))?;
    let (_, records) = decode_index(&index);
    let live = |g: u64| records.iter().any(|r| r.generation == g && r.expires > now_ms);
    let (generation, _) = nearest(&table, &probe.partition, query, similarity, &live)?;
    get_where(host, &lookup.store, now_ms, &|r| r.generation == generation)
}

/// What a store did, for the metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub evicted: u64,
    /// How the bytes the rule's entries hold changed.
    pub bytes_delta: i64,
}

#[cfg(test)]
fn put(host: &mut dyn Host, policy: &Policy, lookup: &Lookup, body: &[u8], now_ms: u64) -> Option<Stored> {
    put_entry(host, policy, lookup, body, (0, None), now_ms)
}

/// Stores `body` under `lookup` (replacing an entry of the same key), evicting expired entries,
/// then least recently used ones, until it fits; `(tokens, vector)`: its usage's token count, and
/// its prompt's quantized embedding (semantic mode). `None`: too large, or the index stayed contended.
pub fn put_entry(
    host: &mut dyn Host,
    policy: &Policy,
    lookup: &Lookup,
    body: &[u8],
    (tokens, vector): (u64, Option<&[u8]>),
    now_ms: u64,
) -> Option<Stored> {
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
        entry.extend_from_slice(&tokens.to_le_bytes());
        entry.extend_from_slice(body);
        // Another worker may have taken the slot since (a newer generation): leave its entry.
        write_slot(host, &lookup.store, slot, &entry, &|g| g < record.generation);
        for gone in freed.iter().filter(|f| f.slot != slot) {
            write_slot(host, &lookup.store, gone.slot, &[], &|g| g == gone.generation);
        }
        if let (Some(probe), Some(vector)) = (&lookup.probe, vector) {
            // Rows of entries this index dropped go; those of entries stored meanwhile stay.
            let keep = |g: u64| g > next || records.iter().any(|r| r.generation == g);
            add_vector(host, &lookup.store, (record.generation, &probe.partition, vector), &keep);
        }
        let bytes_delta = total(&records) as i64 - before as i64;
        return Some(Stored { evicted, bytes_delta });
    }
    None
}

/// Adds a row to the rule's vectors table (compare-and-swap; given up when it stays contended:
/// the entry is then found by exact repeats only).
fn add_vector(host: &mut dyn Host, store: &str, row: (u64, &[u8], &[u8]), keep: &dyn Fn(u64) -> bool) {
    let key = vectors_key(store);
    for _ in 0..CAS_ATTEMPTS {
        let (table, cas) = host.shared_data(&key).unwrap_or_default();
        if host.set_shared_data(&key, &table_with(&table, row, keep), cas) {
            return;
        }
    }
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
    /// The answer's tokens (input and output), reported as cached by the metrics of its hits.
    pub tokens: u64,
    /// Semantic mode: the prompt's quantized embedding, stored with the entry.
    pub vector: Option<Vec<u8>>,
    /// Semantic mode: the embeddings call under way (its token), the request paused meanwhile.
    pub embedding_call: Option<u32>,
}

impl Recorder {
    pub fn new(lookup: Lookup, policy: &Policy) -> Self {
        let limit = usize::try_from(policy.max_entry_bytes).unwrap_or(usize::MAX);
        Recorder { lookup, body: Vec::new(), limit, overflowed: false, tokens: 0, vector: None, embedding_call: None }
    }

    /// The answer will not be stored (the request still says `miss`).
    pub fn abandon(&mut self) {
        self.overflowed = true;
        self.body = Vec::new();
        self.lookup.probe = None;
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
    let meta = (recorder.tokens, recorder.vector.as_deref());
    if let Some(stored) = put_entry(host, policy, &recorder.lookup, &body, meta, now_ms) {
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
            semantic: None,
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
            probe: None,
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
            (r#"{"mode":"semantic"}"#, "rules[0].cache.embeddings"),
            (r#"{"mode":"semantic","embeddings":{"backend":"nope","model":"m"}}"#, "rules[0].cache.embeddings.backend"),
            (r#"{"mode":"semantic","embeddings":{"backend":"o"}}"#, "rules[0].cache.embeddings.model"),
            (
                r#"{"mode":"semantic","embeddings":{"backend":"o","model":"m","timeout":"9m"}}"#,
                "rules[0].cache.embeddings.timeout",
            ),
            (r#"{"mode":"semantic","embeddings":{"backend":"o","model":"m","x":1}}"#, "rules[0].cache.embeddings.x"),
            (
                r#"{"mode":"semantic","similarity":1.5,"embeddings":{"backend":"o","model":"m"}}"#,
                "rules[0].cache.similarity",
            ),
            (r#"{"mode":"exact","embeddings":{"backend":"o","model":"m"}}"#, "rules[0].cache.embeddings"),
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

    const SEMANTIC: &str = r#"{"mode":"semantic","similarity":0.9,"embeddings":{"backend":"o","model":"mini"}}"#;

    #[test]
    fn semantic_settings_default_and_name_the_embeddings_backend() {
        let c = config(SEMANTIC);
        let s = c.rules.first().unwrap().cache.clone().unwrap().semantic.unwrap();
        assert_eq!((s.similarity, s.backend, s.model.as_str(), s.timeout_ms), (0.9, 0, "mini", 1000));
        let d = config(r#"{"mode":"semantic","embeddings":{"backend":"o","model":"m","timeout":"250ms"}}"#);
        let s = d.rules.first().unwrap().cache.clone().unwrap().semantic.unwrap();
        assert_eq!((s.similarity, s.timeout_ms), (0.95, 250));
    }

    fn probe_of(c: &Compiled, endpoint: Endpoint, body: &str, consumer: &str) -> Option<(Lookup, Probe)> {
        let l = ask(c, endpoint, false, body, None, consumer)?;
        let p = *l.probe.clone()?;
        Some((l, p))
    }

    #[test]
    fn the_partition_is_the_key_without_the_last_user_turn() {
        let c = config(SEMANTIC);
        let chat = |system: &str, user: &str| {
            format!(
                r#"{{"model":"m","temperature":0,"messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"earlier"}},{{"role":"assistant","content":"ok"}},{{"role":"user","content":{user}}}]}}"#
            )
        };
        let (a, pa) =
            probe_of(&c, Endpoint::ChatCompletions, &chat("be brief", r#""What is the capital of France?""#), "x")
                .unwrap();
        let (b, pb) =
            probe_of(&c, Endpoint::ChatCompletions, &chat("be brief", r#""Tell me France's capital""#), "x").unwrap();
        assert_eq!(pa.prompt, "What is the capital of France?");
        assert_eq!(pa.partition, pb.partition, "only the last user turn differs");
        assert_ne!(a.key, b.key, "the exact key still tells them apart");
        // Everything else is in the partition: the system prompt, earlier turns, the consumer.
        let (_, other_system) = probe_of(&c, Endpoint::ChatCompletions, &chat("be long", r#""x""#), "x").unwrap();
        assert_ne!(other_system.partition, pa.partition);
        let (_, other_consumer) =
            probe_of(&c, Endpoint::ChatCompletions, &chat("be brief", r#""What is the capital of France?""#), "y")
                .unwrap();
        assert_ne!(other_consumer.partition, pa.partition);
        // Text parts are joined; any other part (an image) leaves the request exact-only.
        let parts = chat("be brief", r#"[{"type":"text","text":"What is"},{"type":"text","text":"it?"}]"#);
        assert_eq!(probe_of(&c, Endpoint::ChatCompletions, &parts, "x").unwrap().1.prompt, "What is\nit?");
        let image = chat(
            "be brief",
            r#"[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"u"}}]"#,
        );
        let l = ask(&c, Endpoint::ChatCompletions, false, &image, None, "x").unwrap();
        assert!(l.probe.is_none(), "cached exactly only");
        let long = chat("be brief", &format!("\"{}\"", "a".repeat(MAX_PROMPT + 1)));
        assert!(ask(&c, Endpoint::ChatCompletions, false, &long, None, "x").unwrap().probe.is_none());
        // Messages too; completions and embeddings stay exact.
        let messages =
            r#"{"model":"m","max_tokens":9,"temperature":0,"messages":[{"role":"user","content":"hi there"}]}"#;
        assert_eq!(probe_of(&c, Endpoint::Messages, messages, "x").unwrap().1.prompt, "hi there");
        assert!(ask(&c, Endpoint::Embeddings, false, r#"{"model":"m","input":"x"}"#, None, "x")
            .unwrap()
            .probe
            .is_none());
        // An exact rule has no probe.
        assert!(ask(&config(r#"{"mode":"exact"}"#), Endpoint::ChatCompletions, false, messages, None, "x")
            .unwrap()
            .probe
            .is_none());
    }

    /// Deterministic pseudo-random unit-ish vectors (an LCG), like a sentence embedding's spread.
    fn vectors(seed: u64, n: usize, dims: usize) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        (0..n).map(|_| (0..dims).map(|_| next()).collect()).collect()
    }

    fn float_cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    #[test]
    fn quantized_cosines_stay_near_the_float_ones() {
        let base = vectors(7, 40, 384);
        let mut worst = 0f32;
        for (i, a) in base.iter().enumerate() {
            // Pairs from unrelated to near-identical: b = a + t * noise.
            let noise = &vectors(i as u64 + 100, 1, 384)[0];
            for t in [0.05f32, 0.3, 1.0, 5.0] {
                let b: Vec<f32> = a.iter().zip(noise).map(|(x, n)| x + t * n).collect();
                let error = (float_cosine(a, &b) - cosine(&quantize(a), &quantize(&b))).abs();
                worst = worst.max(error);
            }
        }
        assert!(worst < 0.005, "worst cosine error {worst}");
        assert_eq!(cosine(&quantize(&[0.0, 0.0]), &quantize(&[1.0, 0.0])), 0.0, "a zero vector is like nothing");
        assert_eq!(cosine(&[1, 2], &[1]), 0.0, "other dimensions: unlike");
    }

    #[test]
    fn nearest_takes_the_closest_live_row_of_the_partition_from_the_threshold() {
        let v = |x: f32, y: f32| quantize(&[x, y, 0.0]);
        let mut table = table_with(&[], (1, &[1; PARTITION], &v(1.0, 0.0)), &|_| true);
        table = table_with(&table, (2, &[1; PARTITION], &v(1.0, 0.2)), &|_| true);
        table = table_with(&table, (3, &[2; PARTITION], &v(1.0, 0.1)), &|_| true);
        let all = |_: u64| true;
        let query = v(1.0, 0.05);
        assert_eq!(nearest(&table, &[1; PARTITION], &query, 0.9, &all).map(|n| n.0), Some(1), "1 is nearer than 2");
        assert_eq!(nearest(&table, &[1; PARTITION], &query, 0.9, &|g| g != 1).map(|n| n.0), Some(2), "1 is gone");
        assert_eq!(nearest(&table, &[2; PARTITION], &query, 0.9, &all).map(|n| n.0), Some(3), "its own partition");
        assert_eq!(nearest(&table, &[3; PARTITION], &query, 0.0, &all), None);
        assert_eq!(nearest(&table, &[1; PARTITION], &v(0.0, 1.0), 0.5, &all), None, "below the threshold");
        // A store drops the rows `keep` refuses; a vector of other dimensions starts a new table.
        let kept = table_with(&table, (4, &[1; PARTITION], &v(0.0, 1.0)), &|g| g == 3);
        let generations: Vec<u64> = rows(&kept, 3).map(|r| r.0).collect();
        assert_eq!(generations, [3, 4]);
        let other = table_with(&kept, (5, &[1; PARTITION], &quantize(&[1.0; 8])), &|_| true);
        assert_eq!(other.len(), 4 + row_len(8));
        assert_eq!(
            nearest(&other, &[1; PARTITION], &query, 0.0, &all),
            None,
            "a query of other dimensions finds nothing"
        );
    }

    fn semantic_entry(n: u8, partition: u8) -> Lookup {
        Lookup { probe: Some(Box::new(Probe { partition: [partition; PARTITION], prompt: String::new() })), ..entry(n) }
    }

    #[test]
    fn similar_prompts_find_a_stored_answer_and_evicted_entries_lose_their_vectors() {
        let mut host = FakeHost::default();
        let p = policy(250, 8);
        let france = quantize(&[0.9, 0.1, 0.0]);
        let near = quantize(&[0.88, 0.12, 0.01]);
        put_entry(&mut host, &p, &semantic_entry(1, 7), &[b'a'; 100], (12, Some(&france)), 1_000).unwrap();
        let hit = get_similar(&mut host, &semantic_entry(9, 7), &near, 0.95, 2_000).unwrap();
        assert_eq!((hit.body, hit.tokens), (vec![b'a'; 100], 12));
        assert!(get_similar(&mut host, &semantic_entry(9, 8), &near, 0.95, 2_000).is_none(), "other partition");
        assert!(get_similar(&mut host, &semantic_entry(9, 7), &quantize(&[0.0, 1.0, 0.0]), 0.95, 2_000).is_none());
        assert!(get_similar(&mut host, &semantic_entry(9, 7), &near, 0.95, 61_000).is_none(), "expired");
        // Entries 2 and 3 evict entry 1 (LRU, max_bytes): its row goes with it.
        put_entry(&mut host, &p, &semantic_entry(2, 7), &[b'b'; 100], (0, Some(&france)), 3_000).unwrap();
        put_entry(&mut host, &p, &semantic_entry(3, 7), &[b'c'; 100], (0, Some(&quantize(&[0.0, 1.0, 0.0]))), 4_000)
            .unwrap();
        let (table, _) = host.shared_data("llmgw.cache.t.vectors").unwrap();
        assert_eq!(table.len(), 4 + 2 * row_len(3), "one row per live entry");
        assert_eq!(get_similar(&mut host, &semantic_entry(9, 7), &near, 0.95, 5_000).unwrap().body, [b'b'; 100]);
        // An entry stored without a vector (the embedding failed) adds no row.
        put_entry(&mut host, &p, &semantic_entry(4, 7), b"d", (0, None), 6_000).unwrap();
        assert_eq!(host.shared_data("llmgw.cache.t.vectors").unwrap().0.len(), 4 + 2 * row_len(3));
    }

    #[test]
    fn the_embeddings_call_and_its_answer() {
        let text = r#"{"backends":[{"name":"emb","schema":"OpenAI","prefix":"/api/v1","host":"emb.local",
            "auth":{"bearer":"sk-emb"}}],"rules":[{"backends":[{"name":"emb"}],
            "cache":{"mode":"semantic","embeddings":{"backend":"emb","model":"all-MiniLM-L6-v2"}}}]}"#;
        let c = parse(text.as_bytes(), &NoEnv, 0).unwrap();
        let semantic = c.rules[0].cache.as_ref().unwrap().semantic.clone().unwrap();
        let call = embedding_call(&c, &semantic, "say \"hi\"").unwrap();
        assert_eq!(call.cluster, "emb");
        let header = |n: &str| call.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!((header(":path"), header(":authority")), (Some("/api/v1/embeddings"), Some("emb.local")));
        assert_eq!(header("authorization"), Some("Bearer sk-emb"));
        let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(body, serde_json::json!({"model":"all-MiniLM-L6-v2","input":"say \"hi\""}));
        let answer = br#"{"object":"list","data":[{"index":0,"embedding":[0.5, -1.0e0 ,0.25]},{"embedding":[9]}]}"#;
        assert_eq!(read_embedding(answer), Some(quantize(&[0.5, -1.0, 0.25])));
        for bad in
            [&br#"{"data":[]}"#[..], br#"{"data":[{"embedding":[1,"x"]}]}"#, br#"{"data":[{"embedding":[]}]}"#, b"oops"]
        {
            assert_eq!(read_embedding(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let huge = format!(r#"{{"data":[{{"embedding":[{}1]}}]}}"#, "1,".repeat(MAX_DIMENSIONS));
        assert_eq!(read_embedding(huge.as_bytes()), None);
    }
}
