//! Token usage, as counted by providers, in one shape.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub total: u64,
    pub cached_input: u64,
    pub reasoning: u64,
}

/// OpenAI's `usage` object. Every field is optional: servers that only claim compatibility omit some.
#[derive(Debug, Deserialize, Default)]
pub struct OpenAIUsage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Deserialize, Default)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl From<&OpenAIUsage> for TokenUsage {
    fn from(u: &OpenAIUsage) -> Self {
        let input = u.prompt_tokens.unwrap_or(0);
        let output = u.completion_tokens.unwrap_or(0);
        TokenUsage {
            input,
            output,
            total: u.total_tokens.unwrap_or(input.saturating_add(output)),
            cached_input: u.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0),
            reasoning: u.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<OpenAIUsage>,
}

/// The usage of an OpenAI response or stream chunk, if it carries one.
pub fn from_openai_json(body: &[u8]) -> Option<TokenUsage> {
    let parsed: WithUsage = serde_json::from_slice(body).ok()?;
    parsed.usage.as_ref().map(TokenUsage::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_full_usage() {
        let body = br#"{"id":"x","usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
            "prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":4}}}"#;
        assert_eq!(
            from_openai_json(body),
            Some(TokenUsage { input: 19, output: 10, total: 29, cached_input: 3, reasoning: 4 })
        );
    }

    #[test]
    fn tolerates_partial_and_missing_usage() {
        assert_eq!(from_openai_json(br#"{"usage":{"prompt_tokens":7}}"#).map(|u| u.total), Some(7));
        assert_eq!(from_openai_json(br#"{"usage":null}"#), None);
        assert_eq!(from_openai_json(br#"{"choices":[]}"#), None);
        assert_eq!(from_openai_json(b"not json"), None);
    }
}
