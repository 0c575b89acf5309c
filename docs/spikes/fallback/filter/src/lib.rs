use proxy_wasm::hostcalls;
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

fn info(s: &str) {
    let _ = hostcalls::log(LogLevel::Info, s);
}

fn show(b: Option<Vec<u8>>) -> String {
    match b {
        None => "None".into(),
        Some(v) => {
            if v.iter().all(|c| (0x20..0x7f).contains(c)) {
                format!("str({:?})", String::from_utf8_lossy(&v))
            } else {
                let hex: String = v.iter().map(|c| format!("{:02x}", c)).collect();
                let printable: String = v
                    .iter()
                    .map(|c| if (0x20..0x7f).contains(c) { *c as char } else { '.' })
                    .collect();
                format!("bytes[{}] hex={} ascii={:?}", v.len(), hex, printable)
            }
        }
    }
}

const PROPS: &[&[&str]] = &[
    &["xds", "upstream_host_metadata"],
    &["xds", "upstream_host_metadata", "filter_metadata", "llmgw", "backend"],
    &["xds", "upstream_host_metadata", "filter_metadata", "llmgw"],
    &["upstream_host_metadata"],
    &["upstream", "address"],
    &["upstream", "port"],
    &["upstream", "request_attempt_count"],
    &["xds", "cluster_name"],
    &["xds", "cluster_metadata", "filter_metadata", "llmgw", "backend"],
    &["xds", "route_name"],
];

struct Root {
    cfg: String,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        if let Some(c) = self.get_plugin_configuration() {
            self.cfg = String::from_utf8_lossy(&c).to_string();
        }
        info(&format!("SPIKE configure cfg={:?}", self.cfg));
        true
    }
    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Flt {
            id,
            cfg: self.cfg.clone(),
            backend: String::new(),
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Flt {
    id: u32,
    cfg: String,
    backend: String,
}

impl Flt {
    fn cfg_val(&self, k: &str) -> Option<String> {
        self.cfg.split(';').find_map(|kv| {
            let mut it = kv.splitn(2, '=');
            if it.next()? == k { it.next().map(|s| s.to_string()) } else { None }
        })
    }
    fn dump_props(&self, phase: &str) {
        for p in PROPS {
            let r = match hostcalls::get_property(p.to_vec()) {
                Ok(v) => show(v),
                Err(e) => format!("Err({:?})", e),
            };
            info(&format!("SPIKE ctx={} {} prop {} = {}", self.id, phase, p.join("."), r));
        }
    }
}

impl Context for Flt {
    fn on_done(&mut self) -> bool {
        info(&format!("SPIKE ctx={} on_done backend={}", self.id, self.backend));
        true
    }
}
impl HttpContext for Flt {
    fn on_http_request_headers(&mut self, _n: usize, eos: bool) -> Action {
        if self.cfg_val("role").as_deref() == Some("downstream") {
            // stash the client's original headers for the upstream (per-attempt) filter
            let stash = format!("{}|{}",
                self.get_http_request_header(":path").unwrap_or_default(),
                self.get_http_request_header("authorization").unwrap_or_default());
            self.set_property(vec!["llmgw_orig"], Some(stash.as_bytes()));
            info(&format!("SPIKE ctx={} DOWNSTREAM stashed llmgw_orig={:?}", self.id, stash));
            return Action::Continue;
        }
        self.dump_props("req_headers");
        for p in [vec!["llmgw_orig"], vec!["filter_state", "wasm.llmgw_orig"]] {
            let v = hostcalls::get_property(p.clone()).ok().flatten();
            info(&format!("SPIKE ctx={} req_headers stash prop {} = {}", self.id, p.join("."), show(v)));
        }
        // backend: host metadata leaf, else plugin config
        // NB: Context::get_property() unwraps and PANICS on Err(SerializationFailure) (e.g. host without metadata)
        let md = hostcalls::get_property(vec!["xds", "upstream_host_metadata", "filter_metadata", "llmgw", "backend"])
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).to_string());
        self.backend = md
            .clone()
            .or_else(|| self.cfg_val("backend"))
            .unwrap_or_else(|| "unknown".into());
        let orig_path = self.get_http_request_header(":path").unwrap_or_default();
        // can the upstream filter itself stash originals in filter state on attempt 1 and see them on attempt 2?
        let up = hostcalls::get_property(vec!["llmgw_up_orig"]).ok().flatten();
        info(&format!("SPIKE ctx={} req_headers upstream-self-stash llmgw_up_orig = {}", self.id, show(up.clone())));
        if up.is_none() {
            let st = format!("{}|{}", orig_path, self.get_http_request_header("authorization").unwrap_or_default());
            self.set_property(vec!["llmgw_up_orig"], Some(st.as_bytes()));
        }
        info(&format!(
            "SPIKE ctx={} req_headers eos={} orig_path={} orig_auth={:?} backend={} (md={:?})",
            self.id, eos, orig_path,
            self.get_http_request_header("authorization"), self.backend, md
        ));
        self.set_http_request_header(":path", Some(&format!("/{}/v1/chat{}", self.backend, orig_path)));
        self.set_http_request_header(":authority", Some(&format!("{}.example", self.backend)));
        self.set_http_request_header("authorization", Some(&format!("Bearer key-{}", self.backend)));
        let stop = self.cfg_val("stop_headers").as_deref() == Some("1");
        if !stop {
            self.set_http_request_header("content-length", None);
        }
        if stop && !eos {
            info(&format!("SPIKE ctx={} req_headers -> Pause", self.id));
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if self.cfg_val("role").as_deref() == Some("downstream") {
            return Action::Continue;
        }
        info(&format!("SPIKE ctx={} req_body size={} eos={}", self.id, size, eos));
        if !eos {
            return Action::Pause;
        }
        self.dump_props("req_body");
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let b = String::from_utf8_lossy(&body).to_string();
        info(&format!("SPIKE ctx={} req_body ORIGINAL={:?}", self.id, b));
        let nb = format!("{{\"translated_for\":\"{}\",\"orig\":{}}}", self.backend, b);
        self.set_http_request_body(0, size, nb.as_bytes());
        if self.cfg_val("stop_headers").as_deref() == Some("1") {
            // headers were held back: fix content-length to the rewritten body's length
            self.set_http_request_header("content-length", Some(&nb.len().to_string()));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> Action {
        if self.cfg_val("role").as_deref() == Some("downstream") {
            return Action::Continue;
        }
        info(&format!(
            "SPIKE ctx={} resp_headers status={:?} eos={} backend={}",
            self.id, self.get_http_response_header(":status"), eos, self.backend
        ));
        self.set_http_response_header("x-llmgw-backend", Some(&self.backend.clone()));
        if self.cfg_val("map429").as_deref() == Some("1")
            && self.get_http_response_header(":status").as_deref() == Some("429")
        {
            // make the router (retry + outlier detection) see a 5xx for a provider 429
            self.set_http_response_header(":status", Some("503"));
            self.set_http_response_header("x-llmgw-orig-status", Some("429"));
            info(&format!("SPIKE ctx={} resp_headers mapped 429 -> 503", self.id));
        }
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if self.cfg_val("role").as_deref() == Some("downstream") {
            return Action::Continue;
        }
        info(&format!("SPIKE ctx={} resp_body size={} eos={}", self.id, size, eos));
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        let b = String::from_utf8_lossy(&body).to_string();
        let nb = format!("{{\"translated_resp_by\":\"{}\",\"upstream_said\":{}}}", self.backend, b.trim());
        self.set_http_response_body(0, size, nb.as_bytes());
        Action::Continue
    }

    fn on_log(&mut self) {
        info(&format!("SPIKE ctx={} on_log backend={}", self.id, self.backend));
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { cfg: String::new() }) });
}}
