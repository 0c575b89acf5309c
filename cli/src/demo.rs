//! Demo mode's backend: a tiny OpenAI-compatible responder inside the `llmgw` process, so the
//! README's curl works with no key and no network. Every reply says it is the demo and how to
//! reach a real provider. Streams (`"stream": true`) are real SSE, one word per chunk.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::http::{self, ChannelBody, Handler, Req, RespBody};
use crate::model::{Endpoint, Gateway, Source, Upstream};

pub const BACKEND: &str = "demo";
pub const MODEL: &str = "llmgw-demo";
const WORD_GAP: Duration = Duration::from_millis(15);

/// The gateway of demo mode; the demo backend's port is filled in by `start`.
pub fn gateway(port: u16) -> Gateway {
    let mut g = Gateway::new(Source::Demo);
    g.plugin.insert("backends".into(), json!([{"name": BACKEND, "schema": "OpenAI", "prefix": "/v1"}]));
    g.plugin.insert("models".into(), json!([MODEL]));
    g.upstreams.push(Upstream {
        name: BACKEND.into(),
        endpoints: vec![Endpoint { host: "127.0.0.1".into(), port }],
        tls: None,
        host_rewrite: None,
        timeout: None,
        lb_policy: None,
    });
    g
}

/// Binds the demo backend on a free loopback port and serves it in the background.
pub async fn start() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let handler: Handler = Arc::new(|req| Box::pin(async move { handle(req) }));
    tokio::spawn(http::serve(listener, handler));
    Ok(port)
}

fn handle(req: Req) -> Response<RespBody> {
    let op =
        ["/chat/completions", "/completions", "/embeddings", "/models"].into_iter().find(|s| req.path.ends_with(s));
    let mut resp = match (op, &req.method) {
        (Some("/models"), &Method::GET) => http::json(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "llmgw-demo"}]}),
        ),
        (Some(op), &Method::POST) if op != "/models" => match serde_json::from_slice::<Value>(&req.body) {
            Ok(body @ Value::Object(_)) => reply(op, &body),
            _ => error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        },
        _ => error(StatusCode::NOT_FOUND, &format!("the demo backend has no {} {}", req.method, req.path)),
    };
    resp.headers_mut().insert("x-llmgw-demo", hyper::header::HeaderValue::from_static("true"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response<RespBody> {
    http::json(status, &json!({"error": {"message": message, "type": "invalid_request_error", "code": null}}))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The last user text of a chat, a completion prompt, or an embeddings input.
fn input_text(body: &Value) -> String {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        let last = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
        return match last.and_then(|m| m.get("content")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
            }
            _ => String::new(),
        };
    }
    match body.get("prompt").or_else(|| body.get("input")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

pub fn reply_text(said: &str) -> String {
    let mut snippet: String = said.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(80).collect();
    if snippet.len() < said.trim().len() {
        snippet.push_str("...");
    }
    format!(
        "Hello from the llmgw demo backend! You said: \"{snippet}\". This is a canned reply: set OPENAI_API_KEY \
         (or AZURE_OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENAI_BASE_URL) and restart llmgw run to reach a real model."
    )
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count().max(1) as u64
}

fn reply(op: &str, body: &Value) -> Response<RespBody> {
    let model = body.get("model").and_then(Value::as_str).unwrap_or(MODEL).to_string();
    let said = input_text(body);
    let prompt_tokens = words(&said);
    if op == "/embeddings" {
        let vector: Vec<f64> = (0..8).map(|i| ((said.len() + i * 7) % 13) as f64 / 13.0).collect();
        return http::json(
            StatusCode::OK,
            &json!({"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                    "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}),
        );
    }
    let text = reply_text(&said);
    let completion_tokens = words(&text);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens});
    let chat = op == "/chat/completions";
    let id = format!("{}-llmgw-demo", if chat { "chatcmpl" } else { "cmpl" });
    let created = now();
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let v = if chat {
            json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                   "usage": usage})
        } else {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage})
        };
        return http::json(StatusCode::OK, &v);
    }
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk =
        |choices: Value| json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
    let mut events = Vec::new();
    if chat {
        events.push(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])));
    }
    let all: Vec<&str> = text.split(' ').collect();
    for (i, w) in all.iter().enumerate() {
        let piece = if i + 1 < all.len() { format!("{w} ") } else { (*w).to_string() };
        events.push(if chat {
            chunk(json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}]))
        } else {
            chunk(json!([{"index": 0, "text": piece, "finish_reason": null}]))
        });
    }
    events.push(if chat {
        chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    } else {
        chunk(json!([{"index": 0, "text": "", "finish_reason": "stop"}]))
    });
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push(last);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        for e in events {
            if tx.send(Bytes::from(format!("data: {e}\n\n"))).await.is_err() {
                return;
            }
            tokio::time::sleep(WORD_GAP).await;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    http::respond(StatusCode::OK, "text/event-stream", ChannelBody(rx).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_quotes_the_user_and_says_what_to_do() {
        let t = reply_text("Say this is a test!");
        assert!(t.contains("You said: \"Say this is a test!\""));
        assert!(t.contains("OPENAI_API_KEY"));
        assert!(reply_text(&"word ".repeat(100)).contains("...\""));
    }

    #[test]
    fn input_text_shapes() {
        let chat = json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                         {"role": "user", "content": [{"type": "text", "text": "c d"}]}]});
        assert_eq!(input_text(&chat), "c d");
        assert_eq!(input_text(&json!({"prompt": "p"})), "p");
        assert_eq!(input_text(&json!({"input": ["x", "y"]})), "x y");
    }
}
