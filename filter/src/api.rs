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
    /// Outside `/v1/`: not the gateway's business, passed through.
    Other,
}

impl Endpoint {
    pub fn classify(path: &str) -> PathKind {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        match path {
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
            Endpoint::Models => "GET",
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings | Endpoint::Messages => "POST",
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
        }
    }

    /// Whether the endpoint can stream its answer.
    pub fn can_stream(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Messages)
    }

    pub fn client_api(self) -> ClientApi {
        match self {
            Endpoint::Messages => ClientApi::Anthropic,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(Endpoint::classify("/v1/chat/completions"), PathKind::Endpoint(Endpoint::ChatCompletions));
        assert_eq!(Endpoint::classify("/v1/chat/completions/?x=1"), PathKind::Endpoint(Endpoint::ChatCompletions));
        assert_eq!(Endpoint::classify("/v1/models?limit=2"), PathKind::Endpoint(Endpoint::Models));
        assert_eq!(Endpoint::classify("/v1/files"), PathKind::UnknownV1);
        assert_eq!(Endpoint::classify("/v1"), PathKind::UnknownV1);
        assert_eq!(Endpoint::classify("/v10/x"), PathKind::Other);
        assert_eq!(Endpoint::classify("/healthz"), PathKind::Other);
        assert_eq!(query_of("/v1/x?a=b"), "?a=b");
        assert_eq!(query_of("/v1/x"), "");
    }
}
