//! `ext-proc-skeleton --port P`: a minimal Envoy external processor (gRPC
//! `envoy.service.ext_proc.v3.ExternalProcessor/Process`), the data-path skeleton of an
//! ext_proc-based AI gateway such as Envoy AI Gateway. Per request stream:
//!
//! - `request_headers` → CONTINUE, no mutation (Envoy's filter config asks for the BUFFERED body;
//!   `allow_mode_override` is off there, so the response carries no `mode_override`);
//! - `request_body` (the whole buffered body) → read `model` from the JSON (only that field),
//!   set `x-ai-eg-model: <model>` and `clear_route_cache: true`, so Envoy picks the route anew;
//! - anything else (not requested by the config) → an empty response of the matching kind.
//!
//! Binds 127.0.0.1:P and prints `listening 127.0.0.1:<port>` once ready (so `--port 0` works). One
//! thread (tokio's current-thread runtime), as Envoy runs in the bench with one worker. The bench
//! checks that the path was taken from Envoy's ext_proc stats; this counts the bodies it answered
//! and logs the count to stderr on every 10,000th, as a cross-check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request,
    processing_response::Response,
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

#[derive(serde::Deserialize)]
struct Model<'a> {
    #[serde(borrow)]
    model: std::borrow::Cow<'a, str>,
}

struct Skeleton {
    bodies: Arc<AtomicU64>,
}

fn on_body(body: &[u8]) -> CommonResponse {
    let model = serde_json::from_slice::<Model<'_>>(body).ok().map(|m| m.model.into_owned());
    match model {
        Some(model) => CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-ai-eg-model".into(),
                        raw_value: model.into_bytes(),
                        ..Default::default()
                    }),
                    // Set, not append: a client's own x-ai-eg-model is replaced.
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            clear_route_cache: true,
            ..Default::default()
        },
        None => CommonResponse::default(), // no model: leave the request as it is
    }
}

fn answer(req: ProcessingRequest, bodies: &AtomicU64) -> Option<Response> {
    Some(match req.request? {
        Request::RequestHeaders(_) => Response::RequestHeaders(HeadersResponse { response: None }),
        Request::RequestBody(b) => {
            let n = bodies.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(10_000) {
                eprintln!("ext-proc-skeleton: {n} request bodies answered");
            }
            Response::RequestBody(BodyResponse { response: Some(on_body(&b.body)) })
        }
        Request::ResponseHeaders(_) => Response::ResponseHeaders(HeadersResponse { response: None }),
        Request::ResponseBody(_) => Response::ResponseBody(BodyResponse { response: None }),
        Request::RequestTrailers(_) => Response::RequestTrailers(TrailersResponse { header_mutation: None }),
        Request::ResponseTrailers(_) => Response::ResponseTrailers(TrailersResponse { header_mutation: None }),
    })
}

#[tonic::async_trait]
impl ExternalProcessor for Skeleton {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: GrpcRequest<Streaming<ProcessingRequest>>,
    ) -> Result<GrpcResponse<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let bodies = self.bodies.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let Some(response) = answer(req, &bodies) else { continue };
                let msg = ProcessingResponse { response: Some(response), ..Default::default() };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
        });
        Ok(GrpcResponse::new(ReceiverStream::new(rx)))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port: u16 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--port", Some(p)) => port = p.parse()?,
            _ => return Err(format!("usage: ext-proc-skeleton --port P (got {a})").into()),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening {}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        // TCP_NODELAY on every connection, as gRPC servers do (grpc-go's default): without it, Nagle
        // holds the body response behind Envoy's delayed ACK (~40 ms per request).
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
            conn.and_then(|c| {
                c.set_nodelay(true)?;
                Ok(c)
            })
        });
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(Skeleton { bodies: Arc::new(AtomicU64::new(0)) }))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
