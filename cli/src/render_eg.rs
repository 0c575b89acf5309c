//! `llmgw render --target envoy-gateway`: the Kubernetes manifests that run a gateway on Envoy
//! Gateway with the llmgw filter from an OCI image, from the same plugin configuration and
//! backends `llmgw run` uses. The output is one multi-document YAML file, commented, in install
//! order; `envoy-configs/envoy-gateway/llmgw.yaml` is this for the demo configuration
//! (`envoy-configs/envoy-gateway/README.md` explains every piece).
//!
//! Self-contained (serde_json only): the caller maps its own model onto [`EgBackend`].
//!
//! What it emits, for namespace/name `llmgw` (both from [`EgOptions`]):
//! * Namespace, GatewayClass, Gateway (one HTTP listener), ClientTrafficPolicy (body buffer above
//!   the filter's `max_request_body_bytes`, stream idle timeout);
//! * an EnvoyProxy that puts every variable the plugin configuration reads (`*_env`) into the
//!   envoy container from the Secret `<name>-upstream-keys` (the EnvoyExtensionPolicy passes them
//!   into the VM with `env.hostKeys`);
//! * SecurityPolicy (API keys from the Secret `<name>-client-keys`, client id forwarded in
//!   `x-llmgw-client`); with `consumers:` ([`EgConsumers`]) a typed SecurityPolicy instead
//!   (`apiKeyAuth` or `jwt`, the consumer in `x-llmgw-consumer`, which the budget then keys on).
//!
//! No secret is in the output: the two Secrets are created by the operator (the header comment and
//! [`secret_commands`] give the `kubectl create secret` commands), and the plugin configuration
//! names credentials by variable only (the CLI moves literal keys out before rendering);
//! * per backend: a `Backend` (FQDN or IP endpoints, TLS with the system CAs when `tls`), or a
//!   Service reference for `<svc>.<namespace>.svc[.cluster.local]` hosts of the gateway's namespace;
//! * HTTPRoute: one rule per backend matching `x-llmgw-backend: <name>`, a catch-all rule answered
//!   by an HTTPRouteFilter (the route a request first matches, which enables the filter chain);
//! * EnvoyExtensionPolicy (the image, its digest, the plugin configuration inline, as JSON);
//! * EnvoyPatchPolicy: `allow_on_headers_stop_iteration` and `failure_policy: FAIL_RELOAD` on the
//!   generated Wasm filter, and the token charge read from `wasm.llm_total_token`;
//! * BackendTrafficPolicy: upstream buffer/timeout and the token budget per client id.
//!
//! Fallback rules (`retry`, or several priorities) are refused: they need the filter as the
//! upstream HTTP filter of the rule's cluster, which Envoy Gateway cannot attach.

use serde_json::Value;

/// One backend of the plugin configuration and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgBackend {
    /// The plugin backend name (the value of `x-llmgw-backend`).
    pub name: String,
    /// `(host, port)`: all DNS names or all IP addresses (Envoy Gateway does not mix them).
    pub endpoints: Vec<(String, u16)>,
    /// TLS to the upstream, verified against the system CA bundle; the Host header is then
    /// rewritten to `host_rewrite` (default: the first endpoint's host).
    pub tls: bool,
    pub host_rewrite: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgOptions {
    /// Namespace of every namespaced resource.
    pub namespace: String,
    /// Name of the GatewayClass, the Gateway and the policies.
    pub name: String,
    /// The filter's OCI image (`registry/name:tag`).
    pub image: String,
    /// The image manifest digest, 64 hex digits (`sha256:` prefix allowed).
    pub digest: String,
    /// The Gateway listener's port.
    pub port: u16,
    /// Client authentication from the configuration's `consumers:`; `None` = the default
    /// SecurityPolicy (API keys of the Secret `<name>-client-keys`, client id in `x-llmgw-client`).
    pub consumers: Option<EgConsumers>,
    /// Clusters the filter itself sends requests to (`dispatch_http_call`: the OTLP collector),
    /// as Envoy cluster JSON: added to the xDS by the EnvoyPatchPolicy, under the names the plugin
    /// configuration gives them (Envoy Gateway names the clusters it makes itself).
    pub clusters: Vec<Value>,
}

/// The consumers, as Envoy Gateway's SecurityPolicy takes them. No key is here: the keys go into
/// the Secret `<name>-client-keys`, which the operator creates ([`secret_commands`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EgConsumers {
    /// Consumers with API keys: the name (the Secret's key, i.e. the client id) and the shell
    /// expression that gives its key in the `kubectl create secret` command.
    pub api_keys: Vec<(String, String)>,
    pub jwt: Vec<EgJwt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgJwt {
    /// The consumer's name (the provider's name).
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The `sub` the token must carry (an authorization rule), any when `None`.
    pub subject: Option<String>,
    pub jwks: EgJwks,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgJwks {
    /// A JWKS document (public keys), inlined.
    Inline(String),
    Remote(String),
}

impl Default for EgOptions {
    fn default() -> Self {
        EgOptions {
            namespace: "llmgw".into(),
            name: "llmgw".into(),
            image: "ghcr.io/llmgw/llmgw-filter:0.1.0".into(),
            digest: "0".repeat(64),
            port: 80,
            consumers: None,
            clusters: Vec::new(),
        }
    }
}

/// EnvoyPatchPolicy entries adding `clusters` (whole resources: `op: add` at path "").
fn extra_clusters(clusters: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for c in clusters {
        let name = c.get("name").and_then(Value::as_str).ok_or("an added cluster has no name")?;
        check_name("cluster name", name)?;
        let json = serde_json::to_string(c).map_err(|e| format!("cluster {name}: {e}"))?;
        out += &format!(
            "    # {name}: a cluster the filter sends requests to itself (dispatch_http_call), which no
    # route references, so Envoy Gateway would not make it.
    - type: type.googleapis.com/envoy.config.cluster.v3.Cluster
      name: {name}
      operation:
        op: add
        path: \"\"
        value: {json}
"
        );
    }
    Ok(out)
}

/// The header the filter names the backend in.
pub const BACKEND_HEADER: &str = "x-llmgw-backend";
/// The header the filter names the body's model in (for routing and logs; never sent upstream).
pub const MODEL_HEADER: &str = "x-ai-eg-model";
/// The header the API key check forwards the client id in; the token budget is keyed on it.
pub const CLIENT_HEADER: &str = "x-llmgw-client";
/// The header the consumer's name travels in when the configuration has `consumers:` (as with
/// `llmgw run`).
pub const CONSUMER_HEADER: &str = "x-llmgw-consumer";
const DEFAULT_MAX_BODY: u64 = 32 << 20;

/// The manifests, or what is wrong with the input.
pub fn render(plugin: &Value, backends: &[EgBackend], opts: &EgOptions) -> Result<String, String> {
    let plugin_map = plugin.as_object().ok_or("the plugin configuration must be a mapping")?;
    let names: Vec<String> = plugin_map
        .get("backends")
        .and_then(Value::as_array)
        .ok_or("the plugin configuration has no backends")?
        .iter()
        .map(|b| b.get("name").and_then(Value::as_str).map(str::to_string).ok_or("a backend has no name"))
        .collect::<Result<_, _>>()?;
    if let Some(rule) = fallback_rules(plugin).first() {
        return Err(format!(
            "{rule} is a fallback rule (a `retry`, or backends of several priorities). Envoy Gateway cannot \
             run it: fallback needs the llmgw filter a second time, as the HTTP filter of the rule's cluster \
             (it translates each retry for the provider Envoy picked), and Envoy Gateway attaches Wasm \
             filters to the listener only. Run this configuration with `llmgw run` or the bootstrap of \
             `llmgw render`, or give the rule's backends one priority and no retry"
        ));
    }
    if let Some(field) = literal_credential(plugin) {
        return Err(format!(
            "{field} is a literal credential: manifests name credentials by variable only (use the *_env form; \
             `llmgw render` moves literal keys out by itself)"
        ));
    }
    check_name("namespace", &opts.namespace)?;
    check_name("name", &opts.name)?;
    let digest = opts.digest.strip_prefix("sha256:").unwrap_or(&opts.digest);
    if digest.len() != 64 || !digest.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return Err(format!("the image digest must be 64 lowercase hex digits, not {:?}", opts.digest));
    }
    if opts.image.trim().is_empty() || opts.image.contains(char::is_whitespace) {
        return Err(format!("invalid image {:?}", opts.image));
    }
    let mut ordered = Vec::new();
    for name in &names {
        let b = backends.iter().find(|b| &b.name == name).ok_or(format!("no endpoints for backend {name:?}"))?;
        if b.endpoints.is_empty() {
            return Err(format!("backend {name:?} has no endpoints"));
        }
        ordered.push(b);
    }
    let mut rule_names: Vec<String> = Vec::new();
    for b in &ordered {
        let n = dns_label(&b.name);
        if rule_names.contains(&n) || n == "catch-all" {
            return Err(format!("backend names {:?} collide as Kubernetes names ({n:?})", b.name));
        }
        rule_names.push(n);
    }

    let (ns, name) = (opts.namespace.as_str(), opts.name.as_str());
    let client_header = client_header(opts);
    let security_policy = match &opts.consumers {
        Some(c) => consumers_security_policy(c, opts)?,
        None => default_security_policy(opts),
    };
    let env_keys = env_keys(plugin);
    let max_body = plugin_map.get("max_request_body_bytes").and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_BODY);
    let buffer = format!("{}Mi", max_body.div_ceil(1 << 20) + 18);
    let wasm_filter = format!("envoy.filters.http.wasm/envoyextensionpolicy/{ns}/{name}/wasm/0");
    let xds_name = format!("{ns}/{name}/http");

    let mut out = String::new();
    out += &format!(
        "# llmgw on Envoy Gateway: one Gateway, the llmgw Wasm filter from an OCI image, and the
# providers its configuration names. Rendered by `llmgw render --target envoy-gateway`; see
# README.md next to this file for the install order, how the pieces connect and how to roll a
# new filter version.
#
#   client --(API key)--> Gateway {name}, listener http (:{port})
#     api_key_auth (SecurityPolicy)   checks the key, forwards its client id in {client_header}
#     wasm llmgw (EnvoyExtensionPolicy) reads the body's model, sets {BACKEND_HEADER}: <backend>
#     ratelimit (BackendTrafficPolicy) checks the client's token budget, charges it at stream end
#     router: HTTPRoute rule whose {BACKEND_HEADER} header matches -> that backend
#
# Namespace: {ns}. Gateway: {name}. Filter image: {image}.
#
# Secrets: this file contains none and references two, which you create first (README.md):
{secret_help}---
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
# The Envoy Gateway controller runs every Gateway of this class.
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: {name}
spec:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
",
        port = opts.port,
        image = opts.image,
        secret_help = secret_commands(plugin, opts).iter().map(|l| format!("#   {l}\n")).collect::<String>(),
    );

    if !env_keys.is_empty() {
        out += &format!(
            "---
# The Envoy proxy pods of the Gateway: the keys of the Secret {name}-upstream-keys (which you
# create, see the top of this file) become environment variables of the envoy container, where
# the Wasm VM reads them (EnvoyExtensionPolicy env.hostKeys; the plugin configuration's *_env).
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata:
  name: {name}
  namespace: {ns}
spec:
  provider:
    type: Kubernetes
    kubernetes:
      envoyDeployment:
        container:
          env:
"
        );
        for k in &env_keys {
            out += &format!(
                "            - name: {k}
              valueFrom:
                secretKeyRef:
                  name: {name}-upstream-keys
                  key: {k}
"
            );
            if OPTIONAL_KEYS.contains(&k.as_str()) {
                out += "                  optional: true\n";
            }
        }
    }

    out += &format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {ns}
spec:
  gatewayClassName: {name}
"
    );
    if !env_keys.is_empty() {
        out += &format!(
            "  infrastructure:
    parametersRef:
      group: gateway.envoyproxy.io
      kind: EnvoyProxy
      name: {name}
"
        );
    }
    out += &format!(
        "  listeners:
    # Envoy Gateway names the generated xDS listener and route configuration
    # \"{xds_name}\" (<namespace>/<gateway>/<listener>): the EnvoyPatchPolicy below uses it.
    - name: http
      protocol: HTTP
      port: {port}
---
# Downstream limits: LLM request bodies are large (long prompts, images). The filter answers
# 413 itself above its max_request_body_bytes ({max_mib} MiB here), so Envoy's own buffer must
# be larger; streams may pause for minutes between tokens.
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  targetRefs:
    - group: gateway.networking.k8s.io
      kind: Gateway
      name: {name}
  connection:
    bufferLimit: {buffer}
  timeout:
    http:
      streamIdleTimeout: 300s
{security_policy}",
        port = opts.port,
        max_mib = fmt_mib(max_body),
    );

    // Backends, and each one's HTTPRoute backendRef.
    let mut refs = Vec::new();
    for (b, rule) in ordered.iter().zip(&rule_names) {
        if let Some((svc, port)) = in_cluster_service(b, ns) {
            refs.push(format!("        - name: {svc}\n          port: {port}\n"));
            continue;
        }
        let all_ip = b.endpoints.iter().all(|(h, _)| is_ipv4(h));
        if !all_ip && b.endpoints.iter().any(|(h, _)| is_ipv4(h)) {
            return Err(format!("backend {:?} mixes IP and DNS endpoints", b.name));
        }
        let hosts: Vec<String> = b.endpoints.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        let how = if b.tls { " over TLS, verified against the system CA bundle" } else { "" };
        out += &format!(
            "---
# Backend \"{bname}\": {hosts}{how}.
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata:
  name: {rule}
  namespace: {ns}
spec:
  endpoints:
",
            bname = b.name,
            hosts = hosts.join(", "),
        );
        for (h, p) in &b.endpoints {
            if all_ip {
                out += &format!("    - ip:\n        address: {h}\n        port: {p}\n");
            } else {
                check_hostname(h)?;
                out += &format!("    - fqdn:\n        hostname: {h}\n        port: {p}\n");
            }
        }
        if b.tls {
            let sni = &b.endpoints[0].0;
            if all_ip {
                out += "  tls:\n    wellKnownCACertificates: System\n";
            } else {
                out += &format!("  tls:\n    sni: {sni}\n    wellKnownCACertificates: System\n");
            }
        }
        refs.push(format!("        - group: gateway.envoyproxy.io\n          kind: Backend\n          name: {rule}\n"));
    }

    // A YAML single-quoted string: its quotes are doubled.
    let no_route = no_route_body(plugin_map).replace('\'', "''");
    out += &format!(
        "---
# What a request that no backend rule matches gets (the filter answers /v1/* and Anthropic's
# prefix itself, so this is only reached by paths it passes through).
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: HTTPRouteFilter
metadata:
  name: {name}-no-route
  namespace: {ns}
spec:
  directResponse:
    statusCode: 404
    contentType: application/json
    body:
      type: Inline
      inline: '{no_route}'
---
# One rule per backend of the plugin configuration, matching the {BACKEND_HEADER} header the
# filter sets, plus a catch-all rule. A request first matches the catch-all (the header is not
# there yet, and the filter strips a client's copy): that route enables the filter chain
# (Envoy picks the filters of a request from its first route). The filter then sets the header
# and clears the route cache, and the request is routed again, to the backend's rule, which
# wins over the catch-all because it has one more header match.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: {ns}
spec:
  parentRefs:
    - name: {name}
  rules:
"
    );
    for ((b, rule), backend_ref) in ordered.iter().zip(&rule_names).zip(&refs) {
        out += &format!(
            "    - name: {rule}
      matches:
        - path:
            type: PathPrefix
            value: /
          headers:
            - type: Exact
              name: {BACKEND_HEADER}
              value: {value}
      filters:
        # The gateway's routing headers never reach a provider. (The client id stays: the token
        # budget's charge reads it when the response ends.)
        - type: RequestHeaderModifier
          requestHeaderModifier:
            remove: [{BACKEND_HEADER}, {MODEL_HEADER}]
",
            value = scalar(&Value::String(b.name.clone())),
        );
        if b.tls && in_cluster_service(b, ns).is_none() {
            let host = b.host_rewrite.clone().unwrap_or_else(|| b.endpoints[0].0.clone());
            let host = strip_port(&host);
            check_hostname(host)?;
            out += &format!(
                "        # The provider checks the Host header.
        - type: URLRewrite
          urlRewrite:
            hostname: {host}
"
            );
        }
        out += "      backendRefs:\n";
        out += backend_ref;
    }
    out += &format!(
        "    - name: catch-all
      matches:
        - path:
            type: PathPrefix
            value: /
      filters:
        - type: ExtensionRef
          extensionRef:
            group: gateway.envoyproxy.io
            kind: HTTPRouteFilter
            name: {name}-no-route
---
# The llmgw filter: the OCI image that `make oci` builds, with the plugin configuration inline
# (JSON, filter/README.md). Envoy Gateway pulls the image, checks its digest, serves plugin.wasm to
# the proxies and adds the filter to the listener as
#   {wasm_filter}
# (disabled there, enabled on every route of the HTTPRoute).
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  targetRefs:
    - group: gateway.networking.k8s.io
      kind: HTTPRoute
      name: {name}
  wasm:
    - name: llmgw
      rootID: llmgw
      code:
        type: Image
        image:
          url: {image}
",
        image = opts.image,
    );
    if digest.bytes().all(|c| c == b'0') {
        out += "          # sha256 of the image manifest (`make oci` prints it). Placeholder: `llmgw render
          # --digest` fills in the real one; Envoy Gateway refuses an image that does not match.
";
    } else {
        out += "          # sha256 of the image manifest (`make oci` prints it); Envoy Gateway refuses an
          # image that does not match.
";
    }
    out += &format!(
        "          sha256: \"{digest}\"
      # A filter that cannot run must not let requests through unrouted.
      failOpen: false
"
    );
    if !env_keys.is_empty() {
        out += "      env:\n        hostKeys:\n";
        for k in &env_keys {
            out += &format!("          - {k}\n");
        }
    }
    // JSON (which is YAML too): the filter takes JSON only, and Envoy Gateway passes it on as JSON.
    let json = serde_json::to_string_pretty(&with_header(plugin, client_header))
        .map_err(|e| format!("the plugin configuration: {e}"))?;
    out += "      config: ";
    for (i, line) in json.lines().enumerate() {
        if i > 0 {
            out += "\n        ";
        }
        out += line;
    }
    out += "\n";
    out += &format!(
        "---
# What Envoy Gateway does not expose, patched into the xDS it generates:
#  1. allow_on_headers_stop_iteration: true on the llmgw filter: it routes from the body, so
#     it sets {BACKEND_HEADER} and :path in the body callback after on_request_headers returned
#     StopIteration; without it Envoy would pass the headers on unrouted.
#  2. failure_policy: FAIL_RELOAD on the llmgw filter: a VM that fails (a trap) is replaced by
#     a fresh one on that worker's next request (at most once a second; requests meanwhile get
#     503), instead of answering 503 for good; a failed filter never lets requests through.
#  3. The token budget's charge: the BackendTrafficPolicy below makes the rate limit entry that
#     runs when the stream is done read its cost from dynamic metadata, which a Wasm filter
#     cannot write; this points it at the filter state the filter does write,
#     wasm.llm_total_token (the response's total tokens).
# Needs EnvoyPatchPolicy enabled in Envoy Gateway (extensionApis.enableEnvoyPatchPolicy).
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyPatchPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  targetRef:
    group: gateway.networking.k8s.io
    kind: Gateway
    name: {name}
  type: JSONPatch
  jsonPatches:
    - type: type.googleapis.com/envoy.config.listener.v3.Listener
      name: {xds_name}
      operation:
        op: add
        jsonPath: \"..http_filters[?(@.name == '{wasm_filter}')]\"
        path: /typed_config/config/allow_on_headers_stop_iteration
        value: true
    - type: type.googleapis.com/envoy.config.listener.v3.Listener
      name: {xds_name}
      operation:
        op: add
        jsonPath: \"..http_filters[?(@.name == '{wasm_filter}')]\"
        path: /typed_config/config/failure_policy
        value: FAIL_RELOAD
    - type: type.googleapis.com/envoy.config.route.v3.RouteConfiguration
      name: {xds_name}
      operation:
        op: replace
        jsonPath: \"..rate_limits[?(@.apply_on_stream_done == true)].hits_addend\"
        path: /format
        value: \"%FILTER_STATE(wasm.llm_total_token:PLAIN)%\"
{extra_clusters}---
# Upstream limits and the token budget: each client id ({client_header}, set by the
# SecurityPolicy) may spend `requests` tokens per `unit`, across all backends (shared). The
# request is checked with cost 0 before it is sent (429 once the budget is spent); when the
# response ends, its total tokens are charged (response cost; see the EnvoyPatchPolicy). Needs
# Envoy Gateway's global rate limit service (rateLimit in the EnvoyGateway configuration).
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  targetRefs:
    - group: gateway.networking.k8s.io
      kind: HTTPRoute
      name: {name}
  connection:
    bufferLimit: {buffer}
  timeout:
    http:
      requestTimeout: 300s
  rateLimit:
    type: Global
    global:
      rules:
        - clientSelectors:
            - headers:
                - name: {client_header}
                  type: Distinct
          limit:
            requests: 200000
            unit: Hour
          shared: true
          cost:
            request:
              from: Number
              number: 0
            response:
              from: Metadata
              metadata:
                namespace: io.llmgw
                key: llm_total_token
",
        extra_clusters = extra_clusters(&opts.clusters)?
    );
    Ok(out)
}

/// What a request no route takes gets (the filter answers its own paths, Anthropic's under the
/// configuration's `anthropic_prefix` too, so only other paths get here): the served paths, from
/// the filter's own list.
pub fn no_route_body(plugin: &serde_json::Map<String, Value>) -> String {
    let prefix =
        plugin.get("anthropic_prefix").and_then(Value::as_str).unwrap_or(llmgw_filter::api::DEFAULT_ANTHROPIC_PREFIX);
    let message = format!("no route: llmgw handles {}", llmgw_filter::api::Endpoint::served_list(prefix));
    serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": "no_route"}}).to_string()
}

/// The plugin configuration as the Gateway runs it: every backend also forwards the client id
/// header (`forward_headers`), which the filter would otherwise remove with the other client
/// headers, while the rate limit filter after it reads the client's budget from it (before the
/// request, and again when the response ends to charge it). So the provider sees the client id
/// (a name such as `team-a`, never the key).
pub fn with_client_header(plugin: &Value) -> Value {
    with_header(plugin, CLIENT_HEADER)
}

/// [`with_client_header`] for any header (the consumer header with `consumers:`).
pub fn with_header(plugin: &Value, header: &str) -> Value {
    let mut plugin = plugin.clone();
    let backends = plugin.get_mut("backends").and_then(Value::as_array_mut);
    for b in backends.into_iter().flatten().filter_map(Value::as_object_mut) {
        let list = b.entry("forward_headers").or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            if !list.iter().any(|h| h.as_str().is_some_and(|h| h.eq_ignore_ascii_case(header))) {
                list.push(Value::String(header.into()));
            }
        }
    }
    plugin
}

/// The rules (`rules[i]`, with the name when there is one) that are fallback rules: with a
/// `retry`, or with backends of more than one priority.
pub fn fallback_rules(plugin: &Value) -> Vec<String> {
    let rules = plugin.get("rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    rules
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            let mut priorities: Vec<u64> = r
                .get("backends")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|b| b.get("priority").and_then(Value::as_u64).unwrap_or(0))
                .collect();
            priorities.sort_unstable();
            priorities.dedup();
            r.get("retry").is_some_and(|v| !v.is_null()) || priorities.len() > 1
        })
        .map(|(i, r)| match r.get("name").and_then(Value::as_str) {
            Some(n) => format!("rules[{i}] ({n})"),
            None => format!("rules[{i}]"),
        })
        .collect()
}

/// The path of the first literal credential of the plugin configuration (`auth.bearer`,
/// `auth.aws.secret_access_key`, ...), if any.
pub fn literal_credential(plugin: &Value) -> Option<String> {
    let backends = plugin.get("backends")?.as_array()?;
    for (i, b) in backends.iter().enumerate() {
        let Some(auth) = b.get("auth").and_then(Value::as_object) else { continue };
        for k in ["bearer", "api_key", "x_api_key"] {
            if auth.contains_key(k) {
                return Some(format!("backends[{i}].auth.{k}"));
            }
        }
        let Some(aws) = auth.get("aws").and_then(Value::as_object) else { continue };
        for k in ["access_key_id", "secret_access_key", "session_token"] {
            if aws.contains_key(k) {
                return Some(format!("backends[{i}].auth.aws.{k}"));
            }
        }
    }
    None
}

/// Variables the filter may find missing without failing (optional `secretKeyRef`s).
const OPTIONAL_KEYS: &[&str] = &["AWS_SESSION_TOKEN"];

/// Every `*_env` value of the plugin configuration (environment variables the VM reads), and the
/// standard AWS variables an `aws` credential without keys falls back to; sorted.
pub fn env_keys(plugin: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        Value::String(s) if k.ends_with("_env") => out.push(s.clone()),
                        Value::Object(aws) if k == "aws" => {
                            for (field, var) in [
                                ("access_key_id", "AWS_ACCESS_KEY_ID"),
                                ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                                ("session_token", "AWS_SESSION_TOKEN"),
                            ] {
                                if !aws.contains_key(field) && !aws.contains_key(&format!("{field}_env")) {
                                    out.push(var.to_string());
                                }
                            }
                            walk(v, out);
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(plugin, &mut out);
    out.sort();
    out.dedup();
    out
}

/// The commands that create the two Secrets the manifests reference (upstream credentials, if
/// the configuration reads any, and client API keys), with no secret in them: values come from
/// the operator's environment or are generated.
pub fn secret_commands(plugin: &Value, opts: &EgOptions) -> Vec<String> {
    let (ns, name) = (&opts.namespace, &opts.name);
    let mut out = vec![format!("kubectl create namespace {ns}")];
    let keys = env_keys(plugin);
    if !keys.is_empty() {
        let literals: Vec<String> = keys
            .iter()
            .filter(|k| !OPTIONAL_KEYS.contains(&k.as_str()))
            .map(|k| format!("--from-literal={k}=\"${k}\""))
            .collect();
        out.push(format!("kubectl -n {ns} create secret generic {name}-upstream-keys {}", literals.join(" ")));
    }
    match &opts.consumers {
        None => out.push(format!(
            "kubectl -n {ns} create secret generic {name}-client-keys --from-literal=team-a=\"$(openssl rand -hex 24)\" \
             --from-literal=team-b=\"$(openssl rand -hex 24)\""
        )),
        Some(c) if !c.api_keys.is_empty() => {
            let literals: Vec<String> =
                c.api_keys.iter().map(|(client, value)| format!("--from-literal={client}={value}")).collect();
            out.push(format!("kubectl -n {ns} create secret generic {name}-client-keys {}", literals.join(" ")));
        }
        Some(_) => {}
    }
    out
}

fn client_header(opts: &EgOptions) -> &'static str {
    if opts.consumers.is_some() {
        CONSUMER_HEADER
    } else {
        CLIENT_HEADER
    }
}

fn default_security_policy(opts: &EgOptions) -> String {
    let (ns, name, client_header) = (&opts.namespace, &opts.name, CLIENT_HEADER);
    format!(
        "---
# Client API keys, from the Secret {name}-client-keys that you create (see the top of this
# file): each key of the Secret is a client id, its value the key the client sends as
# `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>`.
# Targets the Gateway, so it applies to every route, including the catch-all one the request
# first matches (see the HTTPRoute). The client id travels on in {client_header}, which the
# token budget below is keyed on; the key itself is removed (sanitize).
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  targetRefs:
    - group: gateway.networking.k8s.io
      kind: Gateway
      name: {name}
  apiKeyAuth:
    credentialRefs:
      - name: {name}-client-keys
    extractFrom:
      - headers:
          - authorization
          - x-api-key
    forwardClientIDHeader: {client_header}
    sanitize: true
"
    )
}

// SecurityPolicy (gateway.envoyproxy.io/v1alpha1), the fields llmgw sets, as in the CRD.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SecurityPolicy<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    spec: SecuritySpec<'a>,
}

#[derive(serde::Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SecuritySpec<'a> {
    target_refs: Vec<TargetRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_auth: Option<ApiKeyAuth<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt: Option<JwtAuth<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization: Option<Authorization<'a>>,
}

#[derive(serde::Serialize)]
struct TargetRef<'a> {
    group: &'static str,
    kind: &'static str,
    name: &'a str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiKeyAuth<'a> {
    credential_refs: Vec<SecretRef>,
    extract_from: Vec<ExtractFrom>,
    #[serde(rename = "forwardClientIDHeader")]
    forward_client_id_header: &'a str,
    sanitize: bool,
}

#[derive(serde::Serialize)]
struct SecretRef {
    name: String,
}

#[derive(serde::Serialize)]
struct ExtractFrom {
    headers: Vec<&'static str>,
}

#[derive(serde::Serialize)]
struct JwtAuth<'a> {
    providers: Vec<JwtProvider<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct JwtProvider<'a> {
    name: &'a str,
    issuer: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    audiences: &'a [String],
    #[serde(rename = "localJWKS", skip_serializing_if = "Option::is_none")]
    local_jwks: Option<LocalJwks<'a>>,
    #[serde(rename = "remoteJWKS", skip_serializing_if = "Option::is_none")]
    remote_jwks: Option<RemoteJwks<'a>>,
    claim_to_headers: Vec<ClaimToHeader<'a>>,
}

#[derive(serde::Serialize)]
struct LocalJwks<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    inline: &'a str,
}

#[derive(serde::Serialize)]
struct RemoteJwks<'a> {
    uri: &'a str,
}

#[derive(serde::Serialize)]
struct ClaimToHeader<'a> {
    claim: &'static str,
    header: &'a str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Authorization<'a> {
    default_action: &'static str,
    rules: Vec<AuthorizationRule<'a>>,
}

#[derive(serde::Serialize)]
struct AuthorizationRule<'a> {
    name: String,
    action: &'static str,
    principal: Principal<'a>,
}

#[derive(serde::Serialize)]
struct Principal<'a> {
    jwt: JwtPrincipal<'a>,
}

#[derive(serde::Serialize)]
struct JwtPrincipal<'a> {
    provider: &'a str,
    claims: Vec<Claim<'a>>,
}

#[derive(serde::Serialize)]
struct Claim<'a> {
    name: &'static str,
    values: Vec<&'a str>,
}

/// The SecurityPolicy of `consumers:`, built as a typed value: API keys from the Secret
/// `<name>-client-keys` (the consumer names are its keys), or JWT providers whose `sub` goes to
/// the consumer header, with an authorization rule per provider where a `subject` is required.
/// Envoy Gateway runs every method a SecurityPolicy names and a request must pass each, so API key
/// and JWT consumers together (either one passes with `llmgw run`) are refused.
fn consumers_security_policy(c: &EgConsumers, opts: &EgOptions) -> Result<String, String> {
    if !c.api_keys.is_empty() && !c.jwt.is_empty() {
        return Err("consumers with API keys and consumers with JWTs together: Envoy Gateway's SecurityPolicy \
             requires every method it names (a request would need a key and a token), while `llmgw run` \
             accepts either. Render one kind of consumer for Envoy Gateway"
            .into());
    }
    let name = opts.name.as_str();
    let api_key_auth = (!c.api_keys.is_empty()).then(|| ApiKeyAuth {
        credential_refs: vec![SecretRef { name: format!("{name}-client-keys") }],
        extract_from: vec![ExtractFrom { headers: vec!["authorization", "x-api-key"] }],
        forward_client_id_header: CONSUMER_HEADER,
        sanitize: true,
    });
    let providers: Vec<JwtProvider<'_>> = c
        .jwt
        .iter()
        .map(|j| JwtProvider {
            name: &j.name,
            issuer: &j.issuer,
            audiences: &j.audiences,
            local_jwks: match &j.jwks {
                EgJwks::Inline(text) => Some(LocalJwks { kind: "Inline", inline: text }),
                EgJwks::Remote(_) => None,
            },
            remote_jwks: match &j.jwks {
                EgJwks::Remote(uri) => Some(RemoteJwks { uri }),
                EgJwks::Inline(_) => None,
            },
            claim_to_headers: vec![ClaimToHeader { claim: "sub", header: CONSUMER_HEADER }],
        })
        .collect();
    let authorization = c.jwt.iter().any(|j| j.subject.is_some()).then(|| Authorization {
        default_action: "Deny",
        rules: c
            .jwt
            .iter()
            .map(|j| AuthorizationRule {
                name: format!("consumer-{}", j.name),
                action: "Allow",
                principal: Principal {
                    jwt: JwtPrincipal {
                        provider: &j.name,
                        // The CRD wants a claim or scope: without a subject, the issuer (which
                        // every token the provider verified carries) allows the provider's tokens.
                        claims: vec![match &j.subject {
                            Some(sub) => Claim { name: "sub", values: vec![sub.as_str()] },
                            None => Claim { name: "iss", values: vec![j.issuer.as_str()] },
                        }],
                    },
                },
            })
            .collect(),
    });
    let policy = SecurityPolicy {
        api_version: "gateway.envoyproxy.io/v1alpha1",
        kind: "SecurityPolicy",
        metadata: Metadata { name, namespace: &opts.namespace },
        spec: SecuritySpec {
            target_refs: vec![TargetRef { group: "gateway.networking.k8s.io", kind: "Gateway", name }],
            api_key_auth,
            jwt: (!providers.is_empty()).then_some(JwtAuth { providers }),
            authorization,
        },
    };
    let yaml = serde_yaml_ng::to_string(&policy).map_err(|e| format!("cannot serialize the SecurityPolicy: {e}"))?;
    let comment = if c.jwt.is_empty() {
        format!(
            "# Consumers (API keys), from the Secret {name}-client-keys that you create (see the top of this\n\
             # file): each key of the Secret is a consumer, its value the key the client sends as\n\
             # `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>`. The consumer's name\n\
             # travels on in {CONSUMER_HEADER}; the key itself is removed (sanitize).\n"
        )
    } else {
        format!(
            "# Consumers (JWT): one provider per consumer; the token's `sub` travels on in {CONSUMER_HEADER}\n\
             # (Envoy Gateway forwards claims, not fixed names: give JWT consumers their subject as name).\n"
        )
    };
    Ok(format!("---\n{comment}{yaml}"))
}

fn fmt_mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{}", bytes >> 20)
    } else {
        format!("{:.1}", bytes as f64 / f64::from(1u32 << 20))
    }
}

/// `<svc>.<namespace>.svc[.cluster.local]` of the gateway's namespace, one plain-HTTP endpoint.
fn in_cluster_service(b: &EgBackend, ns: &str) -> Option<(String, u16)> {
    let [(host, port)] = b.endpoints.as_slice() else { return None };
    if b.tls {
        return None;
    }
    let rest = host.strip_suffix(".cluster.local").unwrap_or(host);
    let rest = rest.strip_suffix(".svc")?;
    let (svc, svc_ns) = rest.split_once('.')?;
    (svc_ns == ns && is_dns_label(svc)).then(|| (svc.to_string(), *port))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(format!("{what} {s:?} is not a valid Kubernetes name (lowercase letters, digits, '-')"))
    }
}

fn check_hostname(h: &str) -> Result<(), String> {
    if !h.is_empty() && h.split('.').all(|l| is_dns_label(&l.to_ascii_lowercase())) && h == h.to_ascii_lowercase() {
        Ok(())
    } else {
        Err(format!("{h:?} is not a DNS name Envoy Gateway accepts"))
    }
}

fn is_ipv4(h: &str) -> bool {
    h.parse::<std::net::Ipv4Addr>().is_ok()
}

fn strip_port(h: &str) -> &str {
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|c| c.is_ascii_digit()) && !host.contains(':') => host,
        _ => h,
    }
}

/// A backend name as a Kubernetes object / rule name.
fn dns_label(name: &str) -> String {
    let mut s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .collect();
    s = s.trim_matches('-').to_string();
    s.truncate(63);
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() {
        "backend".into()
    } else {
        s
    }
}

/// A scalar: plain when unambiguous, else a JSON string (which is valid YAML).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            const KEYWORDS: [&str; 12] = ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "", "-"];
            let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c))
                && !KEYWORDS.contains(&s.to_ascii_lowercase().as_str());
            if plain {
                s.clone()
            } else {
                Value::String(s.clone()).to_string()
            }
        }
        other => other.to_string(),
    }
}

/// A token budget as Envoy AI Gateway's QuotaPolicy expresses it: for one model (exact name), one
/// consumer (or each: `*`), `limit` tokens per `duration` (`1s`, `1m`, `1h`, `1d`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgQuota {
    pub budget: String,
    pub consumer: String,
    pub model: String,
    pub limit: u64,
    pub duration: &'static str,
    /// `costExpression`; `None` = total tokens (the CRD's default).
    pub cost: Option<&'static str>,
}

// QuotaPolicy (aigateway.envoyproxy.io/v1alpha1), the fields llmgw sets, as in the CRD.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct QuotaPolicy<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    spec: QuotaSpec<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct QuotaSpec<'a> {
    target_refs: Vec<TargetRef<'a>>,
    per_model_quotas: Vec<PerModelQuota<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PerModelQuota<'a> {
    model_name: &'a str,
    quota: QuotaDefinition<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct QuotaDefinition<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_expression: Option<&'static str>,
    bucket_rules: Vec<BucketRule<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct BucketRule<'a> {
    client_selectors: Vec<ClientSelector<'a>>,
    quota: QuotaValue,
}

#[derive(serde::Serialize)]
struct ClientSelector<'a> {
    headers: Vec<HeaderSelector<'a>>,
}

#[derive(serde::Serialize)]
struct HeaderSelector<'a> {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct QuotaValue {
    duration: &'static str,
    limit: u64,
}

/// The budgets as one QuotaPolicy (a YAML document with its comment) targeting every backend as an
/// AIServiceBackend of the same name; the consumer is matched on [`CONSUMER_HEADER`]. Budgets of
/// one model must count tokens the same way (a QuotaPolicy has one `costExpression` per model).
pub fn quota_policy(quotas: &[EgQuota], backends: &[String], opts: &EgOptions) -> Result<String, String> {
    let mut models: Vec<PerModelQuota<'_>> = Vec::new();
    for q in quotas {
        let rule = BucketRule {
            client_selectors: vec![ClientSelector {
                headers: vec![if q.consumer == "*" {
                    HeaderSelector { name: CONSUMER_HEADER, kind: "Distinct", value: None }
                } else {
                    HeaderSelector { name: CONSUMER_HEADER, kind: "Exact", value: Some(&q.consumer) }
                }],
            }],
            quota: QuotaValue { duration: q.duration, limit: q.limit },
        };
        match models.iter_mut().find(|m| m.model_name == q.model) {
            Some(m) if m.quota.cost_expression != q.cost => {
                return Err(format!(
                    "budget {}: model {} has budgets counting different tokens; a QuotaPolicy counts one way per \
                     model (costExpression)",
                    q.budget, q.model
                ))
            }
            Some(m) => m.quota.bucket_rules.push(rule),
            None => models.push(PerModelQuota {
                model_name: &q.model,
                quota: QuotaDefinition { cost_expression: q.cost, bucket_rules: vec![rule] },
            }),
        }
    }
    let names: Vec<String> = backends.iter().map(|b| dns_label(b)).collect();
    let policy = QuotaPolicy {
        api_version: "aigateway.envoyproxy.io/v1alpha1",
        kind: "QuotaPolicy",
        metadata: Metadata { name: &opts.name, namespace: &opts.namespace },
        spec: QuotaSpec {
            target_refs: names
                .iter()
                .map(|n| TargetRef { group: "aigateway.envoyproxy.io", kind: "AIServiceBackend", name: n })
                .collect(),
            per_model_quotas: models,
        },
    };
    let yaml = serde_yaml_ng::to_string(&policy).map_err(|e| format!("cannot serialize the QuotaPolicy: {e}"))?;
    Ok(format!(
        "---\n# The budgets as Envoy AI Gateway's QuotaPolicy (for its controller, which targets the\n\
         # AIServiceBackends named like the backends): per model, each bucket rule selects a consumer by\n\
         # {CONSUMER_HEADER} (Distinct: each consumer separately).\n{yaml}"
    ))
}
