//! OpenAI embeddings client → Vertex AI (`GCPVertexAI`): `publishers/google/models/{model}:predict`.
//! `input` is walked in place (strings, arrays of strings, or objects carrying Vertex's `task_type`
//! and `title`), and the answer's vectors are copied as written or re-encoded as base64 f32s.

use std::borrow::Cow;
use std::io::{self, Write};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::chat_to_gemini::{
    bad, google_error, internal, io_err, json_err, plan, unreadable, unsupported, walk_answer, Counter, Unreadable,
    Vertex,
};
use super::{ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::body::{BodyWriter, ChunkedBody, NewBody};
use crate::error::ApiError;
use crate::json::{each, from_raw, EachError};
use crate::usage::TokenUsage;
use crate::wire::gemini as g;

/// An embeddings request as a borrowed view; `input` stays raw.
#[derive(Deserialize)]
struct EmbeddingsView<'a> {
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    #[serde(default, borrow)]
    dimensions: Option<&'a RawValue>,
    #[serde(default, borrow)]
    encoding_format: Option<&'a RawValue>,
    #[serde(default, borrow)]
    user: Option<&'a RawValue>,
    /// Vertex's `task_type` (RETRIEVAL_QUERY, ...), a vendor extension.
    #[serde(default, borrow)]
    task_type: Option<&'a RawValue>,
}

const EMBEDDINGS_MEMBERS: &[&str] = &["model", "input", "dimensions", "encoding_format", "user", "task_type"];

/// An `input` item written as an object, as Envoy AI Gateway takes it: Vertex instance fields,
/// `content` being one text or an array of texts (one instance each) that share its `task_type`
/// and `title`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputItemView<'a> {
    #[serde(borrow)]
    content: &'a RawValue,
    #[serde(default, borrow)]
    task_type: Option<&'a RawValue>,
    #[serde(default, borrow)]
    title: Option<&'a RawValue>,
}

/// The only task type Vertex takes a `title` with.
const TITLED_TASK: &str = "RETRIEVAL_DOCUMENT";

/// A string member of an embeddings request or input item: `None` for absent or null, `Err` for
/// another type.
fn optional_string(raw: Option<&RawValue>) -> Result<Option<&RawValue>, ()> {
    match raw.filter(|r| r.get() != "null") {
        None => Ok(None),
        Some(r) if r.get().starts_with('"') => Ok(Some(r)),
        Some(_) => Err(()),
    }
}

/// The `instances` array being written.
struct Instances<'o, 'w> {
    out: &'o mut BodyWriter<'w>,
    count: usize,
}

impl Instances<'_, '_> {
    fn push(&mut self, instance: &g::EmbedInstance) -> Result<(), ApiError> {
        if self.count > 0 {
            self.out.extend_from_slice(b",");
        }
        self.count += 1;
        serde_json::to_writer(&mut *self.out, instance).map_err(internal)
    }

    /// The instances of one `input` item (a string, or an [`InputItemView`] object); `index` is
    /// the item's place in an `input` array, `task_type` the request's.
    fn item(&mut self, item: &RawValue, index: Option<usize>, task_type: Option<&RawValue>) -> Result<(), ApiError> {
        if item.get().starts_with('"') {
            return self.push(&g::EmbedInstance { content: item, task_type, title: None });
        }
        // Named only when refused.
        let at = || index.map_or_else(|| "input".to_string(), |i| format!("input[{i}]"));
        let view: InputItemView = from_raw(item).map_err(|e| bad(format!("{}: {e}", at())))?;
        let own_task =
            optional_string(view.task_type).map_err(|()| bad(format!("{}.task_type must be a string", at())))?;
        // Envoy AI Gateway lets the request's task win, a client may expect the item's: refuse
        // the conflict rather than pick one.
        if let (Some(own), Some(request)) = (own_task, task_type) {
            let text = |raw: &RawValue| from_raw::<Cow<str>>(raw).ok();
            if text(own) != text(request) {
                return Err(bad(format!(
                    "{}.task_type {} differs from the request's task_type {}; give one",
                    at(),
                    own.get(),
                    request.get()
                )));
            }
        }
        let task_type = own_task.or(task_type);
        let title = optional_string(view.title).map_err(|()| bad(format!("{}.title must be a string", at())))?;
        // Vertex refuses a title with any other task; say so in the client's terms.
        let titled = task_type.and_then(|t| from_raw::<Cow<str>>(t).ok()).is_some_and(|t| t == TITLED_TASK);
        if title.is_some() && !titled {
            return Err(bad(format!("{}.title is only valid with task_type {TITLED_TASK}", at())));
        }
        let not_text = || bad(format!("{}.content must be a string or a non-empty array of strings", at()));
        match view.content.get().as_bytes().first() {
            Some(b'"') => self.push(&g::EmbedInstance { content: view.content, task_type, title }),
            Some(b'[') => {
                let before = self.count;
                each(view.content, |text: &RawValue| -> Result<(), ApiError> {
                    if !text.get().starts_with('"') {
                        return Err(not_text());
                    }
                    self.push(&g::EmbedInstance { content: text, task_type, title })
                })
                .map_err(|e| match e {
                    EachError::Stopped(e) => e,
                    EachError::Json(_) => not_text(),
                })?;
                if self.count == before {
                    return Err(not_text());
                }
                Ok(())
            }
            _ => Err(not_text()),
        }
    }
}

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

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

/// An OpenAI embeddings request → a `predict` body written as it is read, and whether the client
/// asked for base64.
pub(super) fn write_predict(body: &[u8], mut out: BodyWriter<'_>) -> Result<(ChunkedBody, bool), ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| bad(format!("invalid embeddings request: {e}")))?;
    let view: EmbeddingsView =
        crate::json::from_text(text).map_err(|e| bad(format!("invalid embeddings request: {e}")))?;
    let EmbeddingsView { model, input, dimensions, encoding_format, user, task_type } = view;
    let string_or_null = |name: &str, raw: Option<&RawValue>| -> Result<(), ApiError> {
        match raw.map(|r| r.get().as_bytes().first()) {
            None | Some(Some(b'"' | b'n')) => Ok(()),
            _ => Err(bad(format!("`{name}` must be a string"))),
        }
    };
    string_or_null("model", model)?;
    string_or_null("user", user)?;
    let encoding_format = match encoding_format.filter(|e| e.get() != "null") {
        None => None,
        Some(raw) => Some(from_raw::<Cow<str>>(raw).map_err(|_| bad("`encoding_format` must be a string"))?),
    };
    let dimensions = match dimensions.filter(|d| d.get() != "null") {
        None => None,
        Some(raw) => Some(from_raw::<u32>(raw).map_err(|_| bad("`dimensions` must be a positive integer"))?),
    };
    let input = input.ok_or_else(|| bad("`input` is required"))?;
    let base64 = match encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(bad(format!("`encoding_format` must be float or base64; got {other:?}"))),
    };
    let task_type =
        optional_string(task_type).map_err(|()| bad("`task_type` must be a string (e.g. RETRIEVAL_QUERY)"))?;
    let not_text = || {
        bad("`input` must be a non-empty string, or a non-empty array of strings or of {content, task_type, title} objects")
    };
    out.extend_from_slice(b"{\"instances\":[");
    let mut instances = Instances { out: &mut out, count: 0 };
    match input.get().as_bytes().first() {
        Some(b'"' | b'{') => instances.item(input, None, task_type)?,
        Some(b'[') => {
            // Classify first (text, or token arrays), then write: two walks, nothing collected.
            let (mut texts, mut tokens, mut others) = (0usize, 0usize, 0usize);
            each(input, |item: &RawValue| -> Result<(), ()> {
                match item.get().as_bytes().first() {
                    Some(b'"' | b'{') => texts += 1,
                    Some(b'[' | b'-' | b'0'..=b'9') => tokens += 1,
                    _ => others += 1,
                }
                Ok(())
            })
            .map_err(|_| not_text())?;
            if tokens > 0 && texts == 0 && others == 0 {
                return Err(unsupported("input", "token arrays cannot be embedded by Vertex AI; send text"));
            }
            if texts == 0 || tokens > 0 || others > 0 {
                return Err(not_text());
            }
            let mut index = 0usize;
            each(input, |item: &RawValue| -> Result<(), ApiError> {
                instances.item(item, Some(index), task_type)?;
                index += 1;
                Ok(())
            })
            .map_err(|e| match e {
                EachError::Stopped(e) => e,
                EachError::Json(_) => not_text(),
            })?;
        }
        _ => return Err(not_text()),
    }
    out.extend_from_slice(b"]");
    if let Some(d) = dimensions {
        out.extend_from_slice(b",\"parameters\":");
        serde_json::to_writer(&mut out, &g::EmbedParameters { output_dimensionality: Some(d) }).map_err(internal)?;
    }
    out.extend_from_slice(b"}");
    if log::log_enabled!(log::Level::Debug) {
        let mut ignored: Vec<String> = crate::json::members(body)
            .map(|(_, ms)| ms.into_iter().map(|m| m.key.into_owned()).collect())
            .unwrap_or_default();
        ignored.retain(|k| !EMBEDDINGS_MEMBERS.contains(&k.as_str()));
        if !is_null(user) {
            ignored.push("user".into());
        }
        if !ignored.is_empty() {
            log::debug!("llmgw: GCPVertexAI embeddings ignore parameters: {}", ignored.join(", "));
        }
    }
    Ok((out.finish(), base64))
}

/// Little-endian f32s in standard base64, the form OpenAI's `encoding_format: base64` returns,
/// written three bytes at a time.
struct Base64Writer {
    pending: [u8; 3],
    len: usize,
}

impl Base64Writer {
    const TABLE: &'static [u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    fn new() -> Self {
        Base64Writer { pending: [0; 3], len: 0 }
    }

    fn sextets(group: [u8; 3], count: usize, w: &mut dyn Write) -> io::Result<()> {
        let [a, b, c] = group;
        let n = (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
        let mut quad = [b'='; 4];
        for (k, slot) in quad.iter_mut().enumerate() {
            if k <= count {
                let sextet = (n >> (18 - 6 * k)) & 63;
                *slot = Self::TABLE.get(sextet as usize).copied().unwrap_or(b'A');
            }
        }
        w.write_all(&quad)
    }

    fn push(&mut self, bytes: &[u8], w: &mut dyn Write) -> io::Result<()> {
        for &b in bytes {
            if let Some(slot) = self.pending.get_mut(self.len) {
                *slot = b;
            }
            self.len += 1;
            if self.len == 3 {
                Self::sextets(self.pending, 3, w)?;
                self.len = 0;
            }
        }
        Ok(())
    }

    fn finish(self, w: &mut dyn Write) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let mut group = [0u8; 3];
        for (k, slot) in group.iter_mut().enumerate().take(self.len) {
            *slot = self.pending.get(k).copied().unwrap_or(0);
        }
        Self::sextets(group, self.len, w)
    }
}

/// Embedding values (a raw array of numbers) → the OpenAI `embedding` value: the numbers as they
/// came (whitespace removed), or base64 of their f32s.
pub(super) fn write_vector(w: &mut dyn Write, values: Option<&RawValue>, base64: bool) -> Result<(), Unreadable> {
    let values = values.filter(|v| v.get() != "null");
    if base64 {
        w.write_all(b"\"").map_err(io_err)?;
        let mut b64 = Base64Writer::new();
        if let Some(values) = values {
            walk_answer(values, |v: f64| {
                #[allow(clippy::cast_possible_truncation)]
                let f = v as f32;
                b64.push(&f.to_le_bytes(), &mut *w).map_err(io_err)
            })?;
        }
        b64.finish(&mut *w).map_err(io_err)?;
        return w.write_all(b"\"").map_err(io_err);
    }
    let Some(values) = values else { return w.write_all(b"[]").map_err(io_err) };
    // Numbers only: checked without keeping them.
    walk_answer(values, |_: f64| Ok(()))?;
    let compact = values.get().bytes().filter(|b| !b.is_ascii_whitespace());
    let mut buf = [0u8; 512];
    let mut n = 0;
    for b in compact {
        if n == buf.len() {
            w.write_all(&buf).map_err(io_err)?;
            n = 0;
        }
        if let Some(slot) = buf.get_mut(n) {
            *slot = b;
        }
        n += 1;
    }
    w.write_all(buf.get(..n).unwrap_or_default()).map_err(io_err)
}

/// A `predict` answer → an OpenAI embeddings list, written to `w`; returns the input tokens.
fn write_embeddings(w: &mut dyn Write, resp: &g::PredictView, model: &str, base64: bool) -> Result<u64, Unreadable> {
    let predictions = resp.predictions.filter(|p| p.get() != "null").ok_or("it has no predictions")?;
    w.write_all(b"{\"object\":\"list\",\"data\":[").map_err(io_err)?;
    let mut tokens = 0u64;
    let mut i = 0u32;
    walk_answer(predictions, |p: g::PredictionView| {
        if i > 0 {
            w.write_all(b",").map_err(io_err)?;
        }
        write!(w, "{{\"object\":\"embedding\",\"index\":{i},\"embedding\":").map_err(io_err)?;
        let embeddings = p.embeddings.unwrap_or_default();
        let count = embeddings.statistics.and_then(|s| s.token_count).unwrap_or(0.0);
        // Token counts are small non-negative integers written as JSON numbers.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let count = count.max(0.0) as u64;
        tokens = tokens.saturating_add(count);
        write_vector(w, embeddings.values, base64)?;
        w.write_all(b"}").map_err(io_err)?;
        i = i.saturating_add(1);
        Ok(())
    })?;
    w.write_all(b"],\"model\":").map_err(io_err)?;
    serde_json::to_writer(&mut *w, model).map_err(json_err)?;
    write!(w, ",\"usage\":{{\"prompt_tokens\":{tokens},\"total_tokens\":{tokens}}}}}").map_err(io_err)?;
    Ok(tokens)
}

fn translate_embeddings(body: &[u8], model: &str, base64: bool) -> ChunkEdits {
    let result = (|| -> Result<(Vec<u8>, u64), Unreadable> {
        let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
        let resp: g::PredictView = crate::json::from_text(text).map_err(json_err)?;
        let mut counter = Counter::default();
        write_embeddings(&mut counter, &resp, model, base64)?;
        let mut out = Vec::with_capacity(counter.0);
        let tokens = write_embeddings(&mut out, &resp, model, base64)?;
        Ok((out, tokens))
    })();
    match result {
        Ok((out, tokens)) => ChunkEdits {
            replace: Some(out),
            usage: Some(TokenUsage { input: tokens, total: tokens, ..TokenUsage::default() }),
            first_content: false,
            status: None,
        },
        Err(e) => unreadable("embeddings response", &e),
    }
}

impl Translator for OpenAIToVertexEmbeddings {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query: _, now_unix: _, sink: _ } = request;
        let vertex = Vertex::of(backend)?;
        let (new_body, base64) = write_predict(body, request.writer())?;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let path = vertex.model_path(&model, "predict");
        self.model = model;
        self.base64 = base64;
        Ok(RequestEdits { path: Some(path), body: Some(NewBody::Whole(new_body)), set_headers: Vec::new() })
    }

    fn response_headers(&mut self, _status: u16, _content_type: &str) -> ResponsePlan {
        plan(false)
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !end_of_stream {
            return ChunkEdits { replace: Some(Vec::new()), ..ChunkEdits::default() };
        }
        translate_embeddings(chunk, &self.model, self.base64)
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        google_error(status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn embeddings_input_forms() {
        let parse = |v: Value| write_predict(v.to_string().as_bytes(), BodyWriter::new(None));
        let (p, b64) =
            parse(json!({"model": "m", "input": ["a", "b"], "dimensions": 8, "task_type": "RETRIEVAL_QUERY",
            "encoding_format": "base64"}))
            .unwrap();
        assert!(b64);
        assert_eq!(
            serde_json::from_slice::<Value>(&p.to_vec()).unwrap(),
            json!({"instances": [{"content": "a", "task_type": "RETRIEVAL_QUERY"}, {"content": "b", "task_type": "RETRIEVAL_QUERY"}],
                   "parameters": {"outputDimensionality": 8}})
        );
        assert_eq!(parse(json!({"model": "m", "input": [1, 2]})).unwrap_err().code, "unsupported_parameter");
        assert_eq!(parse(json!({"model": "m", "input": [[1, 2]]})).unwrap_err().code, "unsupported_parameter");
        assert_eq!(parse(json!({"model": "m", "input": []})).unwrap_err().status, 400);
        assert_eq!(parse(json!({"model": "m", "input": "x", "encoding_format": "int8"})).unwrap_err().status, 400);
    }

    #[test]
    fn embeddings_object_inputs_carry_task_type_and_title() {
        let predict = |body: &[u8]| write_predict(body, BodyWriter::new(None)).map(|(p, _)| p.to_vec());
        // Each object's own task and title; strings as before; written as the client wrote them.
        let p = predict(
            br#"{"model":"m","input":[{"content":"d\u00e9","task_type":"RETRIEVAL_DOCUMENT","title":"T\"1"},"plain",{"content":["q1","q2"],"task_type":"RETRIEVAL_QUERY"},{"content":"c"}]}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            br#"{"instances":[{"content":"d\u00e9","task_type":"RETRIEVAL_DOCUMENT","title":"T\"1"},{"content":"plain"},{"content":"q1","task_type":"RETRIEVAL_QUERY"},{"content":"q2","task_type":"RETRIEVAL_QUERY"},{"content":"c"}]}"#
        );
        // The request's task applies to objects without one (and may repeat theirs); one object
        // as the whole input, its texts sharing the title; nulls are absent.
        let p = predict(
            br#"{"model":"m","task_type":"RETRIEVAL_DOCUMENT","input":{"content":["a","b"],"title":"t","task_type":null}}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            br#"{"instances":[{"content":"a","task_type":"RETRIEVAL_DOCUMENT","title":"t"},{"content":"b","task_type":"RETRIEVAL_DOCUMENT","title":"t"}]}"#
        );
        let p = predict(br#"{"model":"m","task_type":"CLUSTERING","input":["x",{"content":"a","task_type":"CLUSTERING","title":null}]}"#)
            .unwrap();
        assert_eq!(
            p,
            br#"{"instances":[{"content":"x","task_type":"CLUSTERING"},{"content":"a","task_type":"CLUSTERING"}]}"#
        );
        for (body, needle) in [
            (&br#"{"model":"m","input":[{"content":"a","title":"t"}]}"#[..], "input[0].title is only valid with task_type RETRIEVAL_DOCUMENT"),
            (br#"{"model":"m","input":["x",{"content":"a","title":"t","task_type":"RETRIEVAL_QUERY"}]}"#, "input[1].title is only valid"),
            (br#"{"model":"m","task_type":"RETRIEVAL_QUERY","input":{"content":"a","title":"t"}}"#, "input.title is only valid"),
            (br#"{"model":"m","task_type":"RETRIEVAL_QUERY","input":[{"content":"a","task_type":"RETRIEVAL_DOCUMENT"}]}"#, "input[0].task_type \"RETRIEVAL_DOCUMENT\" differs from the request's task_type \"RETRIEVAL_QUERY\""),
            (br#"{"model":"m","input":[{"text":"a"}]}"#, "input[0]: unknown field `text`"),
            (br#"{"model":"m","input":[{"task_type":"RETRIEVAL_QUERY"}]}"#, "input[0]: missing field `content`"),
            (br#"{"model":"m","input":[{"content":7}]}"#, "input[0].content must be a string or a non-empty array of strings"),
            (br#"{"model":"m","input":[{"content":[]}]}"#, "input[0].content must be"),
            (br#"{"model":"m","input":[{"content":["a",[1]]}]}"#, "input[0].content must be"),
            (br#"{"model":"m","input":[{"content":"a","task_type":7}]}"#, "input[0].task_type must be a string"),
            (br#"{"model":"m","input":[{"content":"a","task_type":"RETRIEVAL_DOCUMENT","title":{}}]}"#, "input[0].title must be a string"),
            (br#"{"model":"m","input":[{"content":"a"},[1]]}"#, "non-empty array of strings or of {content"),
            (br#"{"model":"m","input":[{"content":"a","content":"b"}]}"#, "duplicate field `content`"),
        ] {
            let e = write_predict(body, BodyWriter::new(None)).unwrap_err();
            assert_eq!(e.status, 400, "{needle}");
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }

    #[test]
    fn embeddings_strings_are_copied_as_written() {
        let (p, _) = write_predict(
            br#"{"model":"m","input":["a\"b\u00e9"],"task_type":"X","user":"u","extra":1}"#,
            BodyWriter::new(None),
        )
        .unwrap();
        assert_eq!(p.to_vec(), br#"{"instances":[{"content":"a\"b\u00e9","task_type":"X"}]}"#);
        let (p, _) = write_predict(br#"{"model":"m","input":"solo"}"#, BodyWriter::new(None)).unwrap();
        assert_eq!(p.to_vec(), br#"{"instances":[{"content":"solo"}]}"#);
        for (body, needle) in [
            (&br#"{"model":"m","input":["a",1]}"#[..], "non-empty"),
            (br#"{"model":"m","input":[[1],[2]]}"#, "token arrays"),
            (br#"{"model":"m"}"#, "`input` is required"),
            (br#"{"model":"m","input":"x","dimensions":-1}"#, "dimensions"),
            (br#"{"model":"m","input":"x","task_type":1}"#, "task_type"),
            (br#"{"model":"m","input":"x","user":1}"#, "`user` must be a string"),
        ] {
            let e = write_predict(body, BodyWriter::new(None)).unwrap_err();
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }
}
