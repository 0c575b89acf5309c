//! Anthropic's internally tagged enums (`StreamEvent`, `ContentBlock`, `BlockDelta`, `ImageSource`)
//! are read by hand (`json::by_tag`), not by serde's derive: every input here must give what the
//! derive gave (`fixtures/tagged_enums.txt`, recorded from it). Errors are compared without their
//! position, which may differ. Two changes, on purpose: an array (`["ping"]`, the tag then the
//! members in order) is refused, and a tag that is a number (a variant's index) is refused in a
//! nested enum too, as it always was at the top level. `LLMGW_WRITE_TAGGED=PATH` writes the outcomes.

use llmgw_filter::wire::anthropic::{ContentBlock, MessagesResponse, StreamEvent};

const INPUTS: &[&str] = &[
    r#"{"type":"message_start","message":{"id":"m","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":3}}}"#,
    r#"{"message":{},"type":"message_start"}"#,
    r#"{"type":"message_start"}"#,
    r#"{"type":"message_start","message":null}"#,
    r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{"a":[1,2.5,"x"]}}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"tool_use","id":"t","name":"f"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA"}}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"image","source":{"type":"url","url":"http://x"}}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"image","source":{"type":"file","file_id":"f"}}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"image","source":{"type":"url"}}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"image","source":{"url":"u"}}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"image"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"tool_result","tool_use_id":"t","content":"ok","is_error":true}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"a"},{"type":"new"}]}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"tool_result","tool_use_id":"t","content":null,"is_error":null}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"tool_result","tool_use_id":"t","content":5}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"thinking","thinking":"hm"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"thinking","thinking":"hm","signature":"s"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"redacted_thinking","data":"d"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"server_tool_use","id":1}}"#,
    r#"{"type":"content_block_start","content_block":{"text":"no type"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":1,"text":"x"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":null,"text":"x"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":{},"text":"x"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"text","type":"text","text":"x"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"text","text":"x","text":"y"}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"text","text":5}}"#,
    r#"{"type":"content_block_start","content_block":{"type":"text","text":1.5}}"#,
    r#"{"type":"content_block_start","content_block":"text"}"#,
    r#"{"type":"content_block_start","content_block":null}"#,
    r#"{"type":"content_block_start","content_block":["text","x"]}"#,
    r#"{"type":"content_block_start","content_block":{"\u0074ype":"te\u0078t","text":"\u00e9"}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"t"}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s"}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"text":"a"}}"#,
    r#"{"type":"content_block_delta","index":0}"#,
    r#"{"type":"content_block_delta","index":-1,"delta":{"type":"text_delta","text":"a"}}"#,
    r#"{"type":"content_block_stop"}"#,
    r#"{"type":"content_block_stop","index":3}"#,
    r#"{"type":"content_block_stop","index":"x"}"#,
    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
    r#"{"type":"message_delta","delta":{"stop_reason":"new_reason"},"usage":null}"#,
    r#"{"type":"message_delta","usage":{"output_tokens":7}}"#,
    r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":"x"}}"#,
    r#"{"type":"message_stop","anything":[1,{}]}"#,
    r#"{"type":"ping"}"#,
    r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
    r#"{"type":"error"}"#,
    r#"{"type":"brand_new_event","x":1}"#,
    r#"{"x":1}"#,
    r#"{}"#,
    r#"{"type":1}"#,
    r#"{"type":true}"#,
    r#"{"type":null}"#,
    r#"{"type":{}}"#,
    r#"{"type":["ping"]}"#,
    r#"{"type":"ping","type":"ping"}"#,
    r#"{"type":"content_block_stop","type":"ping"}"#,
    r#"{"\u0074ype":"p\u0069ng"}"#,
    r#""ping""#,
    r#"1"#,
    r#"-1.5"#,
    r#"null"#,
    r#"true"#,
    r#"[]"#,
    r#"["ping"]"#,
    r#"["content_block_stop",2]"#,
    r#"{"type":"ping"} x"#,
    r#"{"type":"ping""#,
];

fn outcome<T: std::fmt::Debug>(r: Result<T, serde_json::Error>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => {
            let text = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            format!("err {}", text.strip_suffix(&suffix[..]).unwrap_or(&text))
        }
    }
}

fn outcomes() -> String {
    let mut out = String::new();
    for input in INPUTS {
        out += &format!("{input}\n  event: {}\n", outcome(serde_json::from_slice::<StreamEvent>(input.as_bytes())));
        out += &format!("  str: {}\n", outcome(serde_json::from_str::<StreamEvent>(input)));
        let list = format!("[{{\"type\":\"ping\"}}, {input} ,{{\"type\":\"ping\"}}]");
        out += &format!("  list: {}\n", outcome(serde_json::from_slice::<Vec<StreamEvent>>(list.as_bytes())));
        let response = format!(r#"{{"content":[{input}]}}"#);
        out += &format!("  response: {}\n", outcome(serde_json::from_slice::<MessagesResponse>(response.as_bytes())));
        out += &format!("  block: {}\n", outcome(serde_json::from_str::<ContentBlock>(input)));
    }
    out
}

#[test]
fn tagged_enums_read_as_the_derive_did() {
    let got = outcomes();
    if let Ok(path) = std::env::var("LLMGW_WRITE_TAGGED") {
        std::fs::write(path, &got).unwrap();
        return;
    }
    let want = include_str!("fixtures/tagged_enums.txt");
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "line {}", i + 1);
    }
    assert_eq!(got.lines().count(), want.lines().count());
}
