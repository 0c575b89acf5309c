//! Token and request budgets, enforced before a request goes upstream and exact across Envoy's
//! workers: counters live in proxy-wasm shared data and change only by compare-and-swap.
//!
//! - **Reserve** (request time): every matching budget is charged its request's estimate (requests:
//!   1; tokens: `body bytes / 4` for input, plus the request's output cap or the budget's
//!   `default_output_reserve` for output). If one would pass its limit, what was reserved is
//!   released and the request is refused: concurrent requests can never pass a budget together.
//! - **Settle** (stream end): each token charge becomes the real usage (`actual - reserved` is added;
//!   no usage refunds it all). Requests charges keep their 1.
//!
//! Windows are fixed and aligned to the Unix epoch (a `day` is a UTC day). One key per budget and
//! consumer (`llmgw.budget.<name>.<consumer>`) holds the window index and the count: a value from an
//! older window counts as 0 and is overwritten, so keys never pile up per window; consumers of a
//! `"*"` budget are capped by `max_consumers`.

use crate::error::{ApiError, ErrorKind};
use crate::host::Host;
use crate::metrics::{Kind, Sample, BUDGET_USED, BUDGET_WINDOW_END};
use crate::routing::ModelMatcher;
use crate::usage::TokenUsage;

/// CAS attempts per counter before the request is refused (503) rather than spinning.
pub const CAS_ATTEMPTS: usize = 8;
/// How the input is estimated without a tokenizer: about 4 bytes of JSON per token.
pub const BYTES_PER_TOKEN: u64 = 4;

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Total,
    Input,
    Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Tokens(u64),
    Requests(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumers {
    /// `"*"`: each consumer has its own counter.
    Each,
    Named(String),
}

#[derive(Debug)]
pub struct Budget {
    pub name: String,
    pub consumers: Consumers,
    pub model: Option<ModelMatcher>,
    pub limit: Limit,
    pub count: Count,
    pub window_secs: u64,
    /// Output tokens reserved for a request that names no output cap.
    pub default_output_reserve: u64,
    /// Distinct consumers a `"*"` budget tracks; a new one past it is refused.
    pub max_consumers: u64,
}

/// One counter a request charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Index into the configured budgets.
    pub budget: usize,
    pub key: String,
    pub window: u64,
    pub reserved: u64,
    /// The counter's metric labels (`llmgw_budget`, `llmgw_consumer`).
    pub labels: String,
    /// When the window ends (Unix seconds).
    pub window_end: u64,
}

/// The request, as budgets see it.
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    pub consumer: &'a str,
    pub model: &'a str,
    pub body_len: usize,
    /// The body's output cap (`max_tokens`, ...), if it names one.
    pub output_cap: Option<u64>,
    pub now_secs: u64,
}

/// A counter value: the window it belongs to and its count, 16 little-endian bytes.
fn encode(window: u64, count: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    let (w, c) = out.split_at_mut(8);
    w.copy_from_slice(&window.to_le_bytes());
    c.copy_from_slice(&count.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    let window = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let count = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((window, count))
}

pub fn counter_key(budget: &str, consumer: &str) -> String {
    format!("llmgw.budget.{budget}.{consumer}")
}

/// `llmgw_budget=.=<name>;.;llmgw_consumer=.=<consumer>;.;` (the consumer's `;`, `=` and control
/// characters replaced, as in every label value).
fn metric_labels(budget: &str, consumer: &str) -> String {
    let consumer: String =
        consumer.chars().map(|c| if c == ';' || c == '=' || c.is_control() { '_' } else { c }).collect();
    format!("llmgw_budget=.={budget};.;llmgw_consumer=.={consumer};.;")
}

/// Shows a counter's new count (and its window's end) in the budget gauges. Workers set them in
/// the order their host calls land, so a gauge can briefly show a neighbouring count; the shared
/// counter itself is exact.
fn export(host: &mut dyn Host, charge: &Charge, count: u64, with_window: bool) {
    host.record(&Sample { name: format!("{BUDGET_USED}.{}", charge.labels), kind: Kind::Gauge, value: count });
    if with_window {
        let name = format!("{BUDGET_WINDOW_END}.{}", charge.labels);
        host.record(&Sample { name, kind: Kind::Gauge, value: charge.window_end });
    }
}

/// How many consumers a `"*"` budget tracks (`llmgw.budgets.` cannot clash with a counter key).
fn registry_key(budget: &str) -> String {
    format!("llmgw.budgets.{budget}.consumers")
}

impl Budget {
    fn applies(&self, consumer: &str, model: &str) -> bool {
        let consumer_matches = match &self.consumers {
            Consumers::Each => true,
            Consumers::Named(name) => name == consumer,
        };
        consumer_matches && self.model.as_ref().is_none_or(|m| m.matches(model))
    }

    /// What a request is charged up front.
    fn estimate(&self, demand: &Demand) -> u64 {
        let input = demand.body_len as u64 / BYTES_PER_TOKEN;
        let output = demand.output_cap.unwrap_or(self.default_output_reserve);
        match (self.limit, self.count) {
            (Limit::Requests(_), _) => 1,
            (Limit::Tokens(_), Count::Input) => input,
            (Limit::Tokens(_), Count::Output) => output,
            (Limit::Tokens(_), Count::Total) => input.saturating_add(output),
        }
    }

    fn max(&self) -> u64 {
        match self.limit {
            Limit::Tokens(n) | Limit::Requests(n) => n,
        }
    }

    /// The charge's real amount once the usage is known (`None`: no usage, a token charge is refunded).
    fn actual(&self, charge: &Charge, usage: Option<&TokenUsage>) -> u64 {
        match (self.limit, usage) {
            (Limit::Requests(_), _) => charge.reserved,
            (Limit::Tokens(_), None) => 0,
            (Limit::Tokens(_), Some(u)) => match self.count {
                Count::Input => u.input,
                Count::Output => u.output,
                Count::Total => u.input.saturating_add(u.output),
            },
        }
    }

    fn seconds_to_reset(&self, now_secs: u64) -> u64 {
        let window = self.window_secs.max(1);
        window - now_secs % window
    }
}

/// The charges a request would make (pure: what to reserve, not yet reserved).
pub fn plan(budgets: &[Budget], demand: &Demand) -> Vec<Charge> {
    budgets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.applies(demand.consumer, demand.model))
        .map(|(i, b)| {
            let window = demand.now_secs / b.window_secs.max(1);
            Charge {
                budget: i,
                key: counter_key(&b.name, demand.consumer),
                window,
                reserved: b.estimate(demand),
                labels: metric_labels(&b.name, demand.consumer),
                window_end: window.saturating_add(1).saturating_mul(b.window_secs.max(1)),
            }
        })
        .collect()
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The budget would pass its limit.
    Exhausted { budget: usize, retry_after: u64 },
    /// A `"*"` budget tracks its maximum of consumers already.
    TooManyConsumers { budget: usize },
    /// The shared counter kept changing under us (or the host refused it).
    Busy { budget: usize },
}

impl Refusal {
    pub fn budget(&self) -> usize {
        match self {
            Refusal::Exhausted { budget, .. } | Refusal::TooManyConsumers { budget } | Refusal::Busy { budget } => {
                *budget
            }
        }
    }

    /// The client's answer: 429 (with `Retry-After`) or 503, naming the budget.
    pub fn error(&self, budgets: &[Budget]) -> ApiError {
        let name = budgets.get(self.budget()).map_or("", |b| b.name.as_str());
        let error = match self {
            Refusal::Exhausted { retry_after, .. } => ApiError::new(
                429,
                ErrorKind::RateLimit,
                "rate_limit_exceeded",
                format!("budget {name:?} is spent for this window; it resets in {retry_after}s"),
            )
            .with_header("retry-after", retry_after.to_string()),
            Refusal::TooManyConsumers { .. } => {
                let max = budgets.get(self.budget()).map_or(0, |b| b.max_consumers);
                ApiError::new(
                    429,
                    ErrorKind::RateLimit,
                    "rate_limit_exceeded",
                    format!("budget {name:?} already tracks its maximum of {max} consumers (max_consumers)"),
                )
            }
            Refusal::Busy { .. } => ApiError::new(
                503,
                ErrorKind::Server,
                "budget_busy",
                format!("budget {name:?} could not be checked (its counter is contended); retry"),
            )
            .with_header("retry-after", "1"),
        };
        error.with_header("x-llmgw-budget", name)
    }
}

enum Step {
    /// The new count to store.
    Store(u64),
    /// Leave the counter as it is.
    Keep,
}

enum Outcome {
    /// Stored this count.
    Done(u64),
    Kept,
    Busy,
}

/// Reads the counter, decides, and stores by compare-and-swap, at most `CAS_ATTEMPTS` times.
/// `decide` sees the count of `window` (0 when the stored value is from another window, or absent).
fn update(host: &mut dyn Host, key: &str, window: u64, decide: &dyn Fn(u64, bool) -> Step) -> Outcome {
    for _ in 0..CAS_ATTEMPTS {
        let (current, cas) = match host.shared_data(key) {
            Some((bytes, cas)) => (decode(&bytes), cas),
            None => (None, 0),
        };
        let same_window = current.is_some_and(|(w, _)| w == window);
        let count = current.filter(|_| same_window).map_or(0, |(_, c)| c);
        match decide(count, same_window) {
            Step::Keep => return Outcome::Kept,
            Step::Store(next) => {
                if host.set_shared_data(key, &encode(window, next), cas) {
                    return Outcome::Done(next);
                }
            }
        }
    }
    Outcome::Busy
}

/// Counts a new consumer of a `"*"` budget, refusing past its cap. Counters of known consumers
/// exist: only a first request reaches this.
fn register(host: &mut dyn Host, budget: &Budget) -> Result<(), bool> {
    let max = budget.max_consumers;
    match update(host, &registry_key(&budget.name), 0, &|n, _| if n >= max { Step::Keep } else { Step::Store(n + 1) }) {
        Outcome::Done(_) => Ok(()),
        Outcome::Kept => Err(false),
        Outcome::Busy => Err(true),
    }
}

/// Reserves every charge or none: on a refusal, what was reserved is released.
pub fn reserve(host: &mut dyn Host, budgets: &[Budget], charges: &[Charge], now_secs: u64) -> Result<(), Refusal> {
    for (done, charge) in charges.iter().enumerate() {
        let Some(budget) = budgets.get(charge.budget) else { continue };
        let refusal = |busy: bool| {
            if busy {
                Refusal::Busy { budget: charge.budget }
            } else {
                Refusal::TooManyConsumers { budget: charge.budget }
            }
        };
        let mut result = Ok(());
        if budget.consumers == Consumers::Each && host.shared_data(&charge.key).is_none() {
            result = register(host, budget).map_err(refusal);
        }
        if result.is_ok() {
            let (max, amount) = (budget.max(), charge.reserved);
            // A request larger than the whole budget is refused too: it could never fit.
            let outcome = update(host, &charge.key, charge.window, &|n, _| match n.checked_add(amount) {
                Some(next) if next <= max => Step::Store(next),
                _ => Step::Keep,
            });
            result = match outcome {
                Outcome::Done(count) => {
                    export(host, charge, count, true);
                    Ok(())
                }
                Outcome::Kept => {
                    Err(Refusal::Exhausted { budget: charge.budget, retry_after: budget.seconds_to_reset(now_secs) })
                }
                Outcome::Busy => Err(Refusal::Busy { budget: charge.budget }),
            };
        }
        if let Err(refusal) = result {
            release(host, charges.get(..done).unwrap_or_default());
            return Err(refusal);
        }
    }
    Ok(())
}

/// Gives back reservations whole (a refused request).
pub fn release(host: &mut dyn Host, charges: &[Charge]) {
    for charge in charges {
        adjust(host, charge, 0);
    }
}

/// Replaces a charge's reservation by `actual` in the window it was made in; a window that is gone
/// is left alone.
fn adjust(host: &mut dyn Host, charge: &Charge, actual: u64) {
    if actual == charge.reserved {
        return;
    }
    let reserved = charge.reserved;
    let outcome = update(host, &charge.key, charge.window, &|n, same_window| {
        if same_window {
            Step::Store(n.saturating_sub(reserved).saturating_add(actual))
        } else {
            Step::Keep
        }
    });
    if let Outcome::Done(count) = outcome {
        export(host, charge, count, false);
    }
    if matches!(outcome, Outcome::Busy) {
        log::warn!("llmgw: budget counter {} stayed contended; this request's settlement is lost", charge.key);
    }
}

/// Settles a served (or failed, or aborted) request: `usage` is what the provider reported.
pub fn settle(host: &mut dyn Host, budgets: &[Budget], charges: &[Charge], usage: Option<&TokenUsage>) {
    for charge in charges {
        if let Some(budget) = budgets.get(charge.budget) {
            adjust(host, charge, budget.actual(charge, usage));
        }
    }
}

/// Creates the counters of budgets for one named consumer before any traffic, so that requests
/// only ever change them by compare-and-swap (proxy-wasm cannot create a key only if absent).
pub fn prepare(host: &mut dyn Host, budgets: &[Budget]) {
    for budget in budgets {
        let key = match &budget.consumers {
            Consumers::Named(consumer) => counter_key(&budget.name, consumer),
            Consumers::Each => registry_key(&budget.name),
        };
        if host.shared_data(&key).is_none() {
            host.set_shared_data(&key, &encode(0, 0), 0);
        }
    }
}

/// The request's output cap, if its body names one (chat/Anthropic `max_tokens`, chat
/// `max_completion_tokens`, Responses `max_output_tokens`). A cap named twice or not a plain
/// integer gets the budget's default reserve. Reads the top-level members only (no new
/// deserializer in the module).
pub fn output_cap(body: &[u8]) -> Option<u64> {
    // max_completion_tokens, max_output_tokens, max_tokens: the first set wins.
    let mut caps: [Option<Option<u64>>; 3] = [None; 3];
    crate::json::for_each_member(body, |_, member| {
        let slot = match member.key.as_ref() {
            "max_completion_tokens" => 0,
            "max_output_tokens" => 1,
            "max_tokens" => 2,
            _ => return,
        };
        let value = body.get(member.value).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        if let Some(cap) = caps.get_mut(slot) {
            // Named twice: ambiguous, like a value that is not an integer.
            *cap = Some(if cap.is_some() { None } else { value });
        }
    })?;
    caps.into_iter().flatten().next().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    fn budget(name: &str, consumers: Consumers, limit: Limit, count: Count) -> Budget {
        Budget {
            name: name.into(),
            consumers,
            model: None,
            limit,
            count,
            window_secs: 60,
            default_output_reserve: 100,
            max_consumers: 10_000,
        }
    }

    fn demand<'a>(consumer: &'a str, model: &'a str, now_secs: u64) -> Demand<'a> {
        Demand { consumer, model, body_len: 400, output_cap: None, now_secs }
    }

    fn count(host: &FakeHost, key: &str) -> Option<(u64, u64)> {
        host.shared_data(key).and_then(|(b, _)| decode(&b))
    }

    fn try_request(host: &mut FakeHost, budgets: &[Budget], d: &Demand) -> Result<Vec<Charge>, Refusal> {
        let charges = plan(budgets, d);
        reserve(host, budgets, &charges, d.now_secs).map(|()| charges)
    }

    #[test]
    fn estimates_follow_the_count_kind() {
        let d = Demand { consumer: "a", model: "m", body_len: 400, output_cap: Some(30), now_secs: 0 };
        let kinds = [(Count::Total, 130), (Count::Input, 100), (Count::Output, 30)];
        for (count, expected) in kinds {
            let b = budget("b", Consumers::Each, Limit::Tokens(1000), count);
            assert_eq!(plan(&[b], &d)[0].reserved, expected, "{count:?}");
        }
        let d = Demand { output_cap: None, ..d };
        let b = budget("b", Consumers::Each, Limit::Tokens(1000), Count::Output);
        assert_eq!(plan(&[b], &d)[0].reserved, 100, "default_output_reserve");
        let b = budget("b", Consumers::Each, Limit::Requests(5), Count::Total);
        assert_eq!(plan(&[b], &d)[0].reserved, 1);
    }

    #[test]
    fn budgets_apply_by_consumer_and_model() {
        let mut gpt4o = budget("g", Consumers::Named("team-a".into()), Limit::Tokens(10), Count::Total);
        gpt4o.model = Some(ModelMatcher::Prefix("gpt-4o".into()));
        let budgets = [gpt4o, budget("all", Consumers::Each, Limit::Requests(1), Count::Total)];
        let names = |c, m| plan(&budgets, &demand(c, m, 0)).into_iter().map(|c| c.key).collect::<Vec<_>>();
        assert_eq!(names("team-a", "gpt-4o-mini"), ["llmgw.budget.g.team-a", "llmgw.budget.all.team-a"]);
        assert_eq!(names("team-a", "claude"), ["llmgw.budget.all.team-a"]);
        assert_eq!(names("team-b", "gpt-4o"), ["llmgw.budget.all.team-b"]);
    }

    #[test]
    fn reserve_refuses_past_the_limit_and_releases_what_it_reserved() {
        let mut host = FakeHost::default();
        let budgets = [
            budget("rpm", Consumers::Each, Limit::Requests(10), Count::Total),
            budget("tokens", Consumers::Named("a".into()), Limit::Tokens(450), Count::Total),
        ];
        prepare(&mut host, &budgets);
        let d = demand("a", "m", 30);
        // 200 tokens each (100 input, 100 output reserve): two fit, the third does not.
        assert!(try_request(&mut host, &budgets, &d).is_ok());
        assert!(try_request(&mut host, &budgets, &d).is_ok());
        let refusal = try_request(&mut host, &budgets, &d).unwrap_err();
        assert_eq!(refusal, Refusal::Exhausted { budget: 1, retry_after: 30 });
        assert_eq!(count(&host, "llmgw.budget.rpm.a"), Some((0, 2)), "the refused request's 1 is released");
        assert_eq!(count(&host, "llmgw.budget.tokens.a"), Some((0, 400)));
        let e = refusal.error(&budgets);
        assert_eq!((e.status, e.kind), (429, ErrorKind::RateLimit));
        assert!(
            e.headers.contains(&("retry-after", "30".into()))
                && e.headers.contains(&("x-llmgw-budget", "tokens".into()))
        );
        // A request larger than the whole budget can never fit.
        let big = Demand { body_len: 4000, ..demand("b", "m", 0) };
        let alone = [budget("t", Consumers::Each, Limit::Tokens(500), Count::Input)];
        assert!(matches!(try_request(&mut host, &alone, &big), Err(Refusal::Exhausted { .. })));
    }

    #[test]
    fn settle_replaces_the_reservation_by_the_usage_and_refunds_without_usage() {
        let mut host = FakeHost::default();
        let budgets = [
            budget("total", Consumers::Each, Limit::Tokens(1000), Count::Total),
            budget("output", Consumers::Each, Limit::Tokens(1000), Count::Output),
            budget("rpm", Consumers::Each, Limit::Requests(10), Count::Total),
        ];
        let d = demand("a", "m", 0);
        let charges = try_request(&mut host, &budgets, &d).unwrap();
        assert_eq!(count(&host, "llmgw.budget.total.a"), Some((0, 200)));
        let usage = TokenUsage { input: 7, output: 5, total: 12, ..TokenUsage::default() };
        settle(&mut host, &budgets, &charges, Some(&usage));
        assert_eq!(count(&host, "llmgw.budget.total.a"), Some((0, 12)));
        assert_eq!(count(&host, "llmgw.budget.output.a"), Some((0, 5)));
        assert_eq!(count(&host, "llmgw.budget.rpm.a"), Some((0, 1)));
        // An upstream error (no usage): tokens refunded, the request still counts.
        let charges = try_request(&mut host, &budgets, &d).unwrap();
        settle(&mut host, &budgets, &charges, None);
        assert_eq!(count(&host, "llmgw.budget.total.a"), Some((0, 12)));
        assert_eq!(count(&host, "llmgw.budget.rpm.a"), Some((0, 2)));
        // More than reserved is counted too (the overshoot the README bounds).
        let charges = try_request(&mut host, &budgets, &d).unwrap();
        let usage = TokenUsage { input: 300, output: 400, total: 700, ..TokenUsage::default() };
        settle(&mut host, &budgets, &charges, Some(&usage));
        assert_eq!(count(&host, "llmgw.budget.total.a"), Some((0, 712)));
    }

    #[test]
    fn gauges_follow_each_counter_and_its_window() {
        let mut host = FakeHost::default();
        let budgets = [budget("total", Consumers::Each, Limit::Tokens(1000), Count::Total)];
        let gauge = |host: &FakeHost, metric: &str| {
            let name = format!("{metric}.llmgw_budget=.=total;.;llmgw_consumer=.=a_b;.;");
            host.samples.iter().rev().find(|s| s.name == name).map(|s| (s.kind, s.value))
        };
        // A consumer's `;`/`=` cannot cut the stat name into other labels.
        let charges = try_request(&mut host, &budgets, &demand("a;b", "m", 61)).unwrap();
        assert_eq!(gauge(&host, BUDGET_USED), Some((Kind::Gauge, 200)));
        assert_eq!(gauge(&host, BUDGET_WINDOW_END), Some((Kind::Gauge, 120)));
        let usage = TokenUsage { input: 7, output: 5, total: 12, ..TokenUsage::default() };
        settle(&mut host, &budgets, &charges, Some(&usage));
        assert_eq!(gauge(&host, BUDGET_USED), Some((Kind::Gauge, 12)));
    }

    #[test]
    fn windows_roll_over_and_a_settle_into_a_gone_window_is_skipped() {
        let mut host = FakeHost::default();
        let budgets = [budget("rpm", Consumers::Each, Limit::Requests(1), Count::Total)];
        let tokens = [budget("t", Consumers::Each, Limit::Tokens(1000), Count::Total)];
        let charges = try_request(&mut host, &budgets, &demand("a", "m", 59)).unwrap();
        let late = try_request(&mut host, &tokens, &demand("a", "m", 59)).unwrap();
        assert!(try_request(&mut host, &budgets, &demand("a", "m", 59)).is_err());
        // The next window starts at 0, in the same key.
        assert!(try_request(&mut host, &budgets, &demand("a", "m", 60)).is_ok());
        assert_eq!(count(&host, "llmgw.budget.rpm.a"), Some((1, 1)));
        settle(&mut host, &budgets, &charges, None);
        assert_eq!(count(&host, "llmgw.budget.rpm.a"), Some((1, 1)));
        try_request(&mut host, &tokens, &demand("a", "m", 61)).unwrap();
        settle(&mut host, &tokens, &late, None);
        assert_eq!(
            count(&host, "llmgw.budget.t.a"),
            Some((1, 200)),
            "the old window's refund is not taken from the new"
        );
        // Retry-After counts to the window's end.
        let refusal = try_request(&mut host, &budgets, &demand("a", "m", 100)).unwrap_err();
        assert_eq!(refusal, Refusal::Exhausted { budget: 0, retry_after: 20 });
    }

    #[test]
    fn each_consumer_has_its_own_counter_up_to_max_consumers() {
        let mut host = FakeHost::default();
        let mut rpm = budget("rpm", Consumers::Each, Limit::Requests(1), Count::Total);
        rpm.max_consumers = 2;
        let budgets = [rpm];
        prepare(&mut host, &budgets);
        assert!(try_request(&mut host, &budgets, &demand("a", "m", 0)).is_ok());
        assert!(try_request(&mut host, &budgets, &demand("b", "m", 0)).is_ok());
        assert!(try_request(&mut host, &budgets, &demand("a", "m", 0)).is_err());
        assert_eq!(
            try_request(&mut host, &budgets, &demand("c", "m", 0)),
            Err(Refusal::TooManyConsumers { budget: 0 })
        );
        assert!(host.shared_data("llmgw.budget.rpm.c").is_none(), "no key for a refused consumer");
        let keys = host.shared.keys().filter(|k| k.starts_with("llmgw.budget.rpm.")).count();
        assert_eq!(keys, 2, "keys are bounded by max_consumers, whatever the windows");
        assert!(try_request(&mut host, &budgets, &demand("b", "m", 60)).is_ok());
        let e = Refusal::TooManyConsumers { budget: 0 }.error(&budgets);
        assert!(e.message.contains("max_consumers"), "{}", e.message);
    }

    #[test]
    fn cas_conflicts_are_retried_then_refused_with_503() {
        let mut host = FakeHost::default();
        let budgets = [budget("rpm", Consumers::Named("a".into()), Limit::Requests(5), Count::Total)];
        prepare(&mut host, &budgets);
        // Another worker wins the first three swaps: the request still gets its place.
        host.cas_conflicts = 3;
        assert!(try_request(&mut host, &budgets, &demand("a", "m", 0)).is_ok());
        assert_eq!(count(&host, "llmgw.budget.rpm.a"), Some((0, 1)));
        host.cas_conflicts = CAS_ATTEMPTS;
        let refusal = try_request(&mut host, &budgets, &demand("a", "m", 0)).unwrap_err();
        assert_eq!(refusal, Refusal::Busy { budget: 0 });
        assert_eq!(refusal.error(&budgets).status, 503);
        assert_eq!(count(&host, "llmgw.budget.rpm.a"), Some((0, 1)));
    }

    #[test]
    fn output_caps_are_read_from_any_api() {
        assert_eq!(output_cap(br#"{"model":"m","max_tokens":50}"#), Some(50));
        assert_eq!(output_cap(br#"{"max_completion_tokens":7,"max_tokens":50}"#), Some(7));
        assert_eq!(output_cap(br#"{"input":"x","max_output_tokens":9}"#), Some(9));
        assert_eq!(output_cap(br#"{"max_tokens":-1}"#), None);
        assert_eq!(output_cap(br#"{"max_tokens":1,"max_tokens":2}"#), None);
        assert_eq!(output_cap(b"not json"), None);
    }
}
