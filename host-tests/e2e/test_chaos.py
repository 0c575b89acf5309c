"""A seeded randomized black-box run on real Envoy (--concurrency 2) with the real filter (issue 9,
item 9): mutated client requests x mutated provider answers from `chaos_upstream.Upstream`.

Client mutations: truncated, empty, random bytes, gzip (valid and not) with `content-encoding: gzip`,
wrong content types and JSON types, bad unicode, duplicate keys, deep nesting, many tiny elements,
huge strings, unknown fields. Provider mutations (chaos_upstream.RESPONSE_MUTATIONS): gzip (valid and
not), truncation, empty bodies, missing SSE delimiters, streams without their last event, bad
eventstream frames, many tiny elements, huge answers, wrong content types, random bytes, wrong JSON
shapes, error statuses with empty / text / JSON / gzip bodies, connection resets.

The oracle, per case:
- no trap in Envoy's log (an uncaught Wasm RuntimeError, a panic, a failed allocation);
- no 5xx the provider did not send, except a 502 for an empty or unreadable success (issue 9, item 5),
  or for an answer the filter has to rewrite and cannot read (gzip it does not decode, a wrong
  content type), and an Envoy 5xx when the provider reset the connection;
- every 200 is valid for the client's API (an OpenAI chat completion / chunk stream ending with
  `data: [DONE]`, embeddings list, Anthropic message / event stream ending with `message_stop` or an
  `error` event); when the provider's answer was valid, the client gets its text; a pass-through
  route may instead hand over the provider's bytes unchanged;
- errors are in the client's API shape, with the provider's status;
- `content-encoding` is never present on a body the filter rewrote;
- health stays 200 (Envoy LIVE, the filter answers on fresh connections), Envoy RSS < 1.5 GiB, and
  no Wasm VM failure in the stats at the end.

LLMGW_CHAOS_SEED (default 20261129) and LLMGW_CHAOS_CASES (default 400) choose the run; the seed and
the failing cases are printed on failure. LLMGW_CHAOS_CASE=N replays one case of that seed."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import time
from dataclasses import dataclass

import pytest

import chaos_upstream as cu
import llmgw_e2e as e2e
from chaos_upstream import MIB

SEED = int(os.environ.get("LLMGW_CHAOS_SEED", "20261129"))
CASES = int(os.environ.get("LLMGW_CHAOS_CASES", "400"))
ONLY = os.environ.get("LLMGW_CHAOS_CASE")
HARD_LIMIT_S = 240.0  # a run never takes longer than this (cases left are reported as not run)
RSS_BOUND = 1536 * MIB
HEALTH_EVERY = 20

ROUTES = [
    ("openai", "pt"), ("openai", "az"), ("openai", "ant"), ("openai", "vant"), ("openai", "aant"),
    ("openai", "brk"), ("openai", "gem"), ("embeddings", "pt"),
    ("anthropic", "ant"), ("anthropic", "vant"), ("anthropic", "aant"), ("anthropic", "pt"),
]
BACKENDS = ["pt", "az", "ant", "vant", "aant", "brk", "gem"]

REQUEST_MUTATIONS = [
    ("valid", 45), ("extra_fields", 6), ("many_tiny", 4), ("deep_nesting", 4), ("huge_string", 3),
    ("truncated", 5), ("empty", 4), ("random_bytes", 4), ("gzip_valid", 4), ("gzip_invalid", 3),
    ("wrong_content_type", 4), ("wrong_types", 5), ("bad_unicode", 4), ("duplicate_keys", 3), ("not_object", 3),
]


def pick(rng: random.Random, weighted):
    names = [n for n, _ in weighted]
    return rng.choices(names, weights=[w for _, w in weighted])[0]


@dataclass
class Case:
    n: int
    api: str
    backend: str
    stream: bool
    usage: bool  # OpenAI streams: the client asks include_usage
    req_mut: str
    resp_mut: str
    seed: int

    @property
    def case_id(self) -> int:
        return 500_000 + self.n

    def describe(self) -> str:
        s = " stream" + (" +usage" if self.usage else "") if self.stream else ""
        return (f"case {self.n} (LLMGW_CHAOS_SEED={SEED} LLMGW_CHAOS_CASE={self.n}): {self.api} -> {self.backend}{s}, "
                f"request {self.req_mut}, provider {self.resp_mut}")


def make_cases(seed: int, count: int) -> list[Case]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        api, backend = rng.choice(ROUTES)
        stream = api != "embeddings" and rng.random() < 0.5
        out.append(Case(n, api, backend, stream, stream and api == "openai" and rng.random() < 0.5,
                        pick(rng, REQUEST_MUTATIONS), pick(rng, cu.RESPONSE_MUTATIONS), rng.getrandbits(32)))
    return out


# ---------------------------------------------------------------------------------------------
# requests


def base_request(c: Case) -> tuple[str, dict]:
    model = f"{c.backend}-chaos-{cu.case_marker(c.case_id)}"
    if c.api == "embeddings":
        return "/v1/embeddings", {"model": model, "input": ["hello chaos world"]}
    if c.api == "anthropic":
        d = {"model": model, "max_tokens": 64, "system": "be brief",
             "messages": [{"role": "user", "content": "hello chaos"}]}
        if c.stream:
            d["stream"] = True
        return "/v1/messages", d
    d = {"model": model, "max_tokens": 64,
         "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello chaos"}]}
    if c.stream:
        d["stream"] = True
        if c.usage:
            d["stream_options"] = {"include_usage": True}
    return "/v1/chat/completions", d


def build_request(c: Case) -> tuple[str, bytes, dict[str, str]]:
    rng = random.Random(c.seed ^ 0x5EED)
    path, d = base_request(c)
    headers = {"content-type": "application/json"}
    if c.api == "anthropic":
        headers.update({"x-api-key": cu.CLIENT_KEY, "anthropic-version": "2023-06-01"})
    else:
        headers["authorization"] = "Bearer " + cu.CLIENT_KEY
    m = c.req_mut
    user = d["messages"][-1] if "messages" in d else None
    body: bytes
    if m == "extra_fields":
        d["x_unknown"] = {"nested": [1, "two", None, {"k": True}], "\u00e9": "caf\u00e9"}
        d["metadata_future"] = [rng.random() for _ in range(5)]
        if user is not None:
            user["x_part_extra"] = "ignored?"
        body = json.dumps(d, indent=rng.choice([None, 1, 4]), ensure_ascii=rng.random() < 0.5).encode()
    elif m == "many_tiny":
        n = rng.randint(100_000, 800_000)
        if user is not None and rng.random() < 0.5:
            user["content"] = [{"type": "text", "text": "a"} for _ in range(n // 40)]
            body = json.dumps(d, separators=(",", ":")).encode()
        else:
            body = json.dumps(d, separators=(",", ":")).encode()[:-1] + b',"x":[' + b",".join([b"0"] * n) + b"]}"
    elif m == "deep_nesting":
        depth = rng.choice([64, 127, 128, 129, 1000, 100_000])
        body = json.dumps(d).encode()[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    elif m == "huge_string":
        words = rng.randint(MIB // 4, 3 * MIB)
        if user is not None:
            user["content"] = "w " * words
        else:
            d["input"] = ["w " * words]
        body = json.dumps(d).encode()
    elif m == "truncated":
        full = json.dumps(d).encode()
        body = full[: rng.randint(1, len(full) - 1)]
    elif m == "empty":
        body = b""
    elif m == "random_bytes":
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2048)))
    elif m == "gzip_valid":
        body = gzip.compress(json.dumps(d).encode(), mtime=0)
        headers["content-encoding"] = "gzip"
    elif m == "gzip_invalid":
        body = rng.choice([json.dumps(d).encode(), bytes(rng.getrandbits(8) for _ in range(64)),
                           gzip.compress(json.dumps(d).encode(), mtime=0)[:-10]])
        headers["content-encoding"] = "gzip"
    elif m == "wrong_content_type":
        headers["content-type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded",
                                              "multipart/form-data; boundary=x", "application/xml"])
        body = json.dumps(d).encode()
    elif m == "wrong_types":
        key, val = rng.choice([("messages", "hi"), ("max_tokens", "10"), ("stream", "yes"), ("model", 123),
                               ("model", ""), ("messages", [{"role": 5}]), ("temperature", "hot"),
                               ("stream_options", []), ("input", {"a": 1}), ("system", 7), ("messages", None)])
        d[key] = val
        body = json.dumps(d).encode()
    elif m == "bad_unicode":
        if rng.random() < 0.5:
            text = json.dumps(d, ensure_ascii=True).replace("hello", "\\ud800hello\\udfff", 1)
            body = text.encode()
        else:
            body = json.dumps(d).encode().replace(b"hello", b"\xff\xfe\xc3hello", 1)
    elif m == "duplicate_keys":
        raw = json.dumps(d).encode()
        dup = rng.choice([b'"model":"pt-other-model",', b'"stream":false,', b'"messages":[],', b'"max_tokens":1,'])
        body = b"{" + dup + raw[1:]
    elif m == "not_object":
        body = rng.choice([b"[]", b"null", b'"a string"', b"123", b"true", b"[" + json.dumps(d).encode() + b"]"])
    else:
        body = json.dumps(d).encode()
    return path, body, headers


# ---------------------------------------------------------------------------------------------
# the oracle


def decoded(result: cu.Result) -> bytes | None:
    ce = (result.header("content-encoding") or "").strip().lower()
    if not ce or ce == "identity":
        return result.body
    if ce in ("gzip", "x-gzip"):
        try:
            return gzip.decompress(result.body)
        except (OSError, EOFError, ValueError):
            return None
    return None


def judge(c: Case, r: cu.Result, sent: cu.Sent | None) -> list[str]:
    probs: list[str] = []
    shape = "anthropic" if c.api == "anthropic" else "openai"
    rewrites = cu.rewrites_response(c.api, c.backend, c.stream)
    # an OpenAI-compatible stream whose usage chunk the filter asked for itself, and removes again
    injected = c.api == "openai" and c.stream and not c.usage and c.backend in ("pt", "az")
    head = r.body[:240]
    if sent is not None and sent.valid == "reset":
        return probs  # the provider broke the connection: anything but a trap is fine here
    if r.error:
        return [f"the connection broke: {r.error} (status {r.status}, {len(r.body)} bytes)"]
    st = r.status
    ce = r.header("content-encoding")
    if sent is None:
        if not 400 <= st < 500:
            probs.append(f"answered {st} without asking the provider: {head!r}")
        if c.req_mut == "valid":
            probs.append(f"a valid request did not reach the provider ({st}: {head!r})")
        if ce:
            probs.append(f"content-encoding {ce!r} on the filter's own answer")
        try:
            cu.validate_error(shape, r.body)
        except cu.Invalid as e:
            probs.append(f"own {st} is not in the client's API shape: {e}")
        return probs
    unchanged = r.body == sent.body and (ce or None) == sent.header("content-encoding")
    if unchanged is False and c.api == "openai" and c.stream and not ce:
        unchanged = r.body == cu.strip_usage_events(sent.body) and sent.header("content-encoding") is None
    if ce and r.body != sent.body:
        probs.append(f"content-encoding {ce!r} on a body the filter rewrote ({len(r.body)} bytes, "
                     f"provider sent {len(sent.body)})")
    body = decoded(r)
    if sent.valid == "error":
        if st != sent.status:
            probs.append(f"provider answered {sent.status}, client got {st}: {head!r}")
        if body is None:
            probs.append(f"error body cannot be decoded (content-encoding {ce!r})")
        else:
            try:
                cu.validate_error(shape, body)
            except cu.Invalid as e:
                probs.append(f"{st} error is not in the client's API shape: {e}")
        return probs
    # the provider answered 200
    if st >= 500:
        # 502 is the answer to an empty or unreadable success (issue 9, item 5) on any route, and to an
        # answer the filter has to rewrite but cannot read (e.g. gzip it does not decode)
        if not (st == 502 and (sent.valid is False or (sent.valid == "maybe" and (rewrites or injected)))):
            probs.append(f"{st} that the provider did not send (provider 200, {sent.mutation}): {head!r}")
        elif body is not None:
            try:
                cu.validate_error(shape, body)
            except cu.Invalid as e:
                probs.append(f"502 not in the client's API shape: {e}")
        return probs
    if st != 200:
        return probs + [f"client got {st} for a provider 200 ({sent.mutation}): {head!r}"]
    if unchanged and not rewrites and sent.valid is not True:
        return probs  # a pass-through route handed over the provider's answer as it came
    if body is None:
        return probs + [f"200 whose body cannot be decoded (content-encoding {ce!r})"]
    try:
        text, usage, errors = cu.validate_answer(c.api, c.stream, body)
        why = None
    except cu.Invalid as e:
        text, usage, errors, why = None, None, [], str(e)
    if sent.valid is True or sent.valid == "maybe":
        if why is not None and not (sent.valid == "maybe" and unchanged and not rewrites):
            probs.append(f"the provider's answer was valid ({sent.mutation}) but the client's 200 is not: {why}")
        elif why is None:
            if c.api != "embeddings" and text != sent.text:
                probs.append(f"answer text lost: client got {text[:80]!r}..., provider said {sent.text[:80]!r}...")
            if errors:
                probs.append(f"error events in the answer to a valid provider stream: {errors[:2]}")
            if c.api == "openai" and c.stream and not c.usage and usage is not None:
                probs.append("a usage chunk the client did not ask for")
    elif why is not None and (rewrites or not unchanged):
        probs.append(f"200 not valid for the client's API (provider {sent.mutation}): {why}")
    return probs


# ---------------------------------------------------------------------------------------------
# the run


@pytest.fixture(scope="module")
def chaos_env():
    up = cu.Upstream(lifetime=600, keep_body=64 * 1024)
    env = None
    try:
        env = cu.start_gateway(up, cu.plugin_config(BACKENDS), name="gw-chaos")
        yield up, env
    finally:
        if env is not None:
            env.stop()
        up.stop()


def health(env) -> list[str]:
    probs = []
    status, _, body = e2e.http("GET", env.admin_url + "/ready", timeout=5)
    if status != 200 or body.strip() != b"LIVE":
        probs.append(f"envoy /ready {status} {body[:80]!r}")
    for _ in range(4):  # fresh connections: the kernel spreads them over both workers
        r = cu.send(env.port, "GET", "/v1/models", None, {}, timeout=10)
        try:
            ok = r.status == 200 and json.loads(r.body).get("object") == "list"
        except ValueError:
            ok = False
        if not ok:
            probs.append(f"GET /v1/models {r.status} {r.error or ''} {r.body[:120]!r}")
            break
    return probs


@pytest.mark.slow
def test_chaos(chaos_env):
    up, env = chaos_env
    cases = make_cases(SEED, CASES)
    if ONLY is not None:
        cases = [cases[int(ONLY)]]
    print(f"\nchaos: seed {SEED}, {len(cases)} cases (LLMGW_CHAOS_SEED / LLMGW_CHAOS_CASES / LLMGW_CHAOS_CASE)")
    watch = cu.LogWatch(env.log_path, cu.TRAP_ONLY_RE)
    failures: list[tuple[Case, list[str], cu.Result | None]] = []
    stats_seen: dict[str, int] = {}
    peak_rss = 0
    t0 = time.monotonic()
    ran = 0
    for i, c in enumerate(cases):
        if time.monotonic() - t0 > HARD_LIMIT_S:
            break
        up.plan(c.case_id, cu.Plan(c.resp_mut, c.seed))
        path, body, headers = build_request(c)
        r = cu.send(env.port, "POST", path, body, headers, timeout=60)
        sent = up.take_sent(c.case_id)
        probs = judge(c, r, sent)
        ran += 1
        key = f"{c.req_mut}/{sent.mutation if sent else '-'}"
        stats_seen[key] = stats_seen.get(key, 0) + 1
        if (i + 1) % 5 == 0 or probs:
            time.sleep(0.05)  # let the log catch up
        traps = watch.new_traps()
        if traps:
            probs.append(f"trap in Envoy's log: {cu.trap_summary(traps, 300)}")
        rss = cu.rss_bytes(env.proc.pid)
        peak_rss = max(peak_rss, rss)
        if rss > RSS_BOUND:
            probs.append(f"Envoy RSS {rss // MIB} MiB > {RSS_BOUND // MIB} MiB")
        if (i + 1) % HEALTH_EVERY == 0 or i + 1 == len(cases):
            probs += [f"health: {p}" for p in health(env)]
        if env.proc.poll() is not None:
            probs.append(f"Envoy exited with {env.proc.returncode}")
        if probs:
            failures.append((c, probs, r))
            if len(failures) <= 60:
                print(f"FAIL {c.describe()}: {probs[0][:300]}")
        if env.proc.poll() is not None:
            break
    took = time.monotonic() - t0
    time.sleep(0.3)
    late = watch.new_traps()
    if late:
        failures.append((cases[max(0, ran - 1)], [f"trap in Envoy's log after the last case: {cu.trap_summary(late, 300)}"],
                         None))
    stats = cu.stat_values(env.stats("text"))
    vm = cu.wasm_failure_stats(stats, int(env.baseline_stats.get("wasm.envoy.wasm.runtime.v8.created", "0")))
    print(f"chaos: {ran} cases in {took:.1f}s, Envoy peak RSS {peak_rss // MIB} MiB, {len(failures)} failing")
    if ran < len(cases):
        failures.append((cases[ran], [f"only {ran} of {len(cases)} cases ran within {HARD_LIMIT_S:.0f}s"], None))
    if vm:
        failures.append((cases[max(0, ran - 1)], [f"Wasm VM failures in /stats after the run: {vm}"], None))
    if failures:
        kinds: dict[str, list[int]] = {}
        for c, probs, _ in failures:
            for p in probs:
                k = re.split(r"[:(]", p, maxsplit=1)[0].strip()[:90]
                kinds.setdefault(k, []).append(c.n)
        lines = [f"chaos seed {SEED}: {len(failures)} of {ran} cases failed "
                 f"(replay one: LLMGW_CHAOS_SEED={SEED} LLMGW_CHAOS_CASE=N)"]
        for k, ns in sorted(kinds.items(), key=lambda kv: -len(kv[1]))[:15]:
            lines.append(f"  {len(ns):4d} x {k}   (cases {', '.join(map(str, ns[:8]))}{' ...' if len(ns) > 8 else ''})")
        c, probs, r = failures[0]
        lines.append("first failing " + c.describe())
        for p in probs[:4]:
            lines.append("  - " + p[:400])
        if r is not None:
            lines.append(f"  client got {r.status}, headers {dict(list(r.headers.items())[:8])}, body {r.body[:200]!r}")
        pytest.fail("\n".join(lines), pytrace=False)
