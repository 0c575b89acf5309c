//! The client-facing endpoints and what each one is.

/// An endpoint the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    /// Anthropic Messages API, for Anthropic SDK clients.
    Messages,
    /// Anthropic's `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Anthropic's `GET /v1/models`, under the Anthropic prefix.
    AnthropicModels,
    /// OpenAI Responses API: creates a response.
    Responses,
    /// A response the provider stored, named by its id in the path (no model in any body).
    StoredResponse(StoredCall),
    ImageGenerations,
    /// `multipart/form-data` (or JSON) with the image(s) to edit.
    ImageEdits,
    /// Text to speech: JSON in, audio bytes out.
    AudioSpeech,
    /// `multipart/form-data` with the audio file.
    AudioTranscriptions,
    /// `multipart/form-data` with the audio file.
    AudioTranslations,
}

/// The calls on a stored response: `/v1/responses/{id}` and below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredCall {
    /// `GET` retrieves it, `DELETE` deletes it.
    Response,
    InputItems,
    Cancel,
}

/// The API family a client speaks: decides the shape of errors and responses it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientApi {
    OpenAI,
    Anthropic,
}

/// What a request path is, for the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Endpoint(Endpoint),
    /// Under `/v1/` but not served: answered with 404.
    UnknownV1,
    /// Under the Anthropic prefix but not served: answered with 404 in Anthropic's shape.
    UnknownAnthropic,
    /// Outside `/v1/`: not the gateway's business, passed through.
    Other,
}

/// How the gateway learns a request's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// The `model` member of the JSON body.
    JsonBody,
    /// The `model` part of a `multipart/form-data` body, or the JSON body's `model`.
    MultipartOrJsonBody,
    /// No body names one: the `x-ai-eg-model` request header, else the only backend that can serve it.
    Header,
}

/// Where Anthropic-SDK clients configured with `base_url=http://gw/anthropic` send their
/// requests (as Envoy AI Gateway serves them), unless the configuration says otherwise.
pub const DEFAULT_ANTHROPIC_PREFIX: &str = "/anthropic";

/// The path segment standing for an id in `Endpoint::pattern`.
const ID: &str = "{id}";
/// Ids are a provider's opaque tokens (`resp_…`): one plain path segment, never `..` or an escape.
const MAX_ID_LEN: usize = 256;

impl Endpoint {
    /// Every served endpoint, in the order the 404 answer lists them (see [`Endpoint::served_list`]
    /// for where each one is mounted).
    pub const ALL: &'static [Endpoint] = &[
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Models,
        Endpoint::Messages,
        Endpoint::CountTokens,
        Endpoint::AnthropicModels,
        Endpoint::Responses,
        Endpoint::StoredResponse(StoredCall::Response),
        Endpoint::StoredResponse(StoredCall::InputItems),
        Endpoint::StoredResponse(StoredCall::Cancel),
        Endpoint::ImageGenerations,
        Endpoint::ImageEdits,
        Endpoint::AudioSpeech,
        Endpoint::AudioTranscriptions,
        Endpoint::AudioTranslations,
    ];

    /// The client path below its mount point (the root, or the Anthropic prefix), `{id}` standing
    /// for one id segment.
    pub fn pattern(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Models | Endpoint::AnthropicModels => "/v1/models",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
            Endpoint::Responses => "/v1/responses",
            Endpoint::StoredResponse(StoredCall::Response) => "/v1/responses/{id}",
            Endpoint::StoredResponse(StoredCall::InputItems) => "/v1/responses/{id}/input_items",
            Endpoint::StoredResponse(StoredCall::Cancel) => "/v1/responses/{id}/cancel",
            Endpoint::ImageGenerations => "/v1/images/generations",
            Endpoint::ImageEdits => "/v1/images/edits",
            Endpoint::AudioSpeech => "/v1/audio/speech",
            Endpoint::AudioTranscriptions => "/v1/audio/transcriptions",
            Endpoint::AudioTranslations => "/v1/audio/translations",
        }
    }

    /// Whether the endpoint is served at its pattern from the root (`/v1/...`). `/v1/models` there
    /// is OpenAI's list; Anthropic's is only under the prefix.
    pub fn at_root(self) -> bool {
        self != Endpoint::AnthropicModels
    }

    /// Whether the endpoint is served at `{anthropic_prefix}{pattern}` (Anthropic's API only).
    pub fn under_anthropic_prefix(self) -> bool {
        self.client_api() == ClientApi::Anthropic
    }

    /// `anthropic_prefix`: where Anthropic's API is also served (`{prefix}/v1/messages`, ...).
    pub fn classify(path: &str, anthropic_prefix: &str) -> PathKind {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        let find = |below: &str, mounted: fn(Endpoint) -> bool| {
            Endpoint::ALL.iter().copied().find(|&e| mounted(e) && matches_pattern(e.pattern(), below))
        };
        if let Some(rest) = path.strip_prefix(anthropic_prefix).filter(|r| r.is_empty() || r.starts_with('/')) {
            return find(rest, Endpoint::under_anthropic_prefix).map_or(PathKind::UnknownAnthropic, PathKind::Endpoint);
        }
        if let Some(endpoint) = find(path, Endpoint::at_root) {
            PathKind::Endpoint(endpoint)
        } else if path == "/v1" || path.starts_with("/v1/") {
            PathKind::UnknownV1
        } else {
            PathKind::Other
        }
    }

    /// Every served path, for the answer to an unknown one: those at the root, then Anthropic's
    /// under `anthropic_prefix` (`{id}` standing for an id).
    pub fn served_list(anthropic_prefix: &str) -> String {
        let at_root = Endpoint::ALL.iter().filter(|e| e.at_root()).map(|e| e.pattern().to_string());
        at_root.chain(Endpoint::anthropic_served(anthropic_prefix)).collect::<Vec<_>>().join(", ")
    }

    /// The paths served under `anthropic_prefix`, for an Anthropic client's unknown one.
    pub fn anthropic_served_list(anthropic_prefix: &str) -> String {
        Endpoint::anthropic_served(anthropic_prefix).collect::<Vec<_>>().join(", ")
    }

    fn anthropic_served(anthropic_prefix: &str) -> impl Iterator<Item = String> + '_ {
        let under = Endpoint::ALL.iter().filter(|e| e.under_anthropic_prefix());
        under.map(move |e| format!("{anthropic_prefix}{}", e.pattern()))
    }

    /// The methods the endpoint answers.
    pub fn methods(self) -> &'static [&'static str] {
        match self {
            Endpoint::Models | Endpoint::AnthropicModels | Endpoint::StoredResponse(StoredCall::InputItems) => &["GET"],
            Endpoint::StoredResponse(StoredCall::Response) => &["GET", "DELETE"],
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Messages
            | Endpoint::CountTokens
            | Endpoint::Responses
            | Endpoint::StoredResponse(StoredCall::Cancel)
            | Endpoint::ImageGenerations
            | Endpoint::ImageEdits
            | Endpoint::AudioSpeech
            | Endpoint::AudioTranscriptions
            | Endpoint::AudioTranslations => &["POST"],
        }
    }

    /// The path below the API version prefix, e.g. `/chat/completions`. A stored response's calls
    /// share `/responses`: the id and what follows it travel in [`Endpoint::path_tail`].
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Models => "/models",
            Endpoint::Messages => "/messages",
            Endpoint::CountTokens => "/messages/count_tokens",
            Endpoint::AnthropicModels => "/models",
            Endpoint::Responses | Endpoint::StoredResponse(_) => "/responses",
            Endpoint::ImageGenerations => "/images/generations",
            Endpoint::ImageEdits => "/images/edits",
            Endpoint::AudioSpeech => "/audio/speech",
            Endpoint::AudioTranscriptions => "/audio/transcriptions",
            Endpoint::AudioTranslations => "/audio/translations",
        }
    }

    /// What follows [`Endpoint::suffix`] in the upstream path: the query string (with its `?`), and
    /// for a stored response its id and call first (`/resp_1/input_items?limit=2`).
    pub fn path_tail(self, path: &str) -> String {
        let query = query_of(path);
        match self {
            Endpoint::StoredResponse(_) => {
                let path = path.split(['?', '#']).next().unwrap_or(path).trim_end_matches('/');
                let below = path.strip_prefix("/v1/responses").unwrap_or_default();
                format!("{below}{query}")
            }
            _ => query.to_string(),
        }
    }

    /// `gen_ai.operation.name` of the OpenTelemetry GenAI conventions (where they name one).
    pub fn operation(self) -> &'static str {
        match self {
            // The conventions count a Responses API call as `chat`.
            Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models | Endpoint::AnthropicModels => "models",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::StoredResponse(_) => "stored_response",
            Endpoint::ImageGenerations => "image_generation",
            Endpoint::ImageEdits => "image_edit",
            Endpoint::AudioSpeech => "speech",
            Endpoint::AudioTranscriptions => "transcription",
            Endpoint::AudioTranslations => "translation",
        }
    }

    /// Whether the endpoint can stream its answer (a JSON body's `stream: true` is allowed).
    pub fn can_stream(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Messages
                | Endpoint::Responses
                | Endpoint::ImageGenerations
                | Endpoint::ImageEdits
        )
    }

    /// Whether the body may carry OpenAI's `stream_options.include_usage` (chat and completions).
    pub fn takes_stream_options(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    pub fn model_source(self) -> ModelSource {
        match self {
            Endpoint::StoredResponse(_) => ModelSource::Header,
            Endpoint::ImageEdits | Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => {
                ModelSource::MultipartOrJsonBody
            }
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Models
            | Endpoint::AnthropicModels
            | Endpoint::Messages
            | Endpoint::CountTokens
            | Endpoint::Responses
            | Endpoint::ImageGenerations
            | Endpoint::AudioSpeech => ModelSource::JsonBody,
        }
    }

    pub fn client_api(self) -> ClientApi {
        match self {
            Endpoint::Messages | Endpoint::CountTokens | Endpoint::AnthropicModels => ClientApi::Anthropic,
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Models
            | Endpoint::Responses
            | Endpoint::StoredResponse(_)
            | Endpoint::ImageGenerations
            | Endpoint::ImageEdits
            | Endpoint::AudioSpeech
            | Endpoint::AudioTranscriptions
            | Endpoint::AudioTranslations => ClientApi::OpenAI,
        }
    }
}

/// Whether `path` is `pattern`, each `{id}` matching one id segment.
fn matches_pattern(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut have = path.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some(ID), Some(segment)) if is_id(segment) => {}
            (Some(w), Some(h)) if w == h => {}
            _ => return false,
        }
    }
}

fn is_id(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_ID_LEN
        && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The query string of a path, with its `?`, or "".
pub fn query_of(path: &str) -> &str {
    path.find('?').and_then(|i| path.get(i..)).unwrap_or("")
}

/// The first value of query parameter `name` (`query` as [`query_of`] gives it), percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// `%XX` and `+` (a space) decoded; a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|&c| (c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        let classify = |path| Endpoint::classify(path, DEFAULT_ANTHROPIC_PREFIX);
        assert_eq!(classify("/v1/chat/completions"), PathKind::Endpoint(Endpoint::ChatCompletions));
        assert_eq!(classify("/v1/chat/completions/?x=1"), PathKind::Endpoint(Endpoint::ChatCompletions));
        assert_eq!(classify("/v1/models?limit=2"), PathKind::Endpoint(Endpoint::Models));
        assert_eq!(classify("/v1/files"), PathKind::UnknownV1);
        assert_eq!(classify("/v1"), PathKind::UnknownV1);
        assert_eq!(classify("/v10/x"), PathKind::Other);
        assert_eq!(classify("/healthz"), PathKind::Other);
        assert_eq!(query_of("/v1/x?a=b"), "?a=b");
        assert_eq!(query_of("/v1/x"), "");
    }

    #[test]
    fn anthropic_paths_at_v1_and_under_the_prefix() {
        let classify = |path| Endpoint::classify(path, DEFAULT_ANTHROPIC_PREFIX);
        assert_eq!(classify("/v1/messages"), PathKind::Endpoint(Endpoint::Messages));
        assert_eq!(classify("/anthropic/v1/messages"), PathKind::Endpoint(Endpoint::Messages));
        assert_eq!(classify("/anthropic/v1/messages/?beta=true"), PathKind::Endpoint(Endpoint::Messages));
        assert_eq!(classify("/v1/messages/count_tokens"), PathKind::Endpoint(Endpoint::CountTokens));
        assert_eq!(classify("/anthropic/v1/messages/count_tokens"), PathKind::Endpoint(Endpoint::CountTokens));
        assert_eq!(classify("/anthropic/v1/models?limit=5"), PathKind::Endpoint(Endpoint::AnthropicModels));
        // OpenAI's list stays OpenAI's at /v1/models.
        assert_eq!(classify("/v1/models"), PathKind::Endpoint(Endpoint::Models));
        assert_eq!(classify("/anthropic/v1/chat/completions"), PathKind::UnknownAnthropic);
        // OpenAI's APIs are not served under the Anthropic prefix.
        assert_eq!(classify("/anthropic/v1/responses"), PathKind::UnknownAnthropic);
        assert_eq!(classify("/anthropic"), PathKind::UnknownAnthropic);
        assert_eq!(classify("/anthropicx/v1/messages"), PathKind::Other);
        assert_eq!(Endpoint::classify("/claude/v1/messages", "/claude"), PathKind::Endpoint(Endpoint::Messages));
        assert_eq!(Endpoint::classify("/anthropic/v1/messages", "/claude"), PathKind::Other);
        for endpoint in [Endpoint::Messages, Endpoint::CountTokens, Endpoint::AnthropicModels] {
            assert_eq!(endpoint.client_api(), ClientApi::Anthropic);
        }
        assert!(Endpoint::Messages.can_stream() && !Endpoint::CountTokens.can_stream());
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("?limit=5&after_id=a%40b+c", "after_id").as_deref(), Some("a@b c"));
        assert_eq!(query_param("?limit=5", "limit").as_deref(), Some("5"));
        assert_eq!(query_param("?x", "x").as_deref(), Some(""));
        assert_eq!(query_param("", "x"), None);
        assert_eq!(query_param("?a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("?a=%ff", "a").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn classifies_the_openai_endpoints_beyond_chat() {
        use Endpoint as E;
        let classify = |path: &str| Endpoint::classify(path, DEFAULT_ANTHROPIC_PREFIX);
        let cases = [
            ("/v1/responses", E::Responses),
            ("/v1/responses/resp_123", E::StoredResponse(StoredCall::Response)),
            ("/v1/responses/resp_123/?x=1", E::StoredResponse(StoredCall::Response)),
            ("/v1/responses/resp-1_A/input_items?limit=2", E::StoredResponse(StoredCall::InputItems)),
            ("/v1/responses/resp_1/cancel", E::StoredResponse(StoredCall::Cancel)),
            ("/v1/images/generations", E::ImageGenerations),
            ("/v1/images/edits", E::ImageEdits),
            ("/v1/audio/speech", E::AudioSpeech),
            ("/v1/audio/transcriptions", E::AudioTranscriptions),
            ("/v1/audio/translations", E::AudioTranslations),
        ];
        for (path, endpoint) in cases {
            assert_eq!(classify(path), PathKind::Endpoint(endpoint), "{path}");
        }
        // An id is one plain segment: nothing that could climb or hide a path reaches a provider.
        for path in [
            "/v1/responses/..",
            "/v1/responses/a%2Fb",
            "/v1/responses/a.b",
            "/v1/responses//cancel",
            "/v1/responses/r/x",
            "/v1/responses/r/cancel/more",
            "/v1/images",
        ] {
            assert_eq!(classify(path), PathKind::UnknownV1, "{path}");
        }
        assert_eq!(classify(&format!("/v1/responses/{}", "a".repeat(257))), PathKind::UnknownV1);
    }

    #[test]
    fn every_endpoint_is_listed_once_and_classifies_as_itself_where_it_is_mounted() {
        for prefix in [DEFAULT_ANTHROPIC_PREFIX, "/claude/api"] {
            let served = Endpoint::served_list(prefix);
            let anthropic_served = Endpoint::anthropic_served_list(prefix);
            for (i, e) in Endpoint::ALL.iter().enumerate() {
                assert!(!Endpoint::ALL.iter().skip(i + 1).any(|o| o == e));
                assert!(e.at_root() || e.under_anthropic_prefix(), "{e:?} is served nowhere");
                let path = e.pattern().replace(ID, "resp_1");
                if e.at_root() {
                    assert_eq!(Endpoint::classify(&path, prefix), PathKind::Endpoint(*e));
                    assert!(served.split(", ").any(|p| p == e.pattern()), "{served}");
                }
                let prefixed = format!("{prefix}{}", e.pattern());
                if e.under_anthropic_prefix() {
                    assert_eq!(Endpoint::classify(&format!("{prefix}{path}"), prefix), PathKind::Endpoint(*e));
                    assert!(served.split(", ").any(|p| p == prefixed), "{served}");
                    assert!(anthropic_served.split(", ").any(|p| p == prefixed), "{anthropic_served}");
                } else {
                    // OpenAI's paths are not served there (`/v1/models` there is Anthropic's list).
                    assert_ne!(Endpoint::classify(&prefixed, prefix), PathKind::Endpoint(*e));
                }
            }
            assert!(!anthropic_served.contains("/v1/chat/completions"), "{anthropic_served}");
        }
    }

    #[test]
    fn a_stored_response_keeps_its_id_and_call_for_upstream() {
        let e = Endpoint::StoredResponse(StoredCall::InputItems);
        assert_eq!(e.path_tail("/v1/responses/resp_1/input_items/?limit=2"), "/resp_1/input_items?limit=2");
        assert_eq!(Endpoint::StoredResponse(StoredCall::Response).path_tail("/v1/responses/r"), "/r");
        assert_eq!(Endpoint::Responses.path_tail("/v1/responses?a=1"), "?a=1");
    }
}
