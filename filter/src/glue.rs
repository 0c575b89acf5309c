//! The only module that touches proxy-wasm: it implements `Host` on the proxy-wasm host calls and
//! hands every callback to the plain-Rust `Exchange`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::{self, ProcessEnv};
use crate::exchange::{Exchange, Shared};
use crate::host::{Flow, Host};
use crate::metrics::Kind;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Envoy metric ids by stat name, defined on first use; one map per VM.
#[derive(Default)]
struct MetricIds(RefCell<HashMap<String, u32>>);

impl MetricIds {
    fn id(&self, kind: Kind, name: &str) -> Option<u32> {
        let mut ids = self.0.try_borrow_mut().ok()?;
        if let Some(id) = ids.get(name) {
            return Some(*id);
        }
        let metric_type = match kind {
            Kind::Counter => MetricType::Counter,
            Kind::Histogram => MetricType::Histogram,
            Kind::Gauge => MetricType::Gauge,
            Kind::GaugeDelta => MetricType::Gauge,
        };
        let id = hostcalls::define_metric(metric_type, name).ok()?;
        ids.insert(name.to_string(), id);
        Some(id)
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    metrics: Rc<MetricIds>,
    /// Picker `/metrics` scrapes under way: call token, (backend, endpoint) indexes. A Vec: a
    /// second HashMap type would cost the module more than a scan of a few entries.
    scrapes: Vec<(u32, (usize, usize))>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body: usize, _trailers: usize) {
        match self.scrapes.iter().position(|(t, _)| *t == token) {
            Some(at) => {
                let target = self.scrapes.swap_remove(at).1;
                self.scrape_answered(target, body)
            }
            None => self.spans_answered(token),
        }
    }
}

impl Root {
    /// Sends the VM's queued spans (`trace::Exporter`) to the collector: one OTLP/HTTP request
    /// per batch. A collector that is down costs the requests nothing: their spans are dropped
    /// and counted.
    fn export_spans(&self) {
        let Some(tracing) = self.shared.as_ref().and_then(|s| s.tracing.as_ref()) else { return };
        let settings = &tracing.settings;
        let mut dropped = 0;
        while let Some((body, count)) = tracing.exporter.try_borrow_mut().ok().and_then(|mut e| e.next_batch(settings))
        {
            let Some(cluster) = settings.cluster.as_deref() else {
                log::info!("llmgw: spans {}", String::from_utf8_lossy(&body));
                continue;
            };
            let authority = if settings.authority.is_empty() { cluster } else { settings.authority.as_str() };
            let headers = vec![
                (":method", "POST"),
                (":path", settings.path.as_str()),
                (":authority", authority),
                ("content-type", settings.encoding.content_type()),
            ];
            let timeout = Duration::from_millis(settings.export_timeout_ms);
            match hostcalls::dispatch_http_call(cluster, headers, Some(&body), vec![], timeout) {
                Ok(token) => {
                    if let Ok(mut exporter) = tracing.exporter.try_borrow_mut() {
                        exporter.sent(token, count);
                    }
                }
                Err(status) => {
                    log::debug!("llmgw: span export to {cluster} failed: {status:?}");
                    dropped += count;
                }
            }
        }
        self.count_spans(crate::trace::SPANS_DROPPED, dropped);
    }

    /// The collector answered an export (or it failed): its spans are counted exported or dropped.
    fn spans_answered(&self, token: u32) {
        let Some(tracing) = self.shared.as_ref().and_then(|s| s.tracing.as_ref()) else { return };
        let count = tracing.exporter.try_borrow_mut().map(|mut e| e.answered(token)).unwrap_or(0);
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let ok = status.as_deref().is_some_and(|s| s.starts_with('2'));
        if !ok && count > 0 {
            log::debug!("llmgw: the collector refused {count} span(s): status {status:?}");
        }
        let metric = if ok { crate::trace::SPANS_EXPORTED } else { crate::trace::SPANS_DROPPED };
        self.count_spans(metric, count);
    }

    /// Scrapes the vLLM `/metrics` of least-kv-cache pickers' endpoints, through the backend's
    /// cluster (the destination header says which endpoint).
    fn scrape_endpoints(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let backends = &shared.config.backends;
        for (b, e) in crate::picker::scrapes_due(&mut WasmHost { metrics: &self.metrics }, backends) {
            let Some(backend) = backends.get(b) else { continue };
            let Some(picker) = &backend.picker else { continue };
            let Some(address) = picker.endpoints.get(e) else { continue };
            let headers = vec![
                (":method", "GET"),
                (":path", crate::picker::METRICS_PATH),
                (":authority", address.as_str()),
                (crate::picker::DESTINATION_HEADER, address.as_str()),
            ];
            let timeout = Duration::from_millis(picker.metrics_scrape_interval_ms);
            match hostcalls::dispatch_http_call(&backend.name, headers, None, vec![], timeout) {
                Ok(token) => {
                    self.scrapes.push((token, (b, e)));
                }
                Err(_) => crate::picker::scraped(&mut WasmHost { metrics: &self.metrics }, &backend.name, e, 0, b""),
            }
        }
    }

    fn scrape_answered(&self, (b, e): (usize, usize), body_size: usize) {
        let Some(backend) = self.shared.as_ref().and_then(|s| s.config.backends.get(b)) else { return };
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let status = status.and_then(|s| s.parse().ok()).unwrap_or(0);
        let size = body_size.min(crate::picker::MAX_METRICS_BYTES);
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size).ok().flatten().unwrap_or_default();
        crate::picker::scraped(&mut WasmHost { metrics: &self.metrics }, &backend.name, e, status, &body);
    }

    fn count_spans(&self, metric: &str, count: usize) {
        if count > 0 {
            let sample = crate::metrics::Sample { name: metric.to_string(), kind: Kind::Counter, value: count as u64 };
            WasmHost { metrics: &self.metrics }.record(&sample);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Follow Envoy's level (`--component-log-level wasm:debug` shows the debug lines), so a line
        // nobody reads is not even formatted.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let text = self.get_plugin_configuration().unwrap_or_default();
        let created = self.get_current_time().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        match config::parse(&text, &ProcessEnv, created) {
            Ok(compiled) => {
                log::info!(
                    "llmgw: configured {} backend(s), {} rule(s)",
                    compiled.backends.len(),
                    compiled.rules.len()
                );
                // Counters of named consumers exist before any request: requests then only swap them.
                crate::budget::prepare(&mut WasmHost { metrics: &self.metrics }, &compiled.budgets);
                crate::picker::prepare_all(&mut WasmHost { metrics: &self.metrics }, &compiled.backends);
                let shared = Rc::new(Shared::new(compiled));
                let tracing_ms = shared.tracing.as_ref().map(|t| t.settings.schedule_delay_ms);
                let scrape_ms = crate::picker::tick_ms(&shared.config.backends);
                if let Some(ms) = tracing_ms.into_iter().chain(scrape_ms).min() {
                    self.set_tick_period(Duration::from_millis(ms));
                }
                self.shared = Some(shared);
                true
            }
            Err(e) => {
                log::error!("llmgw: invalid plugin config: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.export_spans();
        self.scrape_endpoints();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { exchange: Exchange::new(self.shared.clone()), metrics: self.metrics.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    exchange: Exchange,
    metrics: Rc<MetricIds>,
}

/// The most of a callout's answer the filter reads (a prefill's answer is one token).
const MAX_CALL_RESPONSE_BYTES: usize = 1 << 20;

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let status = status.and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = match body_size {
            0 => None,
            n => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, n.min(MAX_CALL_RESPONSE_BYTES))
                .ok()
                .flatten(),
        };
        let mut host = WasmHost { metrics: &self.metrics };
        self.exchange.on_call_response(&mut host, token, status, body.as_deref().unwrap_or_default());
    }

    fn on_done(&mut self) -> bool {
        let mut host = WasmHost { metrics: &self.metrics };
        self.exchange.on_done(&mut host);
        true
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        if let Ok(Some(_)) = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-llmgw-test-trap") {
            core::arch::wasm32::unreachable();
        }
        let mut host = WasmHost { metrics: &self.metrics };
        action(self.exchange.on_request_headers(&mut host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut host = WasmHost { metrics: &self.metrics };
        action(self.exchange.on_request_body(&mut host, body_size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut host = WasmHost { metrics: &self.metrics };
        action(self.exchange.on_response_headers(&mut host, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut host = WasmHost { metrics: &self.metrics };
        action(self.exchange.on_response_body(&mut host, body_size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let mut host = WasmHost { metrics: &self.metrics };
        action(self.exchange.on_response_trailers(&mut host))
    }

    fn on_log(&mut self) {
        let mut host = WasmHost { metrics: &self.metrics };
        self.exchange.on_log(&mut host);
    }
}

/// `Host` over proxy-wasm host calls. Failures are logged at debug level and otherwise ignored:
/// a host call failing must not take the VM down.
struct WasmHost<'a> {
    metrics: &'a MetricIds,
}

fn checked<T: Default>(what: &str, result: Result<T, proxy_wasm::types::Status>) -> T {
    result.unwrap_or_else(|status| {
        log::debug!("llmgw: host call {what} failed: {status:?}");
        T::default()
    })
}

impl Host for WasmHost<'_> {
    fn set_request_header(&mut self, name: &str, value: &str) {
        checked("set request header", hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)))
    }
    fn remove_request_header(&mut self, name: &str) {
        checked("remove request header", hostcalls::remove_map_value(MapType::HttpRequestHeaders, name))
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        checked("get request body", hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size))
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        checked("set request body", hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, body))
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        checked("get response headers", hostcalls::get_map(MapType::HttpResponseHeaders))
    }
    fn response_header(&self, name: &str) -> Option<String> {
        checked("get response header", hostcalls::get_map_value(MapType::HttpResponseHeaders, name))
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        checked("set response header", hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)))
    }
    fn remove_response_header(&mut self, name: &str) {
        checked("remove response header", hostcalls::remove_map_value(MapType::HttpResponseHeaders, name))
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        checked("get response body", hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size))
    }
    fn set_response_body(&mut self, size: usize, body: &[u8]) {
        checked("set response body", hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, body))
    }
    fn append_request_body(&mut self, body: &[u8]) {
        // Envoy appends when `start` is at or past the buffer's end.
        checked("append request body", hostcalls::set_buffer(BufferType::HttpRequestBody, u32::MAX as usize, 0, body))
    }
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        checked("send local reply", hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body)))
    }
    fn set_filter_state(&mut self, name: &str, value: &[u8]) {
        checked("set property", hostcalls::set_property(vec![name], Some(value)))
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        // Not `Context::get_property`: it panics on a host error (e.g. an endpoint without metadata).
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        checked("get request headers", hostcalls::get_map(MapType::HttpRequestHeaders))
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        checked("set request headers", hostcalls::set_map(MapType::HttpRequestHeaders, pairs))
    }
    fn clear_route_cache(&mut self) {
        // Header changes already clear it in Envoy; the explicit call covers hosts that don't.
        if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", None) {
            log::debug!("llmgw: clear_route_cache unavailable: {status:?}");
        }
    }
    fn now_nanos(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas.unwrap_or(0))),
            _ => None,
        }
    }
    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        let cas = if cas == 0 { None } else { Some(cas) };
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => true,
            Err(proxy_wasm::types::Status::CasMismatch) => false,
            Err(status) => {
                log::debug!("llmgw: host call set shared data failed: {status:?}");
                false
            }
        }
    }
    fn dispatch(&mut self, cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout_ms: u64) -> Option<u32> {
        let timeout = Duration::from_millis(timeout_ms);
        match hostcalls::dispatch_http_call(cluster, headers.to_vec(), Some(body), vec![], timeout) {
            Ok(token) => Some(token),
            Err(status) => {
                log::debug!("llmgw: callout to {cluster} failed: {status:?}");
                None
            }
        }
    }
    fn resume_request(&mut self) {
        checked("resume request", hostcalls::resume_http_request())
    }
    fn define_metric(&mut self, kind: Kind, name: &str) -> Option<u32> {
        self.metrics.id(kind, name)
    }
    fn record_metric(&mut self, id: u32, kind: Kind, value: u64) {
        let result = match kind {
            Kind::Counter => hostcalls::increment_metric(id, i64::try_from(value).unwrap_or(i64::MAX)),
            Kind::GaugeDelta => hostcalls::increment_metric(id, value as i64),
            Kind::Histogram | Kind::Gauge => hostcalls::record_metric(id, value),
        };
        checked("record metric", result)
    }
}
