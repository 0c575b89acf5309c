//! Small HTTP/1.1 pieces on hyper: a server loop (admin port, demo backend) and a GET client for
//! loopback calls (Envoy's admin, the health probe through the listener).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type RespBody = BoxBody<Bytes, Infallible>;

/// A request as handlers see it: method, path with query, headers, whole body.
pub struct Req {
    pub method: hyper::Method,
    pub path: String,
    pub query: Option<String>,
    pub body: Bytes,
}

pub type Handler = Arc<dyn Fn(Req) -> Pin<Box<dyn Future<Output = Response<RespBody>> + Send>> + Send + Sync>;

const MAX_BODY: usize = 64 << 20;

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => return Ok::<_, Infallible>(text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")),
                    };
                    let req = Req {
                        method: parts.method,
                        path: parts.uri.path().to_string(),
                        query: parts.uri.query().map(str::to_string),
                        body,
                    };
                    Ok(handler(req).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed()
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    respond(status, "text/plain; charset=utf-8", full(body))
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<RespBody> {
    respond(status, "application/json", full(v.to_string()))
}

pub fn respond(status: StatusCode, content_type: &'static str, body: RespBody) -> Response<RespBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

/// A response body fed chunk by chunk (server-sent events).
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// `GET path` on a loopback server: status and body.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<(u16, Bytes)> {
    tokio::time::timeout(timeout, get_inner(addr, path, headers))
        .await
        .map_err(|_| anyhow!("no answer from {addr} within {timeout:?}"))?
}

async fn get_inner(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(u16, Bytes)> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header(hyper::header::HOST, addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Empty::<Bytes>::new())?).await?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| anyhow!("{e}"))?.to_bytes();
    Ok((status, body))
}
