"""The filter's SigV4 signer against botocore's (the AWS SDK for Python, pinned in requirements):
the same requests, keys and time must give byte-identical Authorization headers.

Our side runs filter/examples/sigv4_sign.rs (`cargo run --example sigv4_sign`, or the binary named
by LLMGW_SIGV4_BIN), which calls `llmgw_filter::auth::sigv4::sign` exactly as the exchange does."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest

botocore = pytest.importorskip("botocore")
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQDExampleSessionToken+/="
CONVERSE = {"messages": [{"role": "user", "content": [{"text": "Hello, Bedrock! ✓ «quotes»"}]}],
            "inferenceConfig": {"maxTokens": 512, "temperature": 0.5}}

# (name, region, path as sent (already percent-encoded once), body, session token, unix time)
CASES = [
    ("converse", "us-east-1", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
     json.dumps(CONVERSE), None, 1_718_000_000),
    ("converse-stream-session-token", "eu-central-1",
     "/model/eu.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream", json.dumps(CONVERSE), TOKEN,
     1_735_689_599),
    ("inference-profile-arn", "ap-northeast-1",
     "/model/arn%3Aaws%3Abedrock%3Aap-northeast-1%3A123456789012%3Ainference-profile%2Fapac.amazon.nova-pro-v1%3A0"
     "/converse", json.dumps(CONVERSE, ensure_ascii=False), None, 1_700_000_000),
    ("invoke-anthropic", "us-west-2", "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
     json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
                 "messages": [{"role": "user", "content": "hi"}]}), TOKEN, 1_750_000_000),
    ("invoke-with-response-stream-empty-body", "us-east-2",
     "/model/meta.llama3-70b-instruct-v1%3A0/invoke-with-response-stream", "", None, 1_600_000_000),
    ("unreserved-and-spaces", "us-east-1", "/model/my%20model-._~v1/converse", "{}", None, 1_712_345_678),
]


def _ours(cases) -> list[dict]:
    requests = [
        {"access_key_id": KEY, "secret_access_key": SECRET, "session_token": token, "region": region,
         "service": "bedrock", "method": "POST", "authority": f"bedrock-runtime.{region}.amazonaws.com",
         "path": path, "headers": [["content-type", "application/json"]], "body": body, "time_unix": t}
        for (_, region, path, body, token, t) in cases
    ]
    binary = os.environ.get("LLMGW_SIGV4_BIN")
    if binary:
        cmd = [binary]
    else:
        cargo = shutil.which(os.environ.get("CARGO", "cargo"))
        if cargo is None:
            pytest.skip("cargo not found and LLMGW_SIGV4_BIN not set")
        cmd = [cargo, "run", "--quiet", "-p", "llmgw-filter", "--example", "sigv4_sign"]
    out = subprocess.run(cmd, input=json.dumps(requests), capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _botocore(region: str, path: str, body: str, token: str | None, t: int) -> dict[str, str]:
    request = AWSRequest(method="POST", url=f"https://bedrock-runtime.{region}.amazonaws.com{path}",
                         data=body.encode(), headers={"content-type": "application/json"})
    now = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        SigV4Auth(Credentials(KEY, SECRET, token), "bedrock", region).add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


@pytest.fixture(scope="module")
def ours():
    return _ours(CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_authorization_matches_botocore(ours, index):
    _, region, path, body, token, t = CASES[index]
    theirs = _botocore(region, path, body, token, t)
    mine = ours[index]
    assert mine["authorization"] == theirs["authorization"]
    assert mine["x-amz-date"] == theirs["x-amz-date"]
    assert mine.get("x-amz-security-token") == theirs.get("x-amz-security-token")
    assert "x-amz-content-sha256" not in mine
    signed = "content-type;host;x-amz-date" + (";x-amz-security-token" if token else "")
    assert f"SignedHeaders={signed}," in mine["authorization"]


def test_a_different_secret_gives_a_different_signature(ours):
    """Guards against both sides ignoring an input: botocore with another key disagrees."""
    _, region, path, body, token, t = CASES[0]
    request = AWSRequest(method="POST", url=f"https://bedrock-runtime.{region}.amazonaws.com{path}",
                         data=body.encode(), headers={"content-type": "application/json"})
    now = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        SigV4Auth(Credentials(KEY, SECRET + "x", token), "bedrock", region).add_auth(request)
    assert request.headers["Authorization"] != ours[0]["authorization"]
