//! Budgets: how many tokens (or requests) a consumer may spend per window, per model or overall.
//!
//! ```yaml
//! budgets:
//!   - {consumer: team-a, tokens: 2000000, per: day}                       # total tokens
//!   - {consumer: team-a, model: {prefix: gpt-4o}, tokens: 200000, per: hour, count: output}
//!   - {consumer: "*", requests: 60, per: minute}                          # each consumer separately
//! budget_store: {redis: "redis://127.0.0.1:6379", failure_mode: closed}  # optional: many gateways
//! ```
//!
//! One gateway (no `budget_store`): the budgets go into the filter's plugin configuration
//! (`budgets`, `consumer_header`), which counts them in proxy-wasm shared data. Many gateways:
//! the budgets become limits of a `llmgw ratelimit` instance counting in Redis, and Envoy's rate
//! limit filter checks each request before it goes upstream and charges the tokens when the
//! stream is done (see [`rate_limit_filter`] for the overshoot bound).

use serde_json::{json, Value as Json};

use crate::consumers::{Consumer, CONSUMER_HEADER};
use crate::formats::node::{At, FieldError, NResult};

/// Most budgets one configuration may have (a bounded plugin configuration and limits file).
const MAX_BUDGETS: usize = 1_000;
/// The rate limit service's domain (limitador's namespace) for `budget_store`.
pub const DOMAIN: &str = "llmgw";
/// `consumer: "*"`: the budget applies to each consumer separately.
pub const EACH_CONSUMER: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Stable: given, or made from the other fields ([`generated_name`]).
    pub name: String,
    /// A consumer's name, or [`EACH_CONSUMER`].
    pub consumer: String,
    pub model: Option<ModelMatch>,
    pub limit: Limit,
    pub per: Per,
    /// What a token budget counts (request budgets count requests).
    pub count: Count,
}

/// The filter's `StringMatch` shape, without `regex` (budgets match exact, prefix or glob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelMatch {
    Exact(String),
    Prefix(String),
    Glob(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Tokens(u64),
    Requests(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Total,
    Input,
    Output,
}

/// `budget_store:`: where budgets are counted when several gateways share them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// `redis://host:port[/db]`; a password in it is passed to `llmgw ratelimit` by environment.
    pub redis: String,
    pub failure_mode: FailureMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    Open,
    Closed,
}

impl Per {
    pub const ALL: [(&'static str, Per); 4] =
        [("second", Per::Second), ("minute", Per::Minute), ("hour", Per::Hour), ("day", Per::Day)];

    pub fn name(self) -> &'static str {
        Per::ALL.iter().find(|(_, p)| *p == self).map_or("day", |(n, _)| n)
    }

    pub fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3_600,
            Per::Day => 86_400,
        }
    }
}

impl Count {
    pub const ALL: [(&'static str, Count); 3] =
        [("total", Count::Total), ("input", Count::Input), ("output", Count::Output)];

    pub fn name(self) -> &'static str {
        Count::ALL.iter().find(|(_, c)| *c == self).map_or("total", |(n, _)| n)
    }

    /// The filter state the filter writes this count into (read by Envoy at stream done).
    fn filter_state(self) -> &'static str {
        match self {
            Count::Total => "wasm.llm_total_token",
            Count::Input => "wasm.llm_input_token",
            Count::Output => "wasm.llm_output_token",
        }
    }
}

impl ModelMatch {
    fn kind_value(&self) -> (&'static str, &str) {
        match self {
            ModelMatch::Exact(v) => ("exact", v),
            ModelMatch::Prefix(v) => ("prefix", v),
            ModelMatch::Glob(v) => ("glob", v),
        }
    }
}

/// `budgets:` of llmgw's own format; every consumer named must be one of `consumers`.
pub fn parse(list: &At<'_>, consumers: &[Consumer]) -> NResult<Vec<Budget>> {
    let items = list.items()?;
    if items.len() > MAX_BUDGETS {
        return Err(list.err(format!("at most {MAX_BUDGETS} budgets")));
    }
    if !items.is_empty() && consumers.is_empty() {
        return Err(list.err("budgets are per consumer: add `consumers:` (who may call, with their keys or JWT)"));
    }
    let mut out: Vec<Budget> = Vec::with_capacity(items.len());
    let known = ["name", "consumer", "model", "tokens", "requests", "per", "count"];
    for at in &items {
        if let Some(field) = at.unknown_keys(&known).into_iter().next() {
            return Err(FieldError { field, reason: format!("unknown field; a budget has {}", known.join(", ")) });
        }
        let consumer_at = at.req("consumer")?;
        let consumer = consumer_at.str()?.to_string();
        if consumer != EACH_CONSUMER && !consumers.iter().any(|c| c.name == consumer) {
            let names: Vec<&str> = consumers.iter().map(|c| c.name.as_str()).collect();
            return Err(consumer_at.err(format!(
                "{consumer:?} is not a consumer (consumers: {}; \"*\" = each consumer separately)",
                names.join(", ")
            )));
        }
        let limit = match (at.get("tokens"), at.get("requests")) {
            (Some(t), None) => Limit::Tokens(positive(&t)?),
            (None, Some(r)) => Limit::Requests(positive(&r)?),
            _ => return Err(at.err("give tokens or requests (one of them): how much the budget allows per window")),
        };
        let per_at = at.req("per")?;
        let per = one_of(&per_at, &Per::ALL)?;
        let count = match at.get("count") {
            None => Count::Total,
            Some(c) if matches!(limit, Limit::Requests(_)) => {
                return Err(c.err("count is for token budgets (a request budget counts requests)"))
            }
            Some(c) => one_of(&c, &Count::ALL)?,
        };
        let model = at.get("model").map(|m| model(&m)).transpose()?;
        let name = match at.get("name") {
            Some(n) => {
                let name = n.str()?.to_string();
                check_name(&name).map_err(|e| n.err(e))?;
                if out.iter().any(|b| b.name == name) {
                    return Err(n.err(format!("{name:?} is the name of an earlier budget too")));
                }
                name
            }
            None => String::new(),
        };
        out.push(Budget { name, consumer, model, limit, per, count });
    }
    name_unnamed(&mut out);
    // A given name may equal an earlier generated one.
    for (i, b) in out.iter().enumerate() {
        if out.iter().skip(i + 1).any(|o| o.name == b.name) {
            return Err(list.err(format!("two budgets are named {:?}: name one of them", b.name)));
        }
    }
    Ok(out)
}

/// `budget_store: {redis, failure_mode}`.
pub fn parse_store(at: &At<'_>) -> NResult<Store> {
    if let Some(field) = at.unknown_keys(&["redis", "failure_mode"]).into_iter().next() {
        return Err(FieldError { field, reason: "unknown field; budget_store has redis, failure_mode".into() });
    }
    let redis_at = at.req("redis")?;
    let redis = redis_at.str()?.trim().to_string();
    if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
        return Err(redis_at.err("a Redis URL: redis://host:port (or rediss:// for TLS)"));
    }
    let failure_mode = match at.get("failure_mode") {
        None => FailureMode::Closed,
        Some(f) => one_of(&f, &[("open", FailureMode::Open), ("closed", FailureMode::Closed)])?,
    };
    Ok(Store { redis, failure_mode })
}

fn positive(at: &At<'_>) -> NResult<u64> {
    match at.u64()? {
        0 => Err(at.err("must be at least 1")),
        n => Ok(n),
    }
}

fn one_of<T: Copy>(at: &At<'_>, choices: &[(&str, T)]) -> NResult<T> {
    let text = at.str()?;
    choices.iter().find(|(n, _)| *n == text).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        at.err(format!("{text:?}: one of {}", names.join(", ")))
    })
}

fn model(at: &At<'_>) -> NResult<ModelMatch> {
    if let Some(field) = at.unknown_keys(&["exact", "prefix", "glob"]).into_iter().next() {
        return Err(FieldError { field, reason: "unknown field; a budget's model is {exact|prefix|glob: ...}".into() });
    }
    match (at.opt_str("exact")?, at.opt_str("prefix")?, at.opt_str("glob")?) {
        (Some(v), None, None) => Ok(ModelMatch::Exact(v.to_string())),
        (None, Some(v), None) => Ok(ModelMatch::Prefix(v.to_string())),
        (None, None, Some(v)) => Ok(ModelMatch::Glob(v.to_string())),
        _ => Err(at.err("give one of exact, prefix, glob")),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{name:?}: a budget name is 1-128 characters of A-Z a-z 0-9 - _ ."));
    }
    Ok(())
}

/// Names every budget without one ([`generated_name`], `-2`, `-3`... when taken).
pub fn name_unnamed(budgets: &mut [Budget]) {
    for i in 0..budgets.len() {
        if !budgets[i].name.is_empty() {
            continue;
        }
        let base = generated_name(&budgets[i]);
        let mut name = base.clone();
        let mut n = 1;
        while budgets.iter().any(|b| b.name == name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        budgets[i].name = name;
    }
}

/// A name from the budget's fields, the same for the same budget on every run:
/// `team-a-tokens-per-day`, `team-a-gpt-4o-output-tokens-per-hour`, `each-requests-per-minute`.
pub fn generated_name(b: &Budget) -> String {
    let mut parts = vec![if b.consumer == EACH_CONSUMER { "each".to_string() } else { b.consumer.clone() }];
    if let Some(m) = &b.model {
        let (kind, value) = m.kind_value();
        let value: String = value
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
            .collect();
        parts.push(if kind == "exact" { value } else { format!("{kind}-{value}") });
    }
    match b.limit {
        Limit::Tokens(_) if b.count != Count::Total => parts.push(format!("{}-tokens", b.count.name())),
        Limit::Tokens(_) => parts.push("tokens".into()),
        Limit::Requests(_) => parts.push("requests".into()),
    }
    parts.push(format!("per-{}", b.per.name()));
    let name = parts.join("-");
    // Bounded like given names: a long model name is cut (the `-2` suffix keeps cut names apart).
    name.chars().take(120).collect()
}

/// The plugin configuration's `budgets` (the filter's shape).
pub fn plugin_budgets(budgets: &[Budget]) -> Json {
    Json::Array(
        budgets
            .iter()
            .map(|b| {
                let mut o = serde_json::Map::new();
                o.insert("name".into(), json!(b.name));
                o.insert("consumer".into(), json!(b.consumer));
                if let Some(m) = &b.model {
                    let (kind, value) = m.kind_value();
                    o.insert("model".into(), json!({ kind: value }));
                }
                match b.limit {
                    Limit::Tokens(n) => {
                        o.insert("tokens".into(), json!(n));
                    }
                    Limit::Requests(n) => {
                        o.insert("requests".into(), json!(n));
                    }
                }
                o.insert("per".into(), json!(b.per.name()));
                if matches!(b.limit, Limit::Tokens(_)) {
                    o.insert("count".into(), json!(b.count.name()));
                }
                Json::Object(o)
            })
            .collect(),
    )
}

/// Adds `consumer_header` and `budgets` to a plugin configuration, only when there are budgets
/// counted by the filter (no `budget_store`): a configuration without budgets is unchanged.
pub fn add_to_plugin(plugin: &mut serde_json::Map<String, Json>, budgets: &[Budget], store: Option<&Store>) {
    if budgets.is_empty() || store.is_some() {
        return;
    }
    plugin.insert("consumer_header".into(), json!(CONSUMER_HEADER));
    plugin.insert("budgets".into(), plugin_budgets(budgets));
}

/// Adds `consumer_header` when clients are authenticated and a rule caches answers: each consumer
/// then only ever gets its own cached answers (unless the rule's cache says `shared: true`).
pub fn add_cache_consumer(plugin: &mut serde_json::Map<String, Json>, consumers: &[Consumer]) {
    let caches = plugin
        .get("rules")
        .and_then(Json::as_array)
        .is_some_and(|rules| rules.iter().any(|r| r.get("cache").is_some()));
    if caches && !consumers.is_empty() && !plugin.contains_key("consumer_header") {
        plugin.insert("consumer_header".into(), json!(CONSUMER_HEADER));
    }
}

// ---------------------------------------------------------------------------------------------
// many gateways: Envoy's rate limit filter + `llmgw ratelimit` (limitador in Redis)

/// A CEL string literal.
fn cel(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A glob (`*` any run, `?` one character) as an anchored regex for CEL's `matches`.
fn glob_regex(glob: &str) -> String {
    let mut re = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => re.push(c),
            c => {
                re.push('\\');
                re.push(c);
            }
        }
    }
    re.push('$');
    re
}

/// The limits file of `llmgw ratelimit` (limitador's format), one limit per budget: domain
/// [`DOMAIN`], descriptor entries `budget` (the budget's name), `consumer`, and `model` when the
/// budget matches a model. `consumer: "*"` counts each consumer in its own counter.
pub fn limits(budgets: &[Budget]) -> Json {
    Json::Array(
        budgets
            .iter()
            .map(|b| {
                let d = "descriptors[0]";
                let mut conditions = vec![format!("{d}.budget == {}", cel(&b.name))];
                let mut variables = Vec::new();
                if b.consumer == EACH_CONSUMER {
                    variables.push(format!("{d}.consumer"));
                } else {
                    conditions.push(format!("{d}.consumer == {}", cel(&b.consumer)));
                }
                match &b.model {
                    Some(ModelMatch::Exact(v)) => conditions.push(format!("{d}.model == {}", cel(v))),
                    Some(ModelMatch::Prefix(v)) => conditions.push(format!("{d}.model.startsWith({})", cel(v))),
                    Some(ModelMatch::Glob(v)) => conditions.push(format!("{d}.model.matches({})", cel(&glob_regex(v)))),
                    None => {}
                }
                let max = match b.limit {
                    Limit::Tokens(n) | Limit::Requests(n) => n,
                };
                json!({
                    "namespace": DOMAIN,
                    "name": b.name,
                    "max_value": max,
                    "seconds": b.per.seconds(),
                    "conditions": conditions,
                    "variables": variables,
                })
            })
            .collect(),
    )
}

/// The cluster of the `llmgw ratelimit` child process.
pub const RLS_CLUSTER: &str = "llmgw-ratelimit";

/// Envoy's rate limit filter for `budget_store`, with the budgets' descriptors in the filter's
/// own `rate_limits`. Every budget has a descriptor `(budget, <name>) (consumer, <consumer>)
/// [(model, <model>)]`, the consumer and model read from the dynamic metadata the
/// `header_to_metadata` filters write (the headers themselves are removed by the route before the
/// stream is done). A request budget adds 1 when the request is checked. A token budget is
/// checked at 0 before the request goes upstream and charged its count (the filter's
/// `wasm.llm_*_token` state) when the stream is done.
///
/// Overshoot: this is charge-after. A request passes its check while the budget is not yet spent,
/// so the most a budget can be exceeded by is what the requests in flight at the moment it runs
/// out spend: concurrent in-flight requests × their tokens (across every gateway sharing the
/// Redis). The one-gateway store reserves at request time instead.
pub fn rate_limit_filter(budgets: &[Budget], store: &Store, metadata_namespace: &str) -> Json {
    let meta = |descriptor_key: &str, key: &str| {
        json!({"metadata": {
            "descriptor_key": descriptor_key,
            "metadata_key": {"key": metadata_namespace, "path": [{"key": key}]},
            "source": "DYNAMIC",
        }})
    };
    let mut rate_limits = Vec::new();
    for b in budgets {
        let mut actions = vec![
            json!({"generic_key": {"descriptor_key": "budget", "descriptor_value": b.name}}),
            meta("consumer", crate::bootstrap::CONSUMER_METADATA_KEY),
        ];
        if b.model.is_some() {
            actions.push(meta("model", "model"));
        }
        match b.limit {
            Limit::Requests(_) => rate_limits.push(json!({"actions": actions})),
            Limit::Tokens(_) => {
                rate_limits.push(json!({"actions": actions, "hits_addend": {"number": 0}}));
                rate_limits.push(json!({
                    "actions": actions,
                    "apply_on_stream_done": true,
                    "hits_addend": {"format": format!("%FILTER_STATE({}:PLAIN)%", b.count.filter_state())},
                }));
            }
        }
    }
    json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": DOMAIN,
            "stage": 0,
            "failure_mode_deny": store.failure_mode == FailureMode::Closed,
            "timeout": "1s",
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limits": rate_limits,
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": RLS_CLUSTER}},
            },
        },
    })
}

/// The cluster of the rate limit service (`llmgw ratelimit` on a loopback port, gRPC).
pub fn rls_cluster(port: u16) -> Json {
    json!({
        "name": RLS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }},
        "load_assignment": {"cluster_name": RLS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::KeySource;

    fn consumers() -> Vec<Consumer> {
        ["team-a", "ci-bot"]
            .iter()
            .map(|n| Consumer { name: n.to_string(), keys: Some(KeySource::Env("K".into())), jwt: None })
            .collect()
    }

    fn parsed(yaml: &str) -> NResult<Vec<Budget>> {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        parse(&At::root(&v), &consumers())
    }

    const ISSUE: &str = "
- {consumer: team-a, tokens: 2000000, per: day}
- {consumer: team-a, model: {prefix: gpt-4o}, tokens: 200000, per: hour, count: output}
- {consumer: '*', requests: 60, per: minute}
";

    #[test]
    fn the_issues_budgets_become_the_filters_json() {
        let b = parsed(ISSUE).unwrap();
        assert_eq!(
            plugin_budgets(&b),
            json!([
                {"name": "team-a-tokens-per-day", "consumer": "team-a", "tokens": 2000000, "per": "day", "count": "total"},
                {"name": "team-a-prefix-gpt-4o-output-tokens-per-hour", "consumer": "team-a",
                 "model": {"prefix": "gpt-4o"}, "tokens": 200000, "per": "hour", "count": "output"},
                {"name": "each-requests-per-minute", "consumer": "*", "requests": 60, "per": "minute"}
            ])
        );
        let mut plugin = serde_json::Map::new();
        add_to_plugin(&mut plugin, &b, None);
        assert_eq!(plugin["consumer_header"], "x-llmgw-consumer");
        let mut plugin = serde_json::Map::new();
        add_to_plugin(&mut plugin, &[], None);
        assert!(plugin.is_empty(), "no budgets: the plugin configuration is unchanged");
    }

    #[test]
    fn names_are_stable_given_or_made_unique() {
        let b = parsed("- {consumer: team-a, tokens: 1, per: day}\n- {consumer: team-a, tokens: 2, per: day}\n- {name: mine, consumer: ci-bot, requests: 1, per: second}\n").unwrap();
        let names: Vec<&str> = b.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["team-a-tokens-per-day", "team-a-tokens-per-day-2", "mine"]);
        assert_eq!(parsed(ISSUE).unwrap(), parsed(ISSUE).unwrap());
        // A given name wins; the generated one steps aside.
        let b = parsed("- {consumer: team-a, tokens: 1, per: day}\n- {name: team-a-tokens-per-day, consumer: ci-bot, tokens: 1, per: day}\n").unwrap();
        assert_eq!(b[0].name, "team-a-tokens-per-day-2");
    }

    #[test]
    fn refuses_what_cannot_be_honoured() {
        let e = |y: &str| parsed(y).unwrap_err();
        assert!(e("- {consumer: team-b, tokens: 1, per: day}\n").reason.contains("not a consumer"));
        assert!(e("- {consumer: team-a, per: day}\n").reason.contains("tokens or requests"));
        assert!(e("- {consumer: team-a, tokens: 1, requests: 1, per: day}\n").reason.contains("tokens or requests"));
        assert!(e("- {consumer: team-a, tokens: 0, per: day}\n").reason.contains("at least 1"));
        assert!(e("- {consumer: team-a, tokens: 1, per: week}\n").reason.contains("second, minute, hour, day"));
        assert!(e("- {consumer: team-a, requests: 1, per: day, count: output}\n").reason.contains("token budgets"));
        assert!(e("- {consumer: team-a, tokens: 1, per: day, count: cached}\n")
            .reason
            .contains("total, input, output"));
        assert_eq!(e("- {consumer: team-a, model: {regex: 'x.*'}, tokens: 1, per: day}\n").field, "[0].model.regex");
        assert_eq!(e("- {consumer: team-a, tokens: 1, per: day, window: 1}\n").field, "[0].window");
        assert!(e("- {name: 'a b', consumer: team-a, tokens: 1, per: day}\n").reason.contains("budget name"));
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(ISSUE).unwrap();
        assert!(parse(&At::root(&v), &[]).unwrap_err().reason.contains("add `consumers:`"));
    }

    #[test]
    fn store_and_limits_for_many_gateways() {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str("{redis: 'redis://127.0.0.1:6379'}").unwrap();
        let store = parse_store(&At::root(&v)).unwrap();
        assert_eq!(store.failure_mode, FailureMode::Closed);
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str("{redis: 'http://x', failure_mode: open}").unwrap();
        assert!(parse_store(&At::root(&v)).unwrap_err().reason.contains("Redis URL"));

        let mut b = parsed(ISSUE).unwrap();
        b.push(Budget { model: Some(ModelMatch::Glob("claude-*.5".into())), ..b[0].clone() });
        b[3].name = "glob".into();
        let l = limits(&b);
        assert_eq!(
            l[0]["conditions"],
            json!(["descriptors[0].budget == \"team-a-tokens-per-day\"", "descriptors[0].consumer == \"team-a\""])
        );
        assert_eq!(l[0]["seconds"], 86400);
        assert_eq!(l[1]["conditions"][2], "descriptors[0].model.startsWith(\"gpt-4o\")");
        assert_eq!(l[2]["variables"], json!(["descriptors[0].consumer"]));
        assert_eq!(l[2]["max_value"], 60);
        assert_eq!(l[3]["conditions"][2], r#"descriptors[0].model.matches("^claude-.*\\.5$")"#);
        // `llmgw ratelimit` accepts the file.
        let parsed = crate::ratelimit::parse_limits(&l.to_string()).unwrap();
        assert_eq!(parsed.limits.len(), 4);

        let f = rate_limit_filter(&b[..3], &store, "io.llmgw");
        let rl = f["typed_config"]["rate_limits"].as_array().unwrap();
        // Two entries per token budget (check at 0, charge at stream done), one per request budget.
        assert_eq!(rl.len(), 5);
        assert_eq!(rl[0]["hits_addend"], json!({"number": 0}));
        assert_eq!(rl[1]["apply_on_stream_done"], true);
        assert_eq!(rl[1]["hits_addend"]["format"], "%FILTER_STATE(wasm.llm_total_token:PLAIN)%");
        assert_eq!(rl[3]["hits_addend"]["format"], "%FILTER_STATE(wasm.llm_output_token:PLAIN)%");
        assert_eq!(rl[2]["actions"][2]["metadata"]["descriptor_key"], "model");
        assert!(rl[4].get("hits_addend").is_none(), "a request budget adds 1");
        assert_eq!(f["typed_config"]["failure_mode_deny"], true);
    }
}
