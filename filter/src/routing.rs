//! Rule matching (model and request headers) and weighted backend choice.

use std::cell::Cell;

#[derive(Debug)]
pub enum ModelMatcher {
    Exact(String),
    Prefix(String),
    Glob(Glob),
    Regex(regex_lite::Regex),
}

impl ModelMatcher {
    pub fn matches(&self, model: &str) -> bool {
        match self {
            ModelMatcher::Exact(m) => model == m,
            ModelMatcher::Prefix(p) => model.starts_with(p.as_str()),
            ModelMatcher::Glob(g) => g.matches(model),
            ModelMatcher::Regex(r) => r.is_match(model),
        }
    }
}

#[derive(Debug)]
pub enum ValueMatcher {
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
    Present(bool),
}

#[derive(Debug)]
pub struct HeaderMatcher {
    /// Lower-case header name.
    pub name: String,
    pub matcher: ValueMatcher,
}

impl HeaderMatcher {
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.matcher, value) {
            (ValueMatcher::Present(want), v) => *want == v.is_some(),
            (_, None) => false,
            (ValueMatcher::Exact(e), Some(v)) => v == e,
            (ValueMatcher::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (ValueMatcher::Regex(r), Some(v)) => r.is_match(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Index into the rule's `targets`.
    pub target: usize,
    pub weight: u32,
}

/// One backend of a rule, as the rule uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into `Compiled::backends` (a copy of the backend when the rule overrides its model).
    pub backend: usize,
    /// Envoy priority level: 0 first; higher levels serve when the lower ones fail.
    pub priority: u32,
    /// Share of traffic within its priority.
    pub weight: u32,
}

/// A rule whose requests Envoy retries across its backends: the downstream filter names the rule's
/// cluster, and the filter's upstream copy translates each attempt for the backend Envoy picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Attempts per request, the first included.
    pub attempts: u32,
    pub retry_on: Vec<RetryOn>,
    pub per_try_timeout_ms: Option<u64>,
    /// Time to the response headers before an attempt is abandoned for the next backend.
    pub first_byte_timeout_ms: Option<u64>,
}

/// What makes an attempt fail over to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    /// Any 5xx answer (and connect failures, resets, timeouts, as Envoy's `5xx` does).
    Status5xx,
    /// 502, 503, 504.
    GatewayError,
    /// One HTTP status, e.g. 429.
    Status(u16),
}

impl RetryOn {
    pub const DEFAULT: &'static [RetryOn] =
        &[RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Status5xx, RetryOn::Status(429)];

    pub fn parse(name: &str) -> Option<RetryOn> {
        match name {
            "connect-failure" => Some(RetryOn::ConnectFailure),
            "reset" => Some(RetryOn::Reset),
            "5xx" => Some(RetryOn::Status5xx),
            "gateway-error" => Some(RetryOn::GatewayError),
            _ => name.parse::<u16>().ok().filter(|s| (400..600).contains(s)).map(RetryOn::Status),
        }
    }

    /// Whether an attempt answered with `status` is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        match self {
            RetryOn::Status5xx => (500..600).contains(&status),
            RetryOn::GatewayError => matches!(status, 502..=504),
            RetryOn::Status(s) => *s == status,
            RetryOn::ConnectFailure | RetryOn::Reset => false,
        }
    }
}

impl Fallback {
    pub fn retries_status(&self, status: u16) -> bool {
        self.retry_on.iter().any(|r| r.retries_status(status))
    }
}

/// Smooth weighted round-robin (as in nginx): over every window of `sum(weights)` picks each backend
/// is chosen exactly `weight` times, interleaved rather than in runs. State is per rule and per VM.
pub struct Balancer {
    backends: Vec<WeightedBackend>,
    total: i64,
    current: Cell<Vec<i64>>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer").field("backends", &self.backends).finish_non_exhaustive()
    }
}

impl Balancer {
    /// `None` when no backend has a positive weight.
    pub fn new(all: Vec<WeightedBackend>) -> Option<Balancer> {
        let backends: Vec<WeightedBackend> = all.into_iter().filter(|b| b.weight > 0).collect();
        let total: i64 = backends.iter().map(|b| i64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let current = Cell::new(vec![0; backends.len()]);
        Some(Balancer { backends, total, current })
    }

    /// The target (index into the rule's `targets`) for the next request.
    pub fn pick(&self) -> usize {
        if let [only] = self.backends.as_slice() {
            return only.target;
        }
        let mut current = self.current.take();
        current.resize(self.backends.len(), 0);
        for (c, b) in current.iter_mut().zip(&self.backends) {
            *c += i64::from(b.weight);
        }
        // Highest current weight wins; ties go to the earlier backend.
        let best =
            current.iter().enumerate().max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia))).map_or(0, |(i, _)| i);
        if let Some(c) = current.get_mut(best) {
            *c -= self.total;
        }
        self.current.set(current);
        self.backends.get(best).map_or(0, |b| b.target)
    }
}

#[derive(Debug)]
pub struct Rule {
    pub name: Option<String>,
    pub model: Option<ModelMatcher>,
    pub headers: Vec<HeaderMatcher>,
    /// The rule's backends, in configuration order (never empty).
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    /// Set when Envoy retries the rule's requests across its backends.
    pub fallback: Option<Fallback>,
    /// The rule's response cache.
    pub cache: Option<crate::cache::Policy>,
}

impl Rule {
    /// A rule that matches everything and sends it to one backend.
    pub fn default_to(index: usize) -> Rule {
        let balancer = Balancer {
            backends: vec![WeightedBackend { target: 0, weight: 1 }],
            total: 1,
            current: Cell::new(vec![0]),
        };
        let targets = vec![Target { backend: index, priority: 0, weight: 1 }];
        Rule { name: None, model: None, headers: Vec::new(), targets, balancer, fallback: None, cache: None }
    }

    /// The backend (index into `Compiled::backends`) for the next request, by weight.
    pub fn pick_backend(&self) -> usize {
        self.targets.get(self.balancer.pick()).or(self.targets.first()).map_or(0, |t| t.backend)
    }

    pub fn matches<'h>(&self, model: &str, header: &dyn Fn(&str) -> Option<&'h str>) -> bool {
        self.model.as_ref().is_none_or(|m| m.matches(model)) && self.headers.iter().all(|h| h.matches(header(&h.name)))
    }
}

/// The first rule matching the request, in configuration order.
pub fn find_rule<'r, 'h>(
    rules: &'r [Rule],
    model: &str,
    header: &dyn Fn(&str) -> Option<&'h str>,
) -> Option<(usize, &'r Rule)> {
    rules.iter().enumerate().find(|(_, r)| r.matches(model, header))
}

/// A glob with `*` (any run, possibly empty) and `?` (one character), split into characters once,
/// at configure time. Matching is iterative with one backtrack point, so no pattern can blow up,
/// and walks the model name in place.
#[derive(Debug)]
pub struct Glob(Vec<char>);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.chars().collect())
    }

    pub fn matches(&self, text: &str) -> bool {
        let p = &self.0;
        // `ti` is a byte offset into `text`; `backtrack` remembers the last `*` and where it resumed.
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        while let Some(c) = text.get(ti..).and_then(|rest| rest.chars().next()) {
            match p.get(pi) {
                Some('*') => {
                    backtrack = Some((pi, ti));
                    pi += 1;
                }
                Some(&pc) if pc == '?' || pc == c => {
                    pi += 1;
                    ti += c.len_utf8();
                }
                _ => {
                    let Some((star, resumed)) = backtrack else { return false };
                    // Let the `*` take one more character and try again after it.
                    let taken = text.get(resumed..).and_then(|rest| rest.chars().next()).map_or(1, char::len_utf8);
                    pi = star + 1;
                    ti = resumed + taken;
                    backtrack = Some((star, ti));
                }
            }
        }
        p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == '*'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob_matches(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).matches(text)
    }

    #[test]
    fn globs() {
        assert!(glob_matches("gpt-*", "gpt-4o"));
        assert!(glob_matches("gpt-*", "gpt-"));
        assert!(!glob_matches("gpt-*", "gpt"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*mini", "gpt-4o-mini"));
        assert!(glob_matches("a*b*c", "aXXbYYbZc"));
        assert!(!glob_matches("a*b*c", "aXXbYYbZ"));
        assert!(glob_matches("qwen?.5:*", "qwen2.5:0.5b"));
        assert!(!glob_matches("qwen?.5", "qwen22.5"));
        assert!(glob_matches("ü*", "über"));
        assert!(glob_matches("*ber", "über"));
        assert!(glob_matches("?ber", "über"));
        assert!(!glob_matches("?", "üb"));
        assert!(glob_matches("a*é?", "aXXéé"));
        let long = "a".repeat(5000);
        assert!(!glob_matches("*a*a*a*a*a*b", &long));
    }

    fn balancer(weights: &[u32]) -> Balancer {
        Balancer::new(weights.iter().enumerate().map(|(target, &weight)| WeightedBackend { target, weight }).collect())
            .unwrap()
    }

    #[test]
    fn weights_are_exact_over_each_window() {
        let b = balancer(&[3, 1]);
        for _ in 0..100 {
            let mut counts = [0; 2];
            for _ in 0..4 {
                counts[b.pick()] += 1;
            }
            assert_eq!(counts, [3, 1]);
        }
    }

    #[test]
    fn weights_interleave_and_skip_zero() {
        let b = balancer(&[1, 0, 1]);
        let picks: Vec<usize> = (0..6).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2, 0, 2]);
        let b = balancer(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        assert!(Balancer::new(vec![WeightedBackend { target: 0, weight: 0 }]).is_none());
    }

    #[test]
    fn header_matchers() {
        let h = HeaderMatcher { name: "x".into(), matcher: ValueMatcher::Present(false) };
        assert!(h.matches(None));
        assert!(!h.matches(Some("")));
        let h = HeaderMatcher { name: "x".into(), matcher: ValueMatcher::Prefix("ab".into()) };
        assert!(h.matches(Some("abc")));
        assert!(!h.matches(None));
    }
}
