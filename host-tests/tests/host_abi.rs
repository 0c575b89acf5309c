//! Self-tests of the proxy-wasm host: loading, the ABI plumbing, traps and timeouts. They rely
//! on the filter only for loading, refusing a bad configuration, and passing through a path
//! outside `/v1/`.

use llmgw_host_tests::{Action, Harness, HostError, LogLevel};
use std::time::{Duration, Instant};

const ONE_BACKEND: &str = "backends: [{name: openai, schema: OpenAI}]";

fn harness() -> Harness {
    Harness::load().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_import_is_provided_and_the_sdk_abi_is_exported() {
    let h = harness();
    let imports = h.imports();
    assert!(imports.iter().any(|(m, n)| m == "env" && n == "proxy_log"), "{imports:?}");
    assert!(imports.iter().all(|(m, _)| m == "env" || m == "wasi_snapshot_preview1"), "{imports:?}");
    let exports = h.exports();
    for e in ["proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "proxy_on_request_headers", "memory"] {
        assert!(exports.iter().any(|x| x == e), "missing export {e}");
    }
    // Instantiation itself fails on any unsatisfied import.
    let plugin = h.plugin(ONE_BACKEND).unwrap_or_else(|e| panic!("{e}"));
    assert!(plugin.configured());
}

#[test]
fn invalid_configuration_is_refused_with_a_log_line() {
    let h = harness();
    let plugin = h.try_plugin("backends: []").unwrap_or_else(|e| panic!("{e}"));
    assert!(!plugin.configured());
    assert!(
        plugin.logs().iter().any(|l| l.level >= LogLevel::Warn && l.message.contains("config")),
        "{:?}",
        plugin.logs()
    );
    match h.plugin("{not yaml: [") {
        Err(HostError::Rejected { phase, .. }) => assert_eq!(phase, "proxy_on_configure"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a broken configuration was accepted"),
    }
}

#[test]
fn a_path_outside_v1_passes_through_untouched() {
    let h = harness();
    let mut plugin = h.plugin(ONE_BACKEND).unwrap_or_else(|e| panic!("{e}"));
    let headers = [
        (":method", "POST"),
        (":path", "/healthz?x=1"),
        (":authority", "gw"),
        ("content-type", "text/plain"),
        ("x-dup", "1"),
        ("x-dup", "2"),
        ("x-empty", ""),
    ];
    let mut s = plugin.stream();
    assert_eq!(s.request_headers(&headers, false).unwrap_or_else(|e| panic!("{e}")), Action::Continue);
    assert_eq!(s.request_body(b"hello ", false).unwrap_or_else(|e| panic!("{e}")), Action::Continue);
    assert_eq!(s.request_body(b"world", true).unwrap_or_else(|e| panic!("{e}")), Action::Continue);
    let fwd = s.forwarded_request_headers().cloned().unwrap_or_default();
    let want: Vec<(&str, &str)> = headers.to_vec();
    assert_eq!(fwd.iter().collect::<Vec<_>>(), want);
    assert_eq!(s.forwarded_request_body(), b"hello world");
    assert!(s.request_complete());
    assert!(s.local_reply().is_none());

    let resp = [(":status", "200"), ("content-type", "text/plain")];
    assert_eq!(s.response_headers(&resp, false).unwrap_or_else(|e| panic!("{e}")), Action::Continue);
    s.response_body(b"ok", false).unwrap_or_else(|e| panic!("{e}"));
    s.response_body(b"", true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.forwarded_response_body(), b"ok");
    assert!(s.response_complete());
    s.finish().unwrap_or_else(|e| panic!("{e}"));
    assert!(plugin.violations().is_empty(), "{:?}", plugin.violations());
}

#[test]
fn streams_get_distinct_context_ids_and_can_interleave() {
    let h = harness();
    let mut plugin = h.plugin(ONE_BACKEND).unwrap_or_else(|e| panic!("{e}"));
    let a = plugin.stream().id();
    let b = plugin.stream().id();
    assert_ne!(a, b);
    assert_ne!(a, plugin.root_id());
    let get = [(":method", "GET"), (":path", "/other")];
    for id in [a, b, a] {
        let mut s = plugin.resume(id).unwrap_or_else(|| panic!("stream {id}"));
        if s.forwarded_request_headers().is_none() {
            s.request_headers(&get, true).unwrap_or_else(|e| panic!("{e}"));
        } else {
            s.response_headers(&[(":status", "204")], true).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let s = plugin.resume(a).unwrap_or_else(|| panic!("stream a"));
    assert_eq!(s.forwarded_response_headers().and_then(|h| h.get(":status")), Some("204"));
    assert!(plugin.resume(999).is_none());
}

#[test]
fn a_trap_is_an_error_and_poisons_the_plugin() {
    let h = harness();
    let mut plugin = h.plugin(ONE_BACKEND).unwrap_or_else(|e| panic!("{e}"));
    // The SDK panics on a context id it never saw: an `unreachable` trap in the guest.
    let err = plugin.call_raw("proxy_on_request_headers", &[4242, 0, 1]).err();
    let err = err.unwrap_or_else(|| panic!("no trap"));
    assert!(err.is_trap(), "{err}");
    assert!(matches!(err, HostError::Trap { timeout: false, .. }));
    assert!(matches!(plugin.stream().request_headers(&[], true), Err(HostError::Poisoned)));
}

#[test]
fn scenario_misuse_is_reported() {
    let h = harness();
    let mut plugin = h.plugin(ONE_BACKEND).unwrap_or_else(|e| panic!("{e}"));
    let mut s = plugin.stream();
    assert!(matches!(s.request_body(b"x", true), Err(HostError::Usage(_))));
    s.request_headers(&[(":method", "GET"), (":path", "/x")], true).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(s.request_body(b"x", true), Err(HostError::Usage(_))));
    assert!(matches!(s.request_headers(&[], true), Err(HostError::Usage(_))));
}

#[test]
fn clock_and_log_level_are_controlled_by_the_host() {
    let h = harness();
    let mut plugin = h.builder().log_level(LogLevel::Debug).build(ONE_BACKEND).unwrap_or_else(|e| panic!("{e}"));
    let t0 = plugin.now_ns();
    plugin.advance_clock(1500);
    assert_eq!(plugin.now_ns() - t0, 1_500_000_000);
}

// --- Hand-assembled modules: host behaviour that the filter cannot show. ---

fn section(id: u8, content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128);
    let mut s = vec![id, content.len() as u8];
    s.extend_from_slice(content);
    s
}

fn name(n: &str) -> Vec<u8> {
    let mut v = vec![n.len() as u8];
    v.extend_from_slice(n.as_bytes());
    v
}

/// `(module (func (export "_initialize") (loop (br 0))))`
fn endless_initialize() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend(section(1, &[1, 0x60, 0, 0]));
    m.extend(section(3, &[1, 0]));
    let mut export = vec![1];
    export.extend(name("_initialize"));
    export.extend([0, 0]);
    m.extend(section(7, &export));
    m.extend(section(10, &[1, 7, 0, 0x03, 0x40, 0x0c, 0, 0x0b, 0x0b]));
    m
}

#[test]
fn an_endless_loop_times_out_instead_of_hanging() {
    let h = Harness::from_bytes("endless.wasm", &endless_initialize()).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let err = h.builder().call_timeout(Duration::from_millis(200)).start("").err();
    let err = err.unwrap_or_else(|| panic!("the loop ended?"));
    assert!(matches!(err, HostError::Trap { timeout: true, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_unknown_import_fails_instantiation_clearly() {
    // `(module (import "env" "proxy_bogus" (func)))`
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend(section(1, &[1, 0x60, 0, 0]));
    let mut import = vec![1];
    import.extend(name("env"));
    import.extend(name("proxy_bogus"));
    import.extend([0, 0]);
    m.extend(section(2, &import));
    let h = Harness::from_bytes("bogus.wasm", &m).unwrap_or_else(|e| panic!("{e}"));
    match h.try_plugin("") {
        Err(HostError::Load(msg)) => assert!(msg.contains("proxy_bogus"), "{msg}"),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("instantiated with an unknown import"),
    }
}
