"""Fixtures: two mock providers and one Envoy running the filter with PLUGIN (below), shared by the
session; each test starts with empty mock request records."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import llmgw_e2e as e2e  # noqa: E402

CLIENT_KEY = "sk-client-gateway-key-must-not-leak"
ALPHA_KEY = "sk-alpha-upstream-key"
BETA_KEY = "sk-beta-upstream-key"

# Plugin configuration of the shared gateway (backend name = cluster name):
#   alpha, gamma, delta, own-key, own-or-configured -> mock "alpha";  beta -> mock "beta" (prefix /beta/v1).
PLUGIN = {
    "backends": [
        {"name": "alpha", "schema": "OpenAI", "auth": {"bearer": ALPHA_KEY}},
        {
            "name": "beta",
            "schema": "OpenAI",
            "prefix": "/beta/v1",
            "auth": {"bearer": BETA_KEY},
            "headers": {"set": {"x-beta-org": "org-beta"}, "remove": ["x-debug"]},
        },
        {"name": "gamma", "schema": "OpenAI", "model_override": "upstream-real-model", "auth": {"bearer": ALPHA_KEY}},
        {"name": "delta", "schema": "OpenAI", "auth": {"bearer": ALPHA_KEY},
         "body_mutation": {"set": {"temperature": 0.5, "service_tier": "flex"}, "remove": ["stream_options", "user"]}},
        {"name": "own-key", "schema": "OpenAI", "auth": {"bearer": ALPHA_KEY},
         "credential_override": {"header": "x-upstream-key", "fallback_to_configured": False}},
        {"name": "own-or-configured", "schema": "OpenAI", "auth": {"bearer": ALPHA_KEY},
         "credential_override": {"header": "x-upstream-key"}},
    ],
    "rules": [
        {
            "name": "team",
            "match": {"model": {"exact": "team-model"}, "headers": [{"name": "x-team", "exact": "research"}]},
            "backends": [{"name": "beta"}],
        },
        {"name": "weighted-1-1", "match": {"model": {"exact": "weighted-1-1"}},
         "backends": [{"name": "alpha", "weight": 1}, {"name": "beta", "weight": 1}]},
        {"name": "weighted-3-1", "match": {"model": {"exact": "weighted-3-1"}},
         "backends": [{"name": "alpha", "weight": 3}, {"name": "beta", "weight": 1}]},
        {"name": "override", "match": {"model": {"exact": "override-me"}}, "backends": [{"name": "gamma"}]},
        {"name": "mutated-ref", "match": {"model": {"exact": "mutated-ref"}},
         "backends": [{"name": "delta", "body_mutation": {"set": {"seed": 7}, "remove": ["temperature"]}}]},
        {"name": "mutated", "match": {"model": {"prefix": "mutated-"}}, "backends": [{"name": "delta"}]},
        {"name": "own-key", "match": {"model": {"exact": "own-key"}}, "backends": [{"name": "own-key"}]},
        {"name": "own-or-configured", "match": {"model": {"exact": "own-or-configured"}},
         "backends": [{"name": "own-or-configured"}]},
        {"name": "beta", "match": {"model": {"prefix": "beta-"}}, "backends": [{"name": "beta"}]},
        {"name": "alpha", "match": {"model": {"glob": "alpha-*"}}, "backends": [{"name": "alpha"}]},
        {"name": "team-default", "match": {"model": {"exact": "team-model"}}, "backends": [{"name": "alpha"}]},
        {"name": "mock-specials", "match": {"model": {"prefix": "mock-"}}, "backends": [{"name": "alpha"}]},
        {"name": "embeddings", "match": {"model": {"regex": "text-embedding-.*"}}, "backends": [{"name": "alpha"}]},
    ],
    "models": ["listed-extra-model"],
}


@pytest.fixture(scope="session")
def mocks():
    started: dict[str, e2e.Mock] = {}
    try:
        for name in ("alpha", "beta"):
            started[name] = e2e.Mock(name)
        yield started
    finally:
        for m in started.values():
            m.stop()


@pytest.fixture(scope="session")
def gw(mocks):
    env = e2e.Envoy(
        e2e.render({"alpha": mocks["alpha"].port, "beta": mocks["beta"].port,
                    **{n: mocks["alpha"].port for n in ("gamma", "delta", "own-key", "own-or-configured")}}, PLUGIN),
        name="gw",
    )
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture(autouse=True)
def _clear_mocks(request):
    if "mocks" in request.fixturenames:
        for m in request.getfixturevalue("mocks").values():
            m.clear()
    yield


@pytest.fixture
def client(gw):
    import openai

    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


def pytest_report_header(config):
    lines = []
    for label, fn in (("envoy", e2e.envoy_bin), ("mock", e2e.mock_bin), ("wasm", e2e.wasm_path)):
        try:
            lines.append(f"llmgw e2e {label}: {fn()}")
        except FileNotFoundError as exc:
            lines.append(f"llmgw e2e {label}: MISSING ({exc})")
    return lines
