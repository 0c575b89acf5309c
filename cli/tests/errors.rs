//! Bad configurations stop before Envoy starts, with file, document, field and reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use llmgw::model::{Env, Format, MapEnv};
use llmgw::{autoconfig, formats, validate};

/// The message `llmgw run` prints for `text` (conversion, then the filter's own validation).
fn error(file: &str, text: &str, env: &[(&str, &str)], format: Option<Format>) -> String {
    let env = MapEnv(env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    match formats::load_text(file, text, &env, format) {
        Err(e) => e.to_string(),
        Ok(g) => validate::validate(&g, &env).expect_err("expected an error").to_string(),
    }
}

const ROUTE: &str = "apiVersion: aigateway.envoyproxy.io/v1alpha1
kind: AIGatewayRoute
metadata: {name: r}
spec:
  rules:
    - backendRefs: [{name: b}]
";

const BACKEND: &str = "apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {name: be}
spec:
  endpoints: [{ip: {address: 127.0.0.1, port: 8000}}]
";

fn service(schema: &str) -> String {
    format!(
        "apiVersion: aigateway.envoyproxy.io/v1alpha1
kind: AIServiceBackend
metadata: {{name: b}}
spec:
  schema: {{name: {schema}}}
  backendRef: {{name: be, kind: Backend, group: gateway.envoyproxy.io}}
"
    )
}

fn docs(parts: &[&str]) -> String {
    parts.join("---\n")
}

#[test]
fn aigw_missing_references() {
    let text = docs(&[ROUTE, BACKEND]);
    assert_eq!(
        error("gw.yaml", &text, &[], None),
        "gw.yaml: document 1 (AIGatewayRoute default/r): spec.rules[0].backendRefs[0].name: no AIServiceBackend \
         default/b in this file"
    );
    let text = docs(&[ROUTE, &service("OpenAI")]);
    assert_eq!(
        error("gw.yaml", &text, &[], None),
        "gw.yaml: document 2 (AIServiceBackend default/b): spec.backendRef.name: no Backend default/be in this file"
    );
    let policy = "apiVersion: aigateway.envoyproxy.io/v1alpha1
kind: BackendSecurityPolicy
metadata: {name: p}
spec:
  targetRefs: [{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: b}]
  type: APIKey
  apiKey:
    secretRef: {name: key}
";
    let text = docs(&[ROUTE, &service("OpenAI"), BACKEND, policy]);
    assert_eq!(
        error("gw.yaml", &text, &[], None),
        "gw.yaml: document 4 (BackendSecurityPolicy default/p): spec.apiKey.secretRef: no Secret default/key in this file"
    );
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: key}\nstringData: {other: x}\n";
    let text = docs(&[ROUTE, &service("OpenAI"), BACKEND, policy, secret]);
    assert_eq!(
        error("gw.yaml", &text, &[], None),
        "gw.yaml: document 5 (Secret default/key): stringData: has no key \"apiKey\" (expected by \
         BackendSecurityPolicy default/p)"
    );
}

#[test]
fn aigw_unsupported_things_are_errors_when_they_matter() {
    let text = docs(&[ROUTE, &service("Cohere"), BACKEND]);
    let e = error("gw.yaml", &text, &[], None);
    assert!(
        e.starts_with("gw.yaml: document 2 (AIServiceBackend default/b): spec (converted: backends[0].schema): unknown schema \"Cohere\""),
        "{e}"
    );
    let azure_ad = "apiVersion: aigateway.envoyproxy.io/v1alpha1
kind: BackendSecurityPolicy
metadata: {name: p}
spec:
  targetRefs: [{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: b}]
  type: AzureCredentials
  azureCredentials: {clientID: x, tenantID: y}
";
    let text = docs(&[ROUTE, &service("OpenAI"), BACKEND, azure_ad]);
    let e = error("gw.yaml", &text, &[], None);
    assert!(
        e.starts_with(
            "gw.yaml: document 4 (BackendSecurityPolicy default/p): spec.type: AzureCredentials needs an OAuth"
        ),
        "{e}"
    );
    let unix = BACKEND.replace("ip: {address: 127.0.0.1, port: 8000}", "unix: {path: /tmp/s}");
    let e = error("gw.yaml", &docs(&[ROUTE, &service("OpenAI"), &unix]), &[], None);
    assert_eq!(
        e,
        "gw.yaml: document 3 (Backend default/be): spec.endpoints[0].unix: unix socket endpoints are not supported by \
         llmgw run; use fqdn or ip"
    );
    let e = error("gw.yaml", &docs(&[&service("OpenAI"), BACKEND]), &[], None);
    assert!(e.starts_with("gw.yaml: no AIGatewayRoute"), "{e}");
}

#[test]
fn aigw_shape_errors_name_the_field() {
    let bad_weight = ROUTE.replace("[{name: b}]", "[{name: b, weight: heavy}]");
    assert_eq!(
        error("gw.yaml", &docs(&[&bad_weight]), &[], None),
        "gw.yaml: document 1 (AIGatewayRoute default/r): spec.rules[0].backendRefs[0].weight: expected an integer, \
         found \"heavy\""
    );
    let no_name = "apiVersion: v1\nkind: Secret\nmetadata: {}\n";
    assert_eq!(
        error("gw.yaml", &docs(&[ROUTE, no_name]), &[], None),
        "gw.yaml: document 2: metadata.name: required field is missing"
    );
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  listeners: [{name: h, protocol: HTTP, port: 70000}]\n";
    assert_eq!(
        error("gw.yaml", &docs(&[gateway, ROUTE]), &[], None),
        "gw.yaml: document 1 (Gateway default/g): spec.listeners[0].port: port 70000 is not between 1 and 65535"
    );
}

#[test]
fn fallback_errors_point_at_the_users_field() {
    let own =
        "backends:\n  - {name: a, url: 'http://127.0.0.1:1', schema: OpenAI}\nrules:\n  - backends: [{name: a}]\n";
    let e = error("llmgw.yaml", &format!("{own}    retry: {{attempts: 11}}\n"), &[], None);
    assert_eq!(e, "llmgw.yaml: rules[0].retry.attempts: must be 1 to 10");
    let e = error("llmgw.yaml", &format!("{own}    retry: {{on: [sometimes]}}\n"), &[], None);
    assert!(e.starts_with("llmgw.yaml: rules[0].retry.on[0]: unknown condition \"sometimes\""), "{e}");
    let e = error("llmgw.yaml", &own.replace("[{name: a}]", "[{name: a, priority: 10}]"), &[], None);
    assert_eq!(e, "llmgw.yaml: rules[0].backends[0].priority: must be 0 to 9");

    let base = [ROUTE, &service("OpenAI"), BACKEND];
    let far = ROUTE.replace("[{name: b}]", "[{name: b, priority: 12}]");
    assert_eq!(
        error("gw.yaml", &docs(&[&far, &service("OpenAI"), BACKEND]), &[], None),
        "gw.yaml: document 1 (AIGatewayRoute default/r): spec.rules[0].backendRefs[0].priority: llmgw supports \
         priorities 0 to 9, not 12"
    );
    let policy = |retry: &str| {
        format!(
            "apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: p}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}}]
  retry: {retry}
"
        )
    };
    let mut parts: Vec<&str> = base.to_vec();
    let bad = policy("{numRetries: many}");
    parts.push(&bad);
    assert_eq!(
        error("gw.yaml", &docs(&parts), &[], None),
        "gw.yaml: document 4 (BackendTrafficPolicy default/p): spec.retry.numRetries: expected an integer, found \"many\""
    );
    let bad = policy("{perRetry: {timeout: 0s}}");
    parts[3] = &bad;
    assert_eq!(
        error("gw.yaml", &docs(&parts), &[], None),
        "gw.yaml: document 4 (BackendTrafficPolicy default/p): spec.retry.perRetry.timeout: must be greater than 0"
    );
    // Converted fine: the rule gets the policy's retry, and the filter accepts it.
    let good = policy("{numRetries: 1, retryOn: {triggers: [5xx]}}");
    parts[3] = &good;
    let g = formats::load_text("gw.yaml", &docs(&parts), &MapEnv::default(), None).unwrap();
    assert_eq!(g.plugin["rules"][0]["retry"], serde_json::json!({"attempts": 2, "on": ["5xx"]}));
    validate::validate(&g, &MapEnv::default()).unwrap();
    assert_eq!(
        g.locate("rules[0].retry.attempts").1,
        "spec.retry (converted: rules[0].retry.attempts)",
        "a problem in the converted retry points at the policy"
    );
    assert_eq!(g.locate("rules[0].retry.attempts").0.unwrap().index, 4);
}

#[test]
fn own_format_errors() {
    let e = error("llmgw.yaml", "backends:\n  - name: a\n    schema: OpenAI\n", &[], None);
    assert!(e.starts_with("llmgw.yaml: backends[0]: each backend needs `url`"), "{e}");
    let e = error("llmgw.yaml", "backends:\n  - name: a\n    url: api.openai.com\n    schema: OpenAI\n", &[], None);
    assert_eq!(e, "llmgw.yaml: backends[0].url: \"api.openai.com\": expected a URL starting with http:// or https://");
    let text = "backends:\n  - name: openai\n    url: http://127.0.0.1:1\n    schema: OpenAI\nrules:\n  - backends: [{name: opeanai}]\n";
    assert_eq!(
        error("llmgw.yaml", text, &[], None),
        "llmgw.yaml: rules[0].backends[0].name: unknown backend \"opeanai\""
    );
    let text = "backends:\n  - name: a\n    url: http://127.0.0.1:1\n    shema: OpenAI\n";
    let e = error("llmgw.yaml", text, &[], None);
    assert!(e.starts_with("llmgw.yaml: backends[0]") && e.contains("shema"), "{e}");
    let text = "backends:\n  - name: a\n    url: http://127.0.0.1:1\n    schema: OpenAI\n    auth: {bearer_env: NOT_SET_ANYWHERE}\n";
    let e = error("llmgw.yaml", text, &[], None);
    assert!(e.starts_with("llmgw.yaml: backends[0].auth.bearer_env: environment variable"), "{e}");
    let e = error("llmgw.yaml", "port: 1975\ntimeout: soon\nbackends: []\n", &[], None);
    assert!(e.starts_with("llmgw.yaml: timeout: \"soon\""), "{e}");
}

#[test]
fn text_level_errors() {
    let e = error("c.yaml", "backends:\n  - name: ${MISSING_VAR:?name the backend}\n", &[], None);
    assert_eq!(e, "c.yaml: line 2: environment variable MISSING_VAR: name the backend");
    let e = error("c.yaml", "backends:\n  - name: a\n    url: ${URL:?}\n", &[("URL", "")], None);
    assert_eq!(e, "c.yaml: line 3: environment variable URL must be set and non-empty");
    let e = error("c.yaml", "backends: [\n", &[], None);
    assert!(e.starts_with("c.yaml: document 1: not valid YAML: "), "{e}");
}

/// Envoy AI Gateway's examples/aigw/ollama.yaml for a user who has no OpenAI key: the unset
/// `${OPENAI_API_KEY}` becomes an empty key, with warnings naming the variable, and the backend
/// gets no credential (as `aigw run` sends an empty one); the config is valid.
#[test]
fn aigw_ollama_example_without_an_openai_key() {
    let text = "apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIGatewayRoute
metadata: {name: aigw-run, namespace: default}
spec:
  rules:
    - matches: [{headers: [{type: RegularExpression, name: x-ai-eg-model, value: .*}]}]
      backendRefs: [{name: openai, namespace: default}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {name: openai, namespace: default}
spec:
  endpoints: [{fqdn: {hostname: localhost, port: 11434}}]
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: AIServiceBackend
metadata: {name: openai, namespace: default}
spec:
  schema: {name: OpenAI}
  backendRef: {name: openai, kind: Backend, group: gateway.envoyproxy.io, namespace: default}
---
apiVersion: v1
kind: Secret
metadata: {name: openai-apikey, namespace: default}
type: Opaque
stringData:
  apiKey: ${OPENAI_API_KEY}
---
apiVersion: aigateway.envoyproxy.io/v1beta1
kind: BackendSecurityPolicy
metadata: {name: openai-apikey, namespace: default}
spec:
  targetRefs: [{group: aigateway.envoyproxy.io, kind: AIServiceBackend, name: openai}]
  type: APIKey
  apiKey: {secretRef: {name: openai-apikey}}
";
    let env = MapEnv::default();
    let g = formats::load_text("ollama.yaml", text, &env, None).unwrap_or_else(|e| panic!("{e}"));
    validate::validate(&g, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(g.plugin_backend("openai").unwrap().get("auth").is_none(), "{:?}", g.plugin);
    assert!(
        g.warnings[0].starts_with("ollama.yaml: line 27: environment variable OPENAI_API_KEY is not set"),
        "{:?}",
        g.warnings
    );
    assert!(
        g.warnings[1].contains("document 4 (Secret default/openai-apikey): stringData.apiKey: the value is empty"),
        "{:?}",
        g.warnings
    );
    // With the key: a bearer credential, moved out of the plugin configuration.
    let env = MapEnv::from([("OPENAI_API_KEY", "sk-ollama-test")]);
    let g = formats::load_text("ollama.yaml", text, &env, None).unwrap();
    assert!(g.warnings.is_empty(), "{:?}", g.warnings);
    let auth = &g.plugin_backend("openai").unwrap()["auth"];
    assert_eq!(auth, &serde_json::json!({"bearer_env": "LLMGW_SECRET_OPENAI_BEARER"}));
    assert_eq!(g.env(&env).var("LLMGW_SECRET_OPENAI_BEARER").as_deref(), Some("sk-ollama-test"));
}

/// A value with YAML syntax in it stays one value: it cannot add fields or documents.
#[test]
fn substituted_values_keep_the_structure() {
    let text = "backends:\n  - name: a\n    url: http://127.0.0.1:8000/v1\n    schema: OpenAI\n    \
                headers: {set: {x-note: ${NOTE}}}\n";
    let note = "x\n    model_override: hijacked # {y: [z]} *a";
    let env = MapEnv::from([("NOTE", note)]);
    let g = formats::load_text("c.yaml", text, &env, None).unwrap_or_else(|e| panic!("{e}"));
    let b = g.plugin_backend("a").unwrap();
    assert!(b.get("model_override").is_none(), "{b:?}");
    assert_eq!(b["headers"]["set"]["x-note"], note);
}

#[test]
fn aibrix_errors() {
    let e = error("endpoints.yaml", "models:\n  - name: m\n    endpoints: [localhost]\n", &[], Some(Format::AIBrix));
    assert_eq!(e, "endpoints.yaml: models[0].endpoints[0]: \"localhost\": give host:port, e.g. 127.0.0.1:8000");
    // Prefill/decode is the filter's: it connects to addresses, not names.
    let text = "models:\n  - name: m\n    rolesets: [{name: pd, prefill: [\"vllm-p:1\"], decode: [\"127.0.0.1:2\"]}]\n";
    let e = error("endpoints.yaml", text, &[], Some(Format::AIBrix));
    assert!(e.starts_with("endpoints.yaml: models[0].rolesets: vllm-p:1: the picker needs ip:port endpoints"), "{e}");
    let text = "models:\n  - name: m\n    rolesets: [{name: pd, decode: [\"127.0.0.1:2\"]}]\n";
    let e = error("endpoints.yaml", text, &[], Some(Format::AIBrix));
    assert!(e.starts_with("endpoints.yaml: models[0].rolesets[0]"), "{e}");
}

#[test]
fn environment_errors() {
    let env = MapEnv::from([("AZURE_OPENAI_API_KEY", "k"), ("OPENAI_API_VERSION", "2024-12-01-preview")]);
    let e = autoconfig::from_env(&env).unwrap_err().to_string();
    assert_eq!(
        e,
        "environment: AZURE_OPENAI_ENDPOINT: AZURE_OPENAI_API_KEY is set, so AZURE_OPENAI_ENDPOINT is required, e.g. \
         https://my-resource.openai.azure.com"
    );
}

/// The same messages from the binary, non-zero exit, and Envoy never started.
#[test]
fn run_stops_before_envoy_on_a_bad_config() {
    let dir = common::temp_dir("bad-config");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, docs(&[ROUTE, BACKEND])).unwrap();
    let mut cmd = std::process::Command::new(common::LLMGW);
    for v in common::PROVIDER_VARS {
        cmd.env_remove(v);
    }
    // Envoy must not even be looked for: a bogus ENVOY_BIN would otherwise be the error.
    cmd.env("ENVOY_BIN", "/nonexistent/envoy").arg("run").arg(&file).args(["--port", "1", "--admin-port", "1"]);
    let (code, _out, err) = common::output(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "bad.yaml: document 1 (AIGatewayRoute default/r): spec.rules[0].backendRefs[0].name: no AIServiceBackend"
        ),
        "{err}"
    );
    assert!(!err.contains("starting Envoy"), "{err}");

    let mut cmd = std::process::Command::new(common::LLMGW);
    cmd.arg("check").arg(&file);
    let (code, _out, err) = common::output(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no AIServiceBackend default/b in this file"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
