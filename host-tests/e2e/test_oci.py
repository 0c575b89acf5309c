"""The filter as an OCI image: reproducible layout, pushed with skopeo to a real registry on loopback,
pulled back by digest with a second client (the registry HTTP API), checked against what Envoy
Gateway's (Istio-derived) Wasm fetcher expects: an OCI image manifest whose last layer is a gzip tar
holding plugin.wasm."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import oci_image  # noqa: E402


def _wasm() -> bytes:
    p = Path(os.environ.get("LLMGW_WASM", REPO / "target" / "wasm32-wasip1" / "release" / "llmgw_filter.wasm"))
    return p.read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is not installed (make tools installs it: apt-get install skopeo docker-registry)")
    return path


def _layout(tmp_path: Path, name: str, wasm_file: Path, **kw) -> str:
    out = tmp_path / name
    args = ["--wasm", str(wasm_file), "--out", str(out), "--tag", "t1", "--version", "1.2.3", "--revision", "abc"]
    assert oci_image.main(args + [f"--{k}={v}" for k, v in kw.items()]) == 0
    index = json.loads((out / "index.json").read_text())
    return index["manifests"][0]["digest"]


def test_same_wasm_same_digest(tmp_path):
    wasm = _wasm()
    a, b = tmp_path / "a.wasm", tmp_path / "b.wasm"
    a.write_bytes(wasm)
    b.write_bytes(wasm)
    os.utime(b, (1, 1))  # a different file time must not matter
    assert _layout(tmp_path, "one", a) == _layout(tmp_path, "two", b)
    c = tmp_path / "c.wasm"
    c.write_bytes(wasm + b"\0")
    assert _layout(tmp_path, "three", c) != _layout(tmp_path, "one", a)


@pytest.fixture
def registry(tmp_path):
    binary = _need("docker-registry")
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'storage'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        "log: {level: error}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/v2/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"registry exited: {proc.stderr.read().decode()}")
                time.sleep(0.1)
        else:
            pytest.fail("registry did not start within 10s")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _get(url: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def test_push_and_pull_back_by_digest(tmp_path, registry):
    skopeo = _need("skopeo")
    wasm = _wasm()
    wasm_file = tmp_path / "llmgw_filter.wasm"
    wasm_file.write_bytes(wasm)
    digest = _layout(tmp_path, "layout", wasm_file)
    subprocess.run(
        [skopeo, "copy", "--dest-tls-verify=false", "--preserve-digests",
         f"oci:{tmp_path / 'layout'}:t1", f"docker://{registry}/llmgw/filter:t1"],
        check=True, capture_output=True, timeout=120,
    )
    # Second client: the registry API, by digest.
    base = f"http://{registry}/v2/llmgw/filter"
    raw = _get(f"{base}/manifests/{digest}", oci_image.MANIFEST)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    manifest = json.loads(raw)
    assert manifest["mediaType"] == oci_image.MANIFEST
    assert manifest["config"]["mediaType"] == oci_image.CONFIG
    assert len(manifest["layers"]) == 1
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert manifest["annotations"]["org.opencontainers.image.version"] == "1.2.3"
    assert manifest["annotations"]["org.opencontainers.image.revision"] == "abc"
    assert manifest["annotations"]["org.opencontainers.image.source"].startswith("https://")
    blob = _get(f"{base}/blobs/{layer['digest']}")
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        names = tar.getnames()
        assert names == ["plugin.wasm"]
        assert tar.extractfile("plugin.wasm").read() == wasm
    # The tag resolves to the same digest.
    req = urllib.request.Request(f"{base}/manifests/t1", method="HEAD", headers={"Accept": oci_image.MANIFEST})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Docker-Content-Digest"] == digest
