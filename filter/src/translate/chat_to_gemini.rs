//! OpenAI client → Gemini on Vertex AI (`GCPVertexAI`): chat completions over `generateContent` and
//! `streamGenerateContent?alt=sse`, embeddings over the `predict` method. What each OpenAI parameter
//! becomes (or why it is refused) is tabled in the filter README, "Provider notes" → "GCPVertexAI".
//!
//! Memory: requests are read through borrowed views and written into a [`ChunkedBody`] one part at
//! a time (messages, content parts, tools and tool calls are walked with [`each`], never collected);
//! text, base64 data, JSON schemas and function arguments go from the client's bytes to the output
//! without an owned copy. Answers are read through borrowed views too, and a non-streaming answer is
//! written into a buffer of exactly its final size (measured by a first, counting pass).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::jsontext::{check_json_inside, write_decoded, Unescape};
use super::openai_passthrough::percent_encode;
use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::body::{BodyWriter, ChunkedBody, NewBody};
use crate::config::{Backend, BackendApi};
use crate::error::{error_json, ApiError, ErrorKind};
use crate::json::{each, from_raw, EachError};
use crate::sse::{parse_event, Splitter};
use crate::usage::TokenUsage;
use crate::wire::chat_view::{
    opt_text, unknown_members, ChatRequestView, FunctionDefView, ImageUrlView, MessageView, ToolView,
};
use crate::wire::gemini as g;
use crate::wire::openai as o;

/// The `thoughtSignature` put on replayed function calls. OpenAI messages have no place for Gemini's
/// signatures, and Gemini 3 refuses a function call in history without one; Google documents this
/// value for history the model did not sign.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// `reasoning_effort` → `thinkingConfig.thinkingBudget` (tokens), after Google's own OpenAI
/// compatibility layer; `none` turns thinking off (budget 0), the others also ask for thought summaries.
const EFFORT_BUDGETS: &[(&str, i64)] =
    &[("none", 0), ("minimal", 512), ("low", 1024), ("medium", 8192), ("high", 24576)];

pub(super) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

pub(super) fn unsupported(param: &str, why: &str) -> ApiError {
    ApiError::bad_request("unsupported_parameter", format!("`{param}` is not supported by GCPVertexAI backends: {why}"))
}

pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, ErrorKind::Server, "internal", format!("encoding the request failed: {e}"))
}

/// What the Vertex AI translators read of their (GCPVertexAI) backend.
pub(super) struct Vertex<'a> {
    prefix: &'a str,
    project: &'a str,
    region: &'a str,
    allow_gcs_uris: bool,
}

impl<'a> Vertex<'a> {
    pub(super) fn of(backend: &'a Backend) -> Result<Self, ApiError> {
        match &backend.api {
            BackendApi::GCPVertexAI { project, region, allow_gcs_uris, credential: _ } => {
                Ok(Vertex { prefix: &backend.prefix, project, region, allow_gcs_uris: *allow_gcs_uris })
            }
            BackendApi::OpenAI { .. }
            | BackendApi::AzureOpenAI { .. }
            | BackendApi::Anthropic { .. }
            | BackendApi::AWSBedrock { .. }
            | BackendApi::AWSAnthropic { .. }
            | BackendApi::GCPAnthropic { .. } => Err(super::wrong_backend(backend, "Vertex AI")),
        }
    }

    /// `{prefix}/projects/{project}/locations/{region}/publishers/google/models/{model}:{method}`.
    pub(super) fn model_path(&self, model: &str, method: &str) -> String {
        let Vertex { prefix, project, region, allow_gcs_uris: _ } = self;
        format!(
            "{prefix}/projects/{project}/locations/{region}/publishers/google/models/{}:{method}",
            percent_encode(model)
        )
    }
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

// ---- writing JSON by hand ----

/// Writes the raw JSON `raw` as the inside of a JSON string literal, without its insignificant
/// whitespace: how OpenAI's `arguments` carry JSON text.
fn write_minified_escaped(w: &mut (impl Write + ?Sized), raw: &str) -> io::Result<()> {
    let mut buf = [0u8; 512];
    let mut n = 0;
    let (mut in_string, mut escaped) = (false, false);
    for &b in raw.as_bytes() {
        if !in_string && matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        }
        if n + 2 > buf.len() {
            w.write_all(buf.get(..n).unwrap_or_default())?;
            n = 0;
        }
        if b == b'"' || b == b'\\' {
            if let Some(slot) = buf.get_mut(n) {
                *slot = b'\\';
            }
            n += 1;
        }
        if let Some(slot) = buf.get_mut(n) {
            *slot = b;
        }
        n += 1;
    }
    w.write_all(buf.get(..n).unwrap_or_default())
}

/// The raw JSON `raw` without its insignificant whitespace (a function call's arguments in a
/// stream chunk; bounded by the event).
fn minified(raw: &str) -> String {
    let mut out = Vec::with_capacity(raw.len() + 2);
    out.push(b'"');
    let _ = write_minified_escaped(&mut out, raw);
    out.push(b'"');
    crate::json::from_bytes::<String>(&out).unwrap_or_else(|_| "{}".into())
}

/// A `Write` that only counts: the first pass of a two-pass write, so the real buffer is allocated
/// once at its final size.
#[derive(Default)]
pub(super) struct Counter(pub(super) usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The request body being written: top-level members separated by commas.
struct Out<'s> {
    body: BodyWriter<'s>,
    members: usize,
}

impl Out<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
    }

    /// `"name":` (with the comma before it when needed).
    fn key(&mut self, name: &str) {
        if self.members > 0 {
            self.raw(b",");
        }
        self.members += 1;
        self.raw(b"\"");
        self.raw(name.as_bytes());
        self.raw(b"\":");
    }

    fn value(&mut self, value: &impl Serialize) -> Result<(), ApiError> {
        serde_json::to_writer(&mut self.body, value).map_err(internal)
    }
}

/// Parameters that have no Gemini equivalent and are dropped (one debug line per request).
#[derive(Default)]
struct Notes(Vec<&'static str>);

impl Notes {
    fn note(&mut self, name: &'static str) {
        if !self.0.contains(&name) {
            self.0.push(name);
        }
    }
}

/// [`each`], with the request's errors: a callback's error as is, a shape error as a 400 naming `what`.
fn walk<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    what: impl Fn() -> String,
    f: impl FnMut(T) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    each(raw, f).map_err(|e| match e {
        EachError::Stopped(e) => e,
        EachError::Json(e) => bad(format!("invalid chat completion request: {}: {e}", what())),
    })
}

// ---- request ----

/// `top_k`, a vendor extension the chat view does not name.
#[derive(Deserialize)]
struct Extensions<'a> {
    #[serde(default, borrow)]
    top_k: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseFormatView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    json_schema: Option<JsonSchemaView<'a>>,
}

#[derive(Deserialize)]
struct JsonSchemaView<'a> {
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
}

/// `thinking: {"type": "enabled", "budget_tokens": N}` as some OpenAI-compatible servers accept.
#[derive(Deserialize)]
struct ThinkingView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    budget_tokens: Option<u32>,
}

/// An assistant tool call; the name stays raw (a JSON string) so it can be written, and
/// remembered for the tool results, without a copy.
#[derive(Deserialize)]
struct CallView<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    function: CallFunctionView<'a>,
}

#[derive(Deserialize)]
struct CallFunctionView<'a> {
    #[serde(borrow)]
    name: &'a RawValue,
    /// A JSON string holding JSON text: decoded as it is written, never copied.
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AudioView<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    data: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    format: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FileView<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    file_data: Option<Cow<'a, str>>,
}

/// A content part. Text stays a raw JSON string literal: it is written as the client escaped it,
/// so a text with escapes (newlines, quotes) is never decoded into a copy.
#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    image_url: Option<ImageUrlView<'a>>,
    #[serde(default, borrow)]
    input_audio: Option<&'a RawValue>,
    #[serde(default, borrow)]
    file: Option<&'a RawValue>,
    #[serde(default, borrow)]
    refusal: Option<&'a RawValue>,
    /// Prompt caching marker: Gemini has none per part (dropped).
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

/// A message's `content`: a raw JSON string literal, raw parts, or nothing.
enum Content<'a> {
    Null,
    Text(&'a RawValue),
    Parts(&'a RawValue),
}

fn content_of(raw: Option<&RawValue>) -> Result<Content<'_>, String> {
    let Some(raw) = raw else { return Ok(Content::Null) };
    match raw.get().as_bytes().first() {
        Some(b'"') => Ok(Content::Text(raw)),
        Some(b'[') => Ok(Content::Parts(raw)),
        Some(b'n') => Ok(Content::Null),
        _ => Err("`content` must be a string or an array of content parts".into()),
    }
}

/// A string-or-null member as a raw string literal; anything else is a 400 naming `what`.
fn string_raw(raw: Option<&RawValue>, what: impl Fn() -> String) -> Result<Option<&RawValue>, ApiError> {
    match raw {
        Some(r) if r.get().starts_with('"') => Ok(Some(r)),
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(_) => Err(bad(format!("{} must be a string", what()))),
    }
}

/// The escaped inside of a raw JSON string literal (what goes between the quotes).
fn inner(literal: &RawValue) -> &[u8] {
    let b = literal.get().as_bytes();
    b.get(1..b.len().saturating_sub(1)).unwrap_or_default()
}

fn is_empty_literal(literal: &RawValue) -> bool {
    literal.get() == "\"\""
}

/// The decoded text of a raw JSON string literal, read as a stream (no decoded copy in memory).
/// The literal is one serde_json has read, so its escapes are valid.
fn unescape(literal: &RawValue) -> Unescape<'_> {
    Unescape::new(inner_text(literal))
}

/// [`inner`] as text.
fn inner_text(literal: &RawValue) -> &str {
    let t = literal.get();
    t.get(1..t.len().saturating_sub(1)).unwrap_or_default()
}

/// The first byte of the decoded text that is not JSON whitespace.
fn first_non_ws(literal: &RawValue) -> Option<u8> {
    let mut r = unescape(literal);
    let mut buf = [0u8; 64];
    loop {
        let n = io::Read::read(&mut r, &mut buf).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(b) = buf.get(..n)?.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            return Some(*b);
        }
    }
}

/// Whether the decoded text is one JSON object, validated in full while it is decoded (no copy).
fn holds_object(literal: &RawValue) -> bool {
    first_non_ws(literal) == Some(b'{') && check_json_inside(inner_text(literal)).is_ok()
}

fn write_unescaped(out: &mut Out, literal: &RawValue) -> Result<(), ApiError> {
    write_decoded(inner_text(literal), &mut out.body).map_err(internal)
}

/// Tool call ids are keyed by a 64-bit SipHash of the id: the map holds 24 bytes per tool call
/// (no copy of ids or names), less than the smallest tool call takes in the body.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type CallNames<'a> = HashMap<u64, &'a RawValue, BuildHasherDefault<KeyHasher>>;

fn call_key(id: &str) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6c6c_6d67_7700_0001, 0x6765_6d69_6e69_0002);
    id.hash(&mut h);
    h.finish()
}

/// Consecutive parts of one role form one turn (Gemini expects alternating turns).
#[derive(Default)]
struct Turns {
    role: Option<&'static str>,
    parts: usize,
}

impl Turns {
    /// Opens a turn of `role` if needed, and writes the separator before the next part.
    fn part(&mut self, out: &mut Out, role: &'static str) {
        if self.role != Some(role) {
            if self.role.is_some() {
                out.raw(b"]},");
            }
            out.raw(b"{\"role\":\"");
            out.raw(role.as_bytes());
            out.raw(b"\",\"parts\":[");
            self.role = Some(role);
            self.parts = 0;
        }
        if self.parts > 0 {
            out.raw(b",");
        }
        self.parts += 1;
    }

    fn close(&self, out: &mut Out) {
        if self.role.is_some() {
            out.raw(b"]}");
        }
    }
}

/// Whether a `gs://` URI from a client may reach Vertex AI, which reads it with the gateway's
/// credentials (so a client could read any object the gateway's service account can).
fn check_gcs(uri: &str, allow_gcs_uris: bool, at: &str) -> Result<(), ApiError> {
    let is_gcs = uri.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("gs://"));
    if is_gcs && !allow_gcs_uris {
        return Err(ApiError::bad_request(
            "gcs_uri_not_allowed",
            format!(
                "{at}: gs:// URIs are not accepted by this backend (Vertex AI would read the object with the \
                 gateway's credentials); send the file inline as a base64 data URL, or use an https:// URL"
            ),
        ));
    }
    Ok(())
}

/// A data URL → `inlineData`; a `gs://` (where allowed), `https://` or `http://` URL → `fileData`
/// (Vertex fetches it), with the MIME type the file's extension tells.
fn media_part<'u>(url: &'u str, at: &str, allow_gcs_uris: bool) -> Result<g::Part<'u>, ApiError> {
    match o::parse_image_url(url).map_err(|e| bad(format!("{at}: {e}")))? {
        o::Image::Base64 { media_type, data } => Ok(g::Part {
            inline_data: Some(g::Blob { mime_type: Cow::Borrowed(media_type), data }),
            ..g::Part::default()
        }),
        o::Image::Url(uri) => {
            let scheme = |s: &str| uri.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s));
            if !["gs://", "https://", "http://"].iter().any(|s| scheme(s)) {
                return Err(bad(format!("{at}: a URL must be a base64 data URL, gs://, https:// or http://")));
            }
            check_gcs(uri, allow_gcs_uris, at)?;
            let mime_type = mime_from_extension(uri).ok_or_else(|| {
                let shown: String = uri.chars().take(200).collect();
                bad(format!(
                    "{at}: cannot tell the MIME type of {shown:?} from its extension (Gemini needs it); use a URL \
                     ending in .png, .jpg, .jpeg, .webp, .gif, .heic, .heif, .pdf, .mp4, .mp3, .wav, ... or a data URL"
                ))
            })?;
            Ok(g::Part { file_data: Some(g::FileData { mime_type, file_uri: uri }), ..g::Part::default() })
        }
    }
}

fn mime_from_extension(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = file.rsplit_once('.')?;
    if ext.len() > 8 {
        return None;
    }
    Some(match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "mp4" => "video/mp4",
        "mov" => "video/mov",
        "mpeg" | "mpg" => "video/mpeg",
        "webm" => "video/webm",
        "wmv" => "video/wmv",
        "flv" => "video/x-flv",
        "3gp" | "3gpp" => "video/3gpp",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "aac" => "audio/aac",
        "ogg" => "audio/ogg",
        "m4a" => "audio/m4a",
        "opus" => "audio/opus",
        _ => return None,
    })
}

/// Gemini 1.x and 2.x do not check signatures; later models do.
fn signs_replayed_calls(model: &str) -> bool {
    !(model.starts_with("gemini-1.") || model.starts_with("gemini-2."))
}

fn thinking_config(
    reasoning_effort: Option<&str>,
    thinking: Option<&RawValue>,
    notes: &mut Notes,
) -> Result<Option<g::ThinkingConfig>, ApiError> {
    let from_effort = match reasoning_effort {
        None => None,
        Some(effort) => {
            let budget = EFFORT_BUDGETS.iter().find(|(name, _)| *name == effort).map(|(_, b)| *b).ok_or_else(|| {
                bad(format!("`reasoning_effort` must be one of none, minimal, low, medium, high; got {effort:?}"))
            })?;
            Some(g::ThinkingConfig { thinking_budget: Some(budget), include_thoughts: (budget > 0).then_some(true) })
        }
    };
    let Some(thinking) = thinking else { return Ok(from_effort) };
    let view: ThinkingView = from_raw(thinking).map_err(|e| {
        bad(format!(
            "`thinking` must be {{\"type\": \"enabled\", \"budget_tokens\": N}} or {{\"type\": \"disabled\"}}: {e}"
        ))
    })?;
    let config = match view.kind.as_ref() {
        // No budget: the model decides (-1, Gemini's dynamic thinking).
        "enabled" | "adaptive" => g::ThinkingConfig {
            thinking_budget: Some(view.budget_tokens.map_or(-1, i64::from)),
            include_thoughts: Some(true),
        },
        "disabled" => g::ThinkingConfig { thinking_budget: Some(0), include_thoughts: None },
        other => return Err(bad(format!("`thinking.type` must be enabled, adaptive or disabled; got {other:?}"))),
    };
    if from_effort.is_some() {
        notes.note("reasoning_effort (thinking wins)");
    }
    Ok(Some(config))
}

/// An OpenAI chat request → a Gemini `GenerateContentRequest`, written as it is read. `model` is the
/// upstream model (it decides whether replayed function calls carry a signature).
pub(super) fn write_request(
    body: &[u8],
    model: &str,
    allow_gcs_uris: bool,
    out: BodyWriter<'_>,
) -> Result<ChunkedBody, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| bad(format!("invalid chat completion request: {e}")))?;
    let view: ChatRequestView =
        crate::json::from_text(text).map_err(|e| bad(format!("invalid chat completion request: {e}")))?;
    let extensions: Extensions =
        crate::json::from_text(text).map_err(|e| bad(format!("invalid chat completion request: {e}")))?;
    let ChatRequestView {
        model: _,
        messages,
        max_tokens,
        max_completion_tokens,
        temperature,
        top_p,
        stop,
        stream: _,
        stream_options: _,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        reasoning_effort,
        thinking,
        n,
        seed,
        presence_penalty,
        frequency_penalty,
        logprobs,
        top_logprobs,
        logit_bias,
        user,
        metadata,
        store,
        service_tier,
    } = view;
    if logprobs == Some(true) || top_logprobs.is_some_and(|k| k > 0) {
        return Err(unsupported("logprobs", "the gateway cannot return Gemini's log probabilities"));
    }
    if let Some(bias) = logit_bias {
        let inner = bias.get().trim_start().strip_prefix('{').ok_or_else(|| bad("`logit_bias` must be an object"))?;
        if !inner.trim_start().starts_with('}') {
            return Err(unsupported("logit_bias", "Gemini has no token biasing"));
        }
    }
    let mut notes = Notes::default();
    for (name, set) in [
        ("user", user.is_some()),
        ("metadata", metadata.is_some()),
        ("store", store.is_some()),
        ("service_tier", service_tier.is_some()),
        ("parallel_tool_calls", parallel_tool_calls == Some(false)),
    ] {
        if set {
            notes.note(name);
        }
    }

    let mut config = g::GenerationConfig {
        max_output_tokens: max_completion_tokens.or(max_tokens),
        temperature,
        top_p,
        candidate_count: n.filter(|&n| n != 1),
        seed,
        presence_penalty,
        frequency_penalty,
        ..g::GenerationConfig::default()
    };
    if let Some(stop) = stop {
        let not_strings = || bad("`stop` must be a string or an array of strings");
        config.stop_sequences = match stop.get().as_bytes().first() {
            Some(b'"') => Some(g::StopSequences::One(stop)),
            Some(b'[') => {
                let mut count = 0usize;
                each(stop, |item: &RawValue| {
                    if item.get().starts_with('"') {
                        count += 1;
                        Ok(())
                    } else {
                        Err(())
                    }
                })
                .map_err(|_| not_strings())?;
                (count > 0).then_some(g::StopSequences::Many(stop))
            }
            _ => return Err(not_strings()),
        };
    }
    match extensions.top_k.map(|k| (k, k.get())) {
        None | Some((_, "null")) => {}
        Some((k, _)) => {
            config.top_k = Some(from_raw::<f64>(k).map_err(|_| bad("`top_k` must be a number"))?);
        }
    }
    if let Some(format) = response_format {
        let format: ResponseFormatView =
            from_raw(format).map_err(|e| bad(format!("invalid chat completion request: response_format: {e}")))?;
        match format.kind.as_ref() {
            "text" => {}
            "json_object" => config.response_mime_type = Some("application/json"),
            "json_schema" => {
                let schema = format.json_schema.ok_or_else(|| {
                    bad("invalid chat completion request: response_format: missing field `json_schema`")
                })?;
                config.response_mime_type = Some("application/json");
                config.response_json_schema = schema.schema;
            }
            _ => {
                return Err(unsupported(
                    "response_format",
                    "only text, json_object and json_schema have a Gemini equivalent",
                ))
            }
        }
    }
    config.thinking_config = thinking_config(reasoning_effort.as_deref(), thinking, &mut notes)?;

    let mut out = Out { body: out, members: 0 };
    out.raw(b"{");
    if !config.is_empty() {
        out.key("generationConfig");
        out.value(&config)?;
    }

    // Tools: one `tools` entry holding every function declaration.
    let mut declarations = 0usize;
    if let Some(tools) = tools {
        let mut i = 0usize;
        walk(
            tools,
            || "tools".into(),
            |tool: ToolView| {
                let ToolView { kind, function, cache_control } = tool;
                if kind != "function" {
                    return Err(unsupported(&format!("tools[{i}].type {kind:?}"), "only function tools exist there"));
                }
                let Some(FunctionDefView { name, description, parameters, strict }) = function else {
                    return Err(bad(format!("tools[{i}]: a function tool needs `function`")));
                };
                if strict.is_some() {
                    notes.note("tools[].function.strict");
                }
                if cache_control.is_some() {
                    notes.note("cache_control");
                }
                if declarations == 0 {
                    out.key("tools");
                    out.raw(b"[{\"functionDeclarations\":[");
                } else {
                    out.raw(b",");
                }
                out.value(&g::FunctionDeclaration {
                    name: &name,
                    description: description.as_deref(),
                    parameters_json_schema: parameters,
                })?;
                declarations += 1;
                i += 1;
                Ok(())
            },
        )?;
        if declarations > 0 {
            out.raw(b"]}]");
        }
    }
    if let (true, Some(choice)) = (declarations > 0, tool_choice.filter(|c| c.get() != "null")) {
        let choice: o::ToolChoice =
            from_raw(choice).map_err(|e| bad(format!("invalid chat completion request: tool_choice: {e}")))?;
        let function_calling_config = match &choice {
            o::ToolChoice::Mode(mode) => g::FunctionCallingConfig {
                mode: match mode.as_str() {
                    "auto" => g::FunctionCallingMode::Auto,
                    "none" => g::FunctionCallingMode::None,
                    "required" => g::FunctionCallingMode::Any,
                    other => {
                        return Err(bad(format!(
                            "`tool_choice` must be none, auto, required or a function; got {other:?}"
                        )))
                    }
                },
                allowed_function_names: None,
            },
            o::ToolChoice::Named(named) => g::FunctionCallingConfig {
                mode: g::FunctionCallingMode::Any,
                allowed_function_names: Some([named.function.name.as_str()]),
            },
        };
        out.key("toolConfig");
        out.value(&g::ToolConfig { function_calling_config })?;
    }

    write_system_instruction(&mut out, messages, &mut notes)?;
    write_contents(&mut out, messages, signs_replayed_calls(model), allow_gcs_uris, &mut notes)?;
    out.raw(b"}");

    if log::log_enabled!(log::Level::Debug) {
        let unknown: Vec<String> = unknown_members(body).into_iter().filter(|k| k != "top_k").collect();
        let mut dropped: Vec<&str> = notes.0.clone();
        dropped.extend(unknown.iter().map(String::as_str));
        if !dropped.is_empty() {
            log::debug!("llmgw: GCPVertexAI backend ignores parameters: {}", dropped.join(", "));
        }
    }
    Ok(out.body.finish())
}

/// System and developer messages (anywhere) → `systemInstruction.parts`, one text part per message
/// (its text parts joined with newlines). A second walk over the messages: nothing is collected,
/// and text is written as the client escaped it.
fn write_system_instruction(out: &mut Out, messages: &RawValue, notes: &mut Notes) -> Result<(), ApiError> {
    let mut written = 0usize;
    let mut i = 0usize;
    walk(
        messages,
        || "messages".into(),
        |m: MessageView| {
            let at = i;
            i += 1;
            if m.role != "system" && m.role != "developer" {
                return Ok(());
            }
            if m.name.is_some() {
                notes.note("messages[].name");
            }
            if m.cache_control.is_some() {
                notes.note("cache_control");
            }
            // The part is opened lazily, so a message whose joined text is empty writes nothing.
            let mut started = false;
            // `escaped`: the inside of a JSON string literal.
            let mut piece = |out: &mut Out, escaped: &[u8]| {
                if escaped.is_empty() {
                    return;
                }
                if !started {
                    if written == 0 {
                        out.key("systemInstruction");
                        out.raw(b"{\"parts\":[");
                    } else {
                        out.raw(b",");
                    }
                    written += 1;
                    out.raw(b"{\"text\":\"");
                    started = true;
                }
                out.raw(escaped);
            };
            match content_of(m.content).map_err(|e| bad(format!("messages[{at}]: {e}")))? {
                Content::Null => {}
                Content::Text(text) => piece(out, inner(text)),
                Content::Parts(parts) => {
                    let mut j = 0usize;
                    walk(
                        parts,
                        || format!("messages[{at}].content"),
                        |p: PartIn| {
                            if p.cache_control.is_some() {
                                notes.note("cache_control");
                            }
                            if p.kind != "text" {
                                return Err(bad(format!(
                                    "messages[{at}].content[{j}]: a {} message can only hold text for GCPVertexAI \
                                     backends (Gemini's systemInstruction takes no {:?} part)",
                                    m.role, p.kind
                                )));
                            }
                            let text = string_raw(p.text, || format!("messages[{at}].content[{j}].text"))?;
                            if j > 0 {
                                piece(out, b"\\n");
                            }
                            if let Some(text) = text {
                                piece(out, inner(text));
                            }
                            j += 1;
                            Ok(())
                        },
                    )?;
                }
            }
            if started {
                out.raw(b"\"}");
            }
            Ok(())
        },
    )?;
    if written > 0 {
        out.raw(b"]}");
    }
    Ok(())
}

/// `{"text": <literal>}`.
fn text_part(out: &mut Out, literal: &RawValue) {
    out.raw(b"{\"text\":");
    out.raw(literal.get().as_bytes());
    out.raw(b"}");
}

/// User, assistant and tool messages → `contents`. Consecutive turns of one role are merged, as
/// Gemini expects alternating turns; tool results become `functionResponse` parts of a user turn,
/// named after the assistant tool call their `tool_call_id` points to.
fn write_contents(
    out: &mut Out,
    messages: &RawValue,
    sign: bool,
    allow_gcs_uris: bool,
    notes: &mut Notes,
) -> Result<(), ApiError> {
    out.key("contents");
    out.raw(b"[");
    let mut turns = Turns::default();
    let mut calls = CallNames::default();
    let mut i = 0usize;
    walk(
        messages,
        || "messages".into(),
        |m: MessageView| {
            let at = i;
            i += 1;
            let MessageView {
                role,
                content,
                name,
                tool_calls,
                tool_call_id,
                reasoning_content,
                refusal,
                cache_control,
            } = m;
            if name.is_some() {
                notes.note("messages[].name");
            }
            if cache_control.is_some() {
                notes.note("cache_control");
            }
            let content = content_of(content).map_err(|e| bad(format!("messages[{at}]: {e}")))?;
            match role.as_ref() {
                "system" | "developer" => Ok(()),
                "user" => write_user(out, &mut turns, content, at, allow_gcs_uris, notes),
                "assistant" => {
                    if reasoning_content.is_some() {
                        notes.note("messages[].reasoning_content");
                    }
                    let mut written = 0usize;
                    match content {
                        Content::Null => {}
                        Content::Text(text) if is_empty_literal(text) => {}
                        Content::Text(text) => {
                            turns.part(out, "model");
                            written += 1;
                            text_part(out, text);
                        }
                        Content::Parts(parts) => {
                            let mut j = 0usize;
                            walk(
                                parts,
                                || format!("messages[{at}].content"),
                                |p: PartIn| {
                                    if p.cache_control.is_some() {
                                        notes.note("cache_control");
                                    }
                                    let text = match p.kind.as_ref() {
                                        "text" => p.text,
                                        "refusal" => p.refusal,
                                        other => {
                                            return Err(bad(format!(
                                                "messages[{at}].content[{j}]: an assistant message can only hold text \
                                                 and refusal parts; {other:?} is not supported by GCPVertexAI backends"
                                            )))
                                        }
                                    };
                                    let text = string_raw(text, || format!("messages[{at}].content[{j}].{}", p.kind))?;
                                    j += 1;
                                    if let Some(text) = text.filter(|t| !is_empty_literal(t)) {
                                        turns.part(out, "model");
                                        written += 1;
                                        text_part(out, text);
                                    }
                                    Ok(())
                                },
                            )?;
                        }
                    }
                    if let (0, Some(refusal)) = (written, refusal) {
                        turns.part(out, "model");
                        out.raw(b"{\"text\":");
                        out.raw(&crate::json::json_string(&refusal));
                        out.raw(b"}");
                    }
                    if let Some(tool_calls) = tool_calls.filter(|c| c.get() != "null") {
                        let mut k = 0usize;
                        walk(
                            tool_calls,
                            || format!("messages[{at}].tool_calls"),
                            |call: CallView| {
                                let CallView { id, function: CallFunctionView { name, arguments } } = call;
                                if !name.get().starts_with('"') {
                                    return Err(bad(format!(
                                        "messages[{at}].tool_calls[{k}]: `name` must be a string"
                                    )));
                                }
                                let arguments =
                                    string_raw(arguments, || format!("messages[{at}].tool_calls[{k}].arguments"))?;
                                let blank = arguments.is_none_or(|a| first_non_ws(a).is_none());
                                if let (false, Some(arguments)) = (blank, arguments) {
                                    if !holds_object(arguments) {
                                        let shown: String = arguments.get().chars().take(200).collect();
                                        return Err(bad(format!(
                                            "messages[{at}]: tool call arguments must be a JSON object, got {shown}"
                                        )));
                                    }
                                }
                                turns.part(out, "model");
                                out.raw(b"{\"functionCall\":{\"name\":");
                                out.raw(name.get().as_bytes());
                                out.raw(b",\"args\":");
                                match arguments {
                                    Some(arguments) if !blank => write_unescaped(out, arguments)?,
                                    _ => out.raw(b"{}"),
                                }
                                out.raw(b"}");
                                if sign && k == 0 {
                                    out.raw(b",\"thoughtSignature\":");
                                    out.raw(&crate::json::json_string(SKIP_SIGNATURE));
                                }
                                out.raw(b"}");
                                calls.insert(call_key(&id), name);
                                k += 1;
                                Ok(())
                            },
                        )?;
                    }
                    Ok(())
                }
                "tool" => {
                    let Some(id) = tool_call_id else {
                        return Err(bad(format!("messages[{at}]: a tool message needs `tool_call_id`")));
                    };
                    let name = calls.get(&call_key(&id)).copied().ok_or_else(|| {
                        bad(format!(
                            "messages[{at}]: tool_call_id {id:?} matches no tool call of an earlier assistant message \
                             (Gemini needs the function's name)"
                        ))
                    })?;
                    turns.part(out, "user");
                    out.raw(b"{\"functionResponse\":{\"name\":");
                    out.raw(name.get().as_bytes());
                    out.raw(b",\"response\":");
                    match content {
                        Content::Null => out.raw(b"{\"output\":\"\"}"),
                        // A JSON object is the response itself; any other text is `{"output": text}`.
                        Content::Text(text) if holds_object(text) => write_unescaped(out, text)?,
                        Content::Text(text) => {
                            out.raw(b"{\"output\":");
                            out.raw(text.get().as_bytes());
                            out.raw(b"}");
                        }
                        Content::Parts(parts) => {
                            // Text parts joined with newlines (bounded by this message).
                            let mut joined = String::new();
                            let mut j = 0usize;
                            walk(
                                parts,
                                || format!("messages[{at}].content"),
                                |p: PartIn| {
                                    if p.cache_control.is_some() {
                                        notes.note("cache_control");
                                    }
                                    if p.kind != "text" {
                                        return Err(bad(format!(
                                            "messages[{at}].content[{j}]: a tool message can only hold text for \
                                             GCPVertexAI backends; {:?} is not supported",
                                            p.kind
                                        )));
                                    }
                                    let text = string_raw(p.text, || format!("messages[{at}].content[{j}].text"))?;
                                    if j > 0 {
                                        joined.push('\n');
                                    }
                                    if let Some(text) = text {
                                        let text: Cow<str> = from_raw(text).map_err(internal)?;
                                        joined.push_str(&text);
                                    }
                                    j += 1;
                                    Ok(())
                                },
                            )?;
                            match crate::json::from_text::<&RawValue>(&joined) {
                                Ok(object) if object.get().starts_with('{') => out.raw(object.get().as_bytes()),
                                _ => {
                                    out.raw(b"{\"output\":");
                                    out.raw(&crate::json::json_string(&joined));
                                    out.raw(b"}");
                                }
                            }
                        }
                    }
                    out.raw(b"}}");
                    Ok(())
                }
                other => Err(bad(format!(
                    "messages[{at}]: unknown role {other:?}; expected system, developer, user, assistant or tool"
                ))),
            }
        },
    )?;
    turns.close(out);
    out.raw(b"]");
    Ok(())
}

fn write_user(
    out: &mut Out,
    turns: &mut Turns,
    content: Content,
    at: usize,
    allow_gcs_uris: bool,
    notes: &mut Notes,
) -> Result<(), ApiError> {
    let parts = match content {
        Content::Null => return Ok(()),
        Content::Text(text) if is_empty_literal(text) => return Ok(()),
        Content::Text(text) => {
            turns.part(out, "user");
            text_part(out, text);
            return Ok(());
        }
        Content::Parts(parts) => parts,
    };
    let mut j = 0usize;
    walk(
        parts,
        || format!("messages[{at}].content"),
        |p: PartIn| {
            let here = || format!("messages[{at}].content[{j}]");
            let PartIn { kind, text, image_url, input_audio, file, refusal: _, cache_control } = p;
            if cache_control.is_some() {
                notes.note("cache_control");
            }
            match kind.as_ref() {
                "text" => {
                    let text = string_raw(text, || format!("{}.text", here()))?
                        .ok_or_else(|| bad(format!("{}: a text part needs `text`", here())))?;
                    if !is_empty_literal(text) {
                        turns.part(out, "user");
                        text_part(out, text);
                    }
                }
                "image_url" => {
                    let ImageUrlView { url, detail } =
                        image_url.ok_or_else(|| bad(format!("{}: an image_url part needs `image_url`", here())))?;
                    if detail.is_some() {
                        notes.note("image_url.detail");
                    }
                    let part = media_part(&url, &here(), allow_gcs_uris)?;
                    turns.part(out, "user");
                    out.value(&part)?;
                }
                "input_audio" => {
                    let audio = input_audio.and_then(|raw| from_raw::<AudioView>(raw).ok());
                    let Some((Some(data), Some(format))) = audio.map(|a| (a.data, a.format)) else {
                        return Err(bad(format!("{}: input_audio needs `data` and `format`", here())));
                    };
                    let mime_type = Cow::Owned(format!("audio/{}", format.to_ascii_lowercase()));
                    turns.part(out, "user");
                    out.value(&g::Part {
                        inline_data: Some(g::Blob { mime_type, data: &data }),
                        ..g::Part::default()
                    })?;
                }
                "file" => {
                    let Some(url) = file.and_then(|raw| from_raw::<FileView>(raw).ok()).and_then(|f| f.file_data)
                    else {
                        return Err(unsupported(
                            &format!("{}.file.file_id", here()),
                            "there is no Files API; send the file inline as `file_data` (a base64 data URL)",
                        ));
                    };
                    let part = media_part(&url, &here(), allow_gcs_uris)?;
                    turns.part(out, "user");
                    out.value(&part)?;
                }
                "refusal" => {}
                _ => {
                    return Err(bad(format!(
                        "{}: this content part type ({kind:?}) is not supported by GCPVertexAI backends",
                        here()
                    )))
                }
            }
            j += 1;
            Ok(())
        },
    )
}

// ---- response ----

fn finish_reason(reason: Option<g::FinishReason>, tool_calls: bool) -> &'static str {
    use g::FinishReason as F;
    match reason {
        Some(F::MaxTokens) => "length",
        Some(F::Safety | F::Recitation | F::Blocklist | F::ProhibitedContent | F::Spii | F::ImageSafety) => {
            "content_filter"
        }
        _ if tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// Gemini counts thoughts apart from the answer; OpenAI's completion tokens include reasoning.
fn usage_of(u: &g::UsageMetadata) -> TokenUsage {
    let input = u.prompt_token_count.unwrap_or(0).saturating_add(u.tool_use_prompt_token_count.unwrap_or(0));
    let reasoning = u.thoughts_token_count.unwrap_or(0);
    let output = u.candidates_token_count.unwrap_or(0).saturating_add(reasoning);
    TokenUsage {
        input,
        output,
        total: u.total_token_count.unwrap_or(input.saturating_add(output)),
        cached_input: u.cached_content_token_count.unwrap_or(0),
        reasoning,
    }
}

/// Ids for what Gemini does not name: the completion (when there is no `responseId`) and tool calls.
#[derive(Clone)]
struct Ids {
    /// The response id, cut to characters safe in any id.
    base: String,
    next_call: u32,
}

impl Ids {
    fn new(response_id: &str) -> Self {
        let base: String =
            response_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(40).collect();
        Ids { base, next_call: 0 }
    }

    /// `call_<response id>_<n>`: stable for one response, distinct across responses.
    fn call(&mut self) -> String {
        let id = format!("call_{}_{}", self.base, self.next_call);
        self.next_call = self.next_call.saturating_add(1);
        id
    }
}

/// Why an answer could not be translated (a 502 for the client).
pub(super) type Unreadable = String;

pub(super) fn json_err(e: serde_json::Error) -> Unreadable {
    e.to_string()
}

pub(super) fn io_err(e: io::Error) -> Unreadable {
    e.to_string()
}

/// [`each`] for answers: shape errors and callback errors both become the reason it is unreadable.
pub(super) fn walk_answer<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    f: impl FnMut(T) -> Result<(), Unreadable>,
) -> Result<(), Unreadable> {
    each(raw, f).map_err(|e| match e {
        EachError::Stopped(e) => e,
        EachError::Json(e) => e.to_string(),
    })
}

/// The parts of a candidate (none when it has no content or no parts).
fn parts_of<'a>(content: Option<&g::ContentView<'a>>) -> Option<&'a RawValue> {
    content.and_then(|c| c.parts).filter(|p| p.get() != "null")
}

/// A non-streaming answer → an OpenAI `chat.completion`, written to `w`.
fn write_completion(
    w: &mut dyn Write,
    resp: &g::ResponseView,
    fallback_id: &str,
    model: &str,
    created: u64,
) -> Result<(), Unreadable> {
    let id = resp.response_id.as_deref().filter(|id| !id.is_empty()).unwrap_or(fallback_id);
    let model = resp.model_version.as_deref().filter(|m| !m.is_empty()).unwrap_or(model);
    let mut ids = Ids::new(id);
    w.write_all(b"{\"id\":").map_err(io_err)?;
    serde_json::to_writer(&mut *w, id).map_err(json_err)?;
    write!(w, ",\"object\":\"chat.completion\",\"created\":{created},\"model\":").map_err(io_err)?;
    serde_json::to_writer(&mut *w, model).map_err(json_err)?;
    w.write_all(b",\"choices\":[").map_err(io_err)?;
    let mut position = 0u32;
    if let Some(candidates) = resp.candidates.filter(|c| c.get() != "null") {
        walk_answer(candidates, |candidate: g::CandidateView| {
            if position > 0 {
                w.write_all(b",").map_err(io_err)?;
            }
            write_choice(w, &candidate, position, &mut ids)?;
            position = position.saturating_add(1);
            Ok(())
        })?;
    }
    if position == 0 {
        // The prompt itself was blocked: no candidates, only `promptFeedback`.
        let Some(reason) = resp.prompt_feedback.as_ref().and_then(|f| f.block_reason.as_deref()) else {
            return Err("it has no candidates and no promptFeedback.blockReason".into());
        };
        log::info!("llmgw: Gemini blocked the prompt ({reason})");
        w.write_all(br#"{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"content_filter"}"#)
            .map_err(io_err)?;
    }
    w.write_all(b"]").map_err(io_err)?;
    if let Some(u) = &resp.usage_metadata {
        w.write_all(b",\"usage\":").map_err(io_err)?;
        serde_json::to_writer(&mut *w, &o::Usage::from(usage_of(u))).map_err(json_err)?;
    }
    w.write_all(b"}").map_err(io_err)
}

/// One candidate → one choice. Its parts are walked once per field (text, reasoning, tool calls),
/// so nothing is joined in memory.
fn write_choice(
    w: &mut dyn Write,
    candidate: &g::CandidateView,
    position: u32,
    ids: &mut Ids,
) -> Result<(), Unreadable> {
    let parts = parts_of(candidate.content.as_ref());
    let (mut has_text, mut has_reasoning, mut calls) = (false, false, 0usize);
    if let Some(parts) = parts {
        walk_answer(parts, |p: g::PartView| {
            match (&p.function_call, p.text()) {
                (Some(_), _) => calls += 1,
                (None, Some(_)) if p.thought == Some(true) => has_reasoning = true,
                (None, Some(_)) => has_text = true,
                _ => {}
            }
            Ok(())
        })?;
    }
    let index = candidate.index.unwrap_or(position);
    write!(w, "{{\"index\":{index},\"message\":{{\"role\":\"assistant\",\"content\":").map_err(io_err)?;
    // Text parts (and parts of other kinds) keep order; thoughts go to `reasoning_content`.
    let texts = |w: &mut dyn Write, thoughts: bool| -> Result<(), Unreadable> {
        w.write_all(b"\"").map_err(io_err)?;
        if let Some(parts) = parts {
            walk_answer(parts, |p: g::PartView| {
                if p.function_call.is_none() && (p.thought == Some(true)) == thoughts {
                    if let Some(t) = p.text() {
                        w.write_all(inner(t)).map_err(io_err)?;
                    }
                }
                Ok(())
            })?;
        }
        w.write_all(b"\"").map_err(io_err)
    };
    if has_text || calls == 0 {
        texts(w, false)?;
    } else {
        w.write_all(b"null").map_err(io_err)?;
    }
    if has_reasoning {
        w.write_all(b",\"reasoning_content\":").map_err(io_err)?;
        texts(w, true)?;
    }
    if let (true, Some(parts)) = (calls > 0, parts) {
        w.write_all(b",\"tool_calls\":[").map_err(io_err)?;
        let mut k = 0usize;
        walk_answer(parts, |p: g::PartView| {
            let Some(call) = p.function_call else { return Ok(()) };
            if k > 0 {
                w.write_all(b",").map_err(io_err)?;
            }
            k += 1;
            write!(w, "{{\"id\":\"{}\",\"type\":\"function\",\"function\":{{\"name\":", ids.call()).map_err(io_err)?;
            serde_json::to_writer(&mut *w, call.name.as_deref().unwrap_or_default()).map_err(json_err)?;
            w.write_all(b",\"arguments\":\"").map_err(io_err)?;
            match call.args.map(RawValue::get).filter(|a| *a != "null") {
                None => w.write_all(b"{}").map_err(io_err)?,
                Some(args) => write_minified_escaped(&mut *w, args).map_err(io_err)?,
            }
            w.write_all(b"\"}}").map_err(io_err)
        })?;
        w.write_all(b"]").map_err(io_err)?;
    }
    let finish = finish_reason(candidate.finish_reason, calls > 0);
    write!(w, "}},\"finish_reason\":\"{finish}\"}}").map_err(io_err)
}

/// A whole non-streaming answer → the client's body (allocated once, at its final size).
fn translate_completion(body: &[u8], fallback_id: &str, model: &str, created: u64) -> ChunkEdits {
    let result = (|| -> Result<(Vec<u8>, Option<TokenUsage>), Unreadable> {
        let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
        let resp: g::ResponseView = crate::json::from_text(text).map_err(json_err)?;
        let mut counter = Counter::default();
        write_completion(&mut counter, &resp, fallback_id, model, created)?;
        let mut out = Vec::with_capacity(counter.0);
        write_completion(&mut out, &resp, fallback_id, model, created)?;
        Ok((out, resp.usage_metadata.as_ref().map(usage_of)))
    })();
    match result {
        Ok((out, usage)) => ChunkEdits { replace: Some(out), usage, first_content: false, status: None },
        Err(e) => unreadable("response", &e),
    }
}

// ---- streaming ----

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoiceOut<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<o::Usage>,
}

#[derive(Serialize)]
struct ChunkChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// Raw JSON string literals, as Gemini escaped them.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<TextOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<TextOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDeltaOut<'a>; 1]>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum TextOut<'a> {
    Raw(&'a RawValue),
    Plain(&'static str),
}

#[derive(Serialize)]
struct ToolCallDeltaOut<'a> {
    index: u32,
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDeltaOut<'a>,
}

#[derive(Serialize)]
struct FunctionDeltaOut<'a> {
    name: &'a str,
    arguments: String,
}

/// Per streamed choice (Gemini candidate).
struct ChoiceState {
    index: u32,
    tool_calls: u32,
    finished: bool,
}

/// Gemini stream events → OpenAI chunks, one event at a time.
struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    ids: Option<Ids>,
    choices: Vec<ChoiceState>,
    usage: Option<TokenUsage>,
    /// The prompt was blocked (a finished stream with no candidates).
    blocked: bool,
    done: bool,
    saw_content: bool,
}

/// Choices beyond this many in one stream are not tracked (Gemini allows a handful of candidates).
const MAX_CHOICES: usize = 64;

impl ChunkWriter {
    fn new() -> Self {
        ChunkWriter {
            id: String::new(),
            model: String::new(),
            created: 0,
            include_usage: false,
            ids: None,
            choices: Vec::new(),
            usage: None,
            blocked: false,
            done: false,
            saw_content: false,
        }
    }

    fn emit(&self, out: &mut Vec<u8>, index: u32, delta: DeltaOut, finish_reason: Option<&'static str>) {
        let choices = [ChunkChoiceOut { index, delta, finish_reason }];
        let chunk = ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &choices,
            usage: None,
        };
        o::sse_data(out, &chunk);
    }

    /// The state of choice `index`, announcing it with the role chunk when it is new.
    fn choice(&mut self, index: u32, out: &mut Vec<u8>) -> Option<usize> {
        if let Some(at) = self.choices.iter().position(|c| c.index == index) {
            return Some(at);
        }
        if self.choices.len() >= MAX_CHOICES {
            return None;
        }
        let delta = DeltaOut { role: Some("assistant"), content: Some(TextOut::Plain("")), ..DeltaOut::default() };
        self.emit(out, index, delta, None);
        self.choices.push(ChoiceState { index, tool_calls: 0, finished: false });
        Some(self.choices.len() - 1)
    }

    /// Ends the stream with an OpenAI error event and `[DONE]`.
    fn fail(&mut self, message: &str, kind: &str, code: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&error_json(message, kind, code));
        out.extend_from_slice(b"\n\n");
        out.extend_from_slice(o::SSE_DONE);
        self.done = true;
    }

    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if data.trim().is_empty() {
            return;
        }
        if data.contains("\"error\"") {
            if let Ok(e) = crate::json::from_text::<g::ErrorEnvelope>(data) {
                let status = e.error.code.and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
                let code = e.error.status.map(|s| s.to_ascii_lowercase()).unwrap_or_else(|| "upstream_error".into());
                self.fail(&e.error.message, ErrorKind::for_status(status).as_str(), &code, out);
                return;
            }
        }
        if let Err(e) = self.translate_event(data, out) {
            log::warn!("llmgw: a Gemini stream event could not be read: {e}");
            self.fail(
                &format!("the Gemini stream broke off: an event could not be read: {e}"),
                "server_error",
                "invalid_upstream_response",
                out,
            );
        }
    }

    fn translate_event(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), Unreadable> {
        let resp: g::ResponseView = crate::json::from_text(data).map_err(json_err)?;
        // The first event names the response and the model version for every chunk.
        let mut ids = match self.ids.take() {
            Some(ids) => ids,
            None => {
                if let Some(id) = resp.response_id.as_deref().filter(|id| !id.is_empty()) {
                    self.id = id.to_string();
                }
                if let Some(model) = resp.model_version.as_deref().filter(|m| !m.is_empty()) {
                    self.model = model.to_string();
                }
                Ids::new(&self.id)
            }
        };
        // Vertex puts `usageMetadata` on every event; only the last one carries the counts.
        if let Some(u) = resp.usage_metadata.as_ref().filter(|u| u.prompt_token_count.or(u.total_token_count).is_some())
        {
            self.usage = Some(usage_of(u));
        }
        let candidates = resp.candidates.filter(|c| c.get() != "null");
        let mut position = 0u32;
        let result = match candidates {
            None => Ok(()),
            Some(candidates) => walk_answer(candidates, |candidate: g::CandidateView| {
                let index = candidate.index.unwrap_or(position);
                position = position.saturating_add(1);
                let Some(at) = self.choice(index, out) else { return Ok(()) };
                if let Some(parts) = parts_of(candidate.content.as_ref()) {
                    walk_answer(parts, |part: g::PartView| {
                        self.on_part(at, index, part, &mut ids, out);
                        Ok(())
                    })?;
                }
                if candidate.finish_reason.is_some() {
                    let tool_calls = self.choices.get(at).is_some_and(|c| c.tool_calls > 0);
                    self.finish(at, finish_reason(candidate.finish_reason, tool_calls), out);
                }
                Ok(())
            }),
        };
        if position == 0 && resp.prompt_feedback.as_ref().is_some_and(|f| f.block_reason.is_some()) {
            self.blocked = true;
            if let Some(at) = self.choice(0, out) {
                self.finish(at, "content_filter", out);
            }
        }
        self.ids = Some(ids);
        result
    }

    fn on_part(&mut self, at: usize, index: u32, part: g::PartView, ids: &mut Ids, out: &mut Vec<u8>) {
        let text = part.text();
        let g::PartView { text: _, thought, function_call } = part;
        if let Some(call) = function_call {
            let Some(state) = self.choices.get_mut(at) else { return };
            let call_index = state.tool_calls;
            state.tool_calls = state.tool_calls.saturating_add(1);
            let arguments = match call.args.map(RawValue::get).filter(|a| *a != "null") {
                None => "{}".to_string(),
                Some(args) => minified(args),
            };
            let delta = DeltaOut {
                tool_calls: Some([ToolCallDeltaOut {
                    index: call_index,
                    id: ids.call(),
                    kind: "function",
                    function: FunctionDeltaOut { name: call.name.as_deref().unwrap_or_default(), arguments },
                }]),
                ..DeltaOut::default()
            };
            self.saw_content = true;
            self.emit(out, index, delta, None);
            return;
        }
        let delta = match text {
            Some(text) if thought == Some(true) => {
                DeltaOut { reasoning_content: Some(TextOut::Raw(text)), ..DeltaOut::default() }
            }
            Some(text) => DeltaOut { content: Some(TextOut::Raw(text)), ..DeltaOut::default() },
            // Empty text, a lone `thoughtSignature`, or a part of a kind the client cannot take.
            _ => return,
        };
        self.saw_content = true;
        self.emit(out, index, delta, None);
    }

    fn finish(&mut self, at: usize, reason: &'static str, out: &mut Vec<u8>) {
        let Some(state) = self.choices.get_mut(at) else { return };
        if state.finished {
            return;
        }
        state.finished = true;
        let index = state.index;
        self.emit(out, index, DeltaOut::default(), Some(reason));
    }

    /// At the end of the upstream stream: the usage chunk (when asked for) and `[DONE]`, or, when
    /// the stream stopped before every choice finished, an error event and `[DONE]`.
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let finished = (!self.choices.is_empty() || self.blocked) && self.choices.iter().all(|c| c.finished);
        if !finished {
            let message = if self.choices.is_empty() {
                "the Gemini stream ended without any candidate"
            } else {
                "the Gemini stream ended before a finish reason (the answer is incomplete)"
            };
            self.fail(message, "server_error", "incomplete_upstream_stream", out);
            return;
        }
        self.done = true;
        if let (true, Some(usage)) = (self.include_usage, self.usage) {
            let chunk = ChunkOut {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: &[],
                usage: Some(o::Usage::from(usage)),
            };
            o::sse_data(out, &chunk);
        }
        out.extend_from_slice(o::SSE_DONE);
    }
}

/// A Google error (`{"error":{"code","message","status"}}`, possibly inside a one-element array)
/// → an OpenAI error keeping the message; `code` is Google's status in lower case. Anything else is
/// handled as for OpenAI backends (kept if OpenAI-shaped, else wrapped with its text).
pub(super) fn google_error(status: u16, body: &[u8]) -> Option<Vec<u8>> {
    // A struct also deserializes from an array (by position), so the object form must have said something.
    let envelope = crate::json::from_bytes::<g::ErrorEnvelope>(body)
        .ok()
        .filter(|e| !e.error.message.is_empty())
        .or_else(|| crate::json::from_bytes::<Vec<g::ErrorEnvelope>>(body).ok().and_then(|v| v.into_iter().next()));
    match envelope {
        Some(e) if !e.error.message.is_empty() => {
            let code = e.error.status.map(|s| s.to_ascii_lowercase()).unwrap_or_else(|| "upstream_error".into());
            Some(error_json(&e.error.message, ErrorKind::for_status(status).as_str(), &code))
        }
        _ => super::openai_error_body(status, body),
    }
}

pub(super) fn plan(streaming: bool) -> ResponsePlan {
    let (mode, content_type) =
        if streaming { (BodyMode::Stream, "text/event-stream") } else { (BodyMode::Buffer, "application/json") };
    ResponsePlan {
        mode,
        set_headers: vec![("content-type", content_type.into())],
        remove_headers: vec!["content-length", "content-encoding"],
    }
}

pub(super) fn unreadable(what: &str, e: &str) -> ChunkEdits {
    let message = format!("the Gemini {what} could not be read: {e}");
    ChunkEdits::unreadable(error_json(&message, "server_error", "invalid_upstream_response"))
}

/// OpenAI chat completions → Gemini `generateContent` / `streamGenerateContent`.
pub struct OpenAIToGemini {
    model: String,
    created: u64,
    fallback_id: String,
    stream: bool,
    streaming_response: bool,
    splitter: Splitter,
    writer: ChunkWriter,
}

impl OpenAIToGemini {
    pub fn new() -> Self {
        OpenAIToGemini {
            model: String::new(),
            created: 0,
            fallback_id: String::new(),
            stream: false,
            streaming_response: false,
            splitter: Splitter::default(),
            writer: ChunkWriter::new(),
        }
    }
}

impl Default for OpenAIToGemini {
    fn default() -> Self {
        Self::new()
    }
}

impl Translator for OpenAIToGemini {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query: _, now_unix, sink: _ } = request;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let vertex = Vertex::of(backend)?;
        let new_body = write_request(body, &model, vertex.allow_gcs_uris, request.writer())?;
        let path = if info.stream {
            vertex.model_path(&model, "streamGenerateContent") + "?alt=sse"
        } else {
            vertex.model_path(&model, "generateContent")
        };
        self.fallback_id = format!("chatcmpl-{:016x}", fnv1a(body, *now_unix));
        self.created = *now_unix;
        self.stream = info.stream;
        self.writer.id = self.fallback_id.clone();
        self.writer.model = model.clone();
        self.writer.created = *now_unix;
        self.writer.include_usage = info.client_wants_usage;
        self.model = model;
        Ok(RequestEdits { path: Some(path), body: Some(NewBody::Whole(new_body)), set_headers: Vec::new() })
    }

    fn response_headers(&mut self, _status: u16, content_type: &str) -> ResponsePlan {
        self.streaming_response =
            self.stream && content_type.trim_start().to_ascii_lowercase().starts_with("text/event-stream");
        plan(self.streaming_response)
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !self.streaming_response {
            if !end_of_stream {
                return ChunkEdits { replace: Some(Vec::new()), ..ChunkEdits::default() };
            }
            return translate_completion(chunk, &self.fallback_id, &self.model, self.created);
        }
        let mut out = Vec::new();
        let had_content = self.writer.saw_content;
        let writer = &mut self.writer;
        let mut on_block = |block: &[u8], out: &mut Vec<u8>| {
            let event = parse_event(block);
            if event.has_data {
                writer.on_event(&event.data, out);
            }
        };
        if !self.splitter.push(chunk, |block| on_block(block, &mut out)) {
            log::warn!("llmgw: a Gemini stream event exceeded {} bytes", crate::sse::MAX_EVENT_BYTES);
            self.writer.fail(
                &format!("the Gemini stream broke off: an event exceeded {} bytes", crate::sse::MAX_EVENT_BYTES),
                "server_error",
                "invalid_upstream_response",
                &mut out,
            );
        }
        let mut usage = None;
        if end_of_stream {
            let tail = self.splitter.take_pending();
            if !tail.is_empty() {
                let writer = &mut self.writer;
                let event = parse_event(&tail);
                if event.has_data {
                    writer.on_event(&event.data, &mut out);
                }
            }
            self.writer.close(&mut out);
            usage = self.writer.usage;
        }
        ChunkEdits { replace: Some(out), usage, first_content: !had_content && self.writer.saw_content, status: None }
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        google_error(status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::embeddings_to_vertex::{write_predict, write_vector, OpenAIToVertexEmbeddings};
    use serde_json::{json, Value};

    fn request_to(body: &Value, model: &str, allow_gcs_uris: bool) -> Result<Value, ApiError> {
        let out = write_request(body.to_string().as_bytes(), model, allow_gcs_uris, BodyWriter::new(None))?;
        Ok(serde_json::from_slice(&out.to_vec()).unwrap())
    }

    fn request(body: Value) -> Result<Value, ApiError> {
        request_to(&body, "gemini-2.5-flash", false)
    }

    #[test]
    fn consecutive_turns_merge_and_tool_results_find_their_function() {
        let v = request(json!({"model": "m", "messages": [
            {"role": "system", "content": "a"},
            {"role": "user", "content": "q1"},
            {"role": "user", "content": [{"type": "text", "text": "q2"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "x", "type": "function", "function": {"name": "f", "arguments": ""}},
                {"id": "y", "type": "function", "function": {"name": "g", "arguments": "{\"k\":1}"}}]},
            {"role": "tool", "tool_call_id": "y", "content": "[1,2]"},
            {"role": "tool", "tool_call_id": "x", "content": "{\"ok\":true}"},
            {"role": "developer", "content": "b"}
        ]}))
        .unwrap();
        assert_eq!(v["systemInstruction"], json!({"parts": [{"text": "a"}, {"text": "b"}]}));
        assert_eq!(
            v["contents"],
            json!([
                {"role": "user", "parts": [{"text": "q1"}, {"text": "q2"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "f", "args": {}}},
                    {"functionCall": {"name": "g", "args": {"k": 1}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "g", "response": {"output": "[1,2]"}}},
                    {"functionResponse": {"name": "f", "response": {"ok": true}}}]}
            ])
        );
    }

    #[test]
    fn later_models_get_a_signature_on_replayed_calls() {
        let body = json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [
                {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "y", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]});
        let v = request_to(&body, "gemini-3-pro-preview", false).unwrap();
        assert_eq!(v["contents"][0]["parts"][0]["thoughtSignature"], SKIP_SIGNATURE);
        assert!(v["contents"][0]["parts"][1].get("thoughtSignature").is_none());
    }

    #[test]
    fn refusals_are_400s_that_name_the_problem() {
        let cases = [
            (json!({"logprobs": true}), "logprobs"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"reasoning_effort": "extreme"}), "reasoning_effort"),
            (json!({"response_format": {"type": "grammar"}}), "response_format"),
            (json!({"tools": [{"type": "code_interpreter", "function": {"name": "x"}}]}), "tools[0]"),
            (
                json!({"tools": [{"type":"function","function":{"name":"f"}}], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "1"}]}), "nope"),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function",
                "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "JSON object",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "https://example.com/picture"}}]}]}),
                "MIME type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "ftp://example.com/a.png"}}]}]}),
                "gs://",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f-1"}}]}]}),
                "file_id",
            ),
            (json!({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}), "content[0]"),
        ];
        for (extra, needle) in cases {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let e = request(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }

    #[test]
    fn effort_budgets_and_generation_config() {
        let v = request(json!({"model": "m", "messages": [], "reasoning_effort": "none", "n": 1, "top_k": 40,
            "response_format": {"type": "json_object"}}))
        .unwrap();
        assert_eq!(
            v["generationConfig"],
            json!({"topK": 40.0, "responseMimeType": "application/json", "thinkingConfig": {"thinkingBudget": 0}})
        );
        let v = request(json!({"model": "m", "messages": [], "reasoning_effort": "medium"})).unwrap();
        assert_eq!(v["generationConfig"]["thinkingConfig"], json!({"thinkingBudget": 8192, "includeThoughts": true}));
        assert!(request(json!({"model": "m", "messages": []})).unwrap().get("generationConfig").is_none());
    }

    #[test]
    fn media_parts() {
        let v = request_to(
            &json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklG"}},
            {"type": "image_url", "image_url": {"url": "gs://bucket/cat.JPG?x=1", "detail": "high"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}]}]}),
            "gemini-2.5-flash",
            true,
        )
        .unwrap();
        assert_eq!(
            v["contents"][0]["parts"],
            json!([
                {"inlineData": {"mimeType": "image/webp", "data": "UklG"}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.JPG?x=1"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}}
            ])
        );
    }

    #[test]
    fn google_errors_become_openai_errors() {
        let body = br#"{"error":{"code":404,"message":"Publisher Model `x` was not found.","status":"NOT_FOUND"}}"#;
        let v: Value = serde_json::from_slice(&google_error(404, body).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Publisher Model `x` was not found.", "type": "not_found_error",
                "code": "not_found", "param": null}})
        );
        let array = br#"[{"error":{"code":429,"message":"Resource exhausted.","status":"RESOURCE_EXHAUSTED"}}]"#;
        let v: Value = serde_json::from_slice(&google_error(429, array).unwrap()).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "Resource exhausted.");
        assert_eq!(v["error"]["code"], "resource_exhausted");
        let v: Value = serde_json::from_slice(&google_error(502, b"<html>Bad Gateway</html>").unwrap()).unwrap();
        assert_eq!(v["error"]["message"], "<html>Bad Gateway</html>");
    }

    fn streaming(body: &str) -> OpenAIToGemini {
        let mut t = OpenAIToGemini::new();
        let info = crate::request::read(body.as_bytes()).unwrap();
        let mut backend = crate::testing::backend(crate::config::Schema::GCPVertexAI);
        let BackendApi::GCPVertexAI { project, region, .. } = &mut backend.api else { panic!("a Vertex backend") };
        (*project, *region) = ("p".into(), "r".into());
        let ctx = RequestContext {
            info: &info,
            body: body.as_bytes(),
            backend: &backend,
            query: "?x=1",
            now_unix: 7,
            sink: Default::default(),
        };
        let edits = t.request_body(&ctx).unwrap();
        let path = edits.path.unwrap();
        assert!(path.starts_with("/v1/projects/p/locations/r/publishers/google/models/"), "{path}");
        t
    }

    fn events(out: &[u8]) -> Vec<Value> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| if d == "[DONE]" { json!("[DONE]") } else { serde_json::from_str(d).unwrap() })
            .collect()
    }

    #[test]
    fn stream_with_two_candidates_an_unterminated_tail_and_usage() {
        let mut t = streaming(
            r#"{"model":"gemini-2.5-flash","messages":[],"stream":true,"n":2,"stream_options":{"include_usage":true}}"#,
        );
        assert_eq!(t.response_headers(200, "text/event-stream").mode, BodyMode::Stream);
        let sse = concat!(
            "data: {\"candidates\":[{\"index\":0,\"content\":{\"parts\":[{\"text\":\"a\"}]}},",
            "{\"index\":1,\"content\":{\"parts\":[{\"text\":\"b\"}]}}]}\n\n",
            "data: {\"candidates\":[{\"index\":1,\"finishReason\":\"SAFETY\"},{\"index\":0,\"finishReason\":\"STOP\"}],",
            "\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":2,\"totalTokenCount\":4}}"
        );
        let edits = t.response_body(sse.as_bytes(), true);
        assert_eq!(edits.usage.map(|u| u.total), Some(4));
        let got = events(&edits.replace.unwrap());
        let summary: Vec<String> = got
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                e if e["choices"].as_array().unwrap().is_empty() => format!("usage {}", e["usage"]["total_tokens"]),
                e => {
                    let c = &e["choices"][0];
                    format!("{} {} {}", c["index"], c["delta"], c["finish_reason"])
                }
            })
            .collect();
        assert_eq!(
            summary,
            [
                r#"0 {"role":"assistant","content":""} null"#,
                r#"0 {"content":"a"} null"#,
                r#"1 {"role":"assistant","content":""} null"#,
                r#"1 {"content":"b"} null"#,
                r#"1 {} "content_filter""#,
                r#"0 {} "stop""#,
                "usage 4",
                "[DONE]",
            ]
        );
        assert!(got[0]["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(got[0]["created"], 7);
    }

    #[test]
    fn stream_errors_and_blocked_prompts() {
        let mut t = streaming(r#"{"model":"gemini-2.5-flash","messages":[],"stream":true}"#);
        t.response_headers(200, "text/event-stream");
        let sse = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\r\n\r\n\
                   data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
        let got = events(&t.response_body(sse.as_bytes(), false).replace.unwrap());
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[2],
            json!({"error": {"message": "The model is overloaded.", "type": "server_error", "code": "unavailable", "param": null}})
        );
        assert_eq!(got[3], "[DONE]");
        // Nothing more after the error, not even a second [DONE].
        assert_eq!(t.response_body(b"", true).replace, Some(Vec::new()));

        let mut t = streaming(r#"{"model":"gemini-2.5-flash","messages":[],"stream":true}"#);
        t.response_headers(200, "text/event-stream");
        let sse =
            "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":3}}\n\n";
        let got = events(&t.response_body(sse.as_bytes(), true).replace.unwrap());
        assert_eq!(got[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_cut_stream_reports_no_made_up_usage() {
        let mut t = streaming(
            r#"{"model":"gemini-2.5-flash","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#,
        );
        t.response_headers(200, "text/event-stream");
        let sse = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\
                   \"usageMetadata\":{\"trafficType\":\"ON_DEMAND\"}}\r\n\r\n";
        let edits = t.response_body(sse.as_bytes(), true);
        assert_eq!(edits.usage, None);
        let got = events(&edits.replace.unwrap());
        assert_eq!(got.len(), 4, "role, text, error, [DONE]: no finish came upstream, and no usage is known");
        assert_eq!(got[2]["error"]["code"], "incomplete_upstream_stream");
        assert_eq!(got[3], "[DONE]");
    }

    #[test]
    fn a_json_answer_to_a_streaming_request_is_translated_whole() {
        let mut t = streaming(r#"{"model":"gemini-2.5-flash","messages":[],"stream":true}"#);
        let plan = t.response_headers(200, "application/json");
        assert_eq!(plan.mode, BodyMode::Buffer);
        let edits =
            t.response_body(br#"{"candidates":[{"content":{"parts":[{"text":"ok"}]},"finishReason":"STOP"}]}"#, true);
        let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "ok");
        assert_eq!(v["object"], "chat.completion");
        let edits = OpenAIToGemini::new().response_body(b"<html>", true);
        let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_upstream_response");
    }

    #[test]
    fn through_the_exchange_with_bearer_auth() {
        use crate::exchange::{Exchange, Shared};
        use crate::host::{Flow, Host};
        use crate::testing::NoEnv;
        let config = "backends: [{name: vertex, schema: GCPVertexAI, project: proj-1, region: europe-west4, \
                      model_override: gemini-2.5-pro, auth: {bearer: ya29.token}}]";
        let shared = Shared::new(crate::config::parse(config.as_bytes(), &NoEnv, 0).unwrap());
        let mut x = Exchange::new(Some(std::rc::Rc::new(shared)));
        let body = br#"{"model":"smart","messages":[{"role":"user","content":"hi"}]}"#;
        let mut host = crate::testing::FakeHost::request(
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer client-key"), ("accept-encoding", "gzip, br"), ("content-length", "60")],
        );
        host.request_body = body.to_vec();
        assert_eq!(x.on_request_headers(&mut host, false), Flow::Pause);
        assert_eq!(x.on_request_body(&mut host, body.len(), true), Flow::Continue);
        assert_eq!(
            host.header(":path").as_deref(),
            Some("/v1/projects/proj-1/locations/europe-west4/publishers/google/models/gemini-2.5-pro:generateContent")
        );
        assert_eq!(host.header(":authority").as_deref(), Some("europe-west4-aiplatform.googleapis.com"));
        assert_eq!(host.header("authorization").as_deref(), Some("Bearer ya29.token"));
        assert_eq!(host.header("accept-encoding").as_deref(), Some("identity"));
        assert_eq!(host.header("content-length"), Some(host.request_body.len().to_string()));
        let sent: Value = serde_json::from_slice(&host.request_body).unwrap();
        assert_eq!(sent, json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}));

        host.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/json; charset=UTF-8".into()),
            ("content-length".into(), "999".into()),
        ];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Pause);
        host.response_body =
            br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello"}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":1,"totalTokenCount":2},"responseId":"r1"}"#
                .to_vec();
        let n = host.response_body.len();
        x.on_response_body(&mut host, n, true);
        let v: Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!(v["id"], "r1");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(host.response_header("content-length"), Some(host.response_body.len().to_string()));
        assert_eq!(host.filter_state.get("llm_total_token").map(String::as_str), Some("2"));
    }

    #[test]
    fn base64_matches_a_known_encoding() {
        let b64 = |values: &str| {
            let raw: &RawValue = serde_json::from_str(values).unwrap();
            let mut out = Vec::new();
            write_vector(&mut out, Some(raw), true).unwrap();
            String::from_utf8(out).unwrap()
        };
        // 1.0f32 = 00 00 80 3f; -2.0f32 = 00 00 00 c0
        assert_eq!(b64("[1.0, -2.0]"), "\"AACAPwAAAMA=\"");
        assert_eq!(b64("[1]"), "\"AACAPw==\"");
        assert_eq!(b64("[]"), "\"\"");
    }

    #[test]
    fn gcs_uris_are_refused_unless_the_backend_allows_them() {
        assert!(check_gcs("gs://b/o.png", true, "x").is_ok());
        assert!(check_gcs("https://b/o.png", false, "x").is_ok());
        let e = check_gcs("GS://b/o.png", false, "messages[0].content[0]").unwrap_err();
        assert_eq!((e.status, e.code), (400, "gcs_uri_not_allowed"));
        assert!(e.message.starts_with("messages[0].content[0]: gs://"), "{}", e.message);
        for part in [
            json!({"type": "image_url", "image_url": {"url": "gs://bucket/cat.png"}}),
            json!({"type": "file", "file": {"file_data": "gs://bucket/doc.pdf"}}),
        ] {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": [part]}]});
            let e = request_to(&body, "gemini-2.5-flash", false).unwrap_err();
            assert_eq!(e.code, "gcs_uri_not_allowed");
            let v = request_to(&body, "gemini-2.5-flash", true).unwrap();
            assert!(v["contents"][0]["parts"][0]["fileData"]["fileUri"].as_str().unwrap().starts_with("gs://"));
        }
    }

    #[test]
    fn thinking_maps_to_a_thinking_config() {
        let config = |extra: Value| {
            let mut body = json!({"model": "m", "messages": []});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            request(body).map(|v| v["generationConfig"]["thinkingConfig"].clone())
        };
        assert_eq!(
            config(json!({"thinking": {"type": "enabled", "budget_tokens": 2048}})).unwrap(),
            json!({"thinkingBudget": 2048, "includeThoughts": true})
        );
        assert_eq!(
            config(json!({"thinking": {"type": "enabled"}})).unwrap(),
            json!({"thinkingBudget": -1, "includeThoughts": true})
        );
        assert_eq!(config(json!({"thinking": {"type": "disabled"}})).unwrap(), json!({"thinkingBudget": 0}));
        // An explicit budget wins over an effort.
        assert_eq!(
            config(json!({"reasoning_effort": "high", "thinking": {"type": "enabled", "budget_tokens": 100}})).unwrap(),
            json!({"thinkingBudget": 100, "includeThoughts": true})
        );
        assert_eq!(
            config(json!({"reasoning_effort": "minimal"})).unwrap(),
            json!({"thinkingBudget": 512, "includeThoughts": true})
        );
        assert!(config(json!({"thinking": {"type": "sometimes"}})).unwrap_err().message.contains("thinking.type"));
        assert!(config(json!({"thinking": {"type": "enabled", "budget_tokens": -5}})).unwrap_err().status == 400);
        assert!(config(json!({"thinking": null})).unwrap().is_null());
    }

    #[test]
    fn cache_control_is_dropped_everywhere() {
        let v = request(json!({"model": "m", "messages": [
            {"role": "system", "content": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
             "cache_control": {"type": "ephemeral"}},
            {"role": "user", "content": [{"type": "text", "text": "u", "cache_control": {"type": "ephemeral"}}]}],
            "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": {"type": "ephemeral"}}]}))
        .unwrap();
        assert!(!v.to_string().contains("cache"), "{v}");
        assert_eq!(v["systemInstruction"], json!({"parts": [{"text": "s"}]}));
        assert_eq!(v["contents"], json!([{"role": "user", "parts": [{"text": "u"}]}]));
        assert_eq!(v["tools"], json!([{"functionDeclarations": [{"name": "f"}]}]));
    }

    #[test]
    fn content_gemini_cannot_take_is_a_400_naming_it() {
        let cases = [
            (
                json!({"role": "system", "content": [{"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}),
                "messages[0].content[1]: a system message can only hold text",
            ),
            (json!({"role": "developer", "content": [{"type": "input_audio"}]}), "\"input_audio\""),
            (
                json!({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}),
                "messages[0].content[0]: an assistant message can only hold text and refusal parts; \"image_url\"",
            ),
            (
                json!({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}),
                "input_audio needs `data` and `format`",
            ),
            (json!({"role": "user", "content": [{"type": "text"}]}), "a text part needs `text`"),
            (json!({"role": "robot", "content": "x"}), "unknown role \"robot\""),
            (json!({"role": "tool", "content": "x"}), "needs `tool_call_id`"),
            (json!({"role": "user", "content": 5}), "messages[0]: `content` must be"),
            (
                json!({"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": 1, "arguments": "{}"}}]}),
                "`name` must be a string",
            ),
        ];
        for (message, needle) in cases {
            let e = request(json!({"model": "m", "messages": [message]})).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }

    #[test]
    fn texts_schemas_and_arguments_travel_as_written() {
        let body = r#"{"model":"m","messages":[
            {"role":"system","content":[{"type":"text","text":"one \"q\""},{"type":"text","text":""},{"type":"text","text":"two\u0001"}]},
            {"role":"system","content":""},
            {"role":"assistant","content":null,"refusal":"no","tool_calls":[{"id":"c\u0031","function":{"name":"f\u00e9","arguments":" {\"a\": [1.50, 2e3]} "}}]},
            {"role":"tool","tool_call_id":"c1","content":[{"type":"text","text":"{\"r\":"},{"type":"text","text":"1}"}]},
            {"role":"tool","tool_call_id":"c1","content":null}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type" : "object","x":1.50}}}],
            "stop":"END","top_k":3,"tool_choice":{"type":"function","function":{"name":"f"}}}"#;
        let out = write_request(body.as_bytes(), "gemini-2.5-flash", false, BodyWriter::new(None)).unwrap().to_vec();
        let text = String::from_utf8(out.clone()).unwrap();
        // Raw JSON (schemas, arguments, names) is copied byte for byte.
        assert!(text.contains(r#""parametersJsonSchema":{"type" : "object","x":1.50}"#), "{text}");
        assert!(text.contains(r#""args": {"a": [1.50, 2e3]} }"#), "{text}");
        assert!(text.contains(r#""name":"f\u00e9""#), "{text}");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["systemInstruction"], json!({"parts": [{"text": "one \"q\"\n\ntwo\u{1}"}]}));
        assert_eq!(
            v["contents"],
            json!([
                {"role": "model", "parts": [{"text": "no"}, {"functionCall": {"name": "fé", "args": {"a": [1.5, 2000.0]}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "fé", "response": {"r": 1}}},
                    {"functionResponse": {"name": "fé", "response": {"output": ""}}}]}
            ])
        );
        assert_eq!(v["generationConfig"], json!({"topK": 3.0, "stopSequences": ["END"]}));
        assert_eq!(v["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}));
        // An empty stop list sets nothing; a number is refused.
        let v = request(json!({"model": "m", "messages": [], "stop": []})).unwrap();
        assert!(v.get("generationConfig").is_none());
        assert!(request(json!({"model": "m", "messages": [], "stop": 1})).unwrap_err().message.contains("stop"));
        assert!(request(json!({"model": "m", "messages": [], "top_k": "x"})).unwrap_err().message.contains("top_k"));
    }

    #[test]
    fn no_request_bytes_make_it_panic() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},{"role":"assistant","tool_calls":[{"id":"a","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"a","content":"1"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"stop":["x"],"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{}}}}"#;
        assert!(write_request(body, "gemini-3", true, BodyWriter::new(None)).is_ok());
        for cut in 0..body.len() {
            let _ = write_request(&body[..cut], "gemini-3", true, BodyWriter::new(None));
            let mut flipped = body.to_vec();
            flipped[cut] ^= 0x20;
            let _ = write_request(&flipped, "gemini-3", true, BodyWriter::new(None));
            let _ = write_predict(&body[..cut], BodyWriter::new(None));
        }
    }

    fn stream_of(chunks: &[&[u8]], usage: bool) -> Vec<u8> {
        let body = if usage {
            r#"{"model":"gemini-2.5-flash","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#
        } else {
            r#"{"model":"gemini-2.5-flash","messages":[],"stream":true}"#
        };
        let mut t = streaming(body);
        t.response_headers(200, "text/event-stream");
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend(t.response_body(c, i + 1 == chunks.len()).replace.unwrap());
        }
        out
    }

    #[test]
    fn stream_events_missing_optional_fields_translate_completely() {
        let sse = concat!(
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\"}}]}\n\n",
            "data: {\"candidates\":[{}]}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"thoughtSignature\":\"c2ln\"}]}}]}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"},",
            "{\"functionCall\":{\"name\":\"f\",\"args\":{ \"k\" : \"v w\" }}}]}}]}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"g\"}}]}}]}\n\n",
            "data: {\"usageMetadata\":{\"promptTokenCount\":1,\"candidatesTokenCount\":2}}\n\n",
            "data: {\"candidates\":[{\"finishReason\":\"STOP\"}]}\n\n",
        );
        let whole = stream_of(&[sse.as_bytes(), b""], true);
        let got = events(&whole);
        let summary: Vec<String> = got
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                e if e["choices"].as_array().unwrap().is_empty() => format!("usage {}", e["usage"]["total_tokens"]),
                e => {
                    let mut delta = e["choices"][0]["delta"].clone();
                    if let Some(call) = delta.pointer_mut("/tool_calls/0/id") {
                        *call = json!("ID");
                    }
                    format!("{} {}", delta, e["choices"][0]["finish_reason"])
                }
            })
            .collect();
        assert_eq!(
            summary,
            [
                r#"{"role":"assistant","content":""} null"#,
                r#"{"content":"a"} null"#,
                r#"{"tool_calls":[{"index":0,"id":"ID","type":"function","function":{"name":"f","arguments":"{\"k\":\"v w\"}"}}]} null"#,
                r#"{"tool_calls":[{"index":1,"id":"ID","type":"function","function":{"name":"g","arguments":"{}"}}]} null"#,
                r#"{} "tool_calls""#,
                "usage 3",
                "[DONE]",
            ]
        );
        let id = |k: usize| got[k]["choices"][0]["delta"]["tool_calls"][0]["id"].as_str().unwrap().to_string();
        assert!(id(2).starts_with("call_chatcmpl-") && id(2).ends_with("_0") && id(3).ends_with("_1"));
        for cut in 0..=sse.len() {
            let (a, b) = sse.as_bytes().split_at(cut);
            assert_eq!(stream_of(&[a, b], true), whole, "cut at {cut}");
        }
    }

    #[test]
    fn broken_streams_end_with_an_error_and_done() {
        let text = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\n\n";
        let cases: [(&str, &str); 5] = [
            ("", "incomplete_upstream_stream"),
            (": keep-alive\n\n", "incomplete_upstream_stream"),
            (text, "incomplete_upstream_stream"),
            ("data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi", "invalid_upstream_response"),
            (
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\n\ndata: <html>\n\n",
                "invalid_upstream_response",
            ),
        ];
        for (sse, code) in cases {
            let got = events(&stream_of(&[sse.as_bytes(), b""], true));
            let n = got.len();
            assert!(n >= 2, "{sse:?}");
            assert_eq!(got[n - 2]["error"]["code"], code, "{sse:?}");
            assert_eq!(got[n - 2]["error"]["type"], "server_error");
            assert_eq!(got[n - 1], "[DONE]");
        }
        // After a broken event nothing more is sent, not even for later good events.
        let sse = format!("data: nope\n\n{text}data: {{\"candidates\":[{{\"finishReason\":\"STOP\"}}]}}\n\n");
        let got = events(&stream_of(&[sse.as_bytes(), b""], false));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn empty_or_unreadable_answers_are_502s() {
        for body in [&b""[..], b"{}", b"null", b"[]", b"<html>", b"{\"candidates\":[{\"content\":{\"parts\":7}}]}"] {
            let mut t = OpenAIToGemini::new();
            t.response_headers(200, "application/json");
            let edits = t.response_body(body, true);
            assert_eq!(edits.status, Some(502), "{:?}", String::from_utf8_lossy(body));
            let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
            assert_eq!(v["error"]["code"], "invalid_upstream_response");
        }
        for body in [&b""[..], b"{}", b"{\"predictions\":[{\"embeddings\":{\"values\":[\"x\"]}}]}"] {
            let edits = OpenAIToVertexEmbeddings::new().response_body(body, true);
            assert_eq!(edits.status, Some(502));
        }
    }

    #[test]
    fn answers_keep_function_arguments_as_written() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"t\"1"},{"text":"r","thought":true},
            {"functionCall":{"name":"f","args":{ "n" : 1.50, "s":"a b\"" }}},{"functionCall":{"name":"g","args":null}},
            {"text":"2"}]},"finishReason":"MAX_TOKENS"},{"index":5}],"responseId":"r"}"#;
        let edits = translate_completion(body, "fb", "m", 9);
        let out = edits.replace.unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "t\"12");
        assert_eq!(m["reasoning_content"], "r");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], r#"{"n":1.50,"s":"a b\""}"#);
        assert_eq!(m["tool_calls"][1]["function"]["arguments"], "{}");
        assert_eq!(m["tool_calls"][1]["id"], "call_r_1");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(
            v["choices"][1],
            json!({"index": 5, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"})
        );
        assert_eq!(out.capacity(), out.len(), "written once, at its final size");
    }
}
