//! `llmgw stat`: a running gateway's `/metrics`, summed per backend, model and operation, like
//! `egctl ai stat`: total requests, success/failed, average duration, input/output tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::StatArgs;
use crate::table;

/// One Prometheus sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let Some((name, rest)) = line.split_once('{') else {
        let (n, v) = line.split_once(' ')?;
        return Some(Sample { name: n.to_string(), labels: BTreeMap::new(), value: number(v)? });
    };
    let (labels, rest) = parse_labels(rest)?;
    Some(Sample { name: name.to_string(), labels, value: number(rest)? })
}

/// `k="v",...}` → the labels and the text after `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once('=')?;
        rest = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => {
                    let (_, escaped) = chars.next()?;
                    value.push(if escaped == 'n' { '\n' } else { escaped });
                }
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        rest = &rest[end + 1..];
        labels.insert(key.trim().to_string(), value);
    }
}

fn number(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Row {
    pub total: f64,
    pub success: f64,
    pub failed: f64,
    pub duration_sum_ms: f64,
    pub duration_count: f64,
    pub input_tokens: f64,
    pub output_tokens: f64,
}

/// (backend, model, operation) → totals.
pub fn aggregate(samples: &[Sample]) -> BTreeMap<(String, String, String), Row> {
    let mut rows: BTreeMap<(String, String, String), Row> = BTreeMap::new();
    for s in samples {
        let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        let key = (l("llmgw_backend"), l("gen_ai_request_model"), l("gen_ai_operation_name"));
        let row = || Row::default();
        match s.name.as_str() {
            "llmgw_requests_total" => {
                let r = rows.entry(key).or_insert_with(row);
                r.total += s.value;
                match l("outcome").as_str() {
                    "success" => r.success += s.value,
                    _ => r.failed += s.value,
                }
            }
            "gen_ai_server_request_duration_sum" => rows.entry(key).or_insert_with(row).duration_sum_ms += s.value,
            "gen_ai_server_request_duration_count" => rows.entry(key).or_insert_with(row).duration_count += s.value,
            "gen_ai_client_token_usage_sum" => {
                let r = rows.entry(key).or_insert_with(row);
                match l("gen_ai_token_type").as_str() {
                    "input" => r.input_tokens += s.value,
                    "output" => r.output_tokens += s.value,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    rows
}

pub fn render(rows: &BTreeMap<(String, String, String), Row>) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|((backend, model, op), r)| {
            let avg = if r.duration_count > 0.0 {
                format!("{:.0}", r.duration_sum_ms / r.duration_count)
            } else {
                "-".into()
            };
            vec![
                backend.clone(),
                model.clone(),
                op.clone(),
                format!("{:.0}", r.total),
                format!("{:.0}/{:.0}", r.success, r.failed),
                avg,
                format!("{:.0}/{:.0}", r.input_tokens, r.output_tokens),
            ]
        })
        .collect();
    table::render(
        &["BACKEND", "MODEL", "OPERATION", "TOTAL-REQ", "SUCCESS/FAILED", "AVG-DUR(ms)", "TOKENS(INPUT/OUTPUT)"],
        &body,
    )
}

pub fn main(args: StatArgs) -> Result<i32> {
    let url = args.url.unwrap_or_else(|| format!("http://127.0.0.1:{}/metrics", args.admin_port));
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let text = agent
        .get(&url)
        .call()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|r| r.into_string().context("reading the metrics"))
        .with_context(|| format!("cannot read {url}: is `llmgw run` running there? (--admin-port / --url)"))?;
    let samples = parse(&text);
    let rows = aggregate(&samples);
    if rows.is_empty() {
        println!("no LLM requests recorded yet at {url}");
    } else {
        print!("{}", render(&rows));
    }
    if let Some(path) = &args.config {
        let g = crate::formats::load(path, &crate::model::ProcessEnv, None).map_err(|e| anyhow::anyhow!("{e}"))?;
        if g.budget_store.is_some() {
            // The filter does not count these: `llmgw ratelimit` does, in Redis.
            println!("\nbudgets: counted in Redis by `llmgw ratelimit` (budget_store); not in the gateway's metrics");
        } else {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            print!("{}", budgets(&g.budgets, &samples, now));
        }
    }
    Ok(0)
}

/// The filter's budget gauges, per `llmgw_budget` and `llmgw_consumer`: the count of the window
/// last written (tokens or requests), and that window's end (Unix seconds).
pub const BUDGET_USED: &str = "llmgw_budget_used";
pub const BUDGET_WINDOW_END: &str = "llmgw_budget_window_end_seconds";

/// The configured budgets, with what the gateway's metrics say each consumer used in the current
/// window (`now`: Unix seconds). Budgets counted by `budget_store` (Redis) are not in the filter's
/// gauges.
pub fn budgets(budgets: &[crate::budgets::Budget], samples: &[Sample], now: u64) -> String {
    use crate::budgets::Limit;
    if budgets.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nbudgets:\n");
    for b in budgets {
        let (limit, unit) = match b.limit {
            Limit::Tokens(n) => (n, format!("{} tokens", b.count.name())),
            Limit::Requests(n) => (n, "requests".to_string()),
        };
        let model = b.model.as_ref().map(|m| format!(" model {m:?}")).unwrap_or_default();
        out += &format!("  {} (consumer {}{model}): {limit} {unit} per {}\n", b.name, b.consumer, b.per.name());
        let of = |name: &'static str| {
            samples.iter().filter(move |s| s.name == name && s.labels.get("llmgw_budget") == Some(&b.name))
        };
        let used: Vec<&Sample> = of(BUDGET_USED).collect();
        if used.is_empty() {
            out += "    no request counted yet\n";
        }
        for s in used {
            let consumer = s.labels.get("llmgw_consumer").map_or("?", String::as_str);
            let end = of(BUDGET_WINDOW_END)
                .find(|r| r.labels.get("llmgw_consumer") == s.labels.get("llmgw_consumer"))
                .map(|r| r.value as u64);
            // A count from a window that has ended is 0 now; the next window ends a period later.
            let period = b.per.seconds().max(1);
            let (used, reset) = match end {
                Some(end) if end > now => (s.value as u64, end - now),
                _ => (0, period - now % period),
            };
            let remaining = limit.saturating_sub(used);
            out += &format!("    {consumer}: used {used} remaining {remaining} reset in {reset}s\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_show_used_remaining_and_reset_per_consumer() {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "[{consumer: '*', requests: 60, per: minute}, {consumer: a, tokens: 10, per: day}]",
        )
        .unwrap();
        let consumers = [crate::consumers::Consumer { name: "a".into(), keys: None, jwt: None }];
        let b = crate::budgets::parse(&crate::formats::node::At::root(&v), &consumers).unwrap();
        let samples = parse(
            "llmgw_budget_used{llmgw_budget=\"each-requests-per-minute\",llmgw_consumer=\"a\"} 12\n\
             llmgw_budget_window_end_seconds{llmgw_budget=\"each-requests-per-minute\",llmgw_consumer=\"a\"} 1800000060\n\
             llmgw_budget_used{llmgw_budget=\"each-requests-per-minute\",llmgw_consumer=\"b\"} 7\n\
             llmgw_budget_window_end_seconds{llmgw_budget=\"each-requests-per-minute\",llmgw_consumer=\"b\"} 1800000000\n",
        );
        let text = budgets(&b, &samples, 1_800_000_030);
        assert!(text.contains("each-requests-per-minute (consumer *): 60 requests per minute"), "{text}");
        assert!(text.contains("a: used 12 remaining 48 reset in 30s"), "{text}");
        // b's count is from a window that has ended.
        assert!(text.contains("b: used 0 remaining 60 reset in 30s"), "{text}");
        assert!(
            text.contains("a-tokens-per-day (consumer a): 10 total tokens per day\n    no request counted yet"),
            "{text}"
        );
    }

    const TEXT: &str = r#"# TYPE llmgw_requests_total counter
llmgw_requests_total{gen_ai_request_model="gpt-4o",gen_ai_operation_name="chat",outcome="success",llmgw_backend="openai"} 2
llmgw_requests_total{gen_ai_request_model="gpt-4o",gen_ai_operation_name="chat",outcome="failure",llmgw_backend="openai"} 1
gen_ai_server_request_duration_sum{gen_ai_request_model="gpt-4o",gen_ai_operation_name="chat",llmgw_backend="openai"} 3000
gen_ai_server_request_duration_count{gen_ai_request_model="gpt-4o",gen_ai_operation_name="chat",llmgw_backend="openai"} 3
gen_ai_client_token_usage_sum{gen_ai_request_model="gpt-4o",gen_ai_operation_name="chat",gen_ai_token_type="input",llmgw_backend="openai"} 26
gen_ai_client_token_usage_sum{gen_ai_request_model="gpt-4o",gen_ai_operation_name="chat",gen_ai_token_type="output",llmgw_backend="openai"} 72
gen_ai_client_token_usage_bucket{gen_ai_request_model="gpt-4o",gen_ai_operation_name="chat",gen_ai_token_type="output",llmgw_backend="openai",le="4"} 0
envoy_cluster_upstream_rq{envoy_cluster_name="openai"} 3
weird{a="x\"y,z=1"} 5
"#;

    #[test]
    fn parses_labels_with_escapes() {
        let s = parse(TEXT);
        let weird = s.iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(weird.labels["a"], "x\"y,z=1");
        assert_eq!(weird.value, 5.0);
    }

    #[test]
    fn aggregates_like_egctl_ai_stat() {
        let rows = aggregate(&parse(TEXT));
        let r = &rows[&("openai".to_string(), "gpt-4o".to_string(), "chat".to_string())];
        assert_eq!((r.total, r.success, r.failed), (3.0, 2.0, 1.0));
        assert_eq!((r.input_tokens, r.output_tokens), (26.0, 72.0));
        let t = render(&rows);
        assert_eq!(
            t,
            "BACKEND  MODEL   OPERATION  TOTAL-REQ  SUCCESS/FAILED  AVG-DUR(ms)  TOKENS(INPUT/OUTPUT)\n\
             openai   gpt-4o  chat       3          2/1             1000         26/72\n"
        );
    }
}
