//! Prefill/decode disaggregation for vLLM fleets (AIBrix's `pd` routing; the protocol of vLLM's
//! disaggregated-serving proxy and its KV connectors): the prompt is first sent to a prefill
//! endpoint — the client's request with `max_tokens: 1`, not streamed, and `kv_transfer_params`
//! asking for a remote decode — then the client's own request, carrying the `kv_transfer_params`
//! the prefill answered with, goes to a decode endpoint, which pulls the prompt's KV cache instead
//! of computing it. The client sees one ordinary answer or stream, from the decode endpoint.
//!
//! Pure edits of the request bytes; the exchange sends the prefill call and resumes the request.

use crate::json::{self, Splice};

/// The longest a prefill may take before the request goes to decode without it.
pub const PREFILL_TIMEOUT_MS: u64 = 120_000;

/// What a prefill request asks of the engine: compute the prompt, keep its blocks for a remote
/// decoder, and say where they are.
const REMOTE_DECODE: &[u8] = br#"{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}"#;

const KV_TRANSFER_PARAMS: &str = "kv_transfer_params";

/// The prefill request's body: the client's (final, translated) body, not streamed, one token,
/// asking for a remote decode. `None` when the body is not a JSON object.
pub fn prefill_body(body: &[u8]) -> Option<Vec<u8>> {
    let mut edit =
        Splice::new(body, &["stream", "stream_options", "max_tokens", "max_completion_tokens", KV_TRANSFER_PARAMS])?;
    edit.set("stream", b"false");
    edit.remove("stream_options");
    edit.set("max_tokens", b"1");
    if edit.get("max_completion_tokens").is_some() {
        edit.set("max_completion_tokens", b"1");
    }
    edit.set(KV_TRANSFER_PARAMS, REMOTE_DECODE);
    Some(edit.finish()?.apply_to(body))
}

/// The `kv_transfer_params` object of a prefill's answer (raw JSON), if it has one.
pub fn answered_params(response: &[u8]) -> Option<&[u8]> {
    json::member_value(response, KV_TRANSFER_PARAMS).filter(|v| v.first() == Some(&b'{'))
}

/// The decode request's body: the client's with the prefill's `kv_transfer_params`, or — when the
/// prefill failed — without any (the decode endpoint then computes the prompt itself; a client's
/// own `kv_transfer_params` never reaches it: they name hosts to pull memory from).
pub fn decode_body(body: &[u8], params: Option<&[u8]>) -> Option<crate::body::NewBody> {
    let mut edit = Splice::new(body, &[KV_TRANSFER_PARAMS])?;
    match params {
        Some(params) => edit.set(KV_TRANSFER_PARAMS, params),
        None => edit.remove(KV_TRANSFER_PARAMS),
    }
    edit.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn the_prefill_asks_for_one_token_unstreamed_and_a_remote_decode() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
            "stream_options":{"include_usage":true},"max_completion_tokens":300,"kv_transfer_params":{"remote_host":"evil"},"x":{"kept":[1,2]}}"#;
        let v = value(&prefill_body(body).unwrap());
        assert_eq!(v["stream"], false);
        assert_eq!(v["max_tokens"], 1);
        assert_eq!(v["max_completion_tokens"], 1);
        assert!(v.get("stream_options").is_none());
        assert_eq!(v["kv_transfer_params"]["do_remote_decode"], true);
        assert_eq!(v["kv_transfer_params"]["remote_host"], serde_json::Value::Null);
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["x"]["kept"][1], 2);
        // Minimal body: the members are added.
        let v = value(&prefill_body(br#"{"model":"m","prompt":"p"}"#).unwrap());
        assert_eq!((v["stream"].clone(), v["max_tokens"].clone()), (false.into(), 1.into()));
        assert!(v.get("max_completion_tokens").is_none());
        assert!(prefill_body(b"[1]").is_none());
        assert!(prefill_body(b"{\"a\":").is_none());
    }

    #[test]
    fn the_decode_carries_the_prefills_params_or_none() {
        let answer = br#"{"id":"x","choices":[],"kv_transfer_params":{"do_remote_prefill":true,"remote_engine_id":"e1","remote_block_ids":[3,4],"remote_host":"10.0.0.1","remote_port":5600}}"#;
        let params = answered_params(answer).unwrap();
        assert_eq!(value(params)["remote_block_ids"][1], 4);
        assert!(answered_params(br#"{"kv_transfer_params":null}"#).is_none());
        assert!(answered_params(br#"{"choices":[]}"#).is_none());
        assert!(answered_params(b"not json").is_none());

        let body = br#"{"model":"m","kv_transfer_params":{"remote_host":"evil"},"stream":true}"#;
        let decoded = value(&decode_body(body, Some(params)).unwrap().apply_to(body));
        assert_eq!(decoded["kv_transfer_params"]["remote_engine_id"], "e1");
        assert_eq!(decoded["stream"], true);
        let without = value(&decode_body(body, None).unwrap().apply_to(body));
        assert!(without.get("kv_transfer_params").is_none());
        // Nothing to remove: the body stays as it is.
        assert!(decode_body(br#"{"model":"m"}"#, None).is_none());
    }
}
