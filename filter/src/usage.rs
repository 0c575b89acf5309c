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
/// Chat and completions name the counts `prompt_tokens`/`completion_tokens`; the Responses, Images
/// and Audio APIs name them `input_tokens`/`output_tokens`: both are read.
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
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub input_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub output_tokens_details: Option<CompletionDetails>,
}

impl OpenAIUsage {
    /// Whether it counts tokens at all (a transcription billed by duration counts seconds).
    pub fn counts_tokens(&self) -> bool {
        self.prompt_tokens.or(self.completion_tokens).or(self.input_tokens).or(self.output_tokens).is_some()
            || self.total_tokens.is_some()
    }
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
        let input = u.prompt_tokens.or(u.input_tokens).unwrap_or(0);
        let output = u.completion_tokens.or(u.output_tokens).unwrap_or(0);
        let input_details = u.prompt_tokens_details.as_ref().or(u.input_tokens_details.as_ref());
        let output_details = u.completion_tokens_details.as_ref().or(u.output_tokens_details.as_ref());
        TokenUsage {
            input,
            output,
            total: u.total_tokens.unwrap_or(input.saturating_add(output)),
            cached_input: input_details.and_then(|d| d.cached_tokens).unwrap_or(0),
            reasoning: output_details.and_then(|d| d.reasoning_tokens).unwrap_or(0),
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
    let parsed: WithUsage = crate::json::from_bytes(body).ok()?;
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

    #[test]
    fn reads_the_responses_and_images_naming() {
        let body = br#"{"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":2},
            "output_tokens":87,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":123}}"#;
        assert_eq!(
            from_openai_json(body),
            Some(TokenUsage { input: 36, output: 87, total: 123, cached_input: 2, reasoning: 5 })
        );
        let image = br#"{"usage":{"input_tokens":50,"output_tokens":4160,"input_tokens_details":{"text_tokens":50}}}"#;
        assert_eq!(from_openai_json(image).map(|u| u.total), Some(4210));
        let seconds: OpenAIUsage = serde_json::from_str(r#"{"type":"duration","seconds":3}"#).unwrap();
        assert!(!seconds.counts_tokens());
    }
}
