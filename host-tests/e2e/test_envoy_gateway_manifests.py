"""The Envoy Gateway manifests (envoy-configs/envoy-gateway/): every document validates against the
OpenAPI schema of its CRD from ../shared/crds (Envoy Gateway and Gateway API) with a real JSON
Schema validator; the pieces refer to each other consistently; the EnvoyPatchPolicy's JSONPaths
select exactly what they are meant to in the xDS Envoy Gateway generates; and the plugin
configuration inline in the EnvoyExtensionPolicy (JSON) is accepted by the real filter in Envoy and
routes to both backends; the manifests hold no secret, and the Secrets they reference are the ones
the `kubectl create secret` commands of their header create.

Schema conversion (CRD structural schema -> JSON Schema): `nullable` adds "null" to the type,
`x-kubernetes-int-or-string` allows an integer or a string, `x-kubernetes-preserve-unknown-fields`
allows any member, and every other object schema with `properties` rejects unknown fields (as
`kubectl apply`'s strict field validation does). The CRDs' CEL rules (`x-kubernetes-validations`)
are evaluated too, with cel-python, after applying the schema defaults as the API server does;
transition rules (`oldSelf`) are skipped (they need a previous object). Not checked: `format`.
Built-in kinds (Namespace, Secret, Service, Deployment) and EnvoyProxy, whose CRD is not among
../shared/crds, are checked against small schemas written here for the fields used.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import celpy
import jsonschema
import pytest
import yaml
from celpy import celtypes

sys.path.insert(0, str(Path(__file__).parent))

import eg_xds  # noqa: E402
import llmgw_e2e as e2e  # noqa: E402

EG_DIR = e2e.REPO / "envoy-configs" / "envoy-gateway"
CRDS = Path(os.environ.get("LLMGW_CRDS", e2e.REPO.parent / "shared" / "crds"))
MANIFEST_FILES = [EG_DIR / "llmgw.yaml", EG_DIR / "vllm.yaml"]
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def documents() -> list[tuple[str, int, dict]]:
    out = []
    for f in MANIFEST_FILES:
        for i, d in enumerate(d for d in yaml.safe_load_all(f.read_text()) if d):
            out.append((f.name, i, d))
    return out


DOCS = documents()
LLMGW = eg_xds.load()
UPSTREAM_KEY = "sk-from-the-operators-environment"
OPERATOR_SECRETS = eg_xds.operator_secrets(env={"OPENAI_API_KEY": UPSTREAM_KEY})


# ---------------------------------------------------------------------------------------------
# schemas


@lru_cache(maxsize=None)
def crds() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> (openAPIV3Schema, scope) for every served version of every CRD."""
    if not CRDS.is_dir():
        pytest.skip(f"CRDs not found at {CRDS} (set LLMGW_CRDS)")
    out = {}
    for f in sorted(CRDS.glob("*/*.yaml")):
        for crd in yaml.load_all(f.read_text(), Loader=Loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                if v.get("served", True):
                    out[(f"{group}/{v['name']}", kind)] = (v["schema"]["openAPIV3Schema"], crd["spec"]["scope"])
    return out


_KEEP = {"type", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems",
         "uniqueItems", "required", "minProperties", "maxProperties", "multipleOf"}


def to_jsonschema(s: dict) -> dict:
    """A CRD structural schema as JSON Schema (see the module doc)."""
    out: dict = {k: v for k, v in s.items() if k in _KEEP}
    for k in ("exclusiveMinimum", "exclusiveMaximum"):  # OpenAPI 3.0 booleans
        if s.get(k) is True:
            bound = "minimum" if k == "exclusiveMinimum" else "maximum"
            out[k] = out.pop(bound)
    if "properties" in s:
        out["properties"] = {k: to_jsonschema(v) for k, v in s["properties"].items()}
    if "items" in s:
        out["items"] = to_jsonschema(s["items"])
    for k in ("allOf", "anyOf", "oneOf"):
        if k in s:
            out[k] = [to_jsonschema(x) for x in s[k]]
    if "not" in s:
        out["not"] = to_jsonschema(s["not"])
    preserve = s.get("x-kubernetes-preserve-unknown-fields") is True
    if isinstance(s.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(s["additionalProperties"])
    elif "properties" in s and not preserve and s.get("additionalProperties") is not True:
        out["additionalProperties"] = False
    if s.get("x-kubernetes-int-or-string") and "type" not in s:
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if s.get("x-kubernetes-embedded-resource"):
        out.pop("additionalProperties", None)
    return out


NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", "maxLength": 253}
METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def obj(props: dict, required=(), extra=False) -> dict:
    s = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        s["required"] = list(required)
    return s


# Built-in kinds: the fields these manifests use (Kubernetes core/apps v1).
BUILTIN = {
    ("v1", "Namespace"): (obj({}), "Cluster"),
    ("v1", "Secret"): (obj({"type": {"type": "string"}, "stringData": STRING_MAP, "data": STRING_MAP}), "Namespaced"),
    ("v1", "Service"): (obj({"spec": obj({
        "selector": STRING_MAP,
        "ports": {"type": "array", "items": obj({
            "name": {"type": "string"}, "port": {"type": "integer"}, "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
            "targetPort": {"type": ["integer", "string"]}}, ["port"])}}, ["ports"])}), "Namespaced"),
    ("apps/v1", "Deployment"): (obj({"spec": obj({
        "replicas": {"type": "integer"},
        "selector": obj({"matchLabels": STRING_MAP}, ["matchLabels"]),
        "template": obj({"metadata": obj({"labels": STRING_MAP}), "spec": obj({
            "containers": {"type": "array", "minItems": 1, "items": obj(
                {"name": {"type": "string"}, "image": {"type": "string"}}, ["name", "image"], extra=True)}},
            ["containers"], extra=True)}, ["spec"])}, ["selector", "template"])}), "Namespaced"),
}

# EnvoyProxy (gateway.envoyproxy.io/v1alpha1): its CRD is not in ../shared/crds. The fields used,
# from Envoy Gateway's API types (api/v1alpha1/envoyproxy_types.go EnvoyProxyProvider,
# EnvoyProxyKubernetesProvider.EnvoyDeployment, shared_types.go KubernetesDeploymentSpec.Container,
# KubernetesContainerSpec.Env []corev1.EnvVar).
ENV_VAR = obj({"name": {"type": "string", "minLength": 1}, "value": {"type": "string"},
               "valueFrom": obj({"secretKeyRef": obj({"name": {"type": "string"}, "key": {"type": "string"},
                                                      "optional": {"type": "boolean"}}, ["key"])})}, ["name"])
ENVOY_PROXY = obj({"spec": obj({"provider": obj({
    "type": {"enum": ["Kubernetes", "Host"]},
    "kubernetes": obj({"envoyDeployment": obj({"container": obj({
        "env": {"type": "array", "items": ENV_VAR}, "image": {"type": "string"}})})})}, ["type"])})})
BUILTIN[("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy")] = (ENVOY_PROXY, "Namespaced")


def schema_for(api_version: str, kind: str) -> tuple[dict, str, str]:
    """(JSON Schema, scope, where it came from)."""
    if (api_version, kind) in BUILTIN:
        s, scope = BUILTIN[(api_version, kind)]
        where = "written here"
    else:
        found = crds().get((api_version, kind))
        assert found, f"no CRD serves {api_version} {kind} in {CRDS}"
        s, scope = to_jsonschema(found[0]), found[1]
        where = "CRD"
    s = dict(s)
    s["properties"] = {**s.get("properties", {}), "apiVersion": {"const": api_version}, "kind": {"const": kind},
                       "metadata": METADATA}
    s.pop("status", None)
    s["properties"].pop("status", None)
    s["additionalProperties"] = False
    s["required"] = sorted(set(s.get("required", [])) | {"apiVersion", "kind", "metadata"})
    return s, scope, where


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d[0]}#{d[1]}-{d[2].get('kind')}-{d[2]['metadata']['name']}")
def test_manifest_matches_its_schema(doc):
    _, _, d = doc
    schema, scope, _ = schema_for(d["apiVersion"], d["kind"])
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])
    if scope == "Namespaced":
        assert d["metadata"].get("namespace"), "namespaced resources name their namespace"
    else:
        assert "namespace" not in d["metadata"]


def apply_defaults(schema: dict, node) -> None:
    """Fill in `default`s of absent members, recursively (what the API server does before CEL)."""
    if isinstance(node, dict) and "properties" in schema:
        for k, sub in schema["properties"].items():
            if k not in node and "default" in sub:
                node[k] = copy.deepcopy(sub["default"])
            if k in node:
                apply_defaults(sub, node[k])
    elif isinstance(node, list) and "items" in schema:
        for item in node:
            apply_defaults(schema["items"], item)


def cel_rules(schema: dict, node, path: str = ""):
    """(path, rule, message, value) for every CEL rule that applies to a present value."""
    for v in schema.get("x-kubernetes-validations", []) or []:
        yield path, v["rule"], v.get("message", ""), node
    if isinstance(node, dict) and "properties" in schema:
        for k, sub in schema["properties"].items():
            if k in node:
                yield from cel_rules(sub, node[k], f"{path}/{k}")
    elif isinstance(node, list) and "items" in schema:
        for i, item in enumerate(node):
            yield from cel_rules(schema["items"], item, f"{path}/{i}")


@lru_cache(maxsize=None)
def _cel_program(rule: str):
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_failures(d: dict) -> tuple[list[str], int]:
    """The CEL rules `d` breaks (as messages), and how many rules were evaluated."""
    schema, _ = crds()[(d["apiVersion"], d["kind"])]
    d = copy.deepcopy(d)
    apply_defaults(schema, d)
    failures, evaluated = [], 0
    for path, rule, message, value in cel_rules(schema, d):
        if "oldSelf" in rule:
            continue
        evaluated += 1
        try:
            result = _cel_program(rule).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # noqa: BLE001 - an error evaluating a rule fails it, as in the API server
            failures.append(f"{path or '/'}: {rule}: error {e}")
            continue
        if result != celtypes.BoolType(True):
            failures.append(f"{path or '/'}: {message or rule}")
    return failures, evaluated


CRD_DOCS = [doc for doc in DOCS if (doc[2]["apiVersion"], doc[2]["kind"]) not in BUILTIN]


@pytest.mark.parametrize("doc", CRD_DOCS, ids=lambda d: f"{d[0]}#{d[1]}-{d[2]['kind']}-{d[2]['metadata']['name']}")
def test_manifest_passes_its_cel_rules(doc):
    failures, _ = cel_failures(doc[2])
    assert not failures, "\n".join(failures)


def test_cel_rules_are_evaluated_and_catch_violations():
    assert sum(cel_failures(d)[1] for _, _, d in CRD_DOCS) > 100
    eep = eg_xds.one(LLMGW, "EnvoyExtensionPolicy")
    bad = copy.deepcopy(eep)
    del bad["spec"]["wasm"][0]["code"]["image"]
    assert any("If type is Image, image field needs to be set" in f for f in cel_failures(bad)[0])
    btp = copy.deepcopy(eg_xds.one(LLMGW, "BackendTrafficPolicy"))
    btp["spec"]["rateLimit"]["global"]["rules"][0]["cost"]["response"]["number"] = 1
    assert any("only one of number or metadata" in f for f in cel_failures(btp)[0])


def test_crd_schemas_are_used_for_every_gateway_kind():
    kinds = {(d["apiVersion"], d["kind"]) for _, _, d in DOCS}
    via_crd = {k for k in kinds if k not in BUILTIN}
    assert {k for _, k in via_crd} >= {"GatewayClass", "Gateway", "HTTPRoute", "Backend", "HTTPRouteFilter",
                                       "EnvoyExtensionPolicy", "EnvoyPatchPolicy", "ClientTrafficPolicy",
                                       "BackendTrafficPolicy", "SecurityPolicy"}


def test_the_validator_rejects_what_it_should():
    """The conversion keeps the schema strict: unknown fields, wrong enums and wrong types fail."""
    eep = eg_xds.one(LLMGW, "EnvoyExtensionPolicy")
    schema, _, _ = schema_for(eep["apiVersion"], eep["kind"])
    v = jsonschema.Draft202012Validator(schema)
    assert v.is_valid(eep)
    for mutate in (
        lambda d: d["spec"]["wasm"][0]["code"].__setitem__("type", "Oci"),
        lambda d: d["spec"]["wasm"][0]["code"]["image"].__setitem__("sha", "x"),
        lambda d: d["spec"]["wasm"][0].__setitem__("failOpen", "no"),
        lambda d: d["spec"].__setitem__("wasms", []),
    ):
        bad = json.loads(json.dumps(eep))
        mutate(bad)
        assert not v.is_valid(bad)
    # The plugin configuration itself is free-form for Kubernetes (preserve-unknown-fields).
    ok = json.loads(json.dumps(eep))
    ok["spec"]["wasm"][0]["config"]["anything"] = {"goes": [1]}
    assert v.is_valid(ok)


# ---------------------------------------------------------------------------------------------
# consistency


def plugin_config() -> dict:
    return eg_xds.one(LLMGW, "EnvoyExtensionPolicy")["spec"]["wasm"][0]["config"]


def env_keys(node) -> set[str]:
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k.endswith("_env") and isinstance(v, str):
                out.add(v)
            out |= env_keys(v)
    elif isinstance(node, list):
        for v in node:
            out |= env_keys(v)
    return out


def test_one_route_rule_per_backend_matching_the_filters_header():
    route = eg_xds.one(LLMGW, "HTTPRoute")
    by_value = {}
    catch_all = []
    for rule in route["spec"]["rules"]:
        headers = [h for m in rule["matches"] for h in m.get("headers", [])]
        if not headers:
            catch_all.append(rule)
            continue
        (h,) = headers
        assert h["name"] == "x-llmgw-backend" and h.get("type", "Exact") == "Exact"
        assert rule.get("backendRefs"), rule
        by_value[h["value"]] = rule
    assert sorted(by_value) == sorted(b["name"] for b in plugin_config()["backends"])
    assert len(catch_all) == 1 and not catch_all[0].get("backendRefs")


def test_references_resolve():
    names = {(d["kind"], d["metadata"]["name"]) for d in LLMGW}
    gw = eg_xds.one(LLMGW, "Gateway")
    assert ("GatewayClass", gw["spec"]["gatewayClassName"]) in names
    assert ("EnvoyProxy", gw["spec"]["infrastructure"]["parametersRef"]["name"]) in names
    route = eg_xds.one(LLMGW, "HTTPRoute")
    assert [p["name"] for p in route["spec"]["parentRefs"]] == [gw["metadata"]["name"]]
    for rule in route["spec"]["rules"]:
        for ref in rule.get("backendRefs", []):
            if ref.get("kind") == "Backend":
                assert ("Backend", ref["name"]) in names
        for f in rule.get("filters", []):
            if f["type"] == "ExtensionRef":
                assert (f["extensionRef"]["kind"], f["extensionRef"]["name"]) in names
    for kind in ("EnvoyExtensionPolicy", "BackendTrafficPolicy", "SecurityPolicy", "ClientTrafficPolicy"):
        for t in eg_xds.one(LLMGW, kind)["spec"]["targetRefs"]:
            assert (t["kind"], t["name"]) in names, (kind, t)
    # Secrets are the operator's: the header's commands create every one referenced.
    created = {(s["kind"], s["metadata"]["name"]) for s in OPERATOR_SECRETS}
    sp = eg_xds.one(LLMGW, "SecurityPolicy")
    for ref in sp["spec"]["apiKeyAuth"]["credentialRefs"]:
        assert ("Secret", ref["name"]) in created and ("Secret", ref["name"]) not in names


def test_upstream_credentials_reach_the_wasm_vm():
    """Every *_env of the plugin configuration is passed into the VM (env.hostKeys) and set in the
    envoy container from a key of the Secret the operator creates with the header's command."""
    keys = env_keys(plugin_config())
    assert keys == {"OPENAI_API_KEY"}
    wasm = eg_xds.one(LLMGW, "EnvoyExtensionPolicy")["spec"]["wasm"][0]
    assert set(wasm["env"]["hostKeys"]) == keys
    proxy = eg_xds.one(LLMGW, "EnvoyProxy")
    env = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]
    secrets = {d["metadata"]["name"]: d for d in OPERATOR_SECRETS}
    for e in env:
        ref = e["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert {e["name"] for e in env} == keys


def test_manifests_hold_no_secret():
    """No Secret, no key and no placeholder key in the files; the header's commands take values
    from the operator's environment or generate them."""
    text = "\n".join(f.read_text() for f in MANIFEST_FILES)
    assert not [d for _, _, d in DOCS if d["kind"] == "Secret"]
    assert "REPLACE_ME" not in text and "stringData" not in text
    assert not re.search(r"sk-[A-Za-z0-9]", text)
    by_name = {s["metadata"]["name"]: s["stringData"] for s in OPERATOR_SECRETS}
    assert by_name["llmgw-upstream-keys"] == {"OPENAI_API_KEY": UPSTREAM_KEY}
    assert sorted(by_name["llmgw-client-keys"]) == ["team-a", "team-b"]
    assert all(re.fullmatch(r"[0-9a-f]{48}", v) for v in by_name["llmgw-client-keys"].values())


def test_inline_plugin_config_is_json_in_the_file():
    """The filter takes JSON only; Envoy Gateway passes `config` on as JSON, and the file writes it so."""
    text = (EG_DIR / "llmgw.yaml").read_text()
    block = text.split("\n      config: ", 1)[1].split("\n---", 1)[0]
    assert json.loads(block) == plugin_config()


def test_budget_is_keyed_on_the_client_id_the_api_key_check_forwards():
    sp = eg_xds.one(LLMGW, "SecurityPolicy")["spec"]["apiKeyAuth"]
    (rule,) = eg_xds.one(LLMGW, "BackendTrafficPolicy")["spec"]["rateLimit"]["global"]["rules"]
    (sel,) = rule["clientSelectors"]
    assert sel["headers"] == [{"name": sp["forwardClientIDHeader"], "type": "Distinct"}]
    assert rule["cost"]["request"] == {"from": "Number", "number": 0}
    assert rule["cost"]["response"]["from"] == "Metadata"


def test_buffers_are_above_the_filters_body_limit():
    limit = plugin_config().get("max_request_body_bytes", 32 << 20)
    ctp = eg_xds.one(LLMGW, "ClientTrafficPolicy")
    btp = eg_xds.one(LLMGW, "BackendTrafficPolicy")
    assert eg_xds.quantity(ctp["spec"]["connection"]["bufferLimit"]) > limit
    assert eg_xds.quantity(btp["spec"]["connection"]["bufferLimit"]) > limit


def test_image_is_pinned_by_digest():
    image = eg_xds.one(LLMGW, "EnvoyExtensionPolicy")["spec"]["wasm"][0]["code"]["image"]
    assert re.fullmatch(r"[a-f0-9]{64}", image["sha256"])
    assert re.fullmatch(r"[a-z0-9.\-:/]+:[A-Za-z0-9._\-]+", image["url"])


# ---------------------------------------------------------------------------------------------
# EnvoyPatchPolicy against the xDS Envoy Gateway generates


def xds(patch_types=frozenset()):
    return eg_xds.translate(LLMGW, wasm_file=Path("/plugin.wasm"), rls_port=1, secrets=OPERATOR_SECRETS,
                            cluster_ports={"openai": 1, "vllm": 2}, patch_types=patch_types)


def test_patch_policy_names_the_generated_resources():
    listener, routes = xds()
    epp = eg_xds.one(LLMGW, "EnvoyPatchPolicy")
    gw = eg_xds.one(LLMGW, "Gateway")
    assert epp["spec"]["targetRef"] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                        "name": gw["metadata"]["name"]}
    for p in epp["spec"]["jsonPatches"]:
        target = listener if p["type"] == eg_xds.LISTENER_TYPE else routes
        assert p["name"] == target["name"] == "llmgw/llmgw/http"


def test_listener_patches_select_exactly_the_llmgw_wasm_filter():
    listener, _ = xds()
    epp = eg_xds.one(LLMGW, "EnvoyPatchPolicy")
    name = eg_xds.wasm_filter_name(eg_xds.one(LLMGW, "EnvoyExtensionPolicy"), 0)
    assert name == "envoy.filters.http.wasm/envoyextensionpolicy/llmgw/llmgw/wasm/0"
    filters = listener["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"]
    index = [f["name"] for f in filters].index(name)
    ops = [p["operation"] for p in epp["spec"]["jsonPatches"] if p["type"] == eg_xds.LISTENER_TYPE]
    assert {o["path"].rsplit("/", 1)[1]: o["value"] for o in ops} == {
        "allow_on_headers_stop_iteration": True, "failure_policy": "FAIL_RELOAD"}
    for o in ops:
        base = f"/default_filter_chain/filters/0/typed_config/http_filters/{index}"
        assert eg_xds.jsonpath_pointers(listener, o["jsonPath"], o["path"]) == [base + o["path"]]
    patched, _ = xds(frozenset({eg_xds.LISTENER_TYPE}))
    cfg = patched["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"][index]["typed_config"]["config"]
    assert cfg["allow_on_headers_stop_iteration"] is True and cfg["failure_policy"] == "FAIL_RELOAD"
    assert "fail_open" not in cfg  # failOpen: false


def test_route_patch_rewrites_every_stream_done_charge_and_nothing_else():
    _, before = xds()
    _, after = xds(frozenset({eg_xds.ROUTE_TYPE}))
    routes = before["virtual_hosts"][0]["routes"]
    (op,) = [p["operation"] for p in eg_xds.one(LLMGW, "EnvoyPatchPolicy")["spec"]["jsonPatches"]
             if p["type"] == eg_xds.ROUTE_TYPE]
    pointers = eg_xds.jsonpath_pointers(before, op["jsonPath"], op["path"])
    assert len(pointers) == len(routes) == 3  # one stream-done entry per route
    for r_before, r_after in zip(routes, after["virtual_hosts"][0]["routes"]):
        rl_b = r_before["typed_per_filter_config"]["envoy.filters.http.ratelimit"]["rate_limits"]
        rl_a = r_after["typed_per_filter_config"]["envoy.filters.http.ratelimit"]["rate_limits"]
        assert rl_b[0] == rl_a[0] and rl_a[0]["hits_addend"] == {"number": 0}  # the check is untouched
        assert rl_b[1]["hits_addend"] == {"format": "%DYNAMIC_METADATA(io.llmgw:llm_total_token)%"}
        assert rl_a[1] == {**rl_b[1], "hits_addend": {"format": "%FILTER_STATE(wasm.llm_total_token:PLAIN)%"}}


@pytest.mark.parametrize("doc,jsonpath,path,expected", [
    # Cases from Envoy Gateway's jsonpathtopointer_test.go: the subset here behaves the same.
    ({"a": "b"}, "$.a", "", ["/a"]),
    ({"v": [{"x": "test1", "y": "hello"}, {"x": "test2", "y": "world"}]}, "$.v[?(@.x=='test2')]", "", ["/v/1"]),
    ({"v": [{"x": "test1", "y": "hello"}, {"x": "test2", "y": "world"}]}, "..v[?(@.x=='test1')].y", "", ["/v/0/y"]),
    ({"v": [{"x": "test1", "y": "hello"}, {"x": "test2", "y": "world"}]}, "$.v[?(@.x=='UNKNOWN')].y", "", []),
    ({"v": [{"x": "a"}, {"x": "b"}]}, "$.v[*].x", "", ["/v/0/x", "/v/1/x"]),
    ({"r": [{"name": "www_test"}, {"name": "www_ex"}]}, "..r[?(@.name =~ 'www')]", "/abc", ["/r/0/abc", "/r/1/abc"]),
    ({"r": [{"route": {"cluster": "c"}}]}, "..r[0]['route']['cluster']", "", ["/r/0/route/cluster"]),
])
def test_jsonpath_subset_matches_envoy_gateway(doc, jsonpath, path, expected):
    assert sorted(eg_xds.jsonpath_pointers(doc, jsonpath, path)) == sorted(expected)


# ---------------------------------------------------------------------------------------------
# the inline plugin configuration in the real filter


def test_inline_plugin_config_is_accepted_by_the_filter_in_envoy():
    """The EnvoyExtensionPolicy's `config`, passed as Envoy Gateway passes it (JSON in the plugin's
    StringValue), in the local bootstrap: the filter configures and routes both backends."""
    config = plugin_config()
    wasm = eg_xds.one(LLMGW, "EnvoyExtensionPolicy")["spec"]["wasm"][0]
    mocks, env = {}, None
    try:
        for b in config["backends"]:
            mocks[b["name"]] = e2e.Mock(b["name"])
        cfg = e2e.render({n: m.port for n, m in mocks.items()}, config)
        # What the policy's env.hostKeys becomes: the VM may read these variables of Envoy's.
        e2e._wasm(cfg)["vm_config"]["environment_variables"] = {"host_env_keys": wasm["env"]["hostKeys"]}
        env = e2e.Envoy(cfg, name="eg-plugin-config", env={"OPENAI_API_KEY": UPSTREAM_KEY})
        assert "configured 2 backend(s), 3 rule(s)" in env.log_tail(200), env.log_tail(40)
        for model, backend in (("gpt-4o-mini", "openai"), ("text-embedding-3-small", "openai"), ("llama-3.2-1b", "vllm")):
            path = "/v1/embeddings" if model.startswith("text-embedding") else "/v1/chat/completions"
            body = {"model": model, "input": "hi"} if "embeddings" in path else \
                {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            status, h, resp = e2e.http("POST", env.url + path, body)
            assert status == 200 and h["x-mock-name"] == backend, (model, resp)
        assert mocks["openai"].requests()[0]["headers"]["authorization"] == "Bearer " + UPSTREAM_KEY
        status, _, resp = e2e.http("GET", env.url + "/v1/models")
        assert {m["id"] for m in json.loads(resp)["data"]} >= set(config["models"])
    finally:
        if env:
            env.stop()
        for m in mocks.values():
            m.stop()


# ---------------------------------------------------------------------------------------------
# consumers (issue 13): the SecurityPolicy `llmgw render --target envoy-gateway` builds from
# `consumers:`, checked against the CRD's schema and CEL rules; no key in the output.

CONSUMER_KEY = "sk-consumer-key-never-rendered-42"


def render_consumers(tmp_path, consumers: list[dict]) -> subprocess.CompletedProcess:
    llmgw = Path(os.environ.get("LLMGW_BIN", e2e.REPO / "target" / "debug" / "llmgw"))
    if not llmgw.exists():
        pytest.skip(f"llmgw binary not found at {llmgw} (make cli)")
    cfg = {"backends": [{"name": "openai", "url": "https://api.openai.com/v1", "schema": "OpenAI",
                         "auth": {"bearer_env": "OPENAI_API_KEY"}}], "consumers": consumers}
    path = tmp_path / "llmgw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([str(llmgw), "render", str(path), "--target", "envoy-gateway"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TEAM_A_KEYS": CONSUMER_KEY})


@pytest.mark.parametrize("kind", ["keys", "jwt"])
def test_consumers_security_policy_matches_the_crd(tmp_path, kind):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]}))
    consumers = {
        "keys": [{"name": "team-a", "api_keys_env": "TEAM_A_KEYS"}],
        "jwt": [{"name": "ci-bot", "jwt": {"issuer": "https://idp.example", "jwks_file": str(jwks),
                                           "subject": "ci-bot"}},
                {"name": "other", "jwt": {"issuer": "https://idp2.example",
                                          "jwks_uri": "https://idp2.example/jwks.json"}}],
    }[kind]
    r = render_consumers(tmp_path, consumers)
    assert r.returncode == 0, r.stderr
    assert CONSUMER_KEY not in r.stdout + r.stderr
    (policy,) = [d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "SecurityPolicy"]
    schema, _, _ = schema_for(policy["apiVersion"], policy["kind"])
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(policy))
    assert not errors, [e.message for e in errors]
    failures, evaluated = cel_failures(policy)
    assert not failures and evaluated > 0, failures
    spec = policy["spec"]
    if kind == "keys":
        assert spec["apiKeyAuth"]["forwardClientIDHeader"] == "x-llmgw-consumer" and spec["apiKeyAuth"]["sanitize"]
        assert "jwt" not in spec
        assert 'team-a="${TEAM_A_KEYS%%,*}"' in r.stderr, r.stderr
    else:
        providers = {p["name"]: p for p in spec["jwt"]["providers"]}
        assert providers["ci-bot"]["localJWKS"]["type"] == "Inline"
        assert providers["other"]["remoteJWKS"]["uri"] == "https://idp2.example/jwks.json"
        assert all(p["claimToHeaders"] == [{"claim": "sub", "header": "x-llmgw-consumer"}] for p in providers.values())
        rules = {r["name"]: r for r in spec["authorization"]["rules"]}
        assert spec["authorization"]["defaultAction"] == "Deny"
        assert rules["consumer-ci-bot"]["principal"]["jwt"] == {
            "provider": "ci-bot", "claims": [{"name": "sub", "values": ["ci-bot"]}]}


def test_key_and_jwt_consumers_together_are_refused_for_envoy_gateway(tmp_path):
    r = render_consumers(tmp_path, [{"name": "team-a", "api_keys_env": "TEAM_A_KEYS"},
                                    {"name": "ci", "jwt": {"issuer": "i", "jwks_uri": "https://i/jwks"}}])
    assert r.returncode != 0 and "requires every method" in r.stderr, r.stderr


def test_rendered_quota_policy_matches_the_crd():
    """`llmgw render --target envoy-gateway` renders budgets as Envoy AI Gateway's QuotaPolicy: the
    CLI's golden rendering (cli/tests/golden/aigw-quota/quota-policy.yaml) passes the CRD's schema
    and CEL rules, and a wrong field fails."""
    f = e2e.REPO / "cli" / "tests" / "golden" / "aigw-quota" / "quota-policy.yaml"
    (d,) = [d for d in yaml.safe_load_all(f.read_text()) if d]
    schema, scope, _ = schema_for(d["apiVersion"], d["kind"])
    assert scope == "Namespaced" and d["metadata"]["namespace"]
    v = jsonschema.Draft202012Validator(schema)
    errors = list(v.iter_errors(d))
    assert not errors, [e.message for e in errors]
    failures, evaluated = cel_failures(d)
    assert not failures and evaluated > 0, failures
    bad = copy.deepcopy(d)
    bad["spec"]["perModelQuotas"][0]["quota"]["bucketRules"][0]["quota"]["duration"] = "2h"
    assert list(v.iter_errors(bad))
    bad = copy.deepcopy(d)
    bad["spec"]["targetRefs"][0]["kind"] = "Backend"
    assert any("AIServiceBackend" in f for f in cel_failures(bad)[0])
