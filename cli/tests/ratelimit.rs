//! `llmgw ratelimit`: Envoy's RLS gRPC API served with limitador counting, called with a tonic
//! client. Redis tests start Debian's `redis-server` on a free port (installed by `make deb-tools`;
//! skipped with a message only when it is not installed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmgw::ratelimit::proto::{
    Code, DescriptorStatus, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, UInt64Value, Unit,
};
use llmgw::ratelimit::{self, FailureMode, RateLimitHeaders, RateLimitService};
use prost::Message;

const LIMITS: &str = r#"
# 3 requests a minute per consumer on "requests"; 100 tokens a day per consumer on "tokens".
- namespace: llmgw
  name: requests
  max_value: 3
  seconds: 60
  conditions: ["descriptors[0].kind == 'requests'"]
  variables: ["descriptors[0].consumer"]
- namespace: llmgw
  name: tokens
  max_value: 100
  seconds: 86400
  conditions: ["descriptors[0].kind == 'tokens'"]
  variables: ["descriptors[0].consumer"]
- namespace: llmgw
  name: numeric
  max_value: 1
  seconds: 60
  conditions: ["has(descriptors[0].n) && int(descriptors[0].n) > 3"]
"#;

// ---------------------------------------------------------------------------------------------
// helpers

fn descriptor(kind: &str, consumer: &str, hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![
            Entry { key: "kind".into(), value: kind.into() },
            Entry { key: "consumer".into(), value: consumer.into() },
        ],
        limit: None,
        hits_addend: hits.map(|value| UInt64Value { value }),
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitRequest {
    RateLimitRequest { domain: "llmgw".into(), descriptors, hits_addend }
}

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add.iter().find(|h| h.key == name).map(|h| h.value.as_str())
}

fn only(r: &RateLimitResponse) -> &DescriptorStatus {
    assert_eq!(r.statuses.len(), 1, "{r:?}");
    &r.statuses[0]
}

/// A service in this process on a free port; the server task ends with the runtime.
async fn start(service: RateLimitService) -> (SocketAddr, Arc<RateLimitService>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = Arc::new(service);
    let s = Arc::clone(&service);
    tokio::spawn(async move { ratelimit::serve(listener, s, std::future::pending()).await });
    (addr, service)
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("rate limit service at {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn call(ch: &tonic::transport::Channel, req: RateLimitRequest) -> RateLimitResponse {
    ratelimit::call(ch.clone(), req).await.expect("ShouldRateLimit")
}

fn limits() -> ratelimit::Limits {
    ratelimit::parse_limits(LIMITS).expect("limits")
}

/// Debian's redis-server on a free loopback port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start(test: &str) -> Option<Redis> {
        let Some(bin) = which("redis-server") else {
            common::skip(&format!("{test}: redis-server is not installed (make deb-tools installs it)"));
            return None;
        };
        let port = common::free_port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let redis = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `llmgw ratelimit` as a subprocess, killed on drop.
struct Binary(Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_binary(limits_file: &std::path::Path, port: u16, redis: &str, mode: &str) -> Binary {
    Binary(
        Command::new(common::LLMGW)
            .args(["ratelimit", "--config"])
            .arg(limits_file)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--redis", redis, "--failure-mode", mode])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn llmgw ratelimit"),
    )
}

// ---------------------------------------------------------------------------------------------
// wire format

/// The field numbers are Envoy's: bytes written by hand from rls.proto / ratelimit.proto.
#[test]
fn messages_use_envoys_field_numbers() {
    let req = RateLimitRequest {
        domain: "d".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry { key: "k".into(), value: "v".into() }],
            limit: None,
            hits_addend: Some(UInt64Value { value: 5 }),
        }],
        hits_addend: 3,
    };
    let expected: &[u8] = &[
        0x0a, 0x01, b'd', // domain = 1
        0x12, 0x0c, // descriptors = 2, 12 bytes
        0x0a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // entries = 1 {key = 1, value = 2}
        0x1a, 0x02, 0x08, 0x05, // hits_addend = 3 (UInt64Value {value = 1})
        0x18, 0x03, // hits_addend = 3
    ];
    assert_eq!(req.encode_to_vec(), expected);
    assert_eq!(RateLimitRequest::decode(expected).expect("decode"), req);

    // What Envoy reads back: overall_code = 1, statuses = 2 {code = 1, current_limit = 2
    // {requests_per_unit = 1, unit = 2, name = 3}, limit_remaining = 3, duration_until_reset = 4
    // {seconds = 1}}, response_headers_to_add = 3 {key = 1, value = 2}.
    let wire: &[u8] = &[
        0x08, 0x02, // overall_code OVER_LIMIT
        0x12, 0x11, 0x08, 0x02, // statuses: code OVER_LIMIT
        0x12, 0x07, 0x08, 0x0a, 0x10, 0x04, 0x1a, 0x01, b'n', // current_limit 10/DAY "n"
        0x18, 0x00, // limit_remaining 0 (explicit)
        0x22, 0x02, 0x08, 0x07, // duration_until_reset 7 s
        0x1a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b', // header a: b
    ];
    let resp = RateLimitResponse::decode(wire).expect("decode");
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    let s = only(&resp);
    let limit = s.current_limit.as_ref().expect("current_limit");
    assert_eq!((limit.requests_per_unit, limit.unit, limit.name.as_str()), (10, Unit::Day as i32, "n"));
    assert_eq!(s.duration_until_reset.map(|d| d.seconds), Some(7));
    assert_eq!(header(&resp, "a"), Some("b"));
}

// ---------------------------------------------------------------------------------------------
// limits file

#[test]
fn limits_file_is_read_strictly() {
    assert_eq!(limits().limits.len(), 3);
    let err = |text: &str| ratelimit::parse_limits(text).err().map(|e| format!("{e:#}")).unwrap_or_default();
    // A misspelt max_value must not silently become a limit of 0.
    assert!(err("- {namespace: a, max_values: 3, seconds: 1}").contains("max_values"));
    assert!(err("- {namespace: a, max_value: 3, seconds: 0}").contains("seconds"));
    assert!(
        err("- {namespace: a, max_value: 3, seconds: 1, conditions: [\"descriptors[0].x ==\"]}").contains("condition")
    );
    assert!(err("- {namespace: a, max_value: 3, seconds: 1, conditions: [\"limit.name == 'x'\"]}")
        .contains("only `descriptors`"));
    assert!(err("- {namespace: '', max_value: 3, seconds: 1}").contains("namespace"));
    // JSON is YAML too.
    assert!(ratelimit::parse_limits(r#"[{"namespace": "a", "max_value": 3, "seconds": 1}]"#).is_ok());
}

#[test]
fn redis_url_credentials_are_redacted() {
    assert_eq!(ratelimit::redact_url("redis://user:s3cret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
    assert_eq!(ratelimit::redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
}

// ---------------------------------------------------------------------------------------------
// counting, in memory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_limit_ok_then_over_limit_with_reset() {
    let service = RateLimitService::in_memory(limits(), FailureMode::Closed)
        .expect("service")
        .with_rate_limit_headers(RateLimitHeaders::DraftVersion03);
    let (addr, _) = start(service).await;
    let ch = channel(addr).await;
    for expected_remaining in [2, 1, 0] {
        let r = call(&ch, request(vec![descriptor("requests", "team-a", None)], 0)).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
        let s = only(&r);
        assert_eq!(s.limit_remaining, expected_remaining);
        let limit = s.current_limit.as_ref().expect("current_limit");
        assert_eq!((limit.requests_per_unit, limit.unit, limit.name.as_str()), (3, Unit::Minute as i32, "requests"));
        assert_eq!(header(&r, "x-ratelimit-remaining"), Some(expected_remaining.to_string().as_str()));
        assert_eq!(header(&r, "retry-after"), None);
    }
    let r = call(&ch, request(vec![descriptor("requests", "team-a", None)], 0)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{r:?}");
    let s = only(&r);
    assert_eq!((s.code, s.limit_remaining), (Code::OverLimit as i32, 0));
    let reset = s.duration_until_reset.expect("duration_until_reset");
    assert!(reset.seconds > 0 && reset.seconds <= 60, "{reset:?}");
    let retry: u64 = header(&r, "retry-after").expect("retry-after").parse().expect("number");
    assert!((1..=60).contains(&retry));
    assert_eq!(header(&r, "x-ratelimit-limit"), Some("3, 3;w=60"));
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));

    // Counters are per consumer (the limit's variable); a descriptor no limit matches is OK.
    let r = call(&ch, request(vec![descriptor("requests", "team-b", None)], 0)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    let r = call(&ch, request(vec![descriptor("other", "team-a", None)], 0)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(only(&r).current_limit, None);
    assert!(r.response_headers_to_add.is_empty());

    // Several descriptors: one status each, OVER_LIMIT overall when any is.
    let r = call(&ch, request(vec![descriptor("requests", "team-c", None), descriptor("requests", "team-a", None)], 0))
        .await;
    let codes: Vec<i32> = r.statuses.iter().map(|s| s.code).collect();
    assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32]);
    assert_eq!(r.overall_code, Code::OverLimit as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_or_answered_without_panicking() {
    let (addr, service) = start(RateLimitService::in_memory(limits(), FailureMode::Closed).expect("service")).await;
    let ch = channel(addr).await;
    let too_many = request((0..=ratelimit::MAX_DESCRIPTORS).map(|_| descriptor("requests", "x", None)).collect(), 0);
    let err = ratelimit::call(ch.clone(), too_many).await.expect_err("too many descriptors");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = ratelimit::call(ch.clone(), RateLimitRequest::default()).await.expect_err("no domain");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A condition that cannot be evaluated on the value (not a number): limitador would panic;
    // the service answers by its failure mode (closed) and keeps serving.
    let bad =
        RateLimitDescriptor { entries: vec![Entry { key: "n".into(), value: "abc".into() }], ..Default::default() };
    let r = call(&ch, request(vec![bad], 0)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(service.storage_failures(), 1);
    let good =
        RateLimitDescriptor { entries: vec![Entry { key: "n".into(), value: "7".into() }], ..Default::default() };
    assert_eq!(call(&ch, request(vec![good], 0)).await.overall_code, Code::Ok as i32);
}

// ---------------------------------------------------------------------------------------------
// counting in Redis

/// Tokens are charged with hits_addend (Envoy's per-descriptor one, else the request's); a check
/// at 0 adds nothing and is refused once the charges passed the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_addend_charges_tokens_in_redis() {
    let Some(redis) = Redis::start("hits_addend_charges_tokens_in_redis") else { return };
    let service = RateLimitService::redis(&redis.url(), limits(), FailureMode::Closed).await.expect("service");
    let (addr, _) = start(service).await;
    let ch = channel(addr).await;
    let check = || request(vec![descriptor("tokens", "team-a", Some(0))], 0);
    let r = call(&ch, check()).await;
    assert_eq!((r.overall_code, only(&r).limit_remaining), (Code::Ok as i32, 100));
    let r = call(&ch, request(vec![descriptor("tokens", "team-a", Some(60))], 0)).await;
    assert_eq!((r.overall_code, only(&r).limit_remaining), (Code::Ok as i32, 40));
    // The request-level hits_addend counts when the descriptor has none.
    let r = call(&ch, request(vec![descriptor("tokens", "team-a", None)], 30)).await;
    assert_eq!((r.overall_code, only(&r).limit_remaining), (Code::Ok as i32, 10));
    assert_eq!(call(&ch, check()).await.overall_code, Code::Ok as i32);
    // Spent tokens are always charged, even past the budget; then checks are refused.
    let r = call(&ch, request(vec![descriptor("tokens", "team-a", Some(13))], 0)).await;
    assert_eq!((r.overall_code, only(&r).limit_remaining), (Code::OverLimit as i32, 0));
    let r = call(&ch, check()).await;
    assert_eq!((r.overall_code, only(&r).limit_remaining), (Code::OverLimit as i32, 0));
    let reset = only(&r).duration_until_reset.expect("reset").seconds;
    assert!(reset > 86_000 && reset <= 86_400, "{reset}");
    // By default only Retry-After: Envoy writes X-RateLimit-* itself from the statuses.
    let keys: Vec<&str> = r.response_headers_to_add.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(keys, ["retry-after"]);
    assert_eq!(only(&r).current_limit.as_ref().map(|l| l.unit), Some(Unit::Day as i32));
    // Another consumer has its own budget.
    assert_eq!(
        call(&ch, request(vec![descriptor("tokens", "team-b", Some(0))], 0)).await.overall_code,
        Code::Ok as i32
    );
}

/// Two instances (this process, and the `llmgw ratelimit` binary) on one Redis: one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_enforce_one_budget() {
    let Some(redis) = Redis::start("two_instances_sharing_redis_enforce_one_budget") else { return };
    let dir = common::temp_dir("ratelimit-two");
    let file = dir.join("limits.yaml");
    std::fs::write(&file, LIMITS).expect("write limits");
    let port_b = common::free_port();
    let _b = spawn_binary(&file, port_b, &redis.url(), "closed");
    let service = RateLimitService::redis(&redis.url(), limits(), FailureMode::Closed).await.expect("service");
    let (addr_a, _) = start(service).await;
    let (a, b) = (channel(addr_a).await, channel(SocketAddr::from(([127, 0, 0, 1], port_b))).await);
    let charge = |n| request(vec![descriptor("tokens", "shared", Some(n))], 0);
    let mut remaining = Vec::new();
    for (ch, n) in [(&a, 30), (&b, 30), (&a, 30)] {
        let r = call(ch, charge(n)).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
        remaining.push(only(&r).limit_remaining);
    }
    assert_eq!(remaining, [70, 40, 10]);
    let r = call(&b, charge(0)).await;
    assert_eq!((r.overall_code, only(&r).limit_remaining), (Code::Ok as i32, 10));
    assert_eq!(call(&b, charge(30)).await.overall_code, Code::OverLimit as i32);
    assert_eq!(call(&a, charge(0)).await.overall_code, Code::OverLimit as i32);
    let _ = std::fs::remove_dir_all(dir);
}

/// Redis killed mid-test: `--failure-mode open` answers OK, `closed` answers OVER_LIMIT, and both
/// count the calls they answered that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_the_configured_failure_mode() {
    let Some(mut redis) = Redis::start("redis_down_gives_the_configured_failure_mode") else { return };
    let open = RateLimitService::redis(&redis.url(), limits(), FailureMode::Open).await.expect("open");
    let closed = RateLimitService::redis(&redis.url(), limits(), FailureMode::Closed).await.expect("closed");
    let ((addr_open, open), (addr_closed, closed)) = (start(open).await, start(closed).await);
    let (ch_open, ch_closed) = (channel(addr_open).await, channel(addr_closed).await);
    let req = || request(vec![descriptor("tokens", "team-a", Some(1))], 0);
    assert_eq!(call(&ch_open, req()).await.overall_code, Code::Ok as i32);
    assert_eq!(call(&ch_closed, req()).await.overall_code, Code::Ok as i32);
    assert_eq!((open.storage_failures(), closed.storage_failures()), (0, 0));

    redis.kill();
    let r = call(&ch_open, req()).await;
    assert_eq!((r.overall_code, only(&r).code), (Code::Ok as i32, Code::Ok as i32), "{r:?}");
    let r = call(&ch_closed, req()).await;
    assert_eq!((r.overall_code, only(&r).code), (Code::OverLimit as i32, Code::OverLimit as i32), "{r:?}");
    assert_eq!((open.storage_failures(), closed.storage_failures()), (1, 1));
}
