"""What Envoy Gateway makes of envoy-configs/envoy-gateway/llmgw.yaml, as a static Envoy bootstrap,
so the e2e tests can run the manifests' data path on a real Envoy without a cluster.

This is a small, deliberately literal re-implementation of the parts of Envoy Gateway's xDS
translator (internal/xds/translator in envoyproxy/gateway) that these manifests use, with its
names, so that the EnvoyPatchPolicy of the manifests is applied to the same JSON it would be
applied to there:

* listener and route configuration "<ns>/<gateway>/<listener>" (the default xDS name scheme,
  listener.go xdsListenerName), the HTTP connection manager in `default_filter_chain`;
* HTTP filters in Envoy Gateway's order (httpfilters.go newOrderedHTTPFilter): api_key_auth (7),
  wasm (200 + index), ratelimit (303), router (310);
* the Wasm filter "envoy.filters.http.wasm/<policy ir name>/wasm/<i>" where the IR name is
  "envoyextensionpolicy/<ns>/<name>" (wasm.go wasmFilterName, envoyextensionpolicy.go
  irConfigNameForWasm), `disabled: true` at the listener and enabled per route with
  `FilterConfig{config: {}}` (utils.go enableFilterOnRoute); vm_id = that IR name, the plugin
  configuration = the policy's `config` as JSON in a StringValue, fail_open only when true;
* api_key_auth: disabled at the listener, ApiKeyAuthPerRoute on each route (api_key_auth.go);
* global rate limit: RateLimitPerRoute on each route (ratelimit.go buildRouteRateLimits): a
  generic_key descriptor (BTP name/namespace when `shared`), a request_headers descriptor
  "rule-<r>-match-<m>" per Distinct header, `hits_addend.number` from the request cost and a
  second entry with `apply_on_stream_done: true` and `hits_addend.format`
  "%DYNAMIC_METADATA(<ns>:<key>)%" for a response cost from metadata.

What differs, on purpose: the route configuration is inline instead of RDS; the Wasm code is a
local file instead of Envoy Gateway's HTTP server; the backends are plain-HTTP loopback mock
servers (one cluster per HTTPRoute rule, named like Envoy Gateway's
"httproute/<ns>/<name>/rule/<i>"), so TLS to the provider is not exercised.

JSON Patch with a JSONPath (EnvoyPatchPolicy `operation.jsonPath`) is implemented here for the
subset these manifests use, with Envoy Gateway's semantics (jsonpathtopointer.go): the JSONPath
selects locations, `path` is appended to each, and the operation is applied at each.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "envoy-configs" / "envoy-gateway" / "llmgw.yaml"

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def load(path: Path = MANIFESTS) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


_CREATE_SECRET = re.compile(r"^#\s+kubectl -n (\S+) create secret generic (\S+) (.*)$")
_LITERAL = re.compile(r'--from-literal=([A-Za-z0-9_.\-]+)="([^"]*)"')


def operator_secrets(path: Path = MANIFESTS, env: dict[str, str] | None = None) -> list[dict]:
    """The Secrets the manifests reference but do not contain, as the `kubectl create secret
    generic` commands of their header comment create them: `"$VAR"` takes VAR from `env`,
    `"$(openssl rand -hex 24)"` a random value (as the shell would)."""
    import secrets as _secrets

    env = env or {}
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            if line.startswith("---"):
                break  # the header comment ends at the first document
            continue
        m = _CREATE_SECRET.match(line)
        if not m:
            continue
        ns, name, rest = m.groups()
        data = {}
        for key, value in _LITERAL.findall(rest):
            if value == "$(openssl rand -hex 24)":
                data[key] = _secrets.token_hex(24)
            elif re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", value):
                data[key] = env[value[1:]]
            else:
                raise AssertionError(f"a literal secret value in the manifests' commands: {line}")
        out.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                    "type": "Opaque", "stringData": data})
    return out


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def wasm_filter_name(policy: dict, index: int) -> str:
    m = policy["metadata"]
    return f"envoy.filters.http.wasm/envoyextensionpolicy/{m['namespace']}/{m['name']}/wasm/{index}"


def listener_name(gateway: dict, listener: dict) -> str:
    m = gateway["metadata"]
    return f"{m['namespace']}/{m['name']}/{listener['name']}"


def quantity(q: Any) -> int:
    """A Kubernetes quantity (bufferLimit) in bytes."""
    if isinstance(q, int):
        return q
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", str(q))
    assert m, f"unsupported quantity {q!r}"
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}[m.group(2)]
    return int(m.group(1)) * mult


def seconds(d: str) -> str:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", d)
    assert m, f"unsupported duration {d!r}"
    n = int(m.group(1))
    return {"ms": f"{n / 1000}s", "s": f"{n}s", "m": f"{n * 60}s", "h": f"{n * 3600}s"}[m.group(2)]


def _any(type_name: str, **fields) -> dict:
    return {"@type": "type.googleapis.com/" + type_name, **fields}


# ---------------------------------------------------------------------------------------------
# translation


def translate(docs: list[dict], *, wasm_file: Path, cluster_ports: dict[str, int], rls_port: int,
              patch_types: frozenset[str] | None = None, secrets: list[dict] = ()) -> tuple[dict, dict]:
    """The (listener, route configuration) Envoy Gateway would generate, in proto JSON with proto
    field names, after the EnvoyPatchPolicy patches (only those whose resource type is in
    `patch_types`, when given). `cluster_ports` maps an HTTPRoute rule name to the loopback port of
    the server standing in for its backend; `secrets` are the Secrets the cluster holds besides the
    manifests (the operator's, see `operator_secrets`)."""
    gw = one(docs, "Gateway")
    route = one(docs, "HTTPRoute")
    eep = one(docs, "EnvoyExtensionPolicy")
    sp = one(docs, "SecurityPolicy")
    btp = one(docs, "BackendTrafficPolicy")
    ctp = one(docs, "ClientTrafficPolicy")
    secrets = {d["metadata"]["name"]: d for d in [*docs, *secrets] if d.get("kind") == "Secret"}
    filters_by_name = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "HTTPRouteFilter"}
    ns, rname = route["metadata"]["namespace"], route["metadata"]["name"]
    lst = gw["spec"]["listeners"][0]
    lname = listener_name(gw, lst)

    # --- SecurityPolicy apiKeyAuth -> api_key_auth
    ak = sp["spec"]["apiKeyAuth"]
    creds = []
    for ref in ak["credentialRefs"]:
        for client, key in secrets[ref["name"]]["stringData"].items():
            creds.append({"key": key, "client": client})
    sources = [{"header": h} for e in ak["extractFrom"] for h in e.get("headers", [])]
    forwarding = {"header": ak["forwardClientIDHeader"], "hide_credentials": bool(ak.get("sanitize"))}
    api_key_route_cfg = _any("envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute",
                             credentials=creds, key_sources=sources, forwarding=forwarding)

    # --- EnvoyExtensionPolicy wasm -> wasm filters (listener) + enable (routes)
    wasm_filters, wasm_enable = [], {}
    for i, w in enumerate(eep["spec"]["wasm"]):
        ir_name = f"envoyextensionpolicy/{eep['metadata']['namespace']}/{eep['metadata']['name']}/wasm/{i}"
        vm = {"vm_id": ir_name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm_file)}}}
        if w.get("env", {}).get("hostKeys"):
            vm["environment_variables"] = {"host_env_keys": list(w["env"]["hostKeys"])}
        config = {
            "name": w.get("name", ir_name),
            "vm_config": vm,
            "configuration": _any("google.protobuf.StringValue", value=json.dumps(w.get("config", ""))),
        }
        if w.get("rootID"):
            config["root_id"] = w["rootID"]
        if w.get("failOpen"):
            config["fail_open"] = True
        name = wasm_filter_name(eep, i)
        wasm_filters.append({"name": name, "disabled": True,
                             "typed_config": _any("envoy.extensions.filters.http.wasm.v3.Wasm", config=config)})
        wasm_enable[name] = _any("envoy.config.route.v3.FilterConfig", config={})

    # --- BackendTrafficPolicy rateLimit -> RateLimitPerRoute
    rl = btp["spec"]["rateLimit"]["global"]

    def rate_limits(route_name: str) -> list[dict]:
        out = []
        for r_idx, rule in enumerate(rl["rules"]):
            if rule.get("shared"):
                key, value = btp["metadata"]["name"], btp["metadata"]["namespace"]
            else:
                key = value = route_name
            actions = [{"generic_key": {"descriptor_key": key, "descriptor_value": value}}]
            m_idx = 0
            for sel in rule.get("clientSelectors", []):
                for h in sel.get("headers", []):
                    assert h.get("type") == "Distinct", "only Distinct header selectors are translated here"
                    actions.append({"request_headers": {"header_name": h["name"],
                                                        "descriptor_key": f"rule-{r_idx}-match-{m_idx}"}})
                    m_idx += 1
            cost = rule.get("cost", {})
            entry = {"actions": actions}
            if "request" in cost:
                entry["hits_addend"] = _cost(cost["request"])
            out.append(entry)
            if "response" in cost:
                out.append({"actions": actions, "apply_on_stream_done": True, "hits_addend": _cost(cost["response"])})
        return out

    timeout = btp["spec"].get("timeout", {}).get("http", {}).get("requestTimeout")

    # --- HTTPRoute -> routes and clusters
    routes, clusters = [], []
    for r_idx, rule in enumerate(route["spec"]["rules"]):
        cluster = f"httproute/{ns}/{rname}/rule/{r_idx}"
        for m_idx, match in enumerate(rule.get("matches", [{}])):
            path = match.get("path", {"type": "PathPrefix", "value": "/"})
            assert path["type"] == "PathPrefix" and path["value"] == "/", "only PathPrefix / is translated here"
            xmatch: dict[str, Any] = {"prefix": "/"}
            if match.get("headers"):
                xmatch["headers"] = [{"name": h["name"], "string_match": {"exact": h["value"]}}
                                     for h in match["headers"] if h.get("type", "Exact") == "Exact"]
            xroute: dict[str, Any] = {"name": f"{cluster}/match/{m_idx}/*", "match": xmatch}
            direct = None
            host_rewrite = None
            for f in rule.get("filters", []):
                if f["type"] == "ExtensionRef" and f["extensionRef"]["kind"] == "HTTPRouteFilter":
                    direct = filters_by_name[f["extensionRef"]["name"]]["spec"]["directResponse"]
                elif f["type"] == "URLRewrite":
                    host_rewrite = f["urlRewrite"].get("hostname")
                elif f["type"] == "RequestHeaderModifier":
                    # route.go: a route-level header mutation, applied when the route is chosen.
                    mod = f["requestHeaderModifier"]
                    assert not mod.get("set") and not mod.get("add"), "only `remove` is translated here"
                    xroute["request_headers_to_remove"] = list(mod["remove"])
            if direct is not None:
                xroute["direct_response"] = {"status": direct["statusCode"],
                                             "body": {"inline_string": direct["body"]["inline"]}}
                if direct.get("contentType"):
                    xroute["response_headers_to_add"] = [
                        {"header": {"key": "Content-Type", "value": direct["contentType"]},
                         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
            else:
                action: dict[str, Any] = {"cluster": cluster}
                if timeout:
                    action["timeout"] = seconds(timeout)
                if host_rewrite:
                    action["host_rewrite_literal"] = host_rewrite
                xroute["route"] = action
                clusters.append(cluster_for(cluster, cluster_ports[rule["name"]],
                                            quantity(btp["spec"].get("connection", {}).get("bufferLimit", 32768))))
            xroute["typed_per_filter_config"] = {
                "envoy.filters.http.api_key_auth": api_key_route_cfg,
                **wasm_enable,
                "envoy.filters.http.ratelimit": _any("envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
                                                     rate_limits=rate_limits(xroute["name"])),
            }
            routes.append((len(match.get("headers", [])), len(routes), xroute))
    # Gateway API precedence between equal paths: more header matches first (stable otherwise).
    routes.sort(key=lambda t: (-t[0], t[1]))
    route_config = {
        "name": lname,
        "virtual_hosts": [{"name": f"{lname}/*", "domains": ["*"], "routes": [r for _, _, r in routes]}],
        "ignore_port_in_host_matching": True,
    }

    shared = any(r.get("shared") for r in rl["rules"])
    domain = f"{btp['metadata']['name']}-{btp['metadata']['namespace']}" if shared else lname
    http_filters = [
        {"name": "envoy.filters.http.api_key_auth", "disabled": True,
         "typed_config": _any("envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
                              credentials=creds, key_sources=sources, forwarding=forwarding)},
        *wasm_filters,
        {"name": "envoy.filters.http.ratelimit",
         "typed_config": _any("envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                              domain=domain,
                              enable_x_ratelimit_headers="DRAFT_VERSION_03",
                              rate_limit_service={"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit_cluster"}},
                                                  "transport_api_version": "V3"})},
        {"name": "envoy.filters.http.router",
         "typed_config": _any("envoy.extensions.filters.http.router.v3.Router", suppress_envoy_headers=True)},
    ]
    hcm: dict[str, Any] = {
        "stat_prefix": "http",
        "rds": {"config_source": {"ads": {}, "resource_api_version": "V3"}, "route_config_name": lname},
        "http_filters": http_filters,
        "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": _any(
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            log_format={"json_format": {
                "status": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "route": "%ROUTE_NAME%",
                "backend": "%REQ(x-llmgw-backend)%", "client": "%REQ(x-llmgw-client)%",
                "total_tokens": "%FILTER_STATE(wasm.llm_total_token:PLAIN)%", "flags": "%RESPONSE_FLAGS%"}})}],
    }
    stream_idle = ctp["spec"].get("timeout", {}).get("http", {}).get("streamIdleTimeout")
    if stream_idle:
        hcm["stream_idle_timeout"] = seconds(stream_idle)
    listener = {
        "name": lname,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "default_filter_chain": {"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": _any("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                 **hcm)}],
            "name": lname},
        "per_connection_buffer_limit_bytes": quantity(ctp["spec"].get("connection", {}).get("bufferLimit", 32768)),
    }

    for epp in (d for d in docs if d.get("kind") == "EnvoyPatchPolicy"):
        for p in epp["spec"]["jsonPatches"]:
            if patch_types is None or p["type"] in patch_types:
                target = {LISTENER_TYPE: listener, ROUTE_TYPE: route_config}.get(p["type"])
                assert target is not None, f"patch type {p['type']} not simulated"
                assert target["name"] == p["name"], f"EnvoyPatchPolicy names {p['name']!r}; the xDS resource is {target['name']!r}"
                apply_patch(target, p["operation"])

    clusters.append({
        "name": "ratelimit_cluster", "type": "STATIC", "connect_timeout": "5s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", explicit_http_config={"http2_protocol_options": {}})},
        "load_assignment": {"cluster_name": "ratelimit_cluster", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": rls_port}}}}]}]},
    })
    listener["_clusters"] = clusters
    return listener, route_config


def _cost(c: dict) -> dict:
    if c["from"] == "Number":
        return {"number": c.get("number", 0)}
    md = c["metadata"]
    return {"format": f"%DYNAMIC_METADATA({md['namespace']}:{md['key']})%"}


def cluster_for(name: str, port: int, buffer_limit: int) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "10s",
        "per_connection_buffer_limit_bytes": buffer_limit,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def bootstrap(listener: dict, route_config: dict) -> dict:
    """A static bootstrap: the listener with its route configuration inline (instead of RDS)."""
    listener = copy.deepcopy(listener)
    clusters = listener.pop("_clusters")
    hcm = listener["default_filter_chain"]["filters"][0]["typed_config"]
    hcm.pop("rds")
    hcm["route_config"] = copy.deepcopy(route_config)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


# ---------------------------------------------------------------------------------------------
# JSONPath (subset) -> JSON pointers, and JSON Patch


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<dotdot>\.\.)
    | (?P<dot>\.)
    | \[\?\((?P<filter>.*?)\)\]
    | \[(?P<index>-?\d+)\]
    | \[\s*\*\s*\]
    | \[\s*(?P<q>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\s*\]
    | (?P<star>\*)
    | (?P<name>[A-Za-z_@][A-Za-z0-9_\-@]*)
    | (?P<root>\$)
    )""",
    re.X,
)
_FILTER = re.compile(
    r"""\s*@((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*(==|!=|=~)\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|true|false|null|-?\d+(?:\.\d+)?)\s*$"""
)


def _parse(expr: str) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    i, descend = 0, False
    while i < len(expr):
        m = _TOKEN.match(expr, i)
        if not m or m.end() == i:
            raise ValueError(f"unsupported JSONPath at {expr[i:]!r}")
        i = m.end()
        g = m.lastgroup
        if g == "root":
            continue
        if g == "dotdot":
            descend = True
            continue
        if g == "dot":
            continue
        if g == "name":
            step = ("key", m.group("name"))
        elif g == "q":
            step = ("key", json.loads(m.group("q")) if m.group("q")[0] == '"' else m.group("q")[1:-1].replace("\\'", "'"))
        elif g == "index":
            step = ("index", int(m.group("index")))
        elif g == "filter":
            fm = _FILTER.match(m.group("filter"))
            if not fm:
                raise ValueError(f"unsupported JSONPath filter {m.group('filter')!r}")
            lit = fm.group(3)
            value = lit[1:-1] if lit[0] in "'\"" else json.loads(lit)
            step = ("filter", (fm.group(1)[1:].split("."), fm.group(2), value))
        else:  # star, or [*]
            step = ("star", None)
        steps.append(("descend", step) if descend else step)
        descend = False
    return steps


def _children(node: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(node, dict):
        yield from node.items()
    elif isinstance(node, list):
        yield from enumerate(node)


def _apply_step(node: Any, path: list, step: tuple[str, Any]) -> Iterator[tuple[Any, list]]:
    kind, arg = step
    if kind == "key":
        if isinstance(node, dict) and arg in node:
            yield node[arg], path + [arg]
    elif kind == "index":
        if isinstance(node, list) and -len(node) <= arg < len(node):
            yield node[arg], path + [arg % len(node)]
    elif kind == "star":
        for k, v in _children(node):
            yield v, path + [k]
    elif kind == "filter":
        fields, op, value = arg
        for k, v in _children(node):
            cur, ok = v, True
            for f in fields:
                if isinstance(cur, dict) and f in cur:
                    cur = cur[f]
                else:
                    ok = False
                    break
            if not ok:
                continue
            if (op == "==" and cur == value and type(cur) is type(value)) or \
               (op == "!=" and cur != value) or \
               (op == "=~" and isinstance(cur, str) and re.search(value, cur)):
                yield v, path + [k]
    elif kind == "descend":
        stack = [(node, path)]
        while stack:
            n, p = stack.pop(0)
            yield from _apply_step(n, p, arg)
            stack.extend((v, p + [k]) for k, v in _children(n))


def jsonpath_pointers(doc: Any, jsonpath: str, path: str = "") -> list[str]:
    """JSON pointers for every location `jsonpath` selects in `doc`, with `path` appended
    (Envoy Gateway's ConvertPathToPointers)."""
    steps = _parse(jsonpath)
    if not steps:
        raise ValueError("using only the root ('$') in a JSONPath is not allowed")
    locs = [(doc, [])]
    for step in steps:
        locs = [out for n, p in locs for out in _apply_step(n, p, step)]
    pointers = []
    for _, p in locs:
        ptr = "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in p)
        if path:
            ptr = ptr.rstrip("/") + "/" + path.lstrip("/")
        pointers.append(ptr)
    return pointers


def _walk(doc: Any, pointer: str) -> tuple[Any, str | int]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    cur = doc
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    last = parts[-1]
    return cur, (int(last) if isinstance(cur, list) and last != "-" else last)


def apply_patch(doc: Any, op: dict) -> list[str]:
    """Apply one EnvoyPatchPolicy operation in place; returns the pointers it was applied at.
    Raises if the JSONPath selects nothing (Envoy Gateway reports that as an error)."""
    pointers = jsonpath_pointers(doc, op["jsonPath"], op.get("path", "")) if op.get("jsonPath") else [op["path"]]
    if not pointers:
        raise LookupError(f"JSONPath {op['jsonPath']!r} selects nothing")
    for ptr in pointers:
        parent, key = _walk(doc, ptr)
        kind = op["op"]
        if kind == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if key == "-" else key, copy.deepcopy(op["value"]))
            else:
                parent[key] = copy.deepcopy(op["value"])
        elif kind == "replace":
            if isinstance(parent, dict) and key not in parent:
                raise LookupError(f"replace: {ptr} does not exist")
            parent[key] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[key]
        elif kind == "test":
            if parent[key] != op["value"]:
                raise AssertionError(f"test failed at {ptr}")
        else:
            raise ValueError(f"unsupported op {kind}")
    return pointers
