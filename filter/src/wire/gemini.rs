//! Gemini on Vertex AI: `generateContent` / `streamGenerateContent` and the embeddings `predict`
//! wire types (REST JSON, camelCase). Requests are only written and responses only read, so each
//! type derives one direction (the .wasm pays for every derive): a response `Part` reads only what
//! the gateway can pass on (text, thoughts, function calls) and skips the rest. Unknown enum values
//! never fail parsing; unknown fields are ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ---- generateContent request ----

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    pub contents: Vec<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
}

/// One turn: `role` is `user` or `model` (absent in `systemInstruction`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Content {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub parts: Vec<Part>,
}

/// A part holds one kind of data (text, inline bytes, a file, a function call or response) plus
/// metadata; one struct of options, as the API's `oneof` is written in JSON.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The text is a thought summary, not the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<Blob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_data: Option<FileData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_response: Option<FunctionResponse>,
}

impl Part {
    pub fn text(text: impl Into<String>) -> Self {
        Part { text: Some(text.into()), ..Part::default() }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    pub mime_type: String,
    /// Base64.
    pub data: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileData {
    pub mime_type: String,
    pub file_uri: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FunctionCall {
    #[serde(default)]
    pub name: String,
    /// A JSON object.
    #[serde(default)]
    pub args: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FunctionResponse {
    pub name: String,
    /// A JSON object.
    pub response: Value,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    pub function_declarations: Vec<FunctionDeclaration>,
}

/// `parametersJsonSchema` takes JSON Schema as is (the alternative, `parameters`, takes an OpenAPI
/// subset and would need a lossy conversion of what OpenAI clients send).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters_json_schema: Option<Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    pub function_calling_config: FunctionCallingConfig,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig {
    pub mode: FunctionCallingMode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_function_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FunctionCallingMode {
    Auto,
    Any,
    None,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<String>,
    /// An OpenAPI-subset schema (not written by the translator; kept for completeness).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<Value>,
    /// A JSON Schema, as OpenAI's `json_schema` response format carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_json_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<ThinkingConfig>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ThinkingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_thoughts: Option<bool>,
}

// ---- generateContent response (also each streamed event) ----

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    pub response_id: Option<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub create_time: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub content: Option<ResponseContent>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    #[serde(default)]
    pub finish_message: Option<String>,
}

/// A candidate's content: the role (`model`) is implied and not read.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ResponseContent {
    #[serde(default)]
    pub parts: Vec<ResponsePart>,
}

/// What the gateway reads of a response part. Parts of other kinds (inline images, executable
/// code, ...) parse as a part with none of these set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponsePart {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default)]
    pub function_call: Option<FunctionCall>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FinishReason {
    FinishReasonUnspecified,
    Stop,
    MaxTokens,
    Safety,
    Recitation,
    Other,
    Blocklist,
    ProhibitedContent,
    Spii,
    MalformedFunctionCall,
    ImageSafety,
    UnexpectedToolCall,
    Language,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    #[serde(default)]
    pub block_reason: Option<String>,
    #[serde(default)]
    pub block_reason_message: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: Option<u64>,
    /// Output tokens, thoughts excluded.
    #[serde(default)]
    pub candidates_token_count: Option<u64>,
    #[serde(default)]
    pub total_token_count: Option<u64>,
    #[serde(default)]
    pub cached_content_token_count: Option<u64>,
    #[serde(default)]
    pub thoughts_token_count: Option<u64>,
    #[serde(default)]
    pub tool_use_prompt_token_count: Option<u64>,
}

// ---- errors ----

/// Google's error envelope: `{"error":{"code":400,"message":"...","status":"INVALID_ARGUMENT"}}`
/// (a JSON array of one such object when a stream fails without `alt=sse`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ErrorEnvelope {
    pub error: Status,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Status {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: Option<String>,
}

// ---- embeddings: publishers/google/models/{model}:predict ----

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PredictRequest {
    pub instances: Vec<EmbedInstance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<EmbedParameters>,
}

/// Field names are snake_case on this API.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EmbedInstance {
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmbedParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dimensionality: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PredictResponse {
    #[serde(default)]
    pub predictions: Vec<Prediction>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Prediction {
    #[serde(default)]
    pub embeddings: Embeddings,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Embeddings {
    #[serde(default)]
    pub values: Vec<f64>,
    #[serde(default)]
    pub statistics: Option<EmbedStatistics>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct EmbedStatistics {
    /// A number; sometimes written as a float (`6.0`).
    #[serde(default)]
    pub token_count: Option<f64>,
    #[serde(default)]
    pub truncated: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_response_with_unknown_values() {
        let body = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "thinking...", "thought": true},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                    {"executableCode": {"language": "PYTHON", "code": "print(1)"}}
                ]},
                "finishReason": "A_REASON_FROM_THE_FUTURE",
                "safetyRatings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}]
            }],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15,
                "trafficType": "ON_DEMAND", "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}]},
            "modelVersion": "gemini-2.5-flash", "responseId": "abc", "createTime": "2025-06-01T10:00:00.123456Z"
        });
        let r: GenerateContentResponse = serde_json::from_value(body).unwrap();
        let c = &r.candidates[0];
        assert_eq!(c.finish_reason, Some(FinishReason::Unknown));
        let parts = &c.content.as_ref().unwrap().parts;
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].thought, Some(true));
        assert_eq!(parts[1].function_call.as_ref().unwrap().args, Some(json!({"city": "Paris"})));
        assert_eq!(parts[2], ResponsePart::default());
        assert_eq!(r.usage_metadata.unwrap().total_token_count, Some(15));
    }

    #[test]
    fn writes_camel_case_and_skips_empty_fields() {
        let req = GenerateContentRequest {
            contents: vec![Content { role: Some("user".into()), parts: vec![Part::text("hi")] }],
            generation_config: Some(GenerationConfig {
                max_output_tokens: Some(5),
                thinking_config: Some(ThinkingConfig { thinking_budget: Some(0), include_thoughts: None }),
                ..GenerationConfig::default()
            }),
            tool_config: Some(ToolConfig {
                function_calling_config: FunctionCallingConfig {
                    mode: FunctionCallingMode::Any,
                    allowed_function_names: vec!["f".into()],
                },
            }),
            ..GenerateContentRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"contents":[{"role":"user","parts":[{"text":"hi"}]}],
                   "toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["f"]}},
                   "generationConfig":{"maxOutputTokens":5,"thinkingConfig":{"thinkingBudget":0}}})
        );
    }

    #[test]
    fn parses_embeddings_and_errors() {
        let r: PredictResponse = serde_json::from_str(
            r#"{"predictions":[{"embeddings":{"statistics":{"truncated":false,"token_count":6.0},"values":[0.1,-0.2]}}],
                "metadata":{"billableCharacterCount":24}}"#,
        )
        .unwrap();
        assert_eq!(r.predictions[0].embeddings.statistics.as_ref().unwrap().token_count, Some(6.0));
        let e: ErrorEnvelope = serde_json::from_str(
            r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[]}}"#,
        )
        .unwrap();
        assert_eq!(e.error.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
    }
}
