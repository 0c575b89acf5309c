//! vLLM prefill/decode disaggregation (`--kv-role prefill|decode`), as vLLM's KV connectors speak
//! it through `kv_transfer_params`:
//! * a prefill instance given `{"do_remote_decode": true, ...}` must be asked for one token, not
//!   streamed (else 400), and answers with `kv_transfer_params` naming itself
//!   (`remote_engine_id`, `remote_host`, `remote_port`) and the prompt's blocks
//!   (`remote_block_ids`, derived from the prompt so a decoder can tell they are this prompt's);
//! * a decode instance given `kv_transfer_params` checks them (400 when they are not a prefill's
//!   answer for this very prompt), skips the prefill time (the KV cache is "pulled") and says where
//!   it pulled from in `x-mock-kv-source: ENGINE/BLOCKS`. Without them it computes the prompt
//!   itself, as vLLM does.

use serde_json::{json, Value};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvRole {
    Prefill,
    Decode,
}

/// The prompt's simulated block ids: a hash of its messages/prompt, then consecutive ids.
fn block_ids(body: &Value) -> Vec<u64> {
    let prompt = body.get("messages").or_else(|| body.get("prompt")).map(Value::to_string).unwrap_or_default();
    let hash = prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let first = hash % 1_000_000;
    let count = (prompt.len() as u64 / 64 + 1).min(64);
    (first..first + count).collect()
}

/// Prefill role: a request for a remote decode. `Err`: why it cannot be one (a 400).
pub fn prefill_params(role: Option<KvRole>, name: &str, port: u16, body: &Value) -> Result<Option<Value>, String> {
    let asked = body.pointer("/kv_transfer_params/do_remote_decode").and_then(Value::as_bool) == Some(true);
    if role != Some(KvRole::Prefill) || !asked {
        return Ok(None);
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err("a prefill for a remote decode is not streamed".into());
    }
    if body.get("max_tokens").and_then(Value::as_u64) != Some(1) {
        return Err("a prefill for a remote decode asks for max_tokens: 1".into());
    }
    Ok(Some(json!({
        "do_remote_prefill": true, "do_remote_decode": false, "remote_engine_id": name,
        "remote_block_ids": block_ids(body), "remote_host": "127.0.0.1", "remote_port": port, "tp_size": 1
    })))
}

/// Decode role: the source (`ENGINE/BLOCKS`) of a valid pull; `Ok(None)` without any params.
pub fn decode_source(role: Option<KvRole>, body: &Value) -> Result<Option<String>, String> {
    let Some(params) = body.get("kv_transfer_params").filter(|_| role == Some(KvRole::Decode)) else {
        return Ok(None);
    };
    let engine = params.get("remote_engine_id").and_then(Value::as_str);
    let ids: Option<Vec<u64>> =
        params.get("remote_block_ids").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_u64).collect());
    let from_prefill = params.get("do_remote_prefill").and_then(Value::as_bool) == Some(true)
        && params.get("remote_host").and_then(Value::as_str).is_some()
        && params.get("remote_port").and_then(Value::as_u64).is_some();
    match (engine, ids) {
        (Some(engine), Some(ids)) if from_prefill && ids == block_ids(body) => {
            Ok(Some(format!("{engine}/{}", ids.len())))
        }
        _ => Err(format!("kv_transfer_params are not a prefill's answer for this prompt: {params}")),
    }
}
