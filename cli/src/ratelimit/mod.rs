//! `llmgw ratelimit`: Envoy's rate limit service (gRPC `ShouldRateLimit`) with Kuadrant's limitador
//! doing the counting, in memory or in Redis (so several gateways share one budget).
//!
//! Mapping (as limitador-server's Envoy RLS does it): the request's `domain` is limitador's
//! namespace; a descriptor's entries are bound as `descriptors[0]` (a map key → value) for the
//! limits' CEL `conditions` and `variables`. Unlike limitador-server, each descriptor is counted
//! and answered on its own, because Envoy gives each descriptor its own `hits_addend` (a check at
//! 0 before the request, the response's tokens when the stream is done).
//!
//! Counting follows Envoy's reference service: the hits are always added (tokens spent are spent),
//! and a descriptor is OVER_LIMIT when its counter is then above the limit. So a check with 0 hits
//! is refused only once earlier charges passed the budget.

pub mod proto;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use limitador::counter::Counter;
use limitador::limit::{Context, Expression, Limit, Namespace, Predicate};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, CheckResult, RateLimiter};
use serde::Deserialize;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};

use proto::{Code, DescriptorStatus, HeaderValue, RateLimitRequest, RateLimitResponse};

/// Envoy sends a handful of descriptors of a few entries; anything far larger is refused.
pub const MAX_DESCRIPTORS: usize = 64;
pub const MAX_ENTRIES: usize = 64;
/// Largest request message accepted (Envoy's are a few hundred bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// A storage call slower than this counts as a storage failure (Envoy's own RLS timeout is
/// usually shorter; this bounds what a direct caller waits for a hung Redis).
pub const STORAGE_TIMEOUT: Duration = Duration::from_secs(1);
/// Counters kept by the in-memory storage (least recently used ones are evicted beyond this).
pub const MEMORY_COUNTERS: u64 = 100_000;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Answer OK when the counters cannot be read or written (traffic flows, unbudgeted).
    Open,
    /// Answer OVER_LIMIT when the counters cannot be read or written (nothing is spent unchecked).
    Closed,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RatelimitArgs {
    /// Limits file (YAML or JSON): a list of limitador limits
    /// `{namespace, max_value, seconds, conditions: [CEL], variables: [CEL], name}`.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Address of the gRPC listener (Envoy's rate limit service cluster points here).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Count in Redis (shared by every instance pointing at it), e.g. redis://127.0.0.1:6379;
    /// without it counters are in this process's memory.
    #[arg(long, value_name = "URL", env = "LLMGW_RATELIMIT_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// What to answer when Redis cannot be reached.
    #[arg(long, value_enum, default_value_t = FailureMode::Closed)]
    pub failure_mode: FailureMode,
    /// Also send `X-RateLimit-Limit/Remaining/Reset` (draft 03) in `response_headers_to_add`: for an
    /// Envoy rate limit filter without `enable_x_ratelimit_headers: DRAFT_VERSION_03` (with it,
    /// Envoy writes them itself from the descriptor statuses; both would duplicate them).
    #[arg(long, value_enum, default_value_t = RateLimitHeaders::None)]
    pub rate_limit_headers: RateLimitHeaders,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitHeaders {
    /// Only `Retry-After`, on OVER_LIMIT.
    None,
    /// `X-RateLimit-*` too (draft-polli-ratelimit-headers-03).
    #[value(name = "DRAFT_VERSION_03")]
    DraftVersion03,
}

// ---------------------------------------------------------------------------------------------
// limits file

/// One limit of the file: limitador's own limit format, read strictly (a misspelt `max_value`
/// must not become a limit of 0).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    namespace: String,
    max_value: u64,
    seconds: u64,
    #[serde(default)]
    conditions: Vec<String>,
    #[serde(default)]
    variables: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// The limits of a file, and per namespace the parsed conditions of its limits: they are tested on
/// each request before limitador sees it, because limitador treats a condition that fails to
/// evaluate (e.g. `int(descriptors[0].n) > 3` on a value that is not a number) as a bug and panics.
pub struct Limits {
    pub limits: Vec<Limit>,
    conditions: HashMap<Namespace, Vec<Predicate>>,
}

pub fn parse_limits(text: &str) -> anyhow::Result<Limits> {
    let specs: Vec<LimitSpec> =
        serde_yaml_ng::from_str(text).context("expected a list of {namespace, max_value, seconds, ...}")?;
    let mut limits = Vec::with_capacity(specs.len());
    let mut conditions: HashMap<Namespace, Vec<Predicate>> = HashMap::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let at = || format!("limit {i} ({})", spec.name.as_deref().unwrap_or(&spec.namespace));
        anyhow::ensure!(!spec.namespace.is_empty(), "{}: namespace is empty (it is the RLS domain)", at());
        anyhow::ensure!(spec.seconds > 0, "{}: seconds must be at least 1", at());
        let mut predicates = Vec::with_capacity(spec.conditions.len());
        for c in &spec.conditions {
            let expr = Expression::parse(c).map_err(|e| anyhow::anyhow!("{}: condition {c:?}: {e}", at()))?;
            // `limit.*` is bound by limitador only: the pre-check could not evaluate it.
            anyhow::ensure!(
                expr.variables().iter().all(|v| v == "descriptors"),
                "{}: condition {c:?}: only `descriptors` can be referenced",
                at()
            );
            predicates.push(Predicate::parse(c).map_err(|e| anyhow::anyhow!("{}: condition {c:?}: {e}", at()))?);
        }
        let mut variables = Vec::with_capacity(spec.variables.len());
        for v in &spec.variables {
            variables.push(Expression::parse(v).map_err(|e| anyhow::anyhow!("{}: variable {v:?}: {e}", at()))?);
        }
        let namespace = Namespace::from(spec.namespace.as_str());
        conditions.entry(namespace.clone()).or_default().extend(predicates.iter().cloned());
        let mut limit = match spec.id {
            Some(id) => Limit::with_id(id, namespace, spec.max_value, spec.seconds, predicates, variables),
            None => Limit::new(namespace, spec.max_value, spec.seconds, predicates, variables),
        };
        if let Some(name) = spec.name {
            limit.set_name(name);
        }
        limits.push(limit);
    }
    Ok(Limits { limits, conditions })
}

pub fn load_limits(path: &Path) -> anyhow::Result<Limits> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_limits(&text).with_context(|| format!("{}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// counting

enum Engine {
    Memory(RateLimiter),
    Redis(AsyncRateLimiter),
}

impl Engine {
    /// Adds `hits` to every counter of the descriptor, then reads them (limited = above the limit).
    async fn charge_and_check(
        &self,
        namespace: &Namespace,
        ctx: &Context<'_>,
        hits: u64,
    ) -> Result<CheckResult, limitador::errors::LimitadorError> {
        match self {
            Engine::Memory(l) => {
                if hits > 0 {
                    l.update_counters(namespace, ctx, hits)?;
                }
                l.is_rate_limited(namespace, ctx, 0)
            }
            Engine::Redis(l) => {
                if hits > 0 {
                    l.update_counters(namespace, ctx, hits).await?;
                }
                l.is_rate_limited(namespace, ctx, 0).await
            }
        }
    }
}

/// The service: limits, storage, failure mode, and counts of what went wrong.
pub struct RateLimitService {
    engine: Engine,
    conditions: HashMap<Namespace, Vec<Predicate>>,
    failure_mode: FailureMode,
    rate_limit_headers: RateLimitHeaders,
    storage_failures: AtomicU64,
    condition_failures: AtomicU64,
    failing: AtomicBool,
}

/// What one descriptor came to.
enum Verdict {
    Counted(CheckResult),
    /// The counters could not be used (storage down or slow, a condition that cannot be evaluated).
    Failed,
}

impl RateLimitService {
    /// In-memory counters (one process).
    pub fn in_memory(limits: Limits, failure_mode: FailureMode) -> anyhow::Result<RateLimitService> {
        let limiter = RateLimiter::new(MEMORY_COUNTERS);
        limiter.configure_with(limits.limits).map_err(|e| anyhow::anyhow!("limits: {e}"))?;
        Ok(Self::with_engine(Engine::Memory(limiter), limits.conditions, failure_mode))
    }

    /// Counters in Redis; fails when Redis cannot be reached now (a typo should not start a
    /// service that fails every call).
    pub async fn redis(url: &str, limits: Limits, failure_mode: FailureMode) -> anyhow::Result<RateLimitService> {
        let storage = tokio::time::timeout(Duration::from_secs(5), AsyncRedisStorage::new(url))
            .await
            .map_err(|_| anyhow::anyhow!("Redis at {}: not connected within 5 s", redact_url(url)))?
            .map_err(|e| anyhow::anyhow!("Redis at {}: {e}", redact_url(url)))?;
        let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
        limiter.configure_with(limits.limits).await.map_err(|e| anyhow::anyhow!("limits: {e}"))?;
        Ok(Self::with_engine(Engine::Redis(limiter), limits.conditions, failure_mode))
    }

    fn with_engine(
        engine: Engine,
        conditions: HashMap<Namespace, Vec<Predicate>>,
        failure_mode: FailureMode,
    ) -> RateLimitService {
        RateLimitService {
            engine,
            conditions,
            failure_mode,
            rate_limit_headers: RateLimitHeaders::None,
            storage_failures: AtomicU64::new(0),
            condition_failures: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    pub fn with_rate_limit_headers(mut self, headers: RateLimitHeaders) -> RateLimitService {
        self.rate_limit_headers = headers;
        self
    }

    /// Descriptors answered by the failure mode since start (storage failures and conditions that
    /// could not be evaluated).
    pub fn storage_failures(&self) -> u64 {
        self.storage_failures.load(Ordering::Relaxed)
    }

    pub async fn should_rate_limit(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        if req.domain.is_empty() {
            return Err(tonic::Status::invalid_argument("domain is empty"));
        }
        if req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(tonic::Status::invalid_argument(format!("more than {MAX_DESCRIPTORS} descriptors")));
        }
        if req.descriptors.iter().any(|d| d.entries.len() > MAX_ENTRIES) {
            return Err(tonic::Status::invalid_argument(format!("a descriptor has more than {MAX_ENTRIES} entries")));
        }
        let namespace = Namespace::from(req.domain.as_str());
        let mut statuses = Vec::with_capacity(req.descriptors.len());
        // The counter closest to its limit over all descriptors: it gives the response headers.
        let mut tightest: Option<Counter> = None;
        for d in &req.descriptors {
            // Envoy's rule: the descriptor's own hits_addend, else the request's, else 1.
            let hits = match (d.hits_addend, req.hits_addend) {
                (Some(h), _) => h.value,
                (None, 0) => 1,
                (None, h) => u64::from(h),
            };
            let entries: HashMap<String, String> = d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
            let mut ctx = Context::default();
            ctx.list_binding("descriptors".to_string(), vec![entries]);
            let verdict = self.count(&namespace, &ctx, hits).await;
            let status = match verdict {
                Verdict::Counted(result) => {
                    let counter = most_restrictive(result.counters);
                    let status = descriptor_status(result.limited, counter.as_ref());
                    if let Some(c) = counter {
                        if tightest.as_ref().is_none_or(|t| remaining(&c) < remaining(t)) {
                            tightest = Some(c);
                        }
                    }
                    status
                }
                Verdict::Failed => DescriptorStatus {
                    code: match self.failure_mode {
                        FailureMode::Open => Code::Ok,
                        FailureMode::Closed => Code::OverLimit,
                    } as i32,
                    ..Default::default()
                },
            };
            statuses.push(status);
        }
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            response_headers_to_add: tightest.map(|c| headers(&c, over, self.rate_limit_headers)).unwrap_or_default(),
            statuses,
        })
    }

    async fn count(&self, namespace: &Namespace, ctx: &Context<'_>, hits: u64) -> Verdict {
        for p in self.conditions.get(namespace).into_iter().flatten() {
            if let Err(e) = p.test(ctx) {
                let n = self.condition_failures.fetch_add(1, Ordering::Relaxed) + 1;
                self.storage_failures.fetch_add(1, Ordering::Relaxed);
                // Descriptor values come from clients: log the 1st, 2nd, 4th, 8th... only.
                if n.is_power_of_two() {
                    eprintln!(
                        "llmgw ratelimit: a condition of namespace {:?} cannot be evaluated on a descriptor ({e}); answered per --failure-mode ({n} so far)",
                        namespace.as_ref()
                    );
                }
                return Verdict::Failed;
            }
        }
        match tokio::time::timeout(STORAGE_TIMEOUT, self.engine.charge_and_check(namespace, ctx, hits)).await {
            Ok(Ok(result)) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    eprintln!(
                        "llmgw ratelimit: storage is back ({} calls answered by --failure-mode so far)",
                        self.storage_failures()
                    );
                }
                Verdict::Counted(result)
            }
            failed => {
                let n = self.storage_failures.fetch_add(1, Ordering::Relaxed) + 1;
                // One line when the storage starts failing, not one per call.
                if !self.failing.swap(true, Ordering::Relaxed) {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer in {} ms", STORAGE_TIMEOUT.as_millis()),
                    };
                    let mode = match self.failure_mode {
                        FailureMode::Open => "open: answering OK",
                        FailureMode::Closed => "closed: answering OVER_LIMIT",
                    };
                    eprintln!("llmgw ratelimit: storage failing ({why}); failure mode {mode} (failure #{n})");
                }
                Verdict::Failed
            }
        }
    }
}

fn remaining(c: &Counter) -> u64 {
    c.remaining().unwrap_or(c.max_value())
}

fn most_restrictive(counters: Vec<Counter>) -> Option<Counter> {
    counters.into_iter().min_by_key(remaining)
}

/// Seconds until `c`'s window resets, rounded up (a client told 0 would retry at once).
fn reset_secs(c: &Counter) -> u64 {
    let d = c.expires_in().unwrap_or(c.window());
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn descriptor_status(limited: bool, counter: Option<&Counter>) -> DescriptorStatus {
    let code = if limited { Code::OverLimit } else { Code::Ok } as i32;
    let Some(c) = counter else {
        return DescriptorStatus { code, ..Default::default() };
    };
    let reset = c.expires_in().unwrap_or(c.window());
    DescriptorStatus {
        code,
        current_limit: Some(proto::RateLimit {
            requests_per_unit: u32::try_from(c.max_value()).unwrap_or(u32::MAX),
            unit: proto::Unit::of_window(c.window().as_secs()) as i32,
            name: c.limit().name().unwrap_or_default().to_string(),
        }),
        limit_remaining: u32::try_from(remaining(c)).unwrap_or(u32::MAX),
        duration_until_reset: Some(proto::Duration {
            seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
        }),
    }
}

/// `Retry-After` when over the limit (Envoy has no header of its own for it), and when asked the
/// `X-RateLimit-*` of draft-polli-ratelimit-headers-03 (what Envoy's `enable_x_ratelimit_headers:
/// DRAFT_VERSION_03` writes), from the tightest counter. Envoy adds these to its 429 (and to OK
/// responses).
fn headers(c: &Counter, over: bool, draft: RateLimitHeaders) -> Vec<HeaderValue> {
    let h = |k: &str, v: String| HeaderValue { key: k.to_string(), value: v };
    let reset = reset_secs(c);
    let mut out = Vec::with_capacity(4);
    if draft == RateLimitHeaders::DraftVersion03 {
        out.push(h("x-ratelimit-limit", format!("{}, {};w={}", c.max_value(), c.max_value(), c.window().as_secs())));
        out.push(h("x-ratelimit-remaining", remaining(c).to_string()));
        out.push(h("x-ratelimit-reset", reset.to_string()));
    }
    if over {
        out.push(h("retry-after", reset.max(1).to_string()));
    }
    out
}

/// `redis://user:secret@host` → `redis://***@host`: URLs are printed without their credentials.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("***@{}", authority.get(at + 1..).unwrap_or_default()),
        None => authority.to_string(),
    };
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC glue (what tonic-build would generate for the one unary method)

/// The tonic service serving `ShouldRateLimit` from a [`RateLimitService`].
#[derive(Clone)]
pub struct RlsServer(pub Arc<RateLimitService>);

impl tonic::server::NamedService for RlsServer {
    const NAME: &'static str = proto::SERVICE;
}

struct ShouldRateLimit(Arc<RateLimitService>);

impl tonic::server::UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<tonic::Response<RateLimitResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<RateLimitRequest>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move { service.should_rate_limit(request.get_ref()).await.map(tonic::Response::new) })
    }
}

impl<B> Service<http::Request<B>> for RlsServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != proto::SHOULD_RATE_LIMIT_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("only ShouldRateLimit is served").into_http()) });
        }
        let service = Arc::clone(&self.0);
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<RateLimitResponse, RateLimitRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
            Ok(grpc.unary(ShouldRateLimit(service), req).await)
        })
    }
}

/// Serves `service` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<RateLimitService>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(RlsServer(service))
        // Without TCP_NODELAY each answer waits for Envoy's delayed ACK (Nagle): ~40 ms a call.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .context("rate limit service")
}

/// A client call (tests, `llmgw` tooling): one `ShouldRateLimit` over `channel`.
pub async fn call(
    channel: tonic::transport::Channel,
    request: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<RateLimitRequest, RateLimitResponse>::default();
    let path = http::uri::PathAndQuery::from_static(proto::SHOULD_RATE_LIMIT_PATH);
    grpc.unary(tonic::Request::new(request), path, codec).await.map(tonic::Response::into_inner)
}

/// `llmgw ratelimit`.
pub fn main(args: RatelimitArgs) -> anyhow::Result<i32> {
    let limits = load_limits(&args.config)?;
    let count = limits.limits.len();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (service, storage) = match &args.redis {
            Some(url) => (RateLimitService::redis(url, limits, args.failure_mode).await?, redact_url(url)),
            None => (RateLimitService::in_memory(limits, args.failure_mode)?, "memory".to_string()),
        };
        let service = service.with_rate_limit_headers(args.rate_limit_headers);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        // First stdout line, for scripts and tests that listen on port 0 (as mock-provider does).
        println!("listening {addr}");
        eprintln!(
            "llmgw ratelimit: {count} limits from {}, counters in {storage}, failure mode {:?}; gRPC {} on {addr}",
            args.config.display(),
            args.failure_mode,
            proto::SERVICE
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(listener, Arc::new(service), shutdown).await?;
        Ok(0)
    })
}
