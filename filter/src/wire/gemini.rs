//! Gemini on Vertex AI: `generateContent` / `streamGenerateContent` and the embeddings `predict`
//! wire types (REST JSON, camelCase). Requests are only written and responses only read, so each
//! type derives one direction (the .wasm pays for every derive).
//!
//! Request types borrow: text, base64 data, URIs, JSON schemas and function arguments are written
//! from the client's bytes (`&str` / `&RawValue`), one part at a time, never copied on the way.
//! Response types are views: scalars are parsed, text borrows from the answer, and every array
//! (`candidates`, `parts`, embedding `values`) stays raw, to be walked with [`crate::json::each`].
//! Every field is optional (Gemini omits what it has nothing to say about); unknown enum values
//! never fail parsing; unknown fields are skipped.

use std::borrow::Cow;

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::chat_view::opt_text;

// ---- generateContent request (written part by part) ----

/// A media part of a user turn: inline bytes or a file. Text, function call and function response
/// parts are written by hand by the translator (straight from the client's raw JSON, see
/// `translate::chat_to_gemini`): `{"text": ...}`, `{"functionCall": {"name", "args"}, "thoughtSignature"}`,
/// `{"functionResponse": {"name", "response"}}`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Part<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<Blob<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_data: Option<FileData<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob<'a> {
    pub mime_type: Cow<'a, str>,
    /// Base64 (often megabytes: borrowed from the client's data URL).
    pub data: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileData<'a> {
    pub mime_type: &'static str,
    pub file_uri: &'a str,
}

/// `parametersJsonSchema` takes JSON Schema as is (the alternative, `parameters`, takes an OpenAPI
/// subset and would need a lossy conversion of what OpenAI clients send).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig<'a> {
    pub function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig<'a> {
    pub mode: FunctionCallingMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_function_names: Option<[&'a str; 1]>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FunctionCallingMode {
    Auto,
    Any,
    None,
}

/// `stopSequences`: the client's string (written as a one-element list) or list of strings, raw.
#[derive(Debug, Clone, Copy)]
pub enum StopSequences<'a> {
    One(&'a RawValue),
    Many(&'a RawValue),
}

impl Serialize for StopSequences<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StopSequences::Many(raw) => raw.serialize(s),
            StopSequences::One(raw) => {
                let mut seq = s.serialize_seq(Some(1))?;
                seq.serialize_element(raw)?;
                seq.end()
            }
        }
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<StopSequences<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<&'static str>,
    /// A JSON Schema, as OpenAI's `json_schema` response format carries it (raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_json_schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig<'_> {
    /// True when nothing is set (the member is then left out).
    pub fn is_empty(&self) -> bool {
        let GenerationConfig {
            max_output_tokens,
            temperature,
            top_p,
            top_k,
            stop_sequences,
            candidate_count,
            response_mime_type,
            response_json_schema,
            seed,
            presence_penalty,
            frequency_penalty,
            thinking_config,
        } = self;
        max_output_tokens.is_none()
            && temperature.is_none()
            && top_p.is_none()
            && top_k.is_none()
            && stop_sequences.is_none()
            && candidate_count.is_none()
            && response_mime_type.is_none()
            && response_json_schema.is_none()
            && seed.is_none()
            && presence_penalty.is_none()
            && frequency_penalty.is_none()
            && thinking_config.is_none()
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ThinkingConfig {
    /// Tokens; 0 turns thinking off, -1 lets the model decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_budget: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_thoughts: Option<bool>,
}

// ---- generateContent response (also each streamed event), as views ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseView<'a> {
    /// An array of [`CandidateView`].
    #[serde(default, borrow)]
    pub candidates: Option<&'a RawValue>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default, borrow)]
    pub prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub response_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub model_version: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateView<'a> {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default, borrow)]
    pub content: Option<ContentView<'a>>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
}

/// A candidate's content: the role (`model`) is implied and not read.
#[derive(Debug, Default, Deserialize)]
pub struct ContentView<'a> {
    /// An array of [`PartView`].
    #[serde(default, borrow)]
    pub parts: Option<&'a RawValue>,
}

/// What the gateway reads of a response part. Parts of other kinds (inline images, executable
/// code, a lone `thoughtSignature`, ...) parse as a part with none of these set.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartView<'a> {
    /// A raw JSON string literal (use [`PartView::text`]): written to the client as Gemini escaped it.
    #[serde(default, borrow)]
    pub text: Option<&'a RawValue>,
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default, borrow)]
    pub function_call: Option<FunctionCallView<'a>>,
}

impl<'a> PartView<'a> {
    /// The text, when it is a non-empty string.
    pub fn text(&self) -> Option<&'a RawValue> {
        self.text.filter(|t| t.get().starts_with('"') && t.get() != "\"\"")
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionCallView<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub name: Option<Cow<'a, str>>,
    /// A JSON object, raw: it becomes the OpenAI `arguments` string.
    #[serde(default, borrow)]
    pub args: Option<&'a RawValue>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub block_reason: Option<Cow<'a, str>>,
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

/// One instance; field names are snake_case on this API.
#[derive(Debug, Serialize)]
pub struct EmbedInstance<'a> {
    /// A JSON string, as the client wrote it.
    pub content: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_type: Option<&'a RawValue>,
    /// Only valid with task_type RETRIEVAL_DOCUMENT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<&'a RawValue>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EmbedParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dimensionality: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PredictView<'a> {
    /// An array of [`PredictionView`].
    #[serde(default, borrow)]
    pub predictions: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PredictionView<'a> {
    #[serde(default, borrow)]
    pub embeddings: Option<EmbeddingsView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct EmbeddingsView<'a> {
    /// An array of numbers, raw.
    #[serde(default, borrow)]
    pub values: Option<&'a RawValue>,
    #[serde(default)]
    pub statistics: Option<EmbedStatistics>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
pub struct EmbedStatistics {
    /// A number; sometimes written as a float (`6.0`).
    #[serde(default)]
    pub token_count: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::each;
    use serde_json::json;

    #[test]
    fn reads_a_response_with_unknown_values_and_missing_fields() {
        let body = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "thinking...", "thought": true},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                    {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
                    {"thoughtSignature": "c2ln"}
                ]},
                "finishReason": "A_REASON_FROM_THE_FUTURE",
                "safetyRatings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}]
            }, {"content": {"role": "model"}}, {}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15,
                "trafficType": "ON_DEMAND", "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}]},
            "modelVersion": "gemini-2.5-flash", "responseId": "abc", "createTime": "2025-06-01T10:00:00.123456Z"
        })
        .to_string();
        let r: ResponseView = serde_json::from_str(&body).unwrap();
        let mut seen = Vec::new();
        each(r.candidates.unwrap(), |c: CandidateView| -> Result<(), ()> {
            let mut parts = Vec::new();
            if let Some(raw) = c.content.and_then(|c| c.parts) {
                each(raw, |p: PartView| -> Result<(), ()> {
                    parts.push((
                        p.text().map(|t| t.get().to_string()),
                        p.thought,
                        p.function_call.and_then(|f| f.args).map(|a| a.get().to_string()),
                    ));
                    Ok(())
                })
                .unwrap();
            }
            seen.push((c.finish_reason, parts));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, Some(FinishReason::Unknown));
        assert_eq!(seen[0].1[0], (Some(r#""thinking...""#.into()), Some(true), None));
        assert_eq!(seen[0].1[1].2.as_deref(), Some(r#"{"city":"Paris"}"#));
        assert_eq!(seen[0].1[2], (None, None, None));
        assert_eq!(seen[0].1[3], (None, None, None));
        assert!(seen[1].1.is_empty() && seen[2].1.is_empty());
        assert_eq!(r.usage_metadata.unwrap().total_token_count, Some(15));
        assert!(matches!(r.response_id, Some(Cow::Borrowed("abc"))));
        let empty: ResponseView = serde_json::from_str("{}").unwrap();
        assert!(empty.candidates.is_none() && empty.usage_metadata.is_none());
    }

    #[test]
    fn writes_camel_case_and_skips_empty_fields() {
        let stop: &RawValue = serde_json::from_str(r#""END""#).unwrap();
        let config = GenerationConfig {
            max_output_tokens: Some(5),
            stop_sequences: Some(StopSequences::One(stop)),
            thinking_config: Some(ThinkingConfig { thinking_budget: Some(0), include_thoughts: None }),
            ..GenerationConfig::default()
        };
        assert!(!config.is_empty() && GenerationConfig::default().is_empty());
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            json!({"maxOutputTokens":5,"stopSequences":["END"],"thinkingConfig":{"thinkingBudget":0}})
        );
        let tool_config = ToolConfig {
            function_calling_config: FunctionCallingConfig {
                mode: FunctionCallingMode::Any,
                allowed_function_names: Some(["f"]),
            },
        };
        assert_eq!(
            serde_json::to_string(&tool_config).unwrap(),
            r#"{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["f"]}}"#
        );
        let part =
            Part { inline_data: Some(Blob { mime_type: Cow::Borrowed("image/png"), data: "AAAA" }), ..Part::default() };
        assert_eq!(serde_json::to_string(&part).unwrap(), r#"{"inlineData":{"mimeType":"image/png","data":"AAAA"}}"#);
    }

    #[test]
    fn reads_embeddings_and_errors() {
        let r: PredictView = serde_json::from_str(
            r#"{"predictions":[{"embeddings":{"statistics":{"truncated":false,"token_count":6.0},"values":[0.1,-0.2]}}],
                "metadata":{"billableCharacterCount":24}}"#,
        )
        .unwrap();
        let mut n = 0;
        each(r.predictions.unwrap(), |p: PredictionView| -> Result<(), ()> {
            let e = p.embeddings.unwrap();
            assert_eq!(e.statistics.unwrap().token_count, Some(6.0));
            assert_eq!(e.values.unwrap().get(), "[0.1,-0.2]");
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
        let e: ErrorEnvelope = serde_json::from_str(
            r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[]}}"#,
        )
        .unwrap();
        assert_eq!(e.error.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
    }
}
