//! The admin port (:1064), served by `llmgw run` itself:
//! * `/metrics` — Envoy's `/stats/prometheus` (the filter's GenAI metrics with their labels, and
//!   Envoy's own), query string passed through (`/metrics?filter=gen_ai`).
//! * `/health` — `200 OK` only when Envoy's admin says `LIVE` *and* a request through the listener
//!   is answered by the filter (`GET /v1/models` is answered by the filter itself, so this proves
//!   the filter is loaded and configured); `503` with the reason otherwise.
//!
//! Envoy's own admin listens on an ephemeral loopback port that only this process knows.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::net::TcpListener;

use crate::bootstrap::PROBE_HEADER;
use crate::http::{self, Handler, Req};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Where Envoy's admin and the gateway listener are, once Envoy has started.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub envoy_admin: SocketAddr,
    pub listener: SocketAddr,
}

pub type Shared = Arc<RwLock<Option<Targets>>>;

pub fn serve(listener: TcpListener, targets: Shared) {
    let handler: Handler = Arc::new(move |req| {
        let targets = targets.read().ok().and_then(|t| *t);
        Box::pin(async move { handle(req, targets).await })
    });
    tokio::spawn(http::serve(listener, handler));
}

async fn handle(req: Req, targets: Option<Targets>) -> hyper::Response<http::RespBody> {
    if req.method != Method::GET {
        return http::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.path.as_str() {
        "/health" => match health(targets).await {
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

/// `Ok` when Envoy is live and the filter answers through the listener.
pub async fn health(targets: Option<Targets>) -> Result<(), String> {
    let t = targets.ok_or("envoy is starting")?;
    match http::get(t.envoy_admin, "/ready", &[], TIMEOUT).await {
        Ok((200, _)) => {}
        Ok((status, body)) => {
            return Err(format!("envoy is not live ({status} {})", String::from_utf8_lossy(&body).trim()))
        }
        Err(e) => return Err(format!("envoy admin: {e}")),
    }
    filter_answers(t.listener).await
}

/// The filter answers `GET /v1/models` itself with an OpenAI model list.
pub async fn filter_answers(listener: SocketAddr) -> Result<(), String> {
    match http::get(listener, "/v1/models", &[(PROBE_HEADER, "1")], TIMEOUT).await {
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

    /// A stand-in for Envoy's admin (`/ready` answers `ready`) and the listener (`/v1/models` answers `models`).
    async fn fake(ready: u16, models: (u16, &'static str)) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(move |req: Req| {
            let resp: Response<http::RespBody> = match req.path.as_str() {
                "/ready" => http::text(
                    StatusCode::from_u16(ready).unwrap(),
                    if ready == 200 { "LIVE" } else { "PRE_INITIALIZING" },
                ),
                "/v1/models" => http::text(StatusCode::from_u16(models.0).unwrap(), models.1),
                _ => http::text(StatusCode::NOT_FOUND, ""),
            };
            Box::pin(async move { resp })
        });
        tokio::spawn(http::serve(listener, handler));
        addr
    }

    #[tokio::test]
    async fn health_is_ok_only_when_envoy_is_live_and_the_filter_answers() {
        assert_eq!(health(None).await, Err("envoy is starting".to_string()));

        let a = fake(503, (200, r#"{"object":"list","data":[]}"#)).await;
        let e = health(Some(Targets { envoy_admin: a, listener: a })).await.unwrap_err();
        assert!(e.starts_with("envoy is not live (503 PRE_INITIALIZING)"), "{e}");

        let a = fake(200, (503, "upstream connect error")).await;
        let e = health(Some(Targets { envoy_admin: a, listener: a })).await.unwrap_err();
        assert!(e.starts_with("the llmgw filter did not answer GET /v1/models (503 upstream connect error"), "{e}");

        let a = fake(200, (200, "not json")).await;
        assert!(health(Some(Targets { envoy_admin: a, listener: a })).await.is_err());

        let a = fake(200, (200, r#"{"object":"list","data":[]}"#)).await;
        assert_eq!(health(Some(Targets { envoy_admin: a, listener: a })).await, Ok(()));
    }

    #[tokio::test]
    async fn endpoints_answer_503_while_envoy_starts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets: Shared = Arc::new(RwLock::new(None));
        serve(listener, targets.clone());
        let (status, body) = http::get(addr, "/health", &[], TIMEOUT).await.unwrap();
        assert_eq!((status, &body[..]), (503, &b"envoy is starting\n"[..]));
        assert_eq!(http::get(addr, "/metrics", &[], TIMEOUT).await.unwrap().0, 503);

        let envoy = fake(200, (200, r#"{"object":"list","data":[]}"#)).await;
        *targets.write().unwrap() = Some(Targets { envoy_admin: envoy, listener: envoy });
        let (status, body) = http::get(addr, "/health", &[], TIMEOUT).await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"OK"[..]));
    }
}
