//! Helpers shared by the scenario tests: requests in one call, owned outcomes, error checks.
#![allow(dead_code)] // each test binary uses a different subset

use anyhow::{anyhow, ensure, Context, Result};
use llmgw_host_tests::{Harness, Headers, LocalReply, Plugin};
use serde_json::Value;

pub fn harness() -> Result<Harness> {
    Ok(Harness::load()?)
}

pub fn plugin(config: &str) -> Result<Plugin> {
    Ok(harness()?.plugin(config)?)
}

pub const CHAT: &str = "/v1/chat/completions";

/// A minimal chat body for `model`.
pub fn chat(model: &str) -> Vec<u8> {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string().into_bytes()
}

/// What one request did, owned (so the plugin can be used again).
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: u32,
    pub forwarded: Option<Headers>,
    pub body: Vec<u8>,
    pub complete: bool,
    pub reply: Option<LocalReply>,
    /// What the client received (a local reply after the filter's response callbacks).
    pub response_headers: Option<Headers>,
    pub response_body: Vec<u8>,
}

impl Sent {
    /// A header of the forwarded request.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.forwarded.as_ref().and_then(|h| h.get(name))
    }

    pub fn backend(&self) -> Option<&str> {
        self.header("x-llmgw-backend")
    }

    /// The forwarded body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).context("forwarded body is not JSON")
    }

    /// Checks the request went upstream whole and returns its backend.
    pub fn routed(&self) -> Result<&str> {
        ensure!(self.reply.is_none(), "unexpected local reply: {:?}", self.reply);
        ensure!(self.complete, "request was not forwarded completely");
        if let Some(len) = self.header("content-length") {
            ensure!(len == self.body.len().to_string(), "content-length {len} for a {}-byte body", self.body.len());
        }
        self.backend().ok_or_else(|| anyhow!("no x-llmgw-backend on {:?}", self.forwarded))
    }

    /// Checks the filter answered `status` with an OpenAI error of `code`; returns the body.
    pub fn error(&self, status: u32, code: &str) -> Result<Value> {
        let reply = self.reply.as_ref().ok_or_else(|| anyhow!("no local reply; forwarded: {:?}", self.forwarded))?;
        let v = reply.json().with_context(|| format!("reply body {:?}", reply.body_str()))?;
        ensure!(
            reply.status == status && v["error"]["code"] == code,
            "expected {status} {code}, got {} {}",
            reply.status,
            reply.body_str()
        );
        ensure!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no message: {v}");
        ensure!(v["error"]["type"].as_str().is_some(), "no type: {v}");
        ensure!(reply.headers.get("content-type") == Some("application/json"), "content-type {:?}", reply.headers);
        ensure!(self.forwarded.is_none(), "an answered request was also forwarded");
        // The reply went through the filter's own response callbacks (as in Envoy) unchanged.
        let status = self.response_headers.as_ref().and_then(|h| h.get(":status"));
        ensure!(status == Some(reply.status.to_string().as_str()), "client got status {status:?}");
        ensure!(self.response_body == reply.body, "client got {:?}", String::from_utf8_lossy(&self.response_body));
        Ok(v)
    }
}

/// Sends one request (headers, then the body in one chunk unless it is empty).
pub fn send(plugin: &mut Plugin, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Sent> {
    let mut all = vec![(":method", method), (":path", path), (":authority", "gateway"), (":scheme", "http")];
    all.extend_from_slice(headers);
    let mut s = plugin.stream();
    s.send_request(&all, body)?;
    Ok(Sent {
        id: s.id(),
        forwarded: s.forwarded_request_headers().cloned(),
        body: s.forwarded_request_body().to_vec(),
        complete: s.request_complete(),
        reply: s.local_reply().cloned(),
        response_headers: s.forwarded_response_headers().cloned(),
        response_body: s.forwarded_response_body().to_vec(),
    })
}

/// POST of a JSON body with a correct content-length.
pub fn post(plugin: &mut Plugin, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Sent> {
    let len = body.len().to_string();
    let mut all = vec![("content-type", "application/json"), ("content-length", len.as_str())];
    all.extend_from_slice(headers);
    send(plugin, "POST", path, &all, body)
}

/// A chat completion for `model`: where did it go?
pub fn route(plugin: &mut Plugin, model: &str, headers: &[(&str, &str)]) -> Result<String> {
    Ok(post(plugin, CHAT, headers, &chat(model))?.routed()?.to_string())
}

/// Fails on anything the host saw the filter do that Envoy would refuse or ignore.
pub fn no_violations(plugin: &Plugin) -> Result<()> {
    ensure!(plugin.violations().is_empty(), "ABI violations: {:#?}", plugin.violations());
    Ok(())
}
