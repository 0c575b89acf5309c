//! `bench-mock`: the provider and the stream client of `make bench` (driver: `host-tests/bench/bench.py`).
//!
//! ```text
//! bench-mock serve   [--port 0] [--chunks 8] [--gap-ms 0] [--latency-ms 0] [--hold-ms 120000]
//! bench-mock streams --url URL --body FILE [--n 50] [--header 'k: v']...
//! bench-mock hold    --url URL --body FILE --streams N [--timeout-s 60]
//! bench-mock rate    --url URL --body FILE --rps R [--seconds 3] [--conns 64] [--header 'k: v']...
//! ```
//!
//! `serve` is a minimal HTTP/1.1 server on one thread (tokio current-thread) whose CPU cost per
//! request is close to nothing: every response is serialized once at start, and a request body
//! is only searched (not parsed) for `"model"`, `"stream"` and `"include_usage"`. The first stdout
//! line is `listening 127.0.0.1:PORT`.
//! * `POST …/chat/completions`: an OpenAI `chat.completion`, or with `"stream": true` an SSE stream
//!   (role chunk, `--chunks` content chunks `--gap-ms` apart, finish chunk, the usage chunk when
//!   `stream_options.include_usage` is true, `data: [DONE]`).
//! * `POST …/messages`: the same reply in Anthropic's Messages wire format: a `message`, or the SSE
//!   events `message_start`, `content_block_start`, `content_block_delta` × chunks,
//!   `content_block_stop`, `message_delta`, `message_stop`.
//! * A model whose name contains `slow` streams its first content chunk, then holds the stream
//!   until the client goes away (or `--hold-ms`): the "N open streams" memory test.
//! * `GET /health`: `ok`. `--latency-ms` delays every response head.
//!
//! `streams` runs N streaming requests one after another on one keep-alive connection and prints
//! one JSON line: per stream the time to the first content chunk (`ttft_us`), the gaps between
//! content chunks (`gap_us`), the content chunk count, and errors. Content chunk = an SSE event
//! whose `"content"` or `"text"` is a non-empty string.
//!
//! `rate` is an open-loop load at a fixed rate (wrk2's model): request i is due at start + i/R and is
//! sent on the first idle keep-alive connection of a pool; its latency counts from when it was due if
//! it had to wait for a connection (queueing is charged, no coordinated omission), else from when it
//! was sent (the client's timer lateness is not). Prints one JSON line: achieved rate, latency
//! percentiles, errors, and how many requests could not be sent within the run (`unsent`).
//!
//! `hold` opens N streams at once, waits until each has its first content chunk, prints
//! `ready N`, and keeps them open until stdin has a line or closes; then it exits.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream as AsyncTcpStream};

#[derive(Parser)]
#[command(name = "bench-mock", about = "benchmark provider mock and stream client")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve OpenAI and Anthropic chat responses.
    Serve(ServeArgs),
    /// Measure time to first token and inter-chunk gaps of sequential streams.
    Streams(StreamsArgs),
    /// Open N streams at once and keep them open until stdin has a line.
    Hold(HoldArgs),
    /// Fixed-rate (open-loop) load: latency percentiles at a given request rate.
    Rate(RateArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Content chunks per stream (= completion tokens).
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Pause between content chunks of a stream, in milliseconds.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// Delay before every response head, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// How long a `slow` model's stream is held open at most, in milliseconds.
    #[arg(long, default_value_t = 120_000)]
    hold_ms: u64,
}

#[derive(Args)]
struct StreamsArgs {
    /// http://127.0.0.1:PORT/path
    #[arg(long)]
    url: String,
    /// File with the request body (JSON with "stream": true).
    #[arg(long)]
    body: String,
    /// Number of streams.
    #[arg(long, default_value_t = 50)]
    n: usize,
    /// Extra request header `name: value` (repeatable).
    #[arg(long)]
    header: Vec<String>,
    /// Socket timeout per read, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

#[derive(Args)]
struct HoldArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    body: String,
    /// Streams opened at once.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    #[arg(long)]
    header: Vec<String>,
    /// Bound on every wait, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

#[derive(Args)]
struct RateArgs {
    #[arg(long)]
    url: String,
    /// File with the request body (a non-streaming request).
    #[arg(long)]
    body: String,
    /// Requests per second.
    #[arg(long)]
    rps: u32,
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Keep-alive connections in the pool.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    #[arg(long)]
    header: Vec<String>,
    /// Bound on every response, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout_s: u64,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Streams(a) => streams(a),
        Cmd::Hold(a) => hold(a),
        Cmd::Rate(a) => rate(a),
    };
    std::process::exit(code);
}

// ------------------------------------------------------------------------------------------------
// server

/// One pre-serialized stream: `first` goes out with the response head (events before the first
/// content chunk and that chunk), `rest` are the other content chunks (a gap before each), `tail`
/// ends the stream (finish events and the chunked terminator). Every part is HTTP-chunk framed.
struct Stream {
    first: Vec<u8>,
    rest: Vec<Vec<u8>>,
    tail: Vec<u8>,
}

struct Replies {
    openai_json: Vec<u8>,
    openai_sse: Stream,
    openai_sse_usage: Stream,
    anthropic_json: Vec<u8>,
    anthropic_sse: Stream,
    args: ServeArgs,
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
const PROMPT_TOKENS: usize = 250;

fn json_reply(status: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tok{i} ")).collect()
}

impl Replies {
    fn new(args: ServeArgs) -> Self {
        let n = args.chunks.max(1);
        let w = words(n);
        let text: String = w.concat();
        let usage = format!(
            r#"{{"prompt_tokens":{PROMPT_TOKENS},"completion_tokens":{n},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0}}}}"#,
            PROMPT_TOKENS + n
        );
        let openai_json = json_reply(
            "200 OK",
            &format!(
                r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_bench","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
            ),
        );
        let oa = |choices: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":{choices}}}\n\n"
            )
        };
        let role =
            oa(r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#);
        let content: Vec<String> = w
            .iter()
            .map(|t| {
                oa(&format!(r#"[{{"index":0,"delta":{{"content":"{t}"}},"logprobs":null,"finish_reason":null}}]"#))
            })
            .collect();
        let finish = oa(r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#);
        let usage_chunk = format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":[],\"usage\":{usage}}}\n\n"
        );
        let done = "data: [DONE]\n\n";
        let openai_stream = |with_usage: bool| Stream {
            first: chunk(&format!("{role}{}", content[0])),
            rest: content[1..].iter().map(|c| chunk(c)).collect(),
            tail: [
                chunk(&format!("{finish}{}{done}", if with_usage { usage_chunk.as_str() } else { "" })),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        };

        let anthropic_json = json_reply(
            "200 OK",
            &format!(
                r#"{{"id":"msg_bench","type":"message","role":"assistant","model":"claude-3-5-haiku-latest","content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":{PROMPT_TOKENS},"output_tokens":{n}}}}}"#
            ),
        );
        let ev = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
        let start = ev(
            "message_start",
            &format!(
                r#"{{"type":"message_start","message":{{"id":"msg_bench","type":"message","role":"assistant","model":"claude-3-5-haiku-latest","content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{PROMPT_TOKENS},"output_tokens":1}}}}}}"#
            ),
        );
        let block_start = ev(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        );
        let deltas: Vec<String> = w
            .iter()
            .map(|t| {
                ev(
                    "content_block_delta",
                    &format!(
                        r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{t}"}}}}"#
                    ),
                )
            })
            .collect();
        let end = [
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ev(
                "message_delta",
                &format!(
                    r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{n}}}}}"#
                ),
            ),
            ev("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .concat();
        let anthropic_sse = Stream {
            first: chunk(&format!("{start}{block_start}{}", deltas[0])),
            rest: deltas[1..].iter().map(|d| chunk(d)).collect(),
            tail: [chunk(&end), b"0\r\n\r\n".to_vec()].concat(),
        };
        Replies {
            openai_json,
            openai_sse: openai_stream(false),
            openai_sse_usage: openai_stream(true),
            anthropic_json,
            anthropic_sse,
            args,
        }
    }
}

fn serve(args: ServeArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-mock: runtime: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bench-mock: bind: {e}");
                return 1;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        println!("listening {addr}");
        let _ = std::io::stdout().flush();
        let replies = Rc::new(Replies::new(args));
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, _)) => {
                        let _ = sock.set_nodelay(true);
                        tokio::task::spawn_local(connection(sock, replies.clone()));
                    }
                    Err(e) => eprintln!("bench-mock: accept: {e}"),
                },
                _ = tokio::signal::ctrl_c() => return 0,
            }
        }
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The JSON value right after `"key"` (and `:`), as raw text up to the next `,` `}` or `"`.
fn value_after<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let at = body.find(key)? + key.len();
    let rest = body[at..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return s.find('"').map(|e| &s[..e]);
    }
    let end = rest.find([',', '}', ' ', '\n']).unwrap_or(rest.len());
    Some(&rest[..end])
}

struct Request {
    path_end: usize,
    head_len: usize,
    body_start: usize,
    body_end: usize,
    close: bool,
    post: bool,
}

/// Parses the request at the start of `buf`, reading more from `sock` as needed. Chunked bodies
/// are de-chunked in place. `None`: the connection closed or the request is malformed.
async fn read_request(sock: &mut AsyncTcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let head_len = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 << 10 {
            return None;
        }
        buf.reserve(16 << 10);
        if sock.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_len]).ok()?;
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let post = first.starts_with("POST ");
    let path_start = first.find(' ')? + 1;
    let path_end = path_start + first[path_start..].find(' ')?;
    let (mut len, mut chunked, mut close) = (0usize, false, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().ok()?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    if !chunked {
        buf.reserve((head_len + len).saturating_sub(buf.len()));
        while buf.len() < head_len + len {
            if sock.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
        return Some(Request { path_end, head_len, body_start: head_len, body_end: head_len + len, close, post });
    }
    // Chunked: decode into the region right after the head (data only moves backwards).
    let mut read_at = head_len; // next undecoded byte
    let mut write_at = head_len; // end of the decoded body
    loop {
        let line_end = loop {
            if let Some(p) = find(&buf[read_at..], b"\r\n") {
                break read_at + p;
            }
            if sock.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        };
        let size_text = std::str::from_utf8(&buf[read_at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        let data = line_end + 2;
        while buf.len() < data + size + 2 {
            if sock.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
        buf.copy_within(data..data + size, write_at);
        write_at += size;
        read_at = data + size + 2;
        if size == 0 {
            // Trailers are not expected; the final CRLF was consumed above.
            buf.drain(write_at..read_at);
            return Some(Request { path_end, head_len, body_start: head_len, body_end: write_at, close, post });
        }
    }
}

async fn connection(mut sock: AsyncTcpStream, r: Rc<Replies>) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    while let Some(req) = read_request(&mut sock, &mut buf).await {
        let consumed = req.body_end;
        let keep = respond(&mut sock, &buf, &req, &r).await && !req.close;
        buf.drain(..consumed);
        if !keep {
            break;
        }
    }
}

/// Writes the response; false when the connection must close.
async fn respond(sock: &mut AsyncTcpStream, buf: &[u8], req: &Request, r: &Replies) -> bool {
    let line = &buf[..req.head_len];
    let path_start = line.iter().position(|&b| b == b' ').map_or(0, |p| p + 1);
    let path = &line[path_start..req.path_end];
    let path = path.split(|&b| b == b'?').next().unwrap_or(path);
    let body = std::str::from_utf8(&buf[req.body_start..req.body_end]).unwrap_or("");
    if r.args.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(r.args.latency_ms)).await;
    }
    let openai = path.ends_with(b"/chat/completions");
    let anthropic = path.ends_with(b"/messages");
    if !req.post || !(openai || anthropic) {
        let reply = if path.ends_with(b"/health") {
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok".to_vec()
        } else {
            json_reply(
                "404 Not Found",
                r#"{"error":{"message":"bench-mock: unknown path","type":"invalid_request_error"}}"#,
            )
        };
        return sock.write_all(&reply).await.is_ok();
    }
    let stream = value_after(body, "\"stream\"") == Some("true");
    if !stream {
        let reply = if anthropic { &r.anthropic_json } else { &r.openai_json };
        return sock.write_all(reply).await.is_ok();
    }
    let s = if anthropic {
        &r.anthropic_sse
    } else if value_after(body, "\"include_usage\"") == Some("true") {
        &r.openai_sse_usage
    } else {
        &r.openai_sse
    };
    let slow = value_after(body, "\"model\"").is_some_and(|m| m.contains("slow"));
    let head = [SSE_HEAD.as_bytes(), &s.first].concat();
    if sock.write_all(&head).await.is_err() {
        return false;
    }
    if slow {
        // Hold until the client goes away (EOF or error on read) or the bound passes.
        let mut scratch = [0u8; 512];
        let hold = tokio::time::sleep(Duration::from_millis(r.args.hold_ms));
        tokio::pin!(hold);
        loop {
            tokio::select! {
                n = sock.read(&mut scratch) => if matches!(n, Ok(0) | Err(_)) { return false },
                _ = &mut hold => break,
            }
        }
    }
    let gap = Duration::from_millis(r.args.gap_ms);
    for c in &s.rest {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        if sock.write_all(c).await.is_err() {
            return false;
        }
    }
    sock.write_all(&s.tail).await.is_ok()
}

// ------------------------------------------------------------------------------------------------
// clients

struct Target {
    addr: String,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok(Target { addr: hostport.to_string(), host: hostport.to_string(), path: path.to_string() })
}

fn request_bytes(t: &Target, body: &[u8], headers: &[String]) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nauthorization: Bearer sk-bench\r\ncontent-length: {}\r\n",
        t.path,
        t.host,
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    [head.as_bytes(), body].concat()
}

/// Incremental reader of one HTTP/1.1 response carrying SSE; yields complete events.
struct SseResponse {
    raw: Vec<u8>,
    pos: usize,
    head_done: bool,
    chunked: bool,
    remaining: Option<usize>,
    chunk_left: usize,
    payload: Vec<u8>,
    done: bool,
    status: u16,
}

impl SseResponse {
    fn new() -> Self {
        SseResponse {
            raw: Vec::new(),
            pos: 0,
            head_done: false,
            chunked: false,
            remaining: None,
            chunk_left: 0,
            payload: Vec::new(),
            done: false,
            status: 0,
        }
    }

    /// Decodes what `raw` holds; returns the complete events found. Leftover bytes past the end
    /// of the response stay in `raw` (none expected: one request at a time).
    fn feed(&mut self, data: &[u8]) -> Result<Vec<String>, String> {
        self.raw.extend_from_slice(data);
        if !self.head_done {
            let Some(p) = find(&self.raw, b"\r\n\r\n") else { return Ok(vec![]) };
            let head = String::from_utf8_lossy(&self.raw[..p]).to_string();
            self.status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            for l in head.split("\r\n").skip(1) {
                if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked") {
                        self.chunked = true;
                    } else if k.eq_ignore_ascii_case("content-length") {
                        self.remaining = v.trim().parse().ok();
                    }
                }
            }
            self.pos = p + 4;
            self.head_done = true;
        }
        loop {
            if self.done {
                break;
            }
            if self.chunked {
                if self.chunk_left == 0 {
                    let Some(e) = find(&self.raw[self.pos..], b"\r\n") else { break };
                    let line = String::from_utf8_lossy(&self.raw[self.pos..self.pos + e]).to_string();
                    if line.is_empty() {
                        // CRLF after a chunk's data.
                        self.pos += 2;
                        continue;
                    }
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| format!("bad chunk size {line:?}"))?;
                    self.pos += e + 2;
                    if size == 0 {
                        self.done = true;
                        break;
                    }
                    self.chunk_left = size;
                }
                let take = self.chunk_left.min(self.raw.len() - self.pos);
                if take == 0 {
                    break;
                }
                self.payload.extend_from_slice(&self.raw[self.pos..self.pos + take]);
                self.pos += take;
                self.chunk_left -= take;
            } else {
                let avail = self.raw.len() - self.pos;
                let take = self.remaining.map_or(avail, |r| r.min(avail));
                self.payload.extend_from_slice(&self.raw[self.pos..self.pos + take]);
                self.pos += take;
                if let Some(r) = self.remaining.as_mut() {
                    *r -= take;
                    if *r == 0 {
                        self.done = true;
                    }
                }
                break;
            }
        }
        self.raw.drain(..self.pos);
        self.pos = 0;
        let mut events = Vec::new();
        while let Some(p) = find(&self.payload, b"\n\n") {
            let ev = String::from_utf8_lossy(&self.payload[..p]).replace('\r', "");
            self.payload.drain(..p + 2);
            events.push(ev);
        }
        Ok(events)
    }
}

/// True when the event carries a non-empty `"content"` or `"text"` string (`text` also for
/// Anthropic's deltas, so the client works on either wire format).
fn is_content(ev: &str) -> bool {
    for key in ["\"content\"", "\"text\""] {
        let mut from = 0;
        while let Some(i) = ev[from..].find(key) {
            let rest = ev[from + i + key.len()..].trim_start();
            if let Some(v) = rest.strip_prefix(':') {
                let v = v.trim_start();
                if v.starts_with('"') && !v.starts_with("\"\"") {
                    return true;
                }
            }
            from += i + key.len();
        }
    }
    false
}

fn is_end(ev: &str) -> bool {
    ev.contains("data: [DONE]") || ev.contains("\"message_stop\"")
}

struct StreamResult {
    ttft_us: f64,
    gaps_us: Vec<f64>,
    content: usize,
}

fn one_stream(sock: &mut TcpStream, req: &[u8]) -> Result<StreamResult, String> {
    let t0 = Instant::now();
    sock.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut resp = SseResponse::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut last: Option<Instant> = None;
    let mut ttft = None;
    let mut gaps = Vec::new();
    let mut content = 0;
    let mut ended = false;
    while !resp.done {
        let n = sock.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        let now = Instant::now();
        if n == 0 {
            return Err("connection closed mid-stream".into());
        }
        for ev in resp.feed(&buf[..n])? {
            if is_content(&ev) {
                content += 1;
                match last {
                    None => ttft = Some(now.duration_since(t0)),
                    Some(l) => gaps.push(now.duration_since(l).as_secs_f64() * 1e6),
                }
                last = Some(now);
            }
            ended |= is_end(&ev);
        }
        if resp.head_done && resp.status != 200 {
            return Err(format!("status {}", resp.status));
        }
    }
    if !ended {
        return Err("stream ended without [DONE]/message_stop".into());
    }
    let ttft = ttft.ok_or("no content chunk")?;
    Ok(StreamResult { ttft_us: ttft.as_secs_f64() * 1e6, gaps_us: gaps, content })
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    Ok(s)
}

fn fmt_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
    format!("[{}]", items.join(","))
}

fn streams(a: StreamsArgs) -> i32 {
    let run = || -> Result<String, String> {
        let t = parse_url(&a.url)?;
        let body = std::fs::read(&a.body).map_err(|e| format!("{}: {e}", a.body))?;
        let req = request_bytes(&t, &body, &a.header);
        let timeout = Duration::from_secs(a.timeout_s);
        let mut sock = connect(&t.addr, timeout)?;
        let (mut ttft, mut gaps, mut content, mut errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..a.n {
            match one_stream(&mut sock, &req) {
                Ok(r) => {
                    ttft.push(r.ttft_us);
                    gaps.extend(r.gaps_us);
                    content.push(r.content as f64);
                }
                Err(e) => {
                    errors.push(e);
                    sock = connect(&t.addr, timeout)?;
                }
            }
        }
        let errs: Vec<String> = errors.iter().take(5).map(|e| format!("{e:?}")).collect();
        Ok(format!(
            r#"{{"n":{},"ok":{},"ttft_us":{},"gap_us":{},"content_chunks":{},"errors":{},"error_samples":[{}]}}"#,
            a.n,
            ttft.len(),
            fmt_list(&ttft),
            fmt_list(&gaps),
            fmt_list(&content),
            errors.len(),
            errs.join(",")
        ))
    };
    match run() {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("bench-mock streams: {e}");
            1
        }
    }
}

fn hold(a: HoldArgs) -> i32 {
    let run = || -> Result<Vec<TcpStream>, String> {
        let t = parse_url(&a.url)?;
        let body = std::fs::read(&a.body).map_err(|e| format!("{}: {e}", a.body))?;
        let req = request_bytes(&t, &body, &a.header);
        let timeout = Duration::from_secs(a.timeout_s);
        let mut socks = Vec::with_capacity(a.streams);
        for _ in 0..a.streams {
            let mut s = connect(&t.addr, timeout)?;
            s.write_all(&req).map_err(|e| format!("write: {e}"))?;
            socks.push(s);
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 16 << 10];
        for (i, s) in socks.iter_mut().enumerate() {
            let mut resp = SseResponse::new();
            'wait: loop {
                if Instant::now() > deadline {
                    return Err(format!("stream {i}: no content chunk within {}s", a.timeout_s));
                }
                let n = s.read(&mut buf).map_err(|e| format!("stream {i}: read: {e}"))?;
                if n == 0 {
                    return Err(format!("stream {i}: closed before its first content chunk"));
                }
                for ev in resp.feed(&buf[..n])? {
                    if is_content(&ev) {
                        break 'wait;
                    }
                }
                if resp.head_done && resp.status != 200 {
                    return Err(format!("stream {i}: status {}", resp.status));
                }
            }
        }
        Ok(socks)
    };
    match run() {
        Ok(socks) => {
            println!("ready {}", socks.len());
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            drop(socks);
            0
        }
        Err(e) => {
            println!("failed {e}");
            eprintln!("bench-mock hold: {e}");
            1
        }
    }
}

fn rate(a: RateArgs) -> i32 {
    use std::cell::{Cell, RefCell};
    use tokio::time::Instant as TInstant;

    #[derive(Default)]
    struct Tally {
        latencies_us: Vec<f64>,
        errors: usize,
        samples: Vec<String>,
        /// Slots taken: sent, or lost to a failed connect.
        taken: usize,
    }

    async fn one(sock: &mut AsyncTcpStream, req: &[u8], timeout: Duration) -> Result<(), String> {
        sock.write_all(req).await.map_err(|e| format!("write: {e}"))?;
        let mut resp = SseResponse::new();
        let mut buf = vec![0u8; 16 << 10];
        while !resp.done {
            let n = tokio::time::timeout(timeout, sock.read(&mut buf))
                .await
                .map_err(|_| "response timeout".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            resp.feed(&buf[..n])?;
            if resp.head_done && resp.remaining.is_none() && !resp.chunked && resp.status != 0 {
                return Err("response without content-length or chunked encoding".into());
            }
        }
        match resp.status {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    }

    let run = || -> Result<String, String> {
        if a.rps == 0 || a.seconds == 0 || a.conns == 0 {
            return Err("--rps, --seconds and --conns must be positive".into());
        }
        let t = parse_url(&a.url)?;
        let body = std::fs::read(&a.body).map_err(|e| format!("{}: {e}", a.body))?;
        let req = Rc::new(request_bytes(&t, &body, &a.header));
        let total = a.rps as usize * a.seconds as usize;
        let timeout = Duration::from_secs(a.timeout_s);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let local = tokio::task::LocalSet::new();
        let next = Rc::new(Cell::new(0usize));
        let tally = Rc::new(RefCell::new(Tally::default()));
        let elapsed = local.block_on(&rt, async {
            let start = TInstant::now() + Duration::from_millis(200);
            // Requests still due after the run's end + a grace period are not sent (`unsent`).
            let stop_at = start + Duration::from_secs(a.seconds as u64) + Duration::from_secs(5);
            let interval = Duration::from_secs_f64(1.0 / a.rps as f64);
            let mut tasks = Vec::new();
            for _ in 0..a.conns {
                let (next, tally, req, addr) = (next.clone(), tally.clone(), req.clone(), t.addr.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    // Connected before the first request is due: connection setup is not request latency.
                    let mut sock = AsyncTcpStream::connect(&addr).await.ok();
                    if let Some(s) = &sock {
                        let _ = s.set_nodelay(true);
                    }
                    loop {
                        let i = next.get();
                        if i >= total {
                            break;
                        }
                        next.set(i + 1);
                        let due = start + interval * i as u32;
                        let picked = TInstant::now();
                        if picked > stop_at {
                            break;
                        }
                        tally.borrow_mut().taken += 1;
                        tokio::time::sleep_until(due).await;
                        let sent = TInstant::now();
                        let from = if picked > due { due } else { sent };
                        if sock.is_none() {
                            match AsyncTcpStream::connect(&addr).await {
                                Ok(s) => {
                                    let _ = s.set_nodelay(true);
                                    sock = Some(s);
                                }
                                Err(e) => {
                                    let mut t = tally.borrow_mut();
                                    t.errors += 1;
                                    t.samples.push(format!("connect: {e}"));
                                    continue;
                                }
                            }
                        }
                        let Some(s) = sock.as_mut() else { continue };
                        let r = one(s, &req, timeout).await;
                        let mut t = tally.borrow_mut();
                        match r {
                            Ok(()) => t.latencies_us.push(from.elapsed().as_secs_f64() * 1e6),
                            Err(e) => {
                                t.errors += 1;
                                if t.samples.len() < 5 {
                                    t.samples.push(e);
                                }
                                sock = None;
                            }
                        }
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
            start.elapsed()
        });
        let t = tally.borrow();
        let mut l = t.latencies_us.clone();
        l.sort_by(|x, y| x.total_cmp(y));
        let pct = |p: f64| -> f64 {
            if l.is_empty() {
                return -1.0;
            }
            let k = ((l.len() - 1) as f64 * p / 100.0).round() as usize;
            l[k.min(l.len() - 1)]
        };
        let samples: Vec<String> = t.samples.iter().map(|e| format!("{e:?}")).collect();
        Ok(format!(
            r#"{{"target_rps":{},"ok":{},"errors":{},"unsent":{},"achieved_rps":{:.1},"p50_us":{:.1},"p90_us":{:.1},"p99_us":{:.1},"max_us":{:.1},"error_samples":[{}]}}"#,
            a.rps,
            l.len(),
            t.errors,
            total.saturating_sub(t.taken),
            l.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            pct(50.0),
            pct(90.0),
            pct(99.0),
            pct(100.0),
            samples.join(",")
        ))
    };
    match run() {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("bench-mock rate: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_after_finds_flags() {
        let b = r#"{"model": "gpt-slow","stream" : true,"stream_options":{"include_usage":false}}"#;
        assert_eq!(value_after(b, "\"model\""), Some("gpt-slow"));
        assert_eq!(value_after(b, "\"stream\""), Some("true"));
        assert_eq!(value_after(b, "\"include_usage\""), Some("false"));
        assert_eq!(value_after(b, "\"nope\""), None);
    }

    #[test]
    fn content_events() {
        assert!(is_content(r#"data: {"choices":[{"delta":{"content":"a"}}]}"#));
        assert!(!is_content(r#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#));
        assert!(is_content(r#"data: {"choices": [{"delta": {"content": "a"}}]}"#));
        assert!(is_content(r#"data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#));
        assert!(!is_content(r#"data: {"type":"content_block_start","content_block":{"type":"text","text":""}}"#));
    }

    #[test]
    fn sse_response_dechunks_across_reads() {
        let mut r = SseResponse::new();
        let whole = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\ndata:\r\n7\r\n 1\n\ndat\r\n6\r\na: 2\n\n\r\n0\r\n\r\n";
        let mut events = Vec::new();
        for piece in whole.chunks(3) {
            events.extend(r.feed(piece).unwrap());
        }
        assert!(r.done);
        assert_eq!(events, vec!["data: 1".to_string(), "data: 2".to_string()]);
    }
}
