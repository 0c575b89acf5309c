//! OpenAI client → Gemini on Vertex AI (`GCPVertexAI`): chat completions over `generateContent` and
//! `streamGenerateContent?alt=sse`, embeddings over the `predict` method. What each OpenAI parameter
//! becomes (or why it is refused) is tabled in the filter README, "Provider notes" → "GCPVertexAI".

use serde_json::{Map, Value};

use super::openai::percent_encode;
use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::config::Backend;
use crate::error::{error_json, ApiError, ErrorKind};
use crate::sse::{parse_event, Splitter};
use crate::usage::TokenUsage;
use crate::wire::gemini as g;
use crate::wire::openai as o;

/// The `thoughtSignature` put on replayed function calls. OpenAI messages have no place for Gemini's
/// signatures, and Gemini 3 refuses a function call in history without one; Google documents this
/// value for history the model did not sign.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// `reasoning_effort` → `thinkingConfig.thinkingBudget` (tokens), after Google's own OpenAI
/// compatibility layer; `none` turns thinking off (budget 0), the others also ask for thought summaries.
const EFFORT_BUDGETS: &[(&str, i32)] =
    &[("none", 0), ("minimal", 512), ("low", 1024), ("medium", 8192), ("high", 24576)];

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

fn unsupported(param: &str, why: &str) -> ApiError {
    ApiError::bad_request("unsupported_parameter", format!("`{param}` is not supported by GCPVertexAI backends: {why}"))
}

fn internal(e: serde_json::Error) -> ApiError {
    ApiError::new(500, ErrorKind::Server, "internal", format!("encoding the request failed: {e}"))
}

/// `{prefix}/projects/{project}/locations/{region}/publishers/google/models/{model}:{method}`.
fn model_path(backend: &Backend, model: &str, method: &str) -> String {
    format!(
        "{}/projects/{}/locations/{}/publishers/google/models/{}:{method}",
        backend.prefix,
        backend.project,
        backend.region,
        percent_encode(model)
    )
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

// ---- request ----

/// An OpenAI chat request → a Gemini `GenerateContentRequest`. `model` is the upstream model (it
/// decides whether replayed function calls carry a signature).
pub(super) fn to_gemini(chat: o::ChatRequest, model: &str) -> Result<g::GenerateContentRequest, ApiError> {
    let o::ChatRequest {
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
        mut extra,
    } = chat;
    if logprobs == Some(true) || top_logprobs.is_some_and(|k| k > 0) {
        return Err(unsupported("logprobs", "the gateway cannot return Gemini's log probabilities"));
    }
    if logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(unsupported("logit_bias", "Gemini has no token biasing"));
    }
    let mut ignored: Vec<String> = Vec::new();
    for (name, set) in [
        ("user", user.is_some()),
        ("metadata", metadata.is_some()),
        ("store", store.is_some()),
        ("service_tier", service_tier.is_some()),
        ("parallel_tool_calls", parallel_tool_calls == Some(false)),
    ] {
        if set {
            ignored.push(name.into());
        }
    }

    let mut config = g::GenerationConfig {
        max_output_tokens: max_completion_tokens.or(max_tokens),
        temperature,
        top_p,
        stop_sequences: stop.map(o::Stop::into_vec).unwrap_or_default(),
        candidate_count: n.filter(|&n| n != 1),
        seed,
        presence_penalty,
        frequency_penalty,
        ..g::GenerationConfig::default()
    };
    match extra.remove("top_k") {
        None | Some(Value::Null) => {}
        Some(Value::Number(k)) => config.top_k = k.as_f64(),
        Some(_) => return Err(bad("`top_k` must be a number")),
    }
    match response_format {
        None | Some(o::ResponseFormat::Text) => {}
        Some(o::ResponseFormat::JsonObject) => config.response_mime_type = Some("application/json".into()),
        Some(o::ResponseFormat::JsonSchema { json_schema }) => {
            config.response_mime_type = Some("application/json".into());
            config.response_json_schema = json_schema.schema;
        }
        Some(o::ResponseFormat::Unknown) => {
            return Err(unsupported(
                "response_format",
                "only text, json_object and json_schema have a Gemini equivalent",
            ))
        }
    }
    if let Some(effort) = reasoning_effort {
        let budget = EFFORT_BUDGETS.iter().find(|(name, _)| *name == effort).map(|(_, b)| *b).ok_or_else(|| {
            bad(format!("`reasoning_effort` must be one of none, minimal, low, medium, high; got {effort:?}"))
        })?;
        config.thinking_config =
            Some(g::ThinkingConfig { thinking_budget: Some(budget), include_thoughts: (budget > 0).then_some(true) });
    }

    let mut declarations = Vec::new();
    for (i, tool) in tools.into_iter().flatten().enumerate() {
        if tool.kind != "function" {
            return Err(unsupported(&format!("tools[{i}].type {:?}", tool.kind), "only function tools exist there"));
        }
        let o::FunctionDef { name, description, parameters, strict } = tool.function;
        if strict.is_some() && !ignored.iter().any(|n| n == "tools[].function.strict") {
            ignored.push("tools[].function.strict".into());
        }
        declarations.push(g::FunctionDeclaration { name, description, parameters_json_schema: parameters });
    }
    let tool_config = match tool_choice {
        _ if declarations.is_empty() => None,
        None => None,
        Some(o::ToolChoice::Mode(mode)) => {
            let mode = match mode.as_str() {
                "auto" => g::FunctionCallingMode::Auto,
                "none" => g::FunctionCallingMode::None,
                "required" => g::FunctionCallingMode::Any,
                other => {
                    return Err(bad(format!("`tool_choice` must be none, auto, required or a function; got {other:?}")))
                }
            };
            Some(g::FunctionCallingConfig { mode, allowed_function_names: Vec::new() })
        }
        Some(o::ToolChoice::Named(named)) => Some(g::FunctionCallingConfig {
            mode: g::FunctionCallingMode::Any,
            allowed_function_names: vec![named.function.name],
        }),
    }
    .map(|function_calling_config| g::ToolConfig { function_calling_config });
    let tools =
        if declarations.is_empty() { Vec::new() } else { vec![g::Tool { function_declarations: declarations }] };

    let (system, contents) = to_contents(messages, signs_replayed_calls(model), &mut ignored)?;

    ignored.extend(extra.keys().cloned());
    if !ignored.is_empty() {
        log::debug!("llmgw: GCPVertexAI backend ignores parameters: {}", ignored.join(", "));
    }
    Ok(g::GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(g::Content { role: None, parts: system }),
        tools,
        tool_config,
        generation_config: (config != g::GenerationConfig::default()).then_some(config),
    })
}

/// Gemini 1.x and 2.x do not check signatures; later models do.
fn signs_replayed_calls(model: &str) -> bool {
    !(model.starts_with("gemini-1.") || model.starts_with("gemini-2."))
}

/// Messages → (system instruction parts, contents). Consecutive turns of one role are merged, as
/// Gemini expects alternating turns; tool results become `functionResponse` parts of a user turn,
/// named after the assistant tool call their `tool_call_id` points to.
fn to_contents(
    messages: Vec<o::Message>,
    sign: bool,
    ignored: &mut Vec<String>,
) -> Result<(Vec<g::Part>, Vec<g::Content>), ApiError> {
    let mut note = |name: &str| {
        if !ignored.iter().any(|n| n == name) {
            ignored.push(name.into());
        }
    };
    let mut system = Vec::new();
    let mut contents: Vec<g::Content> = Vec::new();
    // (tool call id, function name) of every assistant tool call so far.
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut push = |role: &str, parts: Vec<g::Part>| {
        if parts.is_empty() {
            return;
        }
        match contents.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
            _ => contents.push(g::Content { role: Some(role.into()), parts }),
        }
    };
    for (i, message) in messages.into_iter().enumerate() {
        match message {
            o::Message::System { content, name } | o::Message::Developer { content, name } => {
                if name.is_some() {
                    note("messages[].name");
                }
                let text = content.text();
                if !text.is_empty() {
                    system.push(g::Part::text(text));
                }
            }
            o::Message::User { content, name } => {
                if name.is_some() {
                    note("messages[].name");
                }
                push("user", user_parts(content, i, &mut note)?)
            }
            o::Message::Assistant { content, tool_calls, reasoning_content, refusal, name } => {
                if name.is_some() {
                    note("messages[].name");
                }
                if reasoning_content.is_some() {
                    note("messages[].reasoning_content");
                }
                let mut parts = Vec::new();
                match content {
                    Some(o::Content::Text(text)) if !text.is_empty() => parts.push(g::Part::text(text)),
                    Some(o::Content::Parts(items)) => {
                        for item in items {
                            match item {
                                o::ContentPart::Text { text } | o::ContentPart::Refusal { refusal: text }
                                    if !text.is_empty() =>
                                {
                                    parts.push(g::Part::text(text))
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
                if let (true, Some(refusal)) = (parts.is_empty(), refusal) {
                    parts.push(g::Part::text(refusal));
                }
                for (k, call) in tool_calls.into_iter().flatten().enumerate() {
                    let args = call_args(&call.function.arguments, i)?;
                    parts.push(g::Part {
                        function_call: Some(g::FunctionCall { name: call.function.name.clone(), args: Some(args) }),
                        thought_signature: (sign && k == 0).then(|| SKIP_SIGNATURE.to_string()),
                        ..g::Part::default()
                    });
                    calls.push((call.id, call.function.name));
                }
                push("model", parts);
            }
            o::Message::Tool { content, tool_call_id } => {
                let name = calls.iter().rev().find(|(id, _)| *id == tool_call_id).map(|(_, n)| n.clone()).ok_or_else(
                    || {
                        bad(format!(
                            "messages[{i}]: tool_call_id {tool_call_id:?} matches no tool call of an earlier assistant \
                             message (Gemini needs the function's name)"
                        ))
                    },
                )?;
                let text = content.text();
                let response = match serde_json::from_slice::<Value>(text.as_bytes()) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => {
                        let mut wrapped = Map::new();
                        wrapped.insert("output".into(), Value::String(text));
                        Value::Object(wrapped)
                    }
                };
                let part =
                    g::Part { function_response: Some(g::FunctionResponse { name, response }), ..g::Part::default() };
                push("user", vec![part]);
            }
        }
    }
    Ok((system, contents))
}

/// A tool call's `arguments` (JSON text) → the object Gemini wants.
fn call_args(arguments: &str, i: usize) -> Result<Value, ApiError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_slice::<Value>(arguments.as_bytes()) {
        Ok(object @ Value::Object(_)) => Ok(object),
        _ => Err(bad(format!("messages[{i}]: tool call arguments must be a JSON object, got {arguments:?}"))),
    }
}

fn user_parts(content: o::Content, i: usize, note: &mut dyn FnMut(&str)) -> Result<Vec<g::Part>, ApiError> {
    let items = match content {
        o::Content::Text(text) => return Ok(if text.is_empty() { Vec::new() } else { vec![g::Part::text(text)] }),
        o::Content::Parts(items) => items,
    };
    let mut parts = Vec::with_capacity(items.len());
    for (j, item) in items.into_iter().enumerate() {
        let at = || format!("messages[{i}].content[{j}]");
        match item {
            o::ContentPart::Text { text } if text.is_empty() => {}
            o::ContentPart::Text { text } => parts.push(g::Part::text(text)),
            o::ContentPart::ImageUrl { image_url } => {
                if image_url.detail.is_some() {
                    note("image_url.detail");
                }
                parts.push(media_part(&image_url, &at())?)
            }
            o::ContentPart::InputAudio { input_audio } => {
                let field = |name: &str| input_audio.get(name).and_then(Value::as_str);
                let (Some(data), Some(format)) = (field("data"), field("format")) else {
                    return Err(bad(format!("{}: input_audio needs `data` and `format`", at())));
                };
                let mime_type = format!("audio/{}", format.to_ascii_lowercase());
                parts.push(g::Part {
                    inline_data: Some(g::Blob { mime_type, data: data.into() }),
                    ..g::Part::default()
                });
            }
            o::ContentPart::File { file } => {
                let Some(url) = file.get("file_data").and_then(Value::as_str) else {
                    return Err(unsupported(
                        &format!("{}.file.file_id", at()),
                        "there is no Files API; send the file inline as `file_data` (a base64 data URL)",
                    ));
                };
                let url = o::ImageUrl { url: url.into(), detail: None };
                parts.push(media_part(&url, &at())?);
            }
            o::ContentPart::Refusal { .. } => {}
            o::ContentPart::Unknown => {
                return Err(bad(format!("{}: this content part type is not supported by GCPVertexAI backends", at())))
            }
        }
    }
    Ok(parts)
}

/// A data URL → `inlineData`; a `gs://`, `https://` or `http://` URL → `fileData` (Vertex fetches it),
/// with the MIME type the file's extension tells.
fn media_part(url: &o::ImageUrl, at: &str) -> Result<g::Part, ApiError> {
    match url.parse().map_err(|e| bad(format!("{at}: {e}")))? {
        o::Image::Base64 { media_type, data } => Ok(g::Part {
            inline_data: Some(g::Blob { mime_type: media_type.into(), data: data.into() }),
            ..g::Part::default()
        }),
        o::Image::Url(uri) => {
            let lower = uri.to_ascii_lowercase();
            if !["gs://", "https://", "http://"].iter().any(|scheme| lower.starts_with(scheme)) {
                return Err(bad(format!("{at}: a URL must be a base64 data URL, gs://, https:// or http://")));
            }
            let mime_type = mime_from_extension(&lower).ok_or_else(|| {
                bad(format!(
                    "{at}: cannot tell the MIME type of {uri:?} from its extension (Gemini needs it); use a URL \
                     ending in .png, .jpg, .jpeg, .webp, .gif, .heic, .heif, .pdf, .mp4, .mp3, .wav, ... or a data URL"
                ))
            })?;
            Ok(g::Part {
                file_data: Some(g::FileData { mime_type: mime_type.into(), file_uri: uri.into() }),
                ..g::Part::default()
            })
        }
    }
}

fn mime_from_extension(lower_url: &str) -> Option<&'static str> {
    let path = lower_url.split(['?', '#']).next().unwrap_or(lower_url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = file.rsplit_once('.')?;
    Some(match ext {
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

// ---- response ----

fn finish_reason(reason: Option<g::FinishReason>, tool_calls: bool) -> String {
    use g::FinishReason as F;
    match reason {
        Some(F::MaxTokens) => "length",
        Some(F::Safety | F::Recitation | F::Blocklist | F::ProhibitedContent | F::Spii | F::ImageSafety) => {
            "content_filter"
        }
        _ if tool_calls => "tool_calls",
        _ => "stop",
    }
    .into()
}

/// Gemini counts thoughts apart from the answer; OpenAI's completion tokens include reasoning.
fn usage_of(u: &g::UsageMetadata) -> TokenUsage {
    let input = u.prompt_token_count.unwrap_or(0) + u.tool_use_prompt_token_count.unwrap_or(0);
    let reasoning = u.thoughts_token_count.unwrap_or(0);
    let output = u.candidates_token_count.unwrap_or(0) + reasoning;
    TokenUsage {
        input,
        output,
        total: u.total_token_count.unwrap_or(input + output),
        cached_input: u.cached_content_token_count.unwrap_or(0),
        reasoning,
    }
}

/// Ids for what Gemini does not name: the completion (when there is no `responseId`) and tool calls.
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
        self.next_call += 1;
        id
    }
}

fn arguments_text(args: Option<Value>) -> String {
    match args {
        None | Some(Value::Null) => "{}".into(),
        Some(v) => v.to_string(),
    }
}

fn to_chat_completion(
    resp: g::GenerateContentResponse,
    fallback_id: &str,
    model: &str,
    created: u64,
) -> o::ChatCompletion {
    let id = resp.response_id.filter(|id| !id.is_empty()).unwrap_or_else(|| fallback_id.to_string());
    let mut ids = Ids::new(&id);
    let mut choices = Vec::with_capacity(resp.candidates.len().max(1));
    for (position, candidate) in resp.candidates.into_iter().enumerate() {
        let (mut text, mut reasoning, mut tool_calls) = (String::new(), String::new(), Vec::new());
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(call) = part.function_call {
                tool_calls.push(o::ToolCall {
                    id: ids.call(),
                    kind: "function".into(),
                    function: o::FunctionCall { name: call.name, arguments: arguments_text(call.args) },
                });
            } else if let Some(t) = part.text {
                if part.thought == Some(true) {
                    reasoning.push_str(&t);
                } else {
                    text.push_str(&t);
                }
            }
        }
        let finish = finish_reason(candidate.finish_reason, !tool_calls.is_empty());
        choices.push(o::Choice {
            index: candidate.index.unwrap_or(u32::try_from(position).unwrap_or(u32::MAX)),
            message: o::ResponseMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
            },
            finish_reason: Some(finish),
        });
    }
    if choices.is_empty() {
        // The prompt itself was blocked: no candidates, only `promptFeedback`.
        if let Some(reason) = resp.prompt_feedback.as_ref().and_then(|f| f.block_reason.as_deref()) {
            log::info!("llmgw: Gemini blocked the prompt ({reason})");
        }
        choices.push(o::Choice {
            index: 0,
            message: o::ResponseMessage { role: "assistant".into(), ..o::ResponseMessage::default() },
            finish_reason: Some("content_filter".into()),
        });
    }
    o::ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model: resp.model_version.filter(|m| !m.is_empty()).unwrap_or_else(|| model.to_string()),
        choices,
        usage: resp.usage_metadata.as_ref().map(|u| o::Usage::from(usage_of(u))),
    }
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
    done: bool,
    saw_content: bool,
}

impl ChunkWriter {
    fn chunk(&self, index: u32, delta: o::Delta, finish_reason: Option<String>) -> o::ChatChunk {
        o::ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![o::ChunkChoice { index, delta, finish_reason }],
            usage: None,
        }
    }

    /// The state of choice `index`, announcing it with the role chunk when it is new.
    fn choice(&mut self, index: u32, out: &mut Vec<u8>) -> usize {
        if let Some(at) = self.choices.iter().position(|c| c.index == index) {
            return at;
        }
        let delta = o::Delta { role: Some("assistant".into()), content: Some(String::new()), ..o::Delta::default() };
        o::sse_data(out, &self.chunk(index, delta, None));
        self.choices.push(ChoiceState { index, tool_calls: 0, finished: false });
        self.choices.len() - 1
    }

    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if data.contains("\"error\"") {
            if let Ok(e) = serde_json::from_slice::<g::ErrorEnvelope>(data.as_bytes()) {
                let status = e.error.code.and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
                let code = e.error.status.map(|s| s.to_ascii_lowercase()).unwrap_or_else(|| "upstream_error".into());
                let body = error_json(&e.error.message, ErrorKind::for_status(status).as_str(), &code);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\n\n");
                out.extend_from_slice(o::SSE_DONE);
                self.done = true;
                return;
            }
        }
        let resp: g::GenerateContentResponse = match serde_json::from_slice(data.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("llmgw: skipped a Gemini stream event that did not parse: {e}");
                return;
            }
        };
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
        let blocked =
            resp.candidates.is_empty() && resp.prompt_feedback.as_ref().is_some_and(|f| f.block_reason.is_some());
        if blocked {
            let at = self.choice(0, out);
            self.finish(at, "content_filter".into(), out);
        }
        for (position, candidate) in resp.candidates.into_iter().enumerate() {
            let index = candidate.index.unwrap_or(u32::try_from(position).unwrap_or(u32::MAX));
            let at = self.choice(index, out);
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                let delta = if let Some(call) = part.function_call {
                    let Some(state) = self.choices.get_mut(at) else { break };
                    let call = o::ToolCallDelta {
                        index: state.tool_calls,
                        id: Some(ids.call()),
                        kind: Some("function".into()),
                        function: o::FunctionCallDelta {
                            name: Some(call.name),
                            arguments: Some(arguments_text(call.args)),
                        },
                    };
                    state.tool_calls += 1;
                    o::Delta { tool_calls: Some(vec![call]), ..o::Delta::default() }
                } else {
                    match part.text {
                        Some(text) if !text.is_empty() && part.thought == Some(true) => {
                            o::Delta { reasoning_content: Some(text), ..o::Delta::default() }
                        }
                        Some(text) if !text.is_empty() => o::Delta { content: Some(text), ..o::Delta::default() },
                        _ => continue,
                    }
                };
                self.saw_content = true;
                o::sse_data(out, &self.chunk(index, delta, None));
            }
            if candidate.finish_reason.is_some() {
                let tool_calls = self.choices.get(at).is_some_and(|c| c.tool_calls > 0);
                self.finish(at, finish_reason(candidate.finish_reason, tool_calls), out);
            }
        }
        self.ids = Some(ids);
    }

    fn finish(&mut self, at: usize, reason: String, out: &mut Vec<u8>) {
        let Some(state) = self.choices.get_mut(at) else { return };
        if state.finished {
            return;
        }
        state.finished = true;
        let index = state.index;
        o::sse_data(out, &self.chunk(index, o::Delta::default(), Some(reason)));
    }

    /// The usage chunk (when asked for) and `[DONE]`, once, when the upstream stream ends.
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        if let (true, Some(usage)) = (self.include_usage, self.usage) {
            let mut chunk = self.chunk(0, o::Delta::default(), None);
            chunk.choices.clear();
            chunk.usage = Some(o::Usage::from(usage));
            o::sse_data(out, &chunk);
        }
        out.extend_from_slice(o::SSE_DONE);
    }
}

/// A Google error (`{"error":{"code","message","status"}}`, possibly inside a one-element array)
/// → an OpenAI error keeping the message; `code` is Google's status in lower case. Anything else is
/// handled as for OpenAI backends (kept if OpenAI-shaped, else wrapped with its text).
fn google_error(status: u16, body: &[u8]) -> Option<Vec<u8>> {
    // A struct also deserializes from an array (by position), so the object form must have said something.
    let envelope = serde_json::from_slice::<g::ErrorEnvelope>(body)
        .ok()
        .filter(|e| !e.error.message.is_empty())
        .or_else(|| serde_json::from_slice::<Vec<g::ErrorEnvelope>>(body).ok().and_then(|v| v.into_iter().next()));
    match envelope {
        Some(e) if !e.error.message.is_empty() => {
            let code = e.error.status.map(|s| s.to_ascii_lowercase()).unwrap_or_else(|| "upstream_error".into());
            Some(error_json(&e.error.message, ErrorKind::for_status(status).as_str(), &code))
        }
        _ => super::openai_error_body(status, body),
    }
}

fn plan(streaming: bool) -> ResponsePlan {
    let (mode, content_type) =
        if streaming { (BodyMode::Stream, "text/event-stream") } else { (BodyMode::Buffer, "application/json") };
    ResponsePlan {
        mode,
        set_headers: vec![("content-type", content_type.into())],
        remove_headers: vec!["content-length", "content-encoding"],
    }
}

fn unreadable(what: &str, e: serde_json::Error) -> ChunkEdits {
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
            writer: ChunkWriter {
                id: String::new(),
                model: String::new(),
                created: 0,
                include_usage: false,
                ids: None,
                choices: Vec::new(),
                usage: None,
                done: false,
                saw_content: false,
            },
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
        let RequestContext { info, body, backend, query: _, now_unix } = request;
        let chat = o::parse_chat_request(body)?;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let gemini = to_gemini(chat, &model)?;
        let new_body = serde_json::to_vec(&gemini).map_err(internal)?;
        let path = if info.stream {
            model_path(backend, &model, "streamGenerateContent") + "?alt=sse"
        } else {
            model_path(backend, &model, "generateContent")
        };
        self.fallback_id = format!("chatcmpl-{:016x}", fnv1a(body, *now_unix));
        self.created = *now_unix;
        self.stream = info.stream;
        self.writer.id = self.fallback_id.clone();
        self.writer.model = model.clone();
        self.writer.created = *now_unix;
        self.writer.include_usage = info.client_wants_usage;
        self.model = model;
        Ok(RequestEdits {
            path: Some(path),
            body: Some(crate::body::NewBody::whole(new_body)),
            set_headers: Vec::new(),
        })
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
            return match serde_json::from_slice::<g::GenerateContentResponse>(chunk) {
                Ok(resp) => {
                    let usage = resp.usage_metadata.as_ref().map(usage_of);
                    let completion = to_chat_completion(resp, &self.fallback_id, &self.model, self.created);
                    ChunkEdits {
                        replace: serde_json::to_vec(&completion).ok(),
                        usage,
                        first_content: false,
                        status: None,
                    }
                }
                Err(e) => unreadable("response", e),
            };
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
            log::warn!("llmgw: a Gemini stream event exceeded {} bytes and was dropped", crate::sse::MAX_EVENT_BYTES);
        }
        let mut usage = None;
        if end_of_stream {
            let tail = self.splitter.take_pending();
            if !tail.is_empty() {
                on_block(&tail, &mut out);
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

// ---- embeddings ----

/// OpenAI embeddings → Vertex `publishers/google/models/{model}:predict`.
#[derive(Default)]
pub struct OpenAIToVertexEmbeddings {
    model: String,
    base64: bool,
}

impl OpenAIToVertexEmbeddings {
    pub fn new() -> Self {
        Self::default()
    }
}

pub(super) fn to_predict(request: o::EmbeddingsRequest) -> Result<(g::PredictRequest, bool), ApiError> {
    let o::EmbeddingsRequest { model: _, input, dimensions, encoding_format, user, mut extra } = request;
    let texts: Vec<String> = match input {
        Value::String(text) => vec![text],
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.into_iter().filter_map(|v| if let Value::String(s) = v { Some(s) } else { None }).collect()
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|v| v.is_number() || v.is_array()) => {
            return Err(unsupported("input", "token arrays cannot be embedded by Vertex AI; send text"))
        }
        _ => return Err(bad("`input` must be a non-empty string or a non-empty array of strings")),
    };
    let base64 = match encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(bad(format!("`encoding_format` must be float or base64; got {other:?}"))),
    };
    let task_type = match extra.remove("task_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t),
        Some(_) => return Err(bad("`task_type` must be a string (e.g. RETRIEVAL_QUERY)")),
    };
    let mut ignored: Vec<String> = extra.keys().cloned().collect();
    if user.is_some() {
        ignored.push("user".into());
    }
    if !ignored.is_empty() {
        log::debug!("llmgw: GCPVertexAI embeddings ignore parameters: {}", ignored.join(", "));
    }
    let instances =
        texts.into_iter().map(|content| g::EmbedInstance { content, task_type: task_type.clone() }).collect();
    let parameters = dimensions.map(|d| g::EmbedParameters { output_dimensionality: Some(d) });
    Ok((g::PredictRequest { instances, parameters }, base64))
}

fn to_embeddings_response(resp: g::PredictResponse, model: &str, base64: bool) -> o::EmbeddingsResponse {
    let mut tokens = 0u64;
    let data = resp
        .predictions
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let count = p.embeddings.statistics.as_ref().and_then(|s| s.token_count).unwrap_or(0.0);
            // Token counts are small non-negative integers written as JSON numbers.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let count = count.max(0.0) as u64;
            tokens += count;
            let values = p.embeddings.values;
            o::Embedding {
                object: "embedding",
                index: u32::try_from(i).unwrap_or(u32::MAX),
                embedding: if base64 {
                    o::EmbeddingVector::Base64(base64_f32(&values))
                } else {
                    o::EmbeddingVector::Float(values)
                },
            }
        })
        .collect();
    o::EmbeddingsResponse {
        object: "list",
        data,
        model: model.to_string(),
        usage: o::EmbeddingsUsage { prompt_tokens: tokens, total_tokens: tokens },
    }
}

/// Little-endian f32s in standard base64, the form OpenAI's `encoding_format: base64` returns.
fn base64_f32(values: &[f64]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    #[allow(clippy::cast_possible_truncation)]
    let bytes: Vec<u8> = values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = |k: usize| u32::from(group.get(k).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for k in 0..4 {
            if k <= group.len() {
                let sextet = (n >> (18 - 6 * k)) & 63;
                out.push(TABLE.get(sextet as usize).map_or('A', |c| char::from(*c)));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Translator for OpenAIToVertexEmbeddings {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query: _, now_unix: _ } = request;
        let (predict, base64) = to_predict(o::parse_embeddings_request(body)?)?;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let new_body = serde_json::to_vec(&predict).map_err(internal)?;
        let path = model_path(backend, &model, "predict");
        self.model = model;
        self.base64 = base64;
        Ok(RequestEdits {
            path: Some(path),
            body: Some(crate::body::NewBody::whole(new_body)),
            set_headers: Vec::new(),
        })
    }

    fn response_headers(&mut self, _status: u16, _content_type: &str) -> ResponsePlan {
        plan(false)
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !end_of_stream {
            return ChunkEdits { replace: Some(Vec::new()), ..ChunkEdits::default() };
        }
        match serde_json::from_slice::<g::PredictResponse>(chunk) {
            Ok(resp) => {
                let response = to_embeddings_response(resp, &self.model, self.base64);
                let tokens = response.usage.prompt_tokens;
                let usage = TokenUsage { input: tokens, total: tokens, ..TokenUsage::default() };
                ChunkEdits {
                    replace: serde_json::to_vec(&response).ok(),
                    usage: Some(usage),
                    first_content: false,
                    status: None,
                }
            }
            Err(e) => unreadable("embeddings response", e),
        }
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        google_error(status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> Result<Value, ApiError> {
        let chat: o::ChatRequest = serde_json::from_value(body).unwrap();
        to_gemini(chat, "gemini-2.5-flash").map(|r| serde_json::to_value(r).unwrap())
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
        let chat: o::ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [
                {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "y", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}))
        .unwrap();
        let v = serde_json::to_value(to_gemini(chat, "gemini-3-pro-preview").unwrap()).unwrap();
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
        let v = request(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklG"}},
            {"type": "image_url", "image_url": {"url": "gs://bucket/cat.JPG?x=1", "detail": "high"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}]}]}))
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
        (backend.project, backend.region) = ("p".into(), "r".into());
        let ctx = RequestContext { info: &info, body: body.as_bytes(), backend: &backend, query: "?x=1", now_unix: 7 };
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
        assert_eq!(got.len(), 3, "role, text, [DONE]: no finish chunk was sent upstream, and no usage is known");
        assert_eq!(got[2], "[DONE]");
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
        struct NoEnv;
        impl crate::config::Env for NoEnv {
            fn var(&self, _: &str) -> Option<String> {
                None
            }
        }
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
        // 1.0f32 = 00 00 80 3f; -2.0f32 = 00 00 00 c0
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
    }

    #[test]
    fn embeddings_input_forms() {
        let parse = |v: Value| to_predict(o::parse_embeddings_request(v.to_string().as_bytes()).unwrap());
        let (p, b64) =
            parse(json!({"model": "m", "input": ["a", "b"], "dimensions": 8, "task_type": "RETRIEVAL_QUERY",
            "encoding_format": "base64"}))
            .unwrap();
        assert!(b64);
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            json!({"instances": [{"content": "a", "task_type": "RETRIEVAL_QUERY"}, {"content": "b", "task_type": "RETRIEVAL_QUERY"}],
                   "parameters": {"outputDimensionality": 8}})
        );
        assert_eq!(parse(json!({"model": "m", "input": [1, 2]})).unwrap_err().code, "unsupported_parameter");
        assert_eq!(parse(json!({"model": "m", "input": [[1, 2]]})).unwrap_err().code, "unsupported_parameter");
        assert_eq!(parse(json!({"model": "m", "input": []})).unwrap_err().status, 400);
        assert_eq!(parse(json!({"model": "m", "input": "x", "encoding_format": "int8"})).unwrap_err().status, 400);
    }
}
