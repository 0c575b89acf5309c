"""Every Envoy config in the repository validates, reloads a failed filter VM (FAIL_RELOAD) and
hands the filter JSON; the shipped local config works as shipped, with its upstream key in Envoy's
environment and never in its admin output; single-backend configs, *_env credentials and invalid
plugin configs behave as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import llmgw_e2e as e2e


def envoy_bootstraps():
    return e2e.envoy_bootstraps()


def test_there_are_configs_to_validate():
    assert e2e.TEMPLATE in envoy_bootstraps()


@pytest.mark.parametrize("config", envoy_bootstraps(), ids=lambda p: str(p.relative_to(e2e.REPO)))
def test_envoy_validate(config: Path, monkeypatch):
    # Validation runs the filter's configure step, which reads the bootstrap's *_env credentials.
    monkeypatch.setenv("LLMGW_DEMO_UPSTREAM_KEY", "sk-validate")
    r = e2e.validate(config)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "OK" in r.stdout + r.stderr


def wasm_filter_configs(doc) -> list[dict]:
    """Every envoy.extensions.filters.http.wasm.v3.Wasm `config` of a bootstrap."""
    out = []
    if isinstance(doc, dict):
        if str(doc.get("@type", "")).endswith("envoy.extensions.filters.http.wasm.v3.Wasm"):
            out.append(doc["config"])
        for v in doc.values():
            out += wasm_filter_configs(v)
    elif isinstance(doc, list):
        for v in doc:
            out += wasm_filter_configs(v)
    return out


@pytest.mark.parametrize("config", envoy_bootstraps(), ids=lambda p: str(p.relative_to(e2e.REPO)))
def test_failure_policy_reload_and_json_plugin_config(config: Path):
    """A trapped VM is replaced (FAIL_RELOAD, Envoy >= 1.33) and the filter gets JSON (it takes no YAML)."""
    wasm = wasm_filter_configs(yaml.safe_load(config.read_text()))
    assert wasm, "no wasm filter"
    for w in wasm:
        assert w["failure_policy"] == "FAIL_RELOAD"
        assert "fail_open" not in w
        value = w["configuration"]["value"]
        assert isinstance(json.loads(value), dict), value


UPSTREAM_KEY = "sk-e2e-local-upstream-5b1f"


def test_local_config_as_shipped():
    tpl = e2e.load_template()
    names = [c["name"] for c in tpl["static_resources"]["clusters"]]
    plugin = json.loads(e2e._wasm(tpl)["configuration"]["value"])
    assert sorted(names) == sorted(b["name"] for b in plugin["backends"])
    assert "sk-" not in e2e.TEMPLATE.read_text(), "the shipped bootstrap holds no key"
    mocks = {}
    env = None
    try:
        for n in names:
            mocks[n] = e2e.Mock(n)
        env = e2e.Envoy(e2e.render({n: m.port for n, m in mocks.items()}, None), name="local-as-shipped",
                        env={"LLMGW_DEMO_UPSTREAM_KEY": UPSTREAM_KEY})
        status, h, body = e2e.http("POST", env.url + "/v1/chat/completions",
                                   {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                                   {"authorization": "Bearer sk-anything"})
        assert status == 200 and h["x-mock-name"] == "openai", body
        (q,) = mocks["openai"].requests()
        assert q["headers"]["authorization"] == "Bearer " + UPSTREAM_KEY
        # The key is in Envoy's environment only: its admin output names the variable.
        for path in ("/config_dump", "/config_dump?include_eds", "/server_info"):
            status, _, dump = e2e.http("GET", env.admin_url + path)
            assert status == 200 and UPSTREAM_KEY.encode() not in dump, path
        assert b"LLMGW_DEMO_UPSTREAM_KEY" in e2e.http("GET", env.admin_url + "/config_dump")[2]
        status, h, _ = e2e.http("POST", env.url + "/v1/chat/completions",
                                {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and h["x-mock-name"] == "ollama"
        status, _, body = e2e.http("POST", env.url + "/v1/embeddings",
                                   {"model": "text-embedding-3-small", "input": "hi"})
        assert status == 200, body
        status, _, body = e2e.http("POST", env.url + "/v1/chat/completions", {"model": "claude-x", "messages": []})
        assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
        status, _, body = e2e.http("GET", env.url + "/v1/models")
        ids = {m["id"] for m in json.loads(body)["data"]}
        assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "llama3.2"} <= ids
    finally:
        if env:
            env.stop()
        for m in mocks.values():
            m.stop()


def test_single_backend_without_rules_and_bearer_env():
    m = e2e.Mock("solo")
    env = None
    try:
        cfg = e2e.render({"solo": m.port}, {
            "backends": [{"name": "solo", "schema": "OpenAI", "prefix": "/api/v1/", "auth": {"bearer_env": "LLMGW_E2E_SOLO_KEY"}}],
        })
        wasm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        wasm["typed_config"]["config"]["vm_config"]["environment_variables"] = {"host_env_keys": ["LLMGW_E2E_SOLO_KEY"]}
        env = e2e.Envoy(cfg, name="solo", env={"LLMGW_E2E_SOLO_KEY": "sk-from-env"})
        for model in ("anything", "gpt-4o", "x"):
            status, h, body = e2e.http("POST", env.url + "/v1/chat/completions",
                                       {"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert status == 200 and h["x-mock-name"] == "solo", body
        reqs = m.requests()
        assert [q["path"] for q in reqs] == ["/api/v1/chat/completions"] * 3
        assert {q["headers"]["authorization"] for q in reqs} == {"Bearer sk-from-env"}
    finally:
        if env:
            env.stop()
        m.stop()


def test_unset_host_env_keys_are_skipped(monkeypatch):
    """The shipped bootstrap lists LLMGW_DEMO_UPSTREAM_KEY in host_env_keys; a plugin configuration
    that does not read it starts without it (the e2e suites reuse the template that way)."""
    m = e2e.Mock("solo")
    env = None
    try:
        cfg = e2e.render({"solo": m.port}, {"backends": [{"name": "solo", "schema": "OpenAI"}]})
        assert e2e._wasm(cfg)["vm_config"]["environment_variables"]["host_env_keys"] == ["LLMGW_DEMO_UPSTREAM_KEY"]
        monkeypatch.delenv("LLMGW_DEMO_UPSTREAM_KEY", raising=False)
        env = e2e.Envoy(cfg, name="unset-host-env")
        status, _, body = e2e.http("POST", env.url + "/v1/chat/completions",
                                   {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body
    finally:
        if env:
            env.stop()
        m.stop()


@pytest.mark.parametrize("plugin,needle", [
    ({"backends": [{"name": "a", "schema": "OpenAI"}], "rules": [{"backends": [{"name": "opeanai"}]}]},
     'unknown backend "opeanai"'),
    ({"backends": [{"name": "a", "schema": "NoSuchSchema"}]}, "NoSuchSchema"),
    ({"backends": [{"name": "a", "schema": "OpenAI", "auth": {"bearer_env": "LLMGW_E2E_SURELY_UNSET"}}]},
     "LLMGW_E2E_SURELY_UNSET"),
])
def test_invalid_plugin_config_refused(plugin, needle):
    """Envoy refuses to start with a plugin config the filter rejects, and the log names why."""
    cfg = e2e.render({"a": 9}, plugin)
    with pytest.raises(RuntimeError) as exc:
        env = e2e.Envoy(cfg, name="invalid")
        env.stop()
    assert "invalid plugin config" in str(exc.value) and needle in str(exc.value), str(exc.value)[-2000:]
