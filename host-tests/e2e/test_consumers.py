"""Consumers (issue 13): `llmgw run` with `consumers:` checks clients with Envoy's own filters before
the llmgw filter: API keys (`api_key_auth`, from `Authorization: Bearer` as the OpenAI SDK sends them
or `x-api-key` as the Anthropic SDK does) and JWTs (`jwt_authn`, a local JWKS made here from a fresh
RSA key). The consumer's name travels in `x-llmgw-consumer`, which a client cannot forge; rejections
are 401s in the client's API shape; no client credential reaches the provider, and no key shows in
anything llmgw prints or serves. One `llmgw run` for the module."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import anthropic
import jwt as pyjwt
import openai
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

import llmgw_e2e as e2e

KEY_A = "sk-consumer-team-a-7c41d2"
KEY_A2 = "sk-consumer-team-a-second-90aa"
KEY_B = "sk-consumer-team-b-file-3e57"
UPSTREAM_KEY = "sk-upstream-of-the-gateway-11f0"
ISSUER = "https://idp.example"
SECRETS = [KEY_A, KEY_A2, KEY_B, UPSTREAM_KEY]
MSGS = [{"role": "user", "content": "say hi"}]


def llmgw_bin() -> Path:
    p = Path(os.environ.get("LLMGW_BIN", e2e.REPO / "target" / "debug" / "llmgw"))
    if not p.exists():
        pytest.skip(f"llmgw binary not found at {p} (make cli)")
    return p


class Idp:
    """An RSA key pair; its public half is the JWKS file the gateway trusts."""

    def __init__(self, kid: str):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict:
        jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def token(self, iss: str = ISSUER, sub: str = "ci-bot") -> str:
        claims = {"iss": iss, "sub": sub, "exp": int(time.time()) + 600}
        return pyjwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def idp():
    return Idp("e2e-1")


@pytest.fixture(scope="module")
def gw(idp, tmp_path_factory):
    d = tmp_path_factory.mktemp("consumers")
    mock = e2e.Mock("consumers")
    (d / "jwks.json").write_text(json.dumps(idp.jwks()))
    (d / "team-b.keys").write_text(f"# team b\n{KEY_B}\n")
    cfg = {
        "backends": [{"name": "mock", "url": mock.url + "/v1", "schema": "OpenAI",
                      "auth": {"bearer_env": "CONS_UPSTREAM_KEY"}}],
        "consumers": [
            {"name": "team-a", "api_keys_env": "CONS_TEAM_A_KEYS"},
            {"name": "team-b", "api_keys_file": str(d / "team-b.keys")},
            {"name": "ci-bot", "jwt": {"issuer": ISSUER, "jwks_file": str(d / "jwks.json"), "subject": "ci-bot"}},
        ],
        # Never reached here (test_budgets.py refuses); counted, for `llmgw stat`.
        "budgets": [{"consumer": "*", "requests": 100000, "per": "day"}],
    }
    cfg_path = d / "llmgw.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {"CONS_UPSTREAM_KEY": UPSTREAM_KEY, "CONS_TEAM_A_KEYS": f"{KEY_A},{KEY_A2}"}
    try:
        run = e2e.LlmgwRun(cfg_path, env, name="consumers")
    except BaseException:
        mock.stop()
        raise
    try:
        yield {"proc": run.proc, "port": run.port, "admin": run.admin, "mock": mock, "log": run.log_path,
               "cfg": cfg_path, "env": run.env, "url": run.url}
    finally:
        run.stop()
        mock.stop()


def oa(gw, key: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw["url"] + "/v1", api_key=key, max_retries=0, timeout=30, **kw)


def an(gw, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw["url"], api_key=key, max_retries=0, timeout=30)


def access_log(gw) -> list[dict]:
    out = []
    for line in gw["log"].read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


# request id -> the consumer the access log must name; checked by the module's last test, since
# `llmgw run`'s Envoy flushes its access log every 10 s (the default file flush interval).
EXPECTED_CONSUMERS: dict[str, str] = {}


def logged_consumer(gw, request_id: str, consumer: str) -> None:
    EXPECTED_CONSUMERS[request_id] = consumer


def last_upstream_request(gw) -> dict:
    reqs = gw["mock"].requests()
    assert reqs, "the mock received nothing"
    return reqs[-1]


def request_id(req: dict) -> str:
    """The x-request-id Envoy gave the request (the access log's `request_id`)."""
    return {k.lower(): v for k, v in req["headers"].items()}["x-request-id"]


def assert_no_client_credential(req: dict) -> None:
    text = json.dumps(req)
    for secret in (KEY_A, KEY_A2, KEY_B):
        assert secret not in text, f"a client key reached the provider: {req}"
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers.get("authorization") == f"Bearer {UPSTREAM_KEY}", headers
    assert "x-api-key" not in headers, headers
    assert headers.get("x-llmgw-consumer") in (None, "team-a", "team-b", "ci-bot"), headers


def test_openai_sdk_with_a_bearer_key_passes_and_the_key_stays_at_the_gateway(gw):
    gw["mock"].clear()
    # A forged consumer header is replaced by the authenticated one.
    raw = oa(gw, KEY_A2, default_headers={"x-llmgw-consumer": "team-b"}).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSGS)
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    req = last_upstream_request(gw)
    assert_no_client_credential(req)
    logged_consumer(gw, request_id(req), "team-a")


def test_anthropic_sdk_with_x_api_key_from_a_key_file_passes(gw):
    gw["mock"].clear()
    raw = an(gw, KEY_B).messages.with_raw_response.create(model="claude-x", max_tokens=16, messages=MSGS)
    assert raw.http_response.status_code == 200
    assert raw.parse().content[0].text
    req = last_upstream_request(gw)
    assert_no_client_credential(req)
    logged_consumer(gw, request_id(req), "team-b")


def test_missing_or_wrong_keys_get_401_in_the_openai_shape_before_the_provider(gw):
    gw["mock"].clear()
    for client in (oa(gw, "sk-wrong"), oa(gw, "Bearer")):
        with pytest.raises(openai.AuthenticationError) as e:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        body = e.value.response.json()
        assert body["error"]["type"] == "authentication_error", body
        assert body["error"]["code"] == "invalid_api_key", body
        assert body["error"]["message"]
        assert e.value.response.headers["www-authenticate"].startswith("Bearer")
    # No credential, or a forged consumer header alone: nobody.
    status, _, body = e2e.http("POST", gw["url"] + "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MSGS})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", body
    status, h, body = e2e.http("POST", gw["url"] + "/v1/chat/completions",
                               {"model": "gpt-4o-mini", "messages": MSGS}, {"x-llmgw-consumer": "team-a"})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", body
    assert gw["mock"].requests() == []


def test_wrong_keys_get_401_in_the_anthropic_shape(gw):
    with pytest.raises(anthropic.AuthenticationError) as e:
        an(gw, "sk-ant-wrong").messages.create(model="claude-x", max_tokens=16, messages=MSGS)
    body = e.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
    # Under the Anthropic prefix too.
    status, _, body = e2e.http("POST", gw["url"] + "/anthropic/v1/messages",
                               {"model": "claude-x", "max_tokens": 5, "messages": MSGS}, {"x-api-key": "nope"})
    assert status == 401 and json.loads(body)["type"] == "error", body


def test_a_jwt_from_the_trusted_issuer_passes_and_others_get_401(gw, idp):
    gw["mock"].clear()
    raw = oa(gw, idp.token()).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
    assert raw.http_response.status_code == 200
    req = last_upstream_request(gw)
    assert_no_client_credential(req)
    assert idp.token().split(".")[0] not in json.dumps(req), "the token reached the provider"
    logged_consumer(gw, request_id(req), "ci-bot")

    gw["mock"].clear()
    other = Idp("e2e-1")  # same kid, another key: the signature does not verify
    for token in (idp.token(iss="https://evil.example"), idp.token(sub="someone-else"), other.token()):
        with pytest.raises(openai.AuthenticationError) as e:
            oa(gw, token).chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        assert e.value.response.json()["error"]["type"] == "authentication_error"
    assert gw["mock"].requests() == []


def test_no_key_shows_in_any_output(gw):
    # Everything `llmgw run` printed, Envoy's log and access log included.
    text = gw["log"].read_text()
    # What the admin port serves.
    for path in ("/metrics", "/health"):
        status, _, body = e2e.http("GET", f"http://127.0.0.1:{gw['admin']}{path}")
        assert status == 200, body
        text += body.decode()
    # The request metrics carry the consumer (within the label-set cap).
    served = [line for line in text.splitlines() if line.startswith("llmgw_requests_total{")]
    for consumer in ("team-a", "team-b", "ci-bot"):
        assert any(f'llmgw_consumer="{consumer}"' in line for line in served), served
    run = lambda *args: subprocess.run([str(llmgw_bin()), *args], capture_output=True, text=True,  # noqa: E731
                                       env=gw["env"], timeout=60)
    stat = run("stat", "--admin-port", str(gw["admin"]), "--config", str(gw["cfg"]))
    # Per consumer, from the filter's budget gauges: what each used today, what remains, the reset.
    assert stat.returncode == 0, stat.stderr
    budget = stat.stdout.split("each-requests-per-day (consumer *): 100000 requests per day\n", 1)[1]
    used = dict(re.findall(r"^    ([\w-]+): used (\d+) remaining \d+ reset in \d+s$", budget, re.M))
    assert set(used) == {"team-a", "team-b", "ci-bot"} and all(int(n) >= 1 for n in used.values()), stat.stdout
    assert int(re.search(r"team-a: used (\d+) remaining (\d+)", budget).group(2)) == 100000 - int(used["team-a"])
    check = run("check", str(gw["cfg"]))
    assert check.returncode == 0 and "consumers OK: 3 consumer(s), 3 API key(s)" in check.stdout, check
    # Envoy Gateway cannot take key and JWT consumers together (refused); the key consumers alone.
    mixed = run("render", str(gw["cfg"]), "--target", "envoy-gateway")
    assert mixed.returncode != 0 and "requires every method" in mixed.stderr, mixed.stderr
    keys_only = yaml.safe_load(gw["cfg"].read_text())
    keys_only["consumers"] = [c for c in keys_only["consumers"] if "jwt" not in c]
    del keys_only["budgets"]  # a model-less budget has no QuotaPolicy form (refused, named)
    keys_cfg = gw["cfg"].with_name("keys-only.yaml")
    keys_cfg.write_text(yaml.safe_dump(keys_only))
    eg = run("render", str(keys_cfg), "--target", "envoy-gateway")
    assert eg.returncode == 0 and "forwardClientIDHeader: x-llmgw-consumer" in eg.stdout, eg.stderr
    printed = run("render", str(gw["cfg"]))
    assert printed.returncode != 0 and "-o FILE" in printed.stderr, "the bootstrap with keys is not printed"
    for r in (stat, check, mixed, eg, printed):
        text += r.stdout + r.stderr
    for secret in SECRETS:
        assert secret not in text, f"{secret} shows"
    # The bootstrap Envoy reads holds the keys: private to the user.
    bootstrap = Path(text.split("with ", 1)[1].split("envoy.yaml", 1)[0] + "envoy.yaml")
    assert oct(bootstrap.stat().st_mode & 0o777) == "0o600"
    assert oct(bootstrap.parent.stat().st_mode & 0o777) == "0o700"
    assert KEY_A in bootstrap.read_text()


def test_the_access_log_names_the_consumer(gw):
    assert len(EXPECTED_CONSUMERS) == 3, "the tests above ran first"
    deadline = time.monotonic() + 15
    while True:
        logged = {e.get("request_id"): e.get("consumer") for e in access_log(gw)}
        if all(rid in logged for rid in EXPECTED_CONSUMERS) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert {rid: logged.get(rid) for rid in EXPECTED_CONSUMERS} == EXPECTED_CONSUMERS
