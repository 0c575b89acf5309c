//! Endpoint picking for self-hosted model fleets (vLLM and the like): the filter chooses which of a
//! backend's endpoints serves a request and writes it in [`DESTINATION_HEADER`], followed by the
//! endpoints to retry on; Envoy's override-host load-balancing policy connects to the first, and a
//! retry (the connection failed) to the next.
//!
//! Decisions are pure functions of a [`Snapshot`] of the state every worker shares (proxy-wasm
//! shared data, one store per Envoy process):
//! - in-flight requests per endpoint (`llmgw.picker.<backend>.inflight.<endpoint>`), incremented
//!   by compare-and-swap on pick and decremented exactly once when the stream ends, however it ends;
//! - a bounded prefix table per backend (`llmgw.picker.<backend>.prefixes`): hashes of prompt
//!   blocks → the endpoint that last served them, least recently used entries evicted first;
//! - a time-to-first-token EWMA per endpoint (`llmgw.picker.<backend>.ttft.<endpoint>`);
//! - endpoints marked down until a time (`llmgw.picker.<backend>.down`, one record per endpoint),
//!   by a failed connection or scrape: the cluster has no health checks, so picks skip them;
//! - vLLM's load per endpoint (`llmgw.picker.<backend>.load`), scraped from its `/metrics` by the
//!   root context's tick (least-kv-cache).
//!
//! Only configured endpoints are ever chosen; the client's own destination header is removed by
//! the exchange before anything else.

use crate::host::Host;

/// The request header Envoy's override-host policy reads: `ip:port` hosts, comma-separated.
pub const DESTINATION_HEADER: &str = "x-llmgw-destination";
/// Most hosts in [`DESTINATION_HEADER`]: the pick and the endpoints to retry on.
pub const MAX_DESTINATIONS: usize = 4;
/// Gauge of in-flight requests per endpoint, mirroring the shared counters (admin `/stats`).
pub const IN_FLIGHT_GAUGE: &str = "llmgw.picker_in_flight";
/// CAS attempts per shared value; past them the update is skipped (see the callers).
const CAS_ATTEMPTS: usize = 8;
/// Prompt blocks hashed per request: the prefix table describes at most this much of a prompt.
pub const MAX_BLOCKS: usize = 256;
/// The top-level request members whose raw JSON text is the prompt, in the order they are hashed.
const PROMPT_MEMBERS: &[&str] = &["system", "instructions", "messages", "prompt", "input"];
/// EWMA weight of a new latency sample, in 1/8ths.
const EWMA_NEW_EIGHTHS: u64 = 2;
/// How long an endpoint whose connection (or scrape) failed is skipped.
pub const DOWN_COOLDOWN_MS: u64 = 10_000;
/// Scraped load older than this many scrape intervals is stale (least-kv-cache falls back).
const FRESH_INTERVALS: u64 = 3;
/// Most bytes of a `/metrics` answer read (vLLM's is tens of KB).
pub const MAX_METRICS_BYTES: usize = 1 << 20;
/// The path vLLM serves its Prometheus metrics on.
pub const METRICS_PATH: &str = "/metrics";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Random,
    LeastRequest,
    /// The endpoint holding the longest prefix of the prompt, unless it is busier than the least
    /// loaded by more than `imbalance_threshold` requests; else least-request.
    PrefixCache,
    /// The lowest time-to-first-token EWMA weighted by the requests in flight; unmeasured first.
    LeastLatency,
    /// The lowest scraped KV-cache usage (whole percents), ties by waiting + running + in flight;
    /// least-request while any endpoint's load is stale or missing.
    LeastKvCache,
    /// Prefill/decode disaggregation (`pd.rs`): the least loaded prefill endpoint computes the
    /// prompt, then the least loaded decode endpoint (`endpoints`) answers.
    Pd,
}

impl Algorithm {
    pub const NAMES: &'static str = "random, least-request, prefix-cache, least-latency, least-kv-cache, pd";

    /// Names as AIBrix's `ROUTING_ALGORITHM` spells them too.
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "random" => Some(Algorithm::Random),
            "least-request" => Some(Algorithm::LeastRequest),
            "prefix-cache" | "prefix-cache-aware" => Some(Algorithm::PrefixCache),
            "least-latency" => Some(Algorithm::LeastLatency),
            "least-kv-cache" | "least-gpu-cache" => Some(Algorithm::LeastKvCache),
            "pd" => Some(Algorithm::Pd),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picker {
    pub algorithm: Algorithm,
    /// `host:port` of each endpoint, as the override-host policy takes it (`pd`: the decoders).
    pub endpoints: Vec<String>,
    /// `pd` only: the prefill endpoints.
    pub prefill: Vec<String>,
    /// Bytes of prompt per hashed block.
    pub prefix_block_size: usize,
    /// How many more in-flight requests than the least loaded endpoint a prefix hit may have.
    pub imbalance_threshold: u64,
    /// Entries of the prefix table.
    pub max_prefixes: usize,
    /// How often each endpoint's `/metrics` is scraped (least-kv-cache).
    pub metrics_scrape_interval_ms: u64,
}

/// What a decision reads: shared state, copied once per request.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub in_flight: Vec<u64>,
    /// Time-to-first-token EWMA per endpoint, in microseconds; 0: not measured yet.
    pub ttft_us: Vec<u64>,
    pub prefixes: PrefixTable,
    /// Randomness for `random` and for ties (proxy-wasm has no RNG; the clock and a counter mix).
    pub seed: u64,
    /// Fresh scraped load per endpoint (`None`: stale or never scraped).
    pub load: Vec<Option<Load>>,
    /// Endpoints marked down (a failed connection or scrape, within its cool-down).
    pub down: Vec<bool>,
}

/// An endpoint's load as vLLM reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// KV-cache usage, in millionths.
    pub kv_ppm: u32,
    /// Requests running plus waiting.
    pub queued: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub endpoint: usize,
    /// Leading prompt blocks the endpoint already served (prefix-cache).
    pub matched_blocks: usize,
}

/// The [`DESTINATION_HEADER`] value (pure): the chosen endpoint, then the others, least in flight
/// first (ties in configured order), those marked down last: where Envoy retries a refused
/// connection, in order (listed, a down endpoint beats the cluster's fallback policy).
pub fn destinations(picker: &Picker, snap: &Snapshot, chosen: usize) -> String {
    let rank = |i: usize| (snap.down.get(i).copied().unwrap_or(false), snap.in_flight.get(i).copied().unwrap_or(0));
    // Selection, not a sort: a handful of endpoints, and no sort code in the module.
    let mut listed = vec![chosen];
    while listed.len() < MAX_DESTINATIONS {
        match (0..picker.endpoints.len()).filter(|i| !listed.contains(i)).min_by_key(|&i| rank(i)) {
            Some(next) => listed.push(next),
            None => break,
        }
    }
    let mut value = String::new();
    for address in listed.iter().filter_map(|&i| picker.endpoints.get(i)) {
        if !value.is_empty() {
            value.push(',');
        }
        value.push_str(address);
    }
    value
}

/// splitmix64: a good spread from a weak seed.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One of the indices with the lowest score, ties broken by `seed`.
fn lowest(scores: &[u64], seed: u64) -> usize {
    let best = scores.iter().min().copied().unwrap_or(0);
    let ties = scores.iter().filter(|&&s| s == best).count().max(1) as u64;
    let nth = (mix(seed) % ties) as usize;
    scores.iter().enumerate().filter(|(_, &s)| s == best).nth(nth).map_or(0, |(i, _)| i)
}

/// Chooses an endpoint (pure). `blocks`: the prompt's chained block hashes ([`prompt_blocks`]).
/// Endpoints marked down are passed over, unless all are (then trying one beats refusing).
pub fn decide(picker: &Picker, snap: &Snapshot, blocks: &[u64]) -> Decision {
    let count = picker.endpoints.len();
    let down = |i: usize| snap.down.get(i).copied().unwrap_or(false);
    let all_down = (0..count).all(down);
    // A skipped endpoint scores the most, so `lowest` takes it only if every endpoint is skipped.
    let score = |i: usize, s: u64| if !all_down && down(i) { u64::MAX } else { s };
    let loads: Vec<u64> = (0..count).map(|i| score(i, snap.in_flight.get(i).copied().unwrap_or(0))).collect();
    let endpoint = match picker.algorithm {
        Algorithm::Random => lowest(&(0..count).map(|i| score(i, 0)).collect::<Vec<_>>(), snap.seed),
        Algorithm::LeastRequest | Algorithm::Pd => lowest(&loads, snap.seed),
        Algorithm::LeastLatency => {
            // Unmeasured endpoints score 0 (tried first); measured: EWMA × (1 + in flight).
            let scores: Vec<u64> = loads
                .iter()
                .enumerate()
                .map(|(i, load)| {
                    score(i, snap.ttft_us.get(i).copied().unwrap_or(0).saturating_mul(load.saturating_add(1)))
                })
                .collect();
            lowest(&scores, snap.seed)
        }
        Algorithm::LeastKvCache => {
            // Whole percents: finer differences are noise a second old; the queue decides them.
            // Any endpoint's load stale or missing: least-request.
            let mut scores = loads.clone();
            for (i, score) in scores.iter_mut().enumerate() {
                match (*score, snap.load.get(i).copied().flatten()) {
                    (u64::MAX, _) => {}
                    (load, Some(l)) => {
                        *score = u64::from(l.kv_ppm / 10_000) << 40 | (u64::from(l.queued) + load).min((1 << 40) - 1)
                    }
                    (_, None) => {
                        scores = loads.clone();
                        break;
                    }
                }
            }
            lowest(&scores, snap.seed)
        }
        Algorithm::PrefixCache => {
            let min_load = loads.iter().min().copied().unwrap_or(0);
            let within =
                |e: usize| loads.get(e).is_some_and(|l| *l <= min_load.saturating_add(picker.imbalance_threshold));
            match snap.prefixes.longest_match(blocks) {
                Some((endpoint, matched)) if within(endpoint) => {
                    return Decision { endpoint, matched_blocks: matched };
                }
                _ => lowest(&loads, snap.seed),
            }
        }
    };
    Decision { endpoint, matched_blocks: 0 }
}

/// A Prometheus sample value, times a million (saturating); `None` for what is not a
/// non-negative decimal number (NaN, Inf, negatives, garbage).
fn parse_micro(text: &[u8]) -> Option<u64> {
    let (mut mantissa, mut scale, mut digits, mut dot) = (0u64, 6i64, 0, false);
    let mut at = usize::from(text.first() == Some(&b'+'));
    while let Some(&b) = text.get(at) {
        match b {
            b'0'..=b'9' if mantissa < 1 << 56 => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                scale -= i64::from(dot);
            }
            b'0'..=b'9' => scale += i64::from(!dot),
            b'.' if !dot => dot = true,
            _ => break,
        }
        digits += usize::from(b != b'.');
        at += 1;
    }
    if matches!(text.get(at), Some(b'e' | b'E')) {
        let rest = text.get(at + 1..).unwrap_or_default();
        let (negative, rest) = match rest.first() {
            Some(b'-') => (true, rest.get(1..).unwrap_or_default()),
            Some(b'+') => (false, rest.get(1..).unwrap_or_default()),
            _ => (false, rest),
        };
        if rest.is_empty() || rest.len() > 4 || !rest.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let exp = rest.iter().fold(0i64, |e, d| e * 10 + i64::from(d - b'0'));
        scale += if negative { -exp } else { exp };
        at = text.len();
    }
    if digits == 0 || at != text.len() {
        return None;
    }
    Some(match u32::try_from(scale.unsigned_abs()) {
        Ok(s) if scale >= 0 => mantissa.saturating_mul(10u64.saturating_pow(s)),
        Ok(s) if s < 20 => mantissa / 10u64.pow(s),
        _ => 0,
    })
}

/// vLLM's load from its Prometheus text (`GET /metrics`): requests running and waiting (summed
/// over label sets) and the KV-cache usage (the highest; `vllm:kv_cache_usage_perc` in newer
/// vLLM). `None` when it reports no KV-cache usage. Malformed lines are skipped.
pub fn parse_vllm_metrics(text: &[u8]) -> Option<Load> {
    let (mut kv, mut queued) = (None, 0u64);
    for line in text.get(..MAX_METRICS_BYTES).unwrap_or(text).split(|&b| b == b'\n') {
        let name_end = line.iter().position(|&b| b == b'{' || b == b' ').unwrap_or(line.len());
        let (name, mut rest) = line.split_at(name_end);
        let kind = match name {
            b"vllm:num_requests_running" | b"vllm:num_requests_waiting" => 0,
            b"vllm:gpu_cache_usage_perc" | b"vllm:kv_cache_usage_perc" => 1,
            _ => continue,
        };
        if rest.first() == Some(&b'{') {
            // Skip the labels; a `}` inside a quoted label value does not end them.
            let (mut quoted, mut escaped) = (false, false);
            let end = rest.iter().position(|&b| {
                let closes = b == b'}' && !quoted;
                (quoted, escaped) = match b {
                    _ if escaped => (quoted, false),
                    b'\\' => (quoted, true),
                    b'"' => (!quoted, false),
                    _ => (quoted, false),
                };
                closes
            });
            let Some(end) = end else { continue };
            rest = rest.get(end + 1..).unwrap_or_default();
        }
        let Some(value) = rest.split(|b| b.is_ascii_whitespace()).find(|t| !t.is_empty()).and_then(parse_micro) else {
            continue;
        };
        if kind == 0 {
            queued = queued.saturating_add(value / 1_000_000);
        } else {
            kv = kv.max(Some(value.min(1_000_000)));
        }
    }
    Some(Load { kv_ppm: kv? as u32, queued: u32::try_from(queued).unwrap_or(u32::MAX) })
}

/// FNV-1a over `bytes`, continuing from `hash`.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Chained hashes of the prompt's whole blocks: block `i`'s hash covers blocks `0..=i`, so equal
/// hashes mean equal prefixes. The prompt is the raw JSON text of [`PROMPT_MEMBERS`] (two requests
/// of one conversation share their leading bytes); nothing is parsed beyond locating them.
pub fn prompt_blocks(body: &[u8], block_size: usize) -> Vec<u64> {
    let block_size = block_size.max(1);
    // Indexed by the member's place in PROMPT_MEMBERS (no sort: its code would cost the module).
    let mut ranges: [Option<std::ops::Range<usize>>; 5] = Default::default();
    crate::json::for_each_member(body, |_, m| {
        if let Some(slot) = PROMPT_MEMBERS.iter().position(|k| *k == m.key).and_then(|i| ranges.get_mut(i)) {
            *slot = Some(m.value);
        }
    });
    let mut blocks = Vec::new();
    let mut hash = 0xcbf2_9ce4_8422_2325;
    let mut pending: Vec<u8> = Vec::with_capacity(block_size);
    for range in ranges.into_iter().flatten() {
        for chunk in body.get(range).unwrap_or_default().chunks(block_size) {
            let room = block_size - pending.len();
            let (now, rest) = chunk.split_at(room.min(chunk.len()));
            pending.extend_from_slice(now);
            if pending.len() == block_size {
                if blocks.len() == MAX_BLOCKS {
                    return blocks;
                }
                hash = fnv(hash, &pending);
                blocks.push(hash);
                pending.clear();
                pending.extend_from_slice(rest);
            }
        }
    }
    blocks
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    hash: u64,
    stamp: u32,
    endpoint: u32,
}

const ENTRY_BYTES: usize = 16;

/// Block hash → endpoint, sorted by hash; `stamp` orders use for LRU eviction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrefixTable {
    clock: u32,
    entries: Vec<Entry>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl PrefixTable {
    /// Reads the shared form: clock, then entries of hash, stamp, endpoint (little-endian). What is
    /// not a well-formed, sorted entry ends the table.
    pub fn decode(bytes: &[u8], max: usize) -> PrefixTable {
        let clock = u32_at(bytes, 0).unwrap_or(0);
        let mut entries: Vec<Entry> = Vec::new();
        for raw in bytes.get(4..).unwrap_or_default().chunks_exact(ENTRY_BYTES).take(max) {
            let hash = raw.get(..8).and_then(|h| h.try_into().ok()).map_or(0, u64::from_le_bytes);
            let (Some(stamp), Some(endpoint)) = (u32_at(raw, 8), u32_at(raw, 12)) else { break };
            if entries.last().is_some_and(|last| last.hash >= hash) {
                break;
            }
            entries.push(Entry { hash, stamp, endpoint });
        }
        PrefixTable { clock, entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.entries.len() * ENTRY_BYTES);
        out.extend_from_slice(&self.clock.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.hash.to_le_bytes());
            out.extend_from_slice(&e.stamp.to_le_bytes());
            out.extend_from_slice(&e.endpoint.to_le_bytes());
        }
        out
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, hash: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&hash, |e| e.hash)
    }

    /// The endpoint that served the deepest block of the prompt's leading run of known blocks,
    /// and how many blocks that run holds.
    pub fn longest_match(&self, blocks: &[u64]) -> Option<(usize, usize)> {
        let mut found = None;
        for (i, hash) in blocks.iter().enumerate() {
            let Some(entry) = self.find(*hash).ok().and_then(|at| self.entries.get(at)) else { break };
            found = Some((entry.endpoint as usize, i + 1));
        }
        found
    }

    /// Records that `endpoint` now holds every block, evicting the least recently used entries
    /// past `max`.
    pub fn record(&mut self, blocks: &[u64], endpoint: usize, max: usize) {
        self.clock = self.clock.wrapping_add(1);
        let entry = |hash| Entry { hash, stamp: self.clock, endpoint: endpoint as u32 };
        for hash in blocks {
            match self.find(*hash) {
                Ok(at) => {
                    if let Some(e) = self.entries.get_mut(at) {
                        *e = entry(*hash);
                    }
                }
                Err(at) => self.entries.insert(at, entry(*hash)),
            }
        }
        // Evict whole requests, least recently used first (a linear scan each: no sort code in the
        // module). Stamps wrap after 4 billion requests: age is measured back from the clock.
        let clock = self.clock;
        while self.entries.len() > max {
            let Some(oldest) = self.entries.iter().map(|e| clock.wrapping_sub(e.stamp)).max() else { break };
            self.entries.retain(|e| clock.wrapping_sub(e.stamp) != oldest);
        }
    }
}

/// A pick to undo when the stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    /// Shared-data key prefix of the backend (`llmgw.picker.<backend>`).
    base: String,
    pub address: String,
    /// The [`DESTINATION_HEADER`] value: `address`, then the endpoints to retry on.
    pub destinations: String,
    /// The endpoint's place in the picker's list (its record in `<base>.down`).
    index: usize,
    /// The in-flight counter was incremented (so it is decremented once).
    counted: bool,
    gauge: String,
}

fn base_key(backend: &str) -> String {
    format!("llmgw.picker.{backend}")
}

fn in_flight_key(base: &str, address: &str) -> String {
    format!("{base}.inflight.{address}")
}

fn ttft_key(base: &str, address: &str) -> String {
    format!("{base}.ttft.{address}")
}

fn gauge_name(backend: &str, address: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c == ';' || c == '=' || c.is_control() { '_' } else { c }).collect()
    };
    format!("{IN_FLIGHT_GAUGE}.llmgw_backend=.={};.;llmgw_endpoint=.={};.;", clean(backend), clean(address))
}

fn read_u64(host: &dyn Host, key: &str) -> (u64, u32) {
    match host.shared_data(key) {
        Some((bytes, cas)) => (bytes.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes), cas),
        None => (0, 0),
    }
}

/// Applies `change` to a shared number by compare-and-swap; `false` if it never stuck.
fn update_u64(host: &mut dyn Host, key: &str, change: &dyn Fn(u64) -> u64) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = read_u64(host, key);
        if host.set_shared_data(key, &change(value).to_le_bytes(), cas) {
            return true;
        }
    }
    false
}

/// Width of an endpoint's record in `<base>.load`: scraped at (ms), KV usage (ppm), queued.
const LOAD_BYTES: usize = 16;

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// Writes endpoint `index`'s fixed-width record into a shared value holding one per endpoint (one
/// read per request instead of one per endpoint). A record lost to a race is a stale hint.
fn write_record(host: &mut dyn Host, key: &str, index: usize, record: &[u8]) {
    for _ in 0..CAS_ATTEMPTS {
        let (mut bytes, cas) = host.shared_data(key).unwrap_or_default();
        let at = index * record.len();
        if bytes.len() < at + record.len() {
            bytes.resize(at + record.len(), 0);
        }
        if let Some(slot) = bytes.get_mut(at..at + record.len()) {
            slot.copy_from_slice(record);
        }
        if host.set_shared_data(key, &bytes, cas) {
            return;
        }
    }
}

/// Skips `address` for [`DOWN_COOLDOWN_MS`] (a failed connection or scrape), or clears that.
fn mark_down(host: &mut dyn Host, base: &str, index: usize, down: bool, now_ms: u64) {
    if down {
        log::info!("llmgw: {base}: endpoint {index} failed; skipped for {DOWN_COOLDOWN_MS} ms");
    }
    let until = if down { now_ms + DOWN_COOLDOWN_MS } else { 0 };
    write_record(host, &format!("{base}.down"), index, &until.to_le_bytes());
}

/// Creates the backend's counters before any request, so every later write is a real CAS (two
/// workers creating a key at once could otherwise lose an increment).
pub fn prepare(host: &mut dyn Host, backend: &str, picker: &Picker) {
    let base = base_key(backend);
    for address in picker.endpoints.iter().chain(&picker.prefill) {
        for key in [in_flight_key(&base, address), ttft_key(&base, address)] {
            if host.shared_data(&key).is_none() {
                host.set_shared_data(&key, &0u64.to_le_bytes(), 0);
            }
        }
    }
}

/// [`prepare`] for every backend with a picker.
pub fn prepare_all(host: &mut dyn Host, backends: &[crate::config::Backend]) {
    for backend in backends {
        if let Some(picker) = &backend.picker {
            prepare(host, &backend.name, picker);
        }
    }
}

/// Reads the shared state, decides, then counts the request in flight and records its prefix.
pub fn pick(host: &mut dyn Host, backend: &str, picker: &Picker, body: &[u8], seed: u64) -> Option<Picked> {
    let base = base_key(backend);
    let now_ms = host.now_nanos() / 1_000_000;
    let blocks = if picker.algorithm == Algorithm::PrefixCache {
        prompt_blocks(body, picker.prefix_block_size)
    } else {
        Vec::new()
    };
    let table_key = format!("{base}.prefixes");
    let (table_bytes, table_cas) = match blocks.is_empty() {
        true => (Vec::new(), 0),
        false => host.shared_data(&table_key).unwrap_or_default(),
    };
    let snapshot = Snapshot {
        in_flight: picker.endpoints.iter().map(|a| read_u64(host, &in_flight_key(&base, a)).0).collect(),
        ttft_us: match picker.algorithm {
            Algorithm::LeastLatency => picker.endpoints.iter().map(|a| read_u64(host, &ttft_key(&base, a)).0).collect(),
            _ => Vec::new(),
        },
        prefixes: PrefixTable::decode(&table_bytes, picker.max_prefixes),
        seed,
        load: match picker.algorithm {
            Algorithm::LeastKvCache => {
                let bytes = host.shared_data(&format!("{base}.load")).unwrap_or_default().0;
                let fresh_ms = picker.metrics_scrape_interval_ms * FRESH_INTERVALS;
                let mut load = Vec::new();
                for i in 0..picker.endpoints.len() {
                    let (at, record) = (u64_at(&bytes, i * LOAD_BYTES), u64_at(&bytes, i * LOAD_BYTES + 8));
                    let fresh = at > 0 && now_ms.saturating_sub(at) <= fresh_ms;
                    load.push(fresh.then_some(Load { kv_ppm: record as u32, queued: (record >> 32) as u32 }));
                }
                load
            }
            _ => Vec::new(),
        },
        down: {
            let bytes = host.shared_data(&format!("{base}.down")).unwrap_or_default().0;
            (0..picker.endpoints.len()).map(|i| u64_at(&bytes, i * 8) > now_ms).collect()
        },
    };
    let decision = decide(picker, &snapshot, &blocks);
    let address = picker.endpoints.get(decision.endpoint)?.clone();
    let destinations = destinations(picker, &snapshot, decision.endpoint);
    if !blocks.is_empty() {
        // A lost race leaves the table one request behind: it is a hint, not a count.
        let mut table = snapshot.prefixes;
        let mut cas = table_cas;
        for _ in 0..CAS_ATTEMPTS {
            table.record(&blocks, decision.endpoint, picker.max_prefixes);
            if host.set_shared_data(&table_key, &table.encode(), cas) {
                break;
            }
            let (bytes, fresh) = host.shared_data(&table_key).unwrap_or_default();
            table = PrefixTable::decode(&bytes, picker.max_prefixes);
            cas = fresh;
        }
    }
    let counted = update_u64(host, &in_flight_key(&base, &address), &|n| n.saturating_add(1));
    let gauge = gauge_name(backend, &address);
    if counted {
        host.add_to_gauge(&gauge, 1);
    }
    log::debug!(
        "llmgw: picker {backend}: {address} ({:?}, {} prefix blocks matched)",
        picker.algorithm,
        decision.matched_blocks
    );
    Some(Picked { base, address, destinations, index: decision.endpoint, counted, gauge })
}

/// Envoy could not reach the picked endpoint (its connection failed or was reset before any
/// answer, or the answer came from an endpoint retried on): picks skip it for a while.
pub fn unreachable(host: &mut dyn Host, picked: &Picked) {
    let now_ms = host.now_nanos() / 1_000_000;
    mark_down(host, &picked.base, picked.index, true, now_ms);
}

/// `pd`: the prefill endpoint, least loaded (counted in flight like any pick, until its answer).
pub fn pick_prefill(host: &mut dyn Host, backend: &str, picker: &Picker, seed: u64) -> Option<Picked> {
    let prefill = Picker {
        algorithm: Algorithm::LeastRequest,
        endpoints: picker.prefill.clone(),
        prefill: Vec::new(),
        ..*picker
    };
    pick(host, backend, &prefill, &[], seed)
}

/// The stream ended (completed, failed, reset or aborted): the request leaves the in-flight count;
/// a measured time to first token joins the endpoint's EWMA.
pub fn release(host: &mut dyn Host, picked: Picked, ttft_nanos: Option<u64>) {
    if picked.counted {
        update_u64(host, &in_flight_key(&picked.base, &picked.address), &|n| n.saturating_sub(1));
        host.add_to_gauge(&picked.gauge, -1);
    }
    if let Some(nanos) = ttft_nanos {
        let sample = (nanos / 1000).max(1);
        update_u64(host, &ttft_key(&picked.base, &picked.address), &|old| match old {
            0 => sample,
            old => (old.saturating_mul(8 - EWMA_NEW_EIGHTHS) + sample.saturating_mul(EWMA_NEW_EIGHTHS)) / 8,
        });
    }
}

/// The tick period the pickers need (the shortest scrape interval of a least-kv-cache picker).
pub fn tick_ms(backends: &[crate::config::Backend]) -> Option<u64> {
    let scraped = backends.iter().filter_map(|b| b.picker.as_ref()).filter(|p| p.algorithm == Algorithm::LeastKvCache);
    scraped.map(|p| p.metrics_scrape_interval_ms).min()
}

/// The `/metrics` scrapes this worker makes now, as (backend, endpoint) indexes: for each
/// least-kv-cache backend whose last round is an interval old, the first worker to claim the
/// round (CAS on `<base>.scraped`) scrapes every endpoint; the others skip it.
pub fn scrapes_due(host: &mut dyn Host, backends: &[crate::config::Backend]) -> Vec<(usize, usize)> {
    let now_ms = host.now_nanos() / 1_000_000;
    let mut due = Vec::new();
    for (b, backend) in backends.iter().enumerate() {
        let Some(picker) = backend.picker.as_ref().filter(|p| p.algorithm == Algorithm::LeastKvCache) else { continue };
        let key = format!("{}.scraped", base_key(&backend.name));
        let (last, cas) = read_u64(host, &key);
        // Ticks jitter: a round a tenth early is on time.
        if now_ms.saturating_sub(last) >= picker.metrics_scrape_interval_ms * 9 / 10
            && host.set_shared_data(&key, &now_ms.to_le_bytes(), cas)
        {
            due.extend((0..picker.endpoints.len()).map(|e| (b, e)));
        }
    }
    due
}

/// A scrape's answer (`status` 0 and no body: no answer): the load is recorded; an endpoint that
/// did not answer, or answered 5xx, is marked down, and one that answered is up again.
pub fn scraped(host: &mut dyn Host, backend: &str, endpoint: usize, status: u16, body: &[u8]) {
    let base = base_key(backend);
    let now_ms = host.now_nanos() / 1_000_000;
    let load = (200..300).contains(&status).then(|| parse_vllm_metrics(body)).flatten();
    if let Some(load) = load {
        let mut record = now_ms.to_le_bytes().to_vec();
        record.extend_from_slice(&(u64::from(load.kv_ppm) | u64::from(load.queued) << 32).to_le_bytes());
        write_record(host, &format!("{base}.load"), endpoint, &record);
    }
    let down = status == 0 || status >= 500;
    mark_down(host, &base, endpoint, down, now_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    fn picker(algorithm: Algorithm, n: usize) -> Picker {
        Picker {
            algorithm,
            endpoints: (0..n).map(|i| format!("10.0.0.{i}:8000")).collect(),
            prefill: Vec::new(),
            prefix_block_size: 16,
            imbalance_threshold: 2,
            max_prefixes: 64,
            metrics_scrape_interval_ms: 1000,
        }
    }

    fn snap(in_flight: &[u64]) -> Snapshot {
        Snapshot { in_flight: in_flight.to_vec(), ..Snapshot::default() }
    }

    #[test]
    fn least_request_takes_the_least_loaded_and_spreads_ties() {
        let p = picker(Algorithm::LeastRequest, 3);
        assert_eq!(decide(&p, &snap(&[4, 1, 3]), &[]).endpoint, 1);
        let chosen: std::collections::BTreeSet<usize> =
            (0..64).map(|seed| decide(&p, &Snapshot { seed, ..snap(&[0, 5, 0]) }, &[]).endpoint).collect();
        assert_eq!(chosen, [0, 2].into_iter().collect());
    }

    #[test]
    fn random_covers_every_endpoint_and_only_those() {
        let p = picker(Algorithm::Random, 4);
        let mut seen = [0usize; 4];
        for seed in 0..400 {
            let e = decide(&p, &Snapshot { seed, ..Snapshot::default() }, &[]).endpoint;
            seen[e] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn least_latency_tries_unmeasured_then_the_fastest_weighted_by_load() {
        let p = picker(Algorithm::LeastLatency, 3);
        let s = Snapshot { in_flight: vec![0, 0, 0], ttft_us: vec![100, 0, 50], ..Snapshot::default() };
        assert_eq!(decide(&p, &s, &[]).endpoint, 1);
        let s = Snapshot { in_flight: vec![0, 0, 3], ttft_us: vec![100, 300, 50], ..Snapshot::default() };
        assert_eq!(decide(&p, &s, &[]).endpoint, 0, "50us x 4 in flight loses to 100us idle");
    }

    #[test]
    fn prompt_blocks_chain_so_a_shared_prefix_shares_hashes() {
        let a = br#"{"model":"m","messages":[{"role":"user","content":"the same long question, asked twice"}],"stream":true}"#;
        let b = br#"{"stream":false,"messages":[{"role":"user","content":"the same long question, asked twice"},{"role":"assistant","content":"x"}],"model":"m"}"#;
        let (ha, hb) = (prompt_blocks(a, 16), prompt_blocks(b, 16));
        assert_eq!(ha.len(), 4, "only whole blocks: 65 bytes of messages");
        assert_eq!(ha, hb[..4], "the model, the stream flag and member order do not matter");
        let c = br#"{"messages":[{"role":"user","content":"THE same long question, asked twice"}]}"#;
        let hc = prompt_blocks(c, 16);
        assert_eq!(hc[0], ha[0]);
        assert!(hc[1..].iter().zip(&ha[1..]).all(|(x, y)| x != y), "a change changes its block and every later one");
        assert!(prompt_blocks(b"not json", 16).is_empty());
        let huge = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(16 * (MAX_BLOCKS + 10)));
        assert_eq!(prompt_blocks(huge.as_bytes(), 16).len(), MAX_BLOCKS);
    }

    #[test]
    fn prefix_cache_follows_the_longest_prefix_within_the_imbalance_threshold() {
        let p = picker(Algorithm::PrefixCache, 3);
        let mut table = PrefixTable::default();
        table.record(&[1, 2, 3], 2, 64);
        table.record(&[1, 2], 0, 64);
        let s = Snapshot { prefixes: table.clone(), ..snap(&[0, 0, 0]) };
        assert_eq!(decide(&p, &s, &[1, 2, 3, 4]), Decision { endpoint: 2, matched_blocks: 3 });
        assert_eq!(decide(&p, &s, &[1, 2, 9]), Decision { endpoint: 0, matched_blocks: 2 });
        // Endpoint 2 is 3 requests busier than the least loaded, past the threshold of 2.
        let busy = Snapshot { prefixes: table.clone(), ..snap(&[1, 0, 3]) };
        assert_eq!(decide(&p, &busy, &[1, 2, 3]), Decision { endpoint: 1, matched_blocks: 0 });
        let ok = Snapshot { prefixes: table, ..snap(&[1, 0, 2]) };
        assert_eq!(decide(&p, &ok, &[1, 2, 3]).endpoint, 2);
        // A table naming an endpoint that is no longer configured is ignored.
        let mut stale = PrefixTable::default();
        stale.record(&[1], 7, 64);
        let s = Snapshot { prefixes: stale, ..snap(&[0, 1, 1]) };
        assert_eq!(decide(&p, &s, &[1]).endpoint, 0);
    }

    #[test]
    fn the_prefix_table_is_bounded_lru_and_survives_its_encoding() {
        let mut t = PrefixTable::default();
        t.record(&[10, 11], 0, 4);
        t.record(&[20, 21], 1, 4);
        t.record(&[10], 0, 4); // 10 used again: 11 is now the oldest
        t.record(&[30], 2, 4);
        assert_eq!(t.len(), 4);
        assert_eq!(t.longest_match(&[11]), None, "least recently used, evicted");
        assert_eq!(t.longest_match(&[10]), Some((0, 1)));
        assert_eq!(t.longest_match(&[30]), Some((2, 1)));
        let bytes = t.encode();
        assert_eq!(PrefixTable::decode(&bytes, 4), t);
        assert_eq!(PrefixTable::decode(&bytes, 2).len(), 2, "a smaller configured size reads less");
        // Garbage (hostile or from another version) yields a smaller table, never a panic.
        assert!(PrefixTable::decode(&[1, 2, 3], 4).is_empty());
        let mut unsorted = bytes.clone();
        unsorted.extend_from_slice(&[0u8; 16]);
        assert_eq!(PrefixTable::decode(&unsorted, 8).len(), 4);
    }

    #[test]
    fn counters_go_up_on_pick_and_down_once_on_release() {
        let p = picker(Algorithm::LeastRequest, 2);
        let mut host = FakeHost::default();
        prepare(&mut host, "vllm", &p);
        let a = pick(&mut host, "vllm", &p, b"{}", 1).unwrap();
        let b = pick(&mut host, "vllm", &p, b"{}", 1).unwrap();
        assert_ne!(a.address, b.address, "the second goes to the idle endpoint");
        let count = |host: &FakeHost, addr: &str| read_u64(host, &in_flight_key("llmgw.picker.vllm", addr)).0;
        assert_eq!((count(&host, &a.address), count(&host, &b.address)), (1, 1));
        release(&mut host, a.clone(), Some(5_000_000));
        release(&mut host, b.clone(), None);
        assert_eq!((count(&host, &a.address), count(&host, &b.address)), (0, 0));
        assert_eq!(read_u64(&host, &ttft_key("llmgw.picker.vllm", &a.address)).0, 5000);
        let gauge: i64 = host.gauges.iter().filter(|(n, _)| n.contains(&a.address)).map(|(_, d)| d).sum();
        assert_eq!(gauge, 0);
        // A counter that never stuck (CAS kept failing) is not decremented.
        host.cas_conflicts = CAS_ATTEMPTS * 3;
        let lost = pick(&mut host, "vllm", &p, b"{}", 1).unwrap();
        assert!(!lost.counted);
        release(&mut host, lost, None);
        assert_eq!((count(&host, &a.address), count(&host, &b.address)), (0, 0));
    }

    #[test]
    fn prefix_cache_pins_a_conversation_to_one_endpoint() {
        let p = picker(Algorithm::PrefixCache, 4);
        let mut host = FakeHost::default();
        prepare(&mut host, "vllm", &p);
        let body = br#"{"messages":[{"role":"system","content":"You are a careful assistant. Answer briefly."}]}"#;
        let first = pick(&mut host, "vllm", &p, body, 3).unwrap();
        release(&mut host, first.clone(), None);
        for seed in 0..20 {
            let again = pick(&mut host, "vllm", &p, body, seed).unwrap();
            assert_eq!(again.address, first.address);
            release(&mut host, again, None);
        }
    }

    #[test]
    fn prometheus_values_parse_to_millionths_and_garbage_does_not() {
        for (text, want) in [
            ("0", Some(0)),
            ("1", Some(1_000_000)),
            ("0.25", Some(250_000)),
            ("+3.0", Some(3_000_000)),
            ("1.5e-05", Some(15)),
            ("2E2", Some(200_000_000)),
            ("0.1234567", Some(123_456)),
            ("1e400", Some(u64::MAX)),
            ("1e-400", Some(0)),
            ("99999999999999999999999999", Some(u64::MAX)),
        ] {
            assert_eq!(parse_micro(text.as_bytes()), want, "{text}");
        }
        for bad in ["", "-1", "NaN", "+Inf", ".", "1.2.3", "1e", "1e-", "3x", "1e99999"] {
            assert_eq!(parse_micro(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn vllm_metrics_yield_kv_usage_and_queue() {
        let text = br#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-1.5B-Instruct"} 3.0
vllm:num_requests_waiting{engine="0",model_name="a } b \" {"} 2.0 1700000000000
vllm:num_requests_waiting_by_reason{reason="capacity"} 50.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.4273
vllm:gpu_cache_usage_perc{model_name="n"} 1.5e-01
vllm:num_requests_running 1
"#;
        assert_eq!(parse_vllm_metrics(text), Some(Load { kv_ppm: 427_300, queued: 6 }));
        // Newer vLLM's name; usage past 100% is clamped.
        assert_eq!(
            parse_vllm_metrics(b"vllm:kv_cache_usage_perc{a=\"b\"} 7\n"),
            Some(Load { kv_ppm: 1_000_000, queued: 0 })
        );
        // No KV-cache usage (not vLLM, or an error page): no load.
        assert_eq!(parse_vllm_metrics(b"vllm:num_requests_running 4\n"), None);
        assert_eq!(parse_vllm_metrics(b"<html>502</html>"), None);
        // Hostile lines are skipped, never a panic: unclosed labels, no value, NaN, huge counts.
        let hostile = b"vllm:gpu_cache_usage_perc{a=\"}\nvllm:gpu_cache_usage_perc\nvllm:gpu_cache_usage_perc NaN\n\
            vllm:num_requests_running 1e30\nvllm:num_requests_waiting 1e30\nvllm:gpu_cache_usage_perc 0.5\n";
        assert_eq!(parse_vllm_metrics(hostile), Some(Load { kv_ppm: 500_000, queued: u32::MAX }));
    }

    fn kv(kv_ppm: u32, queued: u32) -> Option<Load> {
        Some(Load { kv_ppm, queued })
    }

    #[test]
    fn least_kv_cache_takes_the_emptiest_cache_then_the_shortest_queue() {
        let p = picker(Algorithm::LeastKvCache, 3);
        let s = Snapshot { load: vec![kv(500_000, 0), kv(100_000, 9), kv(300_000, 0)], ..snap(&[0, 0, 0]) };
        assert_eq!(decide(&p, &s, &[]).endpoint, 1);
        // Within one percent the queue decides: scraped waiting + running, plus our in-flight.
        let s = Snapshot { load: vec![kv(101_000, 1), kv(105_000, 0), kv(900_000, 0)], ..snap(&[0, 3, 0]) };
        assert_eq!(decide(&p, &s, &[]).endpoint, 0);
        // One endpoint's load stale or missing: least-request over all of them.
        let s = Snapshot { load: vec![kv(0, 0), None, kv(0, 0)], ..snap(&[2, 1, 3]) };
        assert_eq!(decide(&p, &s, &[]).endpoint, 1);
        assert_eq!(decide(&p, &snap(&[2, 1, 3]), &[]).endpoint, 1);
    }

    #[test]
    fn every_algorithm_skips_endpoints_marked_down_unless_all_are() {
        let mut table = PrefixTable::default();
        table.record(&[1, 2], 0, 64);
        for algorithm in [
            Algorithm::Random,
            Algorithm::LeastRequest,
            Algorithm::LeastLatency,
            Algorithm::PrefixCache,
            Algorithm::LeastKvCache,
        ] {
            let p = picker(algorithm, 3);
            for seed in 0..32 {
                // Endpoint 0 is idle, measured fastest, holds the prefix and the emptiest cache.
                let s = Snapshot {
                    in_flight: vec![0, 5, 6],
                    ttft_us: vec![1, 50, 60],
                    prefixes: table.clone(),
                    seed,
                    load: vec![kv(0, 0), kv(500_000, 0), kv(600_000, 0)],
                    down: vec![true, false, false],
                };
                assert_ne!(decide(&p, &s, &[1, 2]).endpoint, 0, "{algorithm:?}");
                let all = Snapshot { down: vec![true; 3], ..s };
                assert!(decide(&p, &all, &[1, 2]).endpoint < 3, "{algorithm:?}");
            }
        }
        let p = picker(Algorithm::LeastRequest, 2);
        let s = Snapshot { down: vec![true, true], ..snap(&[3, 1]) };
        assert_eq!(decide(&p, &s, &[]).endpoint, 1, "all down: the usual choice");
    }

    #[test]
    fn one_worker_scrapes_each_round_and_the_answers_steer_picks() {
        let config = br#"{"backends":[{"name":"v","schema":"OpenAI","picker":{"algorithm":"least-kv-cache",
            "endpoints":["10.0.0.1:8000","10.0.0.2:8000"],"metrics_scrape_interval_ms":500}},
            {"name":"w","schema":"OpenAI","picker":{"algorithm":"random","endpoints":["10.0.0.3:1"]}}],
            "rules":[{"backends":[{"name":"v"}]}]}"#;
        let backends = crate::config::parse(config, &crate::testing::NoEnv, 0).unwrap().backends;
        let p = backends[0].picker.as_ref().unwrap();
        assert_eq!(tick_ms(&backends), Some(500));
        let mut host = FakeHost { now: 10_000_000_000, ..FakeHost::default() };
        prepare_all(&mut host, &backends);
        assert_eq!(scrapes_due(&mut host, &backends), vec![(0, 0), (0, 1)]);
        assert_eq!(scrapes_due(&mut host, &backends), vec![], "another worker's tick: already claimed");
        host.now += 460_000_000;
        assert_eq!(scrapes_due(&mut host, &backends).len(), 2, "a tick a little early is on time");
        let pick_one = |host: &mut FakeHost| {
            let picked = pick(host, "v", p, b"{}", 7).unwrap();
            release(host, picked.clone(), None);
            picked.address
        };
        scraped(&mut host, "v", 0, 200, b"vllm:gpu_cache_usage_perc 0.9\nvllm:num_requests_running 0\n");
        scraped(&mut host, "v", 1, 200, b"vllm:gpu_cache_usage_perc 0.2\nvllm:num_requests_running 4\n");
        assert_eq!(pick_one(&mut host), "10.0.0.2:8000");
        // The second endpoint stops answering: skipped until its cool-down ends or it answers.
        scraped(&mut host, "v", 1, 0, b"");
        assert_eq!(pick_one(&mut host), "10.0.0.1:8000");
        host.now += DOWN_COOLDOWN_MS * 1_000_000 + 1;
        // Its load is stale by now too: least-request, either endpoint.
        scraped(&mut host, "v", 0, 503, b"");
        assert_eq!(pick_one(&mut host), "10.0.0.2:8000");
        scraped(&mut host, "v", 0, 200, b"vllm:gpu_cache_usage_perc 0.1\n");
        scraped(&mut host, "v", 1, 200, b"vllm:gpu_cache_usage_perc 0.3\n");
        assert_eq!(pick_one(&mut host), "10.0.0.1:8000", "back up: answered");
    }

    #[test]
    fn the_destination_lists_the_pick_then_the_live_endpoints_least_loaded_first_at_most_four() {
        let p = picker(Algorithm::LeastRequest, 6);
        let order = |s: &Snapshot, chosen: usize| -> Vec<Option<usize>> {
            let listed = destinations(&p, s, chosen);
            listed.split(',').map(|h| p.endpoints.iter().position(|e| e == h)).collect()
        };
        let s = Snapshot { down: vec![false, false, true, false, false, false], ..snap(&[5, 3, 0, 1, 1, 9]) };
        assert_eq!(order(&s, 1), [Some(1), Some(3), Some(4), Some(0)]);
        let s = Snapshot { down: vec![false, false, true, true, true, false], ..snap(&[5, 3, 0, 1, 1, 9]) };
        assert_eq!(order(&s, 1), [Some(1), Some(0), Some(5), Some(2)], "the down ones last");
        assert_eq!(destinations(&picker(Algorithm::Random, 1), &snap(&[0]), 0), "10.0.0.0:8000");
    }

    #[test]
    fn an_unreachable_endpoint_is_skipped_after_its_failed_request() {
        let p = picker(Algorithm::LeastRequest, 2);
        let mut host = FakeHost { now: 1_000_000_000, ..FakeHost::default() };
        prepare(&mut host, "vllm", &p);
        let first = pick(&mut host, "vllm", &p, b"{}", 0).unwrap();
        let dead = first.address.clone();
        unreachable(&mut host, &first);
        release(&mut host, first, None);
        for seed in 0..16 {
            let next = pick(&mut host, "vllm", &p, b"{}", seed).unwrap();
            assert_ne!(next.address, dead);
            release(&mut host, next, None);
        }
        host.now += DOWN_COOLDOWN_MS * 1_000_000 + 1;
        let seen: std::collections::BTreeSet<String> = (0..16)
            .map(|seed| {
                let next = pick(&mut host, "vllm", &p, b"{}", seed).unwrap();
                release(&mut host, next.clone(), None);
                next.address
            })
            .collect();
        assert!(seen.contains(&dead), "tried again after the cool-down");
    }
}
