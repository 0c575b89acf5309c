//! An in-memory `Host` for unit tests of the exchange.

use std::collections::BTreeMap;

use crate::config::{AwsCredential, Backend, BackendApi, Schema, Secret};
use crate::host::Host;
use crate::metrics::{Kind, Sample};

/// A local reply: status, headers, body.
pub type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// A callout the filter sent: cluster, headers, body.
pub type Callout = (String, Vec<(String, String)>, Vec<u8>);

#[derive(Debug, Default, Clone)]
pub struct FakeHost {
    pub request_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub reply: Option<Reply>,
    pub filter_state: BTreeMap<String, String>,
    pub route_cache_clears: usize,
    pub now: u64,
    pub samples: Vec<Sample>,
    /// Metric ids: indexes into this.
    pub metric_names: Vec<String>,
    /// Envoy attributes the host answers `property` with (dotted path → value); filter state set
    /// by the exchange is read back too.
    pub properties: Vec<(String, Vec<u8>)>,
    /// Shared data: value and CAS token by key.
    pub shared: BTreeMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
    /// How many of the next compare-and-swaps fail as if another worker wrote first.
    pub cas_conflicts: usize,
    /// `add_to_gauge` calls, in order.
    pub gauges: Vec<(String, i64)>,
    /// Callouts sent: cluster, headers, body (the token is the index + 1).
    pub calls: Vec<Callout>,
    /// The host refuses to send callouts.
    pub refuse_calls: bool,
    /// `resume_request` calls.
    pub resumed: usize,
}

fn get(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

fn set(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_string(), value.to_string()));
}

impl FakeHost {
    pub fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Self {
        let mut h = FakeHost::default();
        h.request_headers.push((":method".into(), method.into()));
        h.request_headers.push((":path".into(), path.into()));
        for (n, v) in extra {
            h.request_headers.push((n.to_string(), v.to_string()));
        }
        h
    }

    pub fn header(&self, name: &str) -> Option<String> {
        get(&self.request_headers, name)
    }

    pub fn reply_json(&self) -> (u16, serde_json::Value) {
        let (status, _, body) = self.reply.as_ref().expect("no local reply");
        (*status, crate::json::from_bytes(body).expect("reply is JSON"))
    }
}

impl Host for FakeHost {
    fn set_request_header(&mut self, name: &str, value: &str) {
        set(&mut self.request_headers, name, value)
    }
    fn remove_request_header(&mut self, name: &str) {
        self.request_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.request_body.get(..size).map(<[u8]>::to_vec)
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        self.request_body.splice(..size.min(self.request_body.len()), body.iter().copied());
    }
    fn append_request_body(&mut self, body: &[u8]) {
        self.request_body.extend_from_slice(body);
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        self.response_headers.clone()
    }
    fn response_header(&self, name: &str) -> Option<String> {
        get(&self.response_headers, name)
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        set(&mut self.response_headers, name, value)
    }
    fn remove_response_header(&mut self, name: &str) {
        self.response_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.response_body.get(..size).map(<[u8]>::to_vec)
    }
    fn set_response_body(&mut self, size: usize, body: &[u8]) {
        self.response_body.splice(..size.min(self.response_body.len()), body.iter().copied());
    }
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.reply = Some((status, headers, body.to_vec()));
    }
    fn set_filter_state(&mut self, name: &str, value: &[u8]) {
        self.filter_state.insert(name.to_string(), String::from_utf8_lossy(value).into_owned());
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        let state = || self.filter_state.get(&key).map(|v| v.clone().into_bytes());
        self.properties.iter().find(|(p, _)| *p == key).map(|(_, v)| v.clone()).or_else(state)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.request_headers.clone()
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        self.request_headers = headers.to_vec();
    }
    fn clear_route_cache(&mut self) {
        self.route_cache_clears += 1;
    }
    fn now_nanos(&self) -> u64 {
        self.now
    }
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.get(key).cloned()
    }
    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        if self.cas_conflicts > 0 {
            self.cas_conflicts -= 1;
            // The other worker's write changes the token.
            self.next_cas += 1;
            if let Some(entry) = self.shared.get_mut(key) {
                entry.1 = self.next_cas;
            }
            return false;
        }
        let current = self.shared.get(key).map(|(_, c)| *c);
        if cas != 0 && current != Some(cas) {
            return false;
        }
        self.next_cas += 1;
        self.shared.insert(key.to_string(), (value.to_vec(), self.next_cas));
        true
    }
    fn define_metric(&mut self, _kind: Kind, name: &str) -> Option<u32> {
        let id = self.metric_names.iter().position(|n| n == name).unwrap_or_else(|| {
            self.metric_names.push(name.to_string());
            self.metric_names.len() - 1
        });
        u32::try_from(id).ok()
    }
    fn add_to_gauge(&mut self, name: &str, delta: i64) {
        self.gauges.push((name.to_string(), delta));
    }
    fn dispatch(&mut self, cluster: &str, headers: &[(&str, &str)], body: &[u8], _timeout_ms: u64) -> Option<u32> {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.calls.push((cluster.to_string(), headers, body.to_vec()));
        u32::try_from(self.calls.len()).ok().filter(|_| !self.refuse_calls)
    }
    fn resume_request(&mut self) {
        self.resumed += 1;
    }
    fn record_metric(&mut self, id: u32, kind: Kind, value: u64) {
        let name = self.metric_names.get(id as usize).cloned().unwrap_or_default();
        self.samples.push(Sample { name, kind, value });
    }
}

/// A backend with every optional setting at its default (as the configuration's), in AWS region
/// `us-east-1` (with a test key) or GCP project `p`, region `us-central1`.
pub fn backend(schema: Schema) -> Backend {
    let aws = || AwsCredential {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new("secret".into()),
        session_token: None,
    };
    let api = match schema {
        Schema::OpenAI => BackendApi::OpenAI { credential: None },
        Schema::AzureOpenAI => BackendApi::AzureOpenAI { api_version: "2024-10-21".into(), credential: None },
        Schema::Anthropic => {
            BackendApi::Anthropic { anthropic_version: "2023-06-01".into(), default_max_tokens: 4096, credential: None }
        }
        Schema::AWSBedrock => {
            BackendApi::AWSBedrock { region: "us-east-1".into(), credential: Some(aws()), default_max_tokens: 4096 }
        }
        Schema::AWSAnthropic => BackendApi::AWSAnthropic {
            region: "us-east-1".into(),
            credential: Some(aws()),
            anthropic_version: "bedrock-2023-05-31".into(),
            default_max_tokens: 4096,
        },
        Schema::GCPVertexAI => BackendApi::GCPVertexAI {
            project: "p".into(),
            region: "us-central1".into(),
            allow_gcs_uris: false,
            credential: None,
        },
        Schema::GCPAnthropic => BackendApi::GCPAnthropic {
            project: "p".into(),
            region: "us-central1".into(),
            anthropic_version: "vertex-2023-10-16".into(),
            default_max_tokens: 4096,
            credential: None,
        },
    };
    Backend {
        name: "b".into(),
        prefix: schema.default_prefix().into(),
        model_override: None,
        set_headers: vec![],
        remove_headers: vec![],
        pass_through_authorization: false,
        authority: None,
        forward_billing_headers: false,
        forward_headers: vec![],
        body_mutation: None,
        credential_override: None,
        picker: None,
        api,
    }
}

/// A process environment with no variables.
pub struct NoEnv;

impl crate::config::Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}
