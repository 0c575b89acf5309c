//! The admin port (:1064), served by `llmgw run` itself:
//! * `/metrics` — Envoy's `/stats/prometheus` (the filter's GenAI metrics with their labels, and
//!   Envoy's own), query string passed through (`/metrics?filter=gen_ai`).
//!   Without a query, llmgw adds `llmgw_wasm_vm_traps_total` and `llmgw_wasm_vms_down` (below).
//! * `/health` — `200 OK` only when Envoy's admin says `LIVE`, a request through the listener
//!   is answered by the filter (`GET /v1/models` is answered by the filter itself, so this proves
//!   the filter is loaded and configured), *and* no worker's filter VM is down; `503` with the
//!   reason otherwise.
//!
//! A VM that is down on one worker: Envoy 1.40 has no stat for it. A trap (a Wasm `unreachable`,
//! memory exhausted) is logged by Envoy as `[error][wasm] ... Function: proxy_on_... failed:
//! Uncaught RuntimeError: ...` on the worker's thread; with `failure_policy: FAIL_RELOAD` that
//! VM is replaced on the worker's next request (at most once per second: requests inside the
//! backoff get 503 and count `wasm.llmgw.vm_reload_backoff`), and each replacement counts
//! `wasm.llmgw.vm_reload_success` (or `vm_reload_failure`). `llmgw run` reads Envoy's log as it
//! forwards it ([`VmWatch`]), so VMs down = traps seen − reloads that succeeded. When some are
//! down, `/health` first sends a few probes on fresh connections (the kernel spreads them over
//! the workers; one that lands on the trapped worker replaces its VM), then judges.
//!
//! Envoy's own admin listens on an ephemeral loopback port that only this process knows.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::net::TcpListener;

use crate::bootstrap::{PLUGIN_NAME, PROBE_HEADER};
use crate::http::{self, Handler, Req};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Probes `/health` sends to bring back VMs that are down, before it judges.
const RECOVERY_PROBES: usize = 8;

/// Filter VM traps seen in Envoy's log.
#[derive(Debug, Default)]
pub struct VmWatch {
    traps: Mutex<(u64, Option<String>)>,
}

impl VmWatch {
    /// Looks at one line of Envoy's log; returns true when it is a trap of a Wasm VM.
    pub fn observe(&self, line: &str) -> bool {
        let trap = trap_line(line);
        if trap {
            if let Ok(mut t) = self.traps.lock() {
                t.0 += 1;
                t.1 = Some(line.trim().to_string());
            }
        }
        trap
    }

    /// Traps so far, and the last trap's log line.
    pub fn traps(&self) -> (u64, Option<String>) {
        self.traps.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Envoy's log line for a VM that failed while running (`wasm_vm.cc`: `Function: <callback>
/// failed: Uncaught <error>`), in the default log format `[time][thread][level][component] ...`.
pub fn trap_line(line: &str) -> bool {
    (line.contains("][error][wasm]") || line.contains("][critical][wasm]"))
        && line.contains("Function: ")
        && line.contains(" failed: Uncaught ")
}

/// Envoy's counters for the filter's VM reloads (`wasm.llmgw.vm_reload_*`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reloads {
    pub success: u64,
    pub failure: u64,
    pub backoff: u64,
}

pub async fn reloads(envoy_admin: SocketAddr) -> Result<Reloads, String> {
    let prefix = format!("wasm.{PLUGIN_NAME}.vm_reload");
    let path = format!("/stats?filter=wasm.{PLUGIN_NAME}.vm_reload");
    let (status, body) = http::get(envoy_admin, &path, &[], TIMEOUT).await.map_err(|e| format!("envoy admin: {e}"))?;
    if status != 200 {
        return Err(format!("envoy admin /stats answered {status}"));
    }
    let mut r = Reloads::default();
    for line in String::from_utf8_lossy(&body).lines() {
        let Some((name, value)) = line.split_once(": ") else { continue };
        let Ok(v) = value.trim().parse::<u64>() else { continue };
        match name.strip_prefix(&prefix) {
            Some("_success") => r.success = v,
            Some("_failure") => r.failure = v,
            Some("_backoff") => r.backoff = v,
            _ => {}
        }
    }
    Ok(r)
}

/// Where Envoy's admin and the gateway listener are, once Envoy has started.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub envoy_admin: SocketAddr,
    pub listener: SocketAddr,
}

pub type Shared = Arc<RwLock<Option<Targets>>>;

pub fn serve(listener: TcpListener, targets: Shared, watch: Arc<VmWatch>) {
    let handler: Handler = Arc::new(move |req| {
        let targets = targets.read().ok().and_then(|t| *t);
        let watch = watch.clone();
        Box::pin(async move { handle(req, targets, &watch).await })
    });
    tokio::spawn(http::serve(listener, handler));
}

async fn handle(req: Req, targets: Option<Targets>, watch: &VmWatch) -> hyper::Response<http::RespBody> {
    if req.method != Method::GET {
        return http::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.path.as_str() {
        "/health" => match health(targets, watch).await {
            Ok(()) => http::text(StatusCode::OK, "OK"),
            Err(reason) => http::text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        "/metrics" => {
            let Some(t) = targets else {
                return http::text(StatusCode::SERVICE_UNAVAILABLE, "envoy is starting\n");
            };
            let path = match &req.query {
                Some(q) => format!("/stats/prometheus?{q}"),
                None => "/stats/prometheus".to_string(),
            };
            match http::get(t.envoy_admin, &path, &[], TIMEOUT).await {
                Ok((200, body)) => {
                    let mut body = body.to_vec();
                    if req.query.is_none() {
                        body.extend(vm_metrics(watch, reloads(t.envoy_admin).await.ok()).as_bytes());
                    }
                    http::respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", http::full(body))
                }
                Ok((status, body)) => http::text(
                    StatusCode::BAD_GATEWAY,
                    format!("envoy admin answered {status}: {}\n", String::from_utf8_lossy(&body).trim()),
                ),
                Err(e) => http::text(StatusCode::SERVICE_UNAVAILABLE, format!("envoy admin: {e}\n")),
            }
        }
        "/" => http::text(StatusCode::OK, "llmgw admin: /metrics (Prometheus), /health\n"),
        _ => http::text(StatusCode::NOT_FOUND, "llmgw admin: /metrics (Prometheus), /health\n"),
    }
}

/// llmgw's own metrics, in Prometheus text format.
fn vm_metrics(watch: &VmWatch, reloads: Option<Reloads>) -> String {
    let (traps, _) = watch.traps();
    let mut out = format!(
        "# HELP llmgw_wasm_vm_traps_total Traps of the llmgw filter's Wasm VMs, from Envoy's log.\n\
         # TYPE llmgw_wasm_vm_traps_total counter\nllmgw_wasm_vm_traps_total {traps}\n"
    );
    if let Some(r) = reloads {
        out += &format!(
            "# HELP llmgw_wasm_vms_down Filter VMs that trapped and are not replaced yet (traps minus wasm.{PLUGIN_NAME}.vm_reload_success).\n\
             # TYPE llmgw_wasm_vms_down gauge\nllmgw_wasm_vms_down {}\n",
            traps.saturating_sub(r.success)
        );
    }
    out
}

/// `Ok` when Envoy is live, the filter answers through the listener and no filter VM is down.
pub async fn health(targets: Option<Targets>, watch: &VmWatch) -> Result<(), String> {
    let t = targets.ok_or("envoy is starting")?;
    match http::get(t.envoy_admin, "/ready", &[], TIMEOUT).await {
        Ok((200, _)) => {}
        Ok((status, body)) => {
            return Err(format!("envoy is not live ({status} {})", String::from_utf8_lossy(&body).trim()))
        }
        Err(e) => return Err(format!("envoy admin: {e}")),
    }
    let answered = filter_answers(t.listener).await;
    vms_up(t, watch).await?;
    answered
}

/// `Ok` when every filter VM that trapped has been replaced; probes first to let Envoy replace them.
async fn vms_up(t: Targets, watch: &VmWatch) -> Result<(), String> {
    let (traps, _) = watch.traps();
    if traps == 0 {
        return Ok(());
    }
    let mut r = reloads(t.envoy_admin).await?;
    for _ in 0..RECOVERY_PROBES {
        if traps <= r.success {
            return Ok(());
        }
        // Lands on some worker: on one whose VM is down, Envoy replaces the VM first.
        let _ = filter_answers(t.listener).await;
        r = reloads(t.envoy_admin).await?;
    }
    let (traps, last) = watch.traps();
    if traps <= r.success {
        return Ok(());
    }
    Err(format!(
        "the llmgw filter's Wasm VM is down on {} worker(s): it trapped and Envoy has not replaced it yet \
         (failure_policy FAIL_RELOAD replaces it on that worker's next request, at most once a second; \
         reloads: {} succeeded, {} failed, {} deferred). Last trap: {}",
        traps - r.success,
        r.success,
        r.failure,
        r.backoff,
        last.unwrap_or_default()
    ))
}

/// The key the probes authenticate with when the gateway has consumers (a random key of the
/// reserved consumer `llmgw-health-probe`, made per run; see `consumers::resolve`). Process-wide:
/// one `llmgw run` serves one gateway.
static PROBE_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn set_probe_key(key: &str) {
    let _ = PROBE_KEY.set(key.to_string());
}

/// The filter answers `GET /v1/models` itself with an OpenAI model list.
pub async fn filter_answers(listener: SocketAddr) -> Result<(), String> {
    let mut headers = vec![(PROBE_HEADER, "1")];
    if let Some(key) = PROBE_KEY.get() {
        headers.push(("x-api-key", key.as_str()));
    }
    match http::get(listener, "/v1/models", &headers, TIMEOUT).await {
        Ok((200, body)) if is_model_list(&body) => Ok(()),
        Ok((status, body)) => Err(format!(
            "the llmgw filter did not answer GET /v1/models ({status} {})",
            String::from_utf8_lossy(&body).chars().take(200).collect::<String>().trim()
        )),
        Err(e) => Err(format!("listener: {e}")),
    }
}

fn is_model_list(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("object").and_then(|o| o.as_str()) == Some("list"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Response;

    use std::sync::atomic::{AtomicU64, Ordering};

    const TRAP: &str = "[2026-11-29 16:20:31.209][19804][error][wasm] [source/extensions/common/wasm/wasm_vm.cc:38] \
                        Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable";

    /// A stand-in for Envoy's admin (`/ready` answers `ready`, `/stats` the reload counters) and the
    /// listener (`/v1/models` answers `models`; each answer "replaces" a VM when `heal` is set).
    async fn fake_with(ready: u16, models: (u16, &'static str), reloads: Arc<AtomicU64>, heal: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(move |req: Req| {
            let resp: Response<http::RespBody> = match req.path.as_str() {
                "/ready" => http::text(
                    StatusCode::from_u16(ready).unwrap(),
                    if ready == 200 { "LIVE" } else { "PRE_INITIALIZING" },
                ),
                "/stats" => http::text(
                    StatusCode::OK,
                    format!(
                        "wasm.llmgw.vm_reload: 0\nwasm.llmgw.vm_reload_backoff: 2\nwasm.llmgw.vm_reload_failure: 1\n\
                         wasm.llmgw.vm_reload_success: {}\n",
                        reloads.load(Ordering::SeqCst)
                    ),
                ),
                "/v1/models" => {
                    if heal {
                        reloads.fetch_add(1, Ordering::SeqCst);
                    }
                    http::text(StatusCode::from_u16(models.0).unwrap(), models.1)
                }
                _ => http::text(StatusCode::NOT_FOUND, ""),
            };
            Box::pin(async move { resp })
        });
        tokio::spawn(http::serve(listener, handler));
        addr
    }

    async fn fake(ready: u16, models: (u16, &'static str)) -> SocketAddr {
        fake_with(ready, models, Arc::new(AtomicU64::new(0)), false).await
    }

    const LIST: &str = r#"{"object":"list","data":[]}"#;

    #[tokio::test]
    async fn health_is_ok_only_when_envoy_is_live_and_the_filter_answers() {
        let w = VmWatch::default();
        assert_eq!(health(None, &w).await, Err("envoy is starting".to_string()));

        let a = fake(503, (200, LIST)).await;
        let e = health(Some(Targets { envoy_admin: a, listener: a }), &w).await.unwrap_err();
        assert!(e.starts_with("envoy is not live (503 PRE_INITIALIZING)"), "{e}");

        let a = fake(200, (503, "upstream connect error")).await;
        let e = health(Some(Targets { envoy_admin: a, listener: a }), &w).await.unwrap_err();
        assert!(e.starts_with("the llmgw filter did not answer GET /v1/models (503 upstream connect error"), "{e}");

        let a = fake(200, (200, "not json")).await;
        assert!(health(Some(Targets { envoy_admin: a, listener: a }), &w).await.is_err());

        let a = fake(200, (200, LIST)).await;
        assert_eq!(health(Some(Targets { envoy_admin: a, listener: a }), &w).await, Ok(()));
    }

    #[test]
    fn traps_are_recognized_in_envoys_log() {
        let w = VmWatch::default();
        assert!(w.observe(TRAP));
        assert!(!w.observe("[2026-11-29 16:20:31.209][19804][info][wasm] wasm log llmgw: configured 1 backend(s)"));
        assert!(!w.observe("[2026-11-29 16:20:31.209][1][error][config] Function: x failed: Uncaught y"));
        assert_eq!(w.traps(), (1, Some(TRAP.to_string())));
    }

    #[tokio::test]
    async fn a_trapped_vm_is_down_until_envoy_reloads_it() {
        let w = VmWatch::default();
        w.observe(TRAP);
        w.observe(TRAP);
        // Envoy reloaded one of the two; probes land on live VMs only: down, with the reason.
        let a = fake_with(200, (200, LIST), Arc::new(AtomicU64::new(1)), false).await;
        let e = health(Some(Targets { envoy_admin: a, listener: a }), &w).await.unwrap_err();
        assert!(e.starts_with("the llmgw filter's Wasm VM is down on 1 worker(s)"), "{e}");
        assert!(
            e.contains("1 succeeded, 1 failed, 2 deferred") && e.ends_with("Uncaught RuntimeError: unreachable"),
            "{e}"
        );
        assert!(
            vm_metrics(&w, Some(Reloads { success: 1, failure: 1, backoff: 2 })).contains("\nllmgw_wasm_vms_down 1\n")
        );
        assert!(vm_metrics(&w, None).contains("\nllmgw_wasm_vm_traps_total 2\n"));
        // Probes reach the trapped worker and Envoy replaces its VM: healthy again.
        let a = fake_with(200, (200, LIST), Arc::new(AtomicU64::new(0)), true).await;
        assert_eq!(health(Some(Targets { envoy_admin: a, listener: a }), &w).await, Ok(()));
    }

    #[tokio::test]
    async fn endpoints_answer_503_while_envoy_starts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets: Shared = Arc::new(RwLock::new(None));
        serve(listener, targets.clone(), Arc::new(VmWatch::default()));
        let (status, body) = http::get(addr, "/health", &[], TIMEOUT).await.unwrap();
        assert_eq!((status, &body[..]), (503, &b"envoy is starting\n"[..]));
        assert_eq!(http::get(addr, "/metrics", &[], TIMEOUT).await.unwrap().0, 503);

        let envoy = fake(200, (200, LIST)).await;
        *targets.write().unwrap() = Some(Targets { envoy_admin: envoy, listener: envoy });
        let (status, body) = http::get(addr, "/health", &[], TIMEOUT).await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"OK"[..]));
    }
}
