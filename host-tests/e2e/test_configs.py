"""Every Envoy config in the repository validates; the shipped local config works as shipped;
single-backend configs, *_env credentials and invalid plugin configs behave as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llmgw_e2e as e2e


def envoy_bootstraps():
    return e2e.envoy_bootstraps()


def test_there_are_configs_to_validate():
    assert e2e.TEMPLATE in envoy_bootstraps()


@pytest.mark.parametrize("config", envoy_bootstraps(), ids=lambda p: str(p.relative_to(e2e.REPO)))
def test_envoy_validate(config: Path):
    r = e2e.validate(config)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "OK" in r.stdout + r.stderr


def test_local_config_as_shipped():
    tpl = e2e.load_template()
    names = [c["name"] for c in tpl["static_resources"]["clusters"]]
    plugin = e2e.plugin_config_of(tpl)
    assert sorted(names) == sorted(b["name"] for b in plugin["backends"])
    mocks = {}
    env = None
    try:
        for n in names:
            mocks[n] = e2e.Mock(n)
        env = e2e.Envoy(e2e.render({n: m.port for n, m in mocks.items()}, None), name="local-as-shipped")
        status, h, body = e2e.http("POST", env.url + "/v1/chat/completions",
                                   {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                                   {"authorization": "Bearer sk-anything"})
        assert status == 200 and h["x-mock-name"] == "openai", body
        (q,) = mocks["openai"].requests()
        assert q["headers"]["authorization"] == "Bearer sk-llmgw-demo-upstream-key"
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
