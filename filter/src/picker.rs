//! Endpoint picking for self-hosted model fleets (vLLM and the like): the filter chooses which of a
//! backend's endpoints serves a request, and Envoy's ORIGINAL_DST cluster connects to the address
//! the filter writes in [`DESTINATION_HEADER`].
//!
//! Decisions are pure functions of a [`Snapshot`] of the state every worker shares (proxy-wasm
//! shared data, one store per Envoy process):
//! - in-flight requests per endpoint (`llmgw.picker.<backend>.inflight.<endpoint>`), incremented
//!   by compare-and-swap on pick and decremented exactly once when the stream ends, however it ends;
//! - a bounded prefix table per backend (`llmgw.picker.<backend>.prefixes`): hashes of prompt
//!   blocks → the endpoint that last served them, least recently used entries evicted first;
//! - a time-to-first-token EWMA per endpoint (`llmgw.picker.<backend>.ttft.<endpoint>`).
//!
//! Only configured endpoints are ever chosen; the client's own destination header is removed by
//! the exchange before anything else.

use crate::host::Host;

/// The request header Envoy's ORIGINAL_DST cluster (`use_http_header`) connects to.
pub const DESTINATION_HEADER: &str = "x-llmgw-destination";
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Random,
    LeastRequest,
    /// The endpoint holding the longest prefix of the prompt, unless it is busier than the least
    /// loaded by more than `imbalance_threshold` requests; else least-request.
    PrefixCache,
    /// The lowest time-to-first-token EWMA weighted by the requests in flight; unmeasured first.
    LeastLatency,
    /// Prefill/decode disaggregation (`pd.rs`): the least loaded prefill endpoint computes the
    /// prompt, then the least loaded decode endpoint (`endpoints`) answers.
    Pd,
}

impl Algorithm {
    pub const NAMES: &'static str = "random, least-request, prefix-cache, least-latency, pd";

    /// Names as AIBrix's `ROUTING_ALGORITHM` spells them too.
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "random" => Some(Algorithm::Random),
            "least-request" => Some(Algorithm::LeastRequest),
            "prefix-cache" | "prefix-cache-aware" => Some(Algorithm::PrefixCache),
            "least-latency" => Some(Algorithm::LeastLatency),
            "pd" => Some(Algorithm::Pd),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picker {
    pub algorithm: Algorithm,
    /// `host:port` of each endpoint, as the ORIGINAL_DST cluster takes it (`pd`: the decoders).
    pub endpoints: Vec<String>,
    /// `pd` only: the prefill endpoints.
    pub prefill: Vec<String>,
    /// Bytes of prompt per hashed block.
    pub prefix_block_size: usize,
    /// How many more in-flight requests than the least loaded endpoint a prefix hit may have.
    pub imbalance_threshold: u64,
    /// Entries of the prefix table.
    pub max_prefixes: usize,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub endpoint: usize,
    /// Leading prompt blocks the endpoint already served (prefix-cache).
    pub matched_blocks: usize,
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
pub fn decide(picker: &Picker, snap: &Snapshot, blocks: &[u64]) -> Decision {
    let count = picker.endpoints.len();
    let loads: Vec<u64> = (0..count).map(|i| snap.in_flight.get(i).copied().unwrap_or(0)).collect();
    let endpoint = match picker.algorithm {
        Algorithm::Random => (mix(snap.seed) % count.max(1) as u64) as usize,
        Algorithm::LeastRequest | Algorithm::Pd => lowest(&loads, snap.seed),
        Algorithm::LeastLatency => {
            // Unmeasured endpoints score 0 (tried first); measured: EWMA × (1 + in flight).
            let scores: Vec<u64> = loads
                .iter()
                .enumerate()
                .map(|(i, load)| snap.ttft_us.get(i).copied().unwrap_or(0).saturating_mul(1 + load))
                .collect();
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
    };
    let decision = decide(picker, &snapshot, &blocks);
    let address = picker.endpoints.get(decision.endpoint)?.clone();
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
    Some(Picked { base, address, counted, gauge })
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
}
