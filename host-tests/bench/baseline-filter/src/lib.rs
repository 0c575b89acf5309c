//! Baseline proxy-wasm filters for `make bench` (see Cargo.toml). Configuration "noop": every
//! callback returns Continue. "buffer": llmgw's skeleton: pause the headers, buffer the body, read
//! it once, set two request headers and clear the route cache, read :status on the response.
use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { buffer: false }) });
}}

struct Root {
    buffer: bool,
}
impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.buffer = self.get_plugin_configuration().map(|c| c.starts_with(b"buffer")).unwrap_or(false);
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { buffer: self.buffer }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    buffer: bool,
}
impl Context for Http {}
impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, eos: bool) -> Action {
        if !self.buffer || eos {
            return Action::Continue;
        }
        let _ = self.get_http_request_header(":path");
        Action::Pause
    }
    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.buffer {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let model = if body.len() > 20 { "gpt-4o-mini" } else { "none" };
        self.set_http_request_header("x-ai-eg-model", Some(model));
        self.set_http_request_header("x-llmgw-backend", Some("openai"));
        let _ = proxy_wasm::hostcalls::call_foreign_function("clear_route_cache", None);
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.buffer {
            let _ = self.get_http_response_header(":status");
        }
        Action::Continue
    }
}
