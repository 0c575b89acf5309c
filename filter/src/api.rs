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

/// Where Anthropic-SDK clients configured with `base_url=http://gw/anthropic` send their
/// requests (as Envoy AI Gateway serves them), unless the configuration says otherwise.
pub const DEFAULT_ANTHROPIC_PREFIX: &str = "/anthropic";

impl Endpoint {
    /// `anthropic_prefix`: where Anthropic's API is also served (`{prefix}/v1/messages`, ...).
    pub fn classify(path: &str, anthropic_prefix: &str) -> PathKind {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        if let Some(rest) = path.strip_prefix(anthropic_prefix).filter(|r| r.is_empty() || r.starts_with('/')) {
            return match rest {
                "/v1/messages" => PathKind::Endpoint(Endpoint::Messages),
                "/v1/messages/count_tokens" => PathKind::Endpoint(Endpoint::CountTokens),
                "/v1/models" => PathKind::Endpoint(Endpoint::AnthropicModels),
                _ => PathKind::UnknownAnthropic,
            };
        }
        match path {
            "/v1/messages/count_tokens" => PathKind::Endpoint(Endpoint::CountTokens),
            "/v1/chat/completions" => PathKind::Endpoint(Endpoint::ChatCompletions),
            "/v1/completions" => PathKind::Endpoint(Endpoint::Completions),
            "/v1/embeddings" => PathKind::Endpoint(Endpoint::Embeddings),
            "/v1/models" => PathKind::Endpoint(Endpoint::Models),
            "/v1/messages" => PathKind::Endpoint(Endpoint::Messages),
            p if p == "/v1" || p.starts_with("/v1/") => PathKind::UnknownV1,
            _ => PathKind::Other,
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Models | Endpoint::AnthropicModels => "GET",
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Messages
            | Endpoint::CountTokens => "POST",
        }
    }

    /// The path below the API version prefix, e.g. `/chat/completions`.
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Models => "/models",
            Endpoint::Messages => "/messages",
            Endpoint::CountTokens => "/messages/count_tokens",
            Endpoint::AnthropicModels => "/models",
        }
    }

    /// `gen_ai.operation.name` of the OpenTelemetry GenAI conventions.
    pub fn operation(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::Messages => "chat",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::AnthropicModels => "models",
        }
    }

    /// Whether the endpoint can stream its answer.
    pub fn can_stream(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Messages)
    }

    pub fn client_api(self) -> ClientApi {
        match self {
            Endpoint::Messages | Endpoint::CountTokens | Endpoint::AnthropicModels => ClientApi::Anthropic,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings | Endpoint::Models => {
                ClientApi::OpenAI
            }
        }
    }
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
}
