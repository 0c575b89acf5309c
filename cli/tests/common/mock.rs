//! An OpenAI-compatible mock provider on loopback: the project's `mock-provider` binary when
//! `LLMGW_MOCK_BIN` names it (as `make test` does), else a small in-process server with the same
//! observable behaviour the tests rely on: `GET /__mock/requests` lists what it received (method,
//! path, headers, body), chat replies carry `usage` and the header `x-mock-name`, `stream: true`
//! gets SSE ending in `data: [DONE]`, `GET …/models` lists `mock-model`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

pub struct Mock {
    pub port: u16,
    pub name: String,
    child: Option<Child>,
}

impl Mock {
    pub fn start(name: &str) -> Mock {
        if let Some(bin) = std::env::var_os("LLMGW_MOCK_BIN").filter(|b| std::path::Path::new(b).is_file()) {
            return spawn_binary(&bin, name);
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock");
        let port = listener.local_addr().expect("mock addr").port();
        let state = Arc::new(State { name: name.to_string(), recorded: Mutex::new(Vec::new()) });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Mock { port, name: name.to_string(), child: None }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests received so far (control requests excluded).
    pub fn requests(&self) -> Vec<Value> {
        let (status, body) = super::get(&format!("{}/__mock/requests", self.url()), &[]).expect("mock requests");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_binary(bin: &std::ffi::OsStr, name: &str) -> Mock {
    let mut child = Command::new(bin)
        .args(["--port", "0", "--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mock-provider");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("mock stdout");
    BufReader::new(stdout).read_line(&mut line).expect("mock listening line");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("mock-provider printed {line:?}"));
    Mock { port, name: name.to_string(), child: Some(child) }
}

struct State {
    name: String,
    recorded: Mutex<Vec<Value>>,
}

/// One connection; keep-alive, Content-Length bodies (what Envoy sends upstream).
fn serve(stream: TcpStream, state: &State) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(write_half) = stream.try_clone() else { return };
    let mut out = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = serde_json::Map::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                headers.insert(k, Value::String(v));
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let (status, content_type, payload, keep) = respond(state, &method, &path, &headers, &body);
        let mut head = format!("HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\nx-mock-name: {}\r\n", state.name);
        if keep {
            head.push_str(&format!("content-length: {}\r\n\r\n", payload.len()));
        } else {
            head.push_str("connection: close\r\n\r\n");
        }
        if out.write_all(head.as_bytes()).and_then(|_| out.write_all(payload.as_bytes())).is_err() || !keep {
            return;
        }
    }
}

fn respond(
    state: &State,
    method: &str,
    path: &str,
    headers: &serde_json::Map<String, Value>,
    body: &str,
) -> (&'static str, &'static str, String, bool) {
    if path == "/__mock/requests" {
        let list = state.recorded.lock().map(|r| Value::Array(r.clone())).unwrap_or(Value::Null);
        return ("200 OK", "application/json", list.to_string(), true);
    }
    if let Ok(mut r) = state.recorded.lock() {
        r.push(json!({"method": method, "path": path, "headers": headers, "body": body, "mock": state.name}));
    }
    let path = path.split('?').next().unwrap_or(path);
    if path.ends_with("/models") {
        let v = json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 1, "owned_by": state.name}]});
        return ("200 OK", "application/json", v.to_string(), true);
    }
    let req: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let model = req.get("model").and_then(Value::as_str).unwrap_or("").to_string();
    let prompt = req
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|m| m["content"].as_str()).map(|s| s.split_whitespace().count()).sum::<usize>())
        .unwrap_or(1)
        .max(1);
    let words =
        ["Hello", "from", &format!("{}:", state.name), "this", "is", "a", "mock", "reply."].map(|w| w.to_string());
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": 8, "total_tokens": prompt + 8});
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        let mut sse = String::new();
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        for (i, w) in words.iter().enumerate() {
            let text = if i + 1 < words.len() { format!("{w} ") } else { w.clone() };
            sse.push_str(&format!("data: {}\n\n", chunk(json!({"content": text}), Value::Null)));
        }
        sse.push_str(&format!("data: {}\n\n", chunk(json!({}), json!("stop"))));
        if req.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true) {
            let u = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
                           "choices": [], "usage": usage});
            sse.push_str(&format!("data: {u}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        return ("200 OK", "text/event-stream", sse, false);
    }
    let _ = headers;
    let v = json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": words.join(" ")}, "finish_reason": "stop"}],
                   "usage": usage});
    ("200 OK", "application/json", v.to_string(), true)
}
