//! Tagged Envoy stat names: `<metric>.<label>=.=<value>;.;<label>=.=<value>;.;` (the filter
//! carries metric labels inside the stat name; Envoy's `stats_tags` extract them).

use crate::state::{Metric, Metrics};

/// A stat name split into its metric and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedName {
    pub metric: String,
    pub labels: Vec<(String, String)>,
}

impl TaggedName {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Splits a stat name. A name without labels is all metric.
pub fn parse(name: &str) -> TaggedName {
    let Some(first_tag) = name.find("=.=") else {
        return TaggedName { metric: name.to_string(), labels: Vec::new() };
    };
    // Label names have no dots, so the metric ends at the last dot before the first tag.
    let split = name[..first_tag].rfind('.').unwrap_or(0);
    let rest = name.get(split + 1..).unwrap_or("");
    let labels = rest
        .split(";.;")
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once("=.=") {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    TaggedName { metric: name[..split].to_string(), labels }
}

impl Metrics {
    /// Metrics named `metric` whose labels include every pair of `labels`.
    pub fn find(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<&Metric> {
        self.all()
            .into_iter()
            .filter(|m| {
                let t = parse(&m.name);
                t.metric == metric && labels.iter().all(|(k, v)| t.label(k) == Some(v))
            })
            .collect()
    }

    /// All histogram samples of `metric` with these labels, over every matching label set.
    pub fn samples(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<u64> {
        self.find(metric, labels).into_iter().flat_map(|m| m.samples.iter().copied()).collect()
    }

    /// The sum of counters named `metric` with these labels.
    pub fn count(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        self.find(metric, labels).into_iter().map(|m| m.value as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tagged_names() {
        let t = parse("gen_ai.client.token.usage.llmgw_backend=.=b;.;gen_ai_request_model=.=llama-3.1;.;");
        assert_eq!(t.metric, "gen_ai.client.token.usage");
        assert_eq!(t.label("llmgw_backend"), Some("b"));
        assert_eq!(t.label("gen_ai_request_model"), Some("llama-3.1"));
        assert_eq!(parse("plain.name").metric, "plain.name");
    }
}
