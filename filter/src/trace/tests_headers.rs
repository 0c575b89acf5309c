//! Header-to-attribute and header-to-label mappings, and a fallback rule's attempts as span events.
//! A child of `tests`: it uses its request runner and decoder.

use super::*;
use crate::metrics::MAX_HEADER_VALUE;

fn send(x: &mut Exchange, host: &mut FakeHost, body: &[u8]) -> Flow {
    host.request_body = body.to_vec();
    if x.on_request_headers(host, false) == Flow::Pause && host.reply.is_none() {
        return x.on_request_body(host, body.len(), true);
    }
    Flow::Pause
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const ANSWER: &[u8] = br#"{"id":"c1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"from ok2"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#;

#[test]
fn request_headers_become_span_attributes_capped_in_length() {
    let shared = shared("{cluster: otel, request_header_attributes: {X-Session-Id: session.id, x-user-id: user.id}}");
    let long = "s".repeat(MAX_HEADER_VALUE + 40);
    run(&shared, "/v1/chat/completions", &[("x-session-id", &long)], CHAT, "application/json", &[ANSWER]);
    let a = attrs(&only_span(&shared));
    assert_eq!(get(&a, "session.id"), &long[..MAX_HEADER_VALUE], "cut at the cap");
    assert!(!a.contains_key("user.id"), "a header the request lacks is no attribute");
}

#[test]
fn header_mappings_are_bounded_and_checked() {
    let many: Vec<String> = (0..=crate::config::MAX_HEADER_MAPPINGS).map(|i| format!("x-h{i}: a{i}")).collect();
    let tracing = format!("{BACKENDS}tracing: {{cluster: otel, request_header_attributes: {{{}}}}}", many.join(", "));
    assert_eq!(parse(tracing.as_bytes(), &NoEnv, 0).unwrap_err().field, "tracing.request_header_attributes");
    let labels = format!("{BACKENDS}metrics_request_header_labels: {{{}}}", many.join(", "));
    assert_eq!(parse(labels.as_bytes(), &NoEnv, 0).unwrap_err().field, "metrics_request_header_labels");
    for bad in ["{'a b': x}", "{x-a: llmgw_backend}", "{x-a: t.id, x-b: t_id}", "{x-a: ''}"] {
        let text = format!("{BACKENDS}metrics_request_header_labels: {bad}");
        assert!(parse(text.as_bytes(), &NoEnv, 0).is_err(), "{bad}");
    }
    let text = format!("{BACKENDS}metrics_request_header_labels: {{X-Team-Id: team.id, x-n: 9lives}}");
    let c = parse(text.as_bytes(), &NoEnv, 0).unwrap();
    assert_eq!(
        c.metric_header_labels,
        vec![("x-team-id".to_string(), "team_id".to_string()), ("x-n".to_string(), "_9lives".to_string())]
    );
}

#[test]
fn request_headers_become_metric_labels_within_the_cap() {
    let text = format!("{BACKENDS}max_metric_label_sets: 2\nmetrics_request_header_labels: {{x-team-id: team.id}}\n");
    let shared = Rc::new(Shared::new(parse(text.as_bytes(), &NoEnv, 0).unwrap()));
    let requests = |team: &str| {
        let host = run(&shared, "/v1/chat/completions", &[("x-team-id", team)], CHAT, "application/json", &[ANSWER]);
        host.samples.iter().find(|s| s.name.starts_with("llmgw.requests_total")).map(|s| s.name.clone()).unwrap()
    };
    let first = requests("a;b");
    assert!(
        first.contains("gen_ai_request_model=.=gpt-4o;.;gen_ai_operation_name=.=chat;.;team_id=.=a_b;.;"),
        "{first}"
    );
    assert!(requests("c").contains("team_id=.=c;.;"));
    // A third label set is over the cap: every label of it says `other`.
    let over = requests("d");
    assert!(
        over.contains("gen_ai_request_model=.=other;.;gen_ai_operation_name=.=chat;.;team_id=.=other;.;"),
        "{over}"
    );
}

const FALLBACK: &str = "backends:
  - {name: openai, schema: OpenAI, auth: {bearer: k}}
  - {name: ok2, schema: OpenAI, auth: {bearer: k2}}
rules:
  - {backends: [{name: openai}, {name: ok2, priority: 1}], retry: {attempts: 3}}
tracing: {cluster: otel}
";

fn fallback(role: &str) -> Exchange {
    let text = format!("{FALLBACK}role: {role}\n");
    Exchange::new(Some(Rc::new(Shared::new(parse(text.as_bytes(), &NoEnv, 0).unwrap()))))
}

/// One attempt on the upstream copy: rule 0's backend `target`, answered with `status`.
fn attempt(state: &BTreeMap<String, String>, target: &str, number: u64, status: &str, now: u64) -> FakeHost {
    let mut x = fallback("upstream");
    let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
    host.filter_state = state.clone();
    host.now = now;
    host.properties = vec![
        ("xds.upstream_host_metadata.filter_metadata.llmgw.target".into(), target.as_bytes().to_vec()),
        ("upstream.request_attempt_count".into(), number.to_le_bytes().to_vec()),
    ];
    send(&mut x, &mut host, CHAT.as_bytes());
    if !status.is_empty() {
        host.response_headers = vec![(":status".into(), status.into())];
        x.on_response_headers(&mut host, true);
    }
    x.on_done(&mut host);
    host
}

#[test]
fn a_fallback_rules_attempts_are_events_and_the_answering_one_is_the_spans_output() {
    // Upstream copies: attempt 1 refused (no answer), attempt 2 a 500 Envoy retries, attempt 3 served.
    let mut state = BTreeMap::new();
    for (target, number, status, now) in [("0/0", 1, "", 10), ("0/0", 2, "500", 20), ("0/1", 3, "200", 30)] {
        state = attempt(&state, target, number, status, now).filter_state;
    }
    let text = format!("{FALLBACK}role: downstream\n");
    let shared = Rc::new(Shared::new(parse(text.as_bytes(), &NoEnv, 0).unwrap()));
    let mut x = Exchange::new(Some(shared.clone()));
    let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
    host.now = 1;
    assert_eq!(send(&mut x, &mut host, CHAT.as_bytes()), Flow::Continue);
    // The listener's copy sees the served attempt's client-shaped answer, and the record.
    host.filter_state.extend(state);
    host.properties.push(("response.code_details".into(), b"via_upstream".to_vec()));
    host.filter_state.insert("llm_input_token".into(), "2".into());
    host.filter_state.insert("llm_output_token".into(), "3".into());
    host.response_headers = vec![(":status".into(), "200".into())];
    x.on_response_headers(&mut host, false);
    for part in [&ANSWER[..50], &ANSWER[50..]] {
        host.response_body = part.to_vec();
        x.on_response_body(&mut host, part.len(), part.as_ptr() != ANSWER.as_ptr());
    }
    x.on_log(&mut host);

    let span = only_span(&shared);
    let a = attrs(&span);
    assert_eq!(span["status"]["code"], 1);
    assert_eq!((get(&a, "llmgw.backend"), get(&a, "llm.provider")), ("ok2", "openai"), "the answering backend");
    assert_eq!(get(&a, "llm.output_messages.0.message.content"), "from ok2");
    assert_eq!(get(&a, "llm.token_count.total"), "5");
    let events: Vec<(String, BTreeMap<String, String>)> = span["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["name"], "llmgw.attempt");
            (e["timeUnixNano"].as_str().unwrap().to_string(), attrs(e))
        })
        .collect();
    let summary: Vec<(&str, &str, Option<&str>, &str)> = events
        .iter()
        .map(|(t, a)| {
            (
                t.as_str(),
                get(a, "llmgw.backend"),
                a.get("http.response.status_code").map(String::as_str),
                get(a, "llmgw.attempt.outcome"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("10", "openai", None, "no_answer"),
            ("20", "openai", Some("500"), "retried"),
            ("30", "ok2", Some("200"), "served")
        ]
    );
}

#[test]
fn attempts_without_tracing_record_nothing_and_records_are_bounded() {
    let text = FALLBACK.replace("tracing: {cluster: otel}\n", "role: upstream\n");
    let mut x = Exchange::new(Some(Rc::new(Shared::new(parse(text.as_bytes(), &NoEnv, 0).unwrap()))));
    let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
    host.properties = vec![("xds.upstream_host_metadata.filter_metadata.llmgw.target".into(), b"0/1".to_vec())];
    send(&mut x, &mut host, CHAT.as_bytes());
    host.response_headers = vec![(":status".into(), "200".into())];
    x.on_response_headers(&mut host, true);
    assert!(!host.filter_state.contains_key("llmgw_attempts"));

    let one = Attempt { backend: "a\u{1f}b\u{1e}", status: 503, outcome: "retried", time: 7 };
    let mut record = Vec::new();
    for _ in 0..MAX_ATTEMPTS {
        record = one.append(record).unwrap();
    }
    assert_eq!(one.append(record.clone()), None, "full");
    let first = record.split(|&b| b == ATTEMPT_END).next().unwrap();
    assert_eq!(Attempt::parse(first), Some(Attempt { backend: "ab", ..one }), "separators cannot be forged");
    assert_eq!(Attempt::parse(b"x\x1fnot-a-status\x1fserved\x1f1"), None);
}
