"""A mock of Envoy's global rate limit service (gRPC `envoy.service.ratelimit.v3.RateLimitService`)
for the e2e tests: it records every `ShouldRateLimit` call (domain, descriptors, hits_addend) and
answers like `envoyproxy/ratelimit` with a fixed-window counter per descriptor.

No .proto files or generated code: the two messages are decoded/encoded here by hand from the
protobuf wire format. The fields used (from envoy/service/ratelimit/v3/rls.proto and
envoy/extensions/common/ratelimit/v3/ratelimit.proto):

    RateLimitRequest   { string domain = 1; repeated RateLimitDescriptor descriptors = 2;
                         uint32 hits_addend = 3; }
    RateLimitDescriptor { repeated Entry entries = 1; RateLimitOverride limit = 2;
                          google.protobuf.UInt64Value hits_addend = 3; }
    Entry              { string key = 1; string value = 2; }
    RateLimitResponse  { Code overall_code = 1; repeated DescriptorStatus statuses = 2; }
    DescriptorStatus   { Code code = 1; ... uint32 limit_remaining = 3; }
    Code               { UNKNOWN = 0; OK = 1; OVER_LIMIT = 2; }

Counting, as envoyproxy/ratelimit does it: a descriptor's hits are its own `hits_addend` when
Envoy sets it (Envoy sends it per descriptor when the route's rate limit has `hits_addend`), else
the request's `hits_addend`, else 1. The counter grows by the hits and the descriptor is over the
limit when the counter is then above the limit; so a check with 0 hits adds nothing and is over
the limit only once earlier hits passed it. Limits are set per descriptor with `set_limit`.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
OK, OVER_LIMIT = 1, 2

# ---------------------------------------------------------------------------------------------
# protobuf wire format (just what these messages need)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield (field number, wire type, value) for each field; value is an int (varint/fixed)
    or bytes (length-delimited)."""
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 5:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, v


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_field(num: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _enc_varint(num << 3) + _enc_varint(value)
    return _enc_varint((num << 3) | 2) + _enc_varint(len(value)) + value


@dataclass
class Descriptor:
    entries: tuple[tuple[str, str], ...]
    hits_addend: int | None  # the per-descriptor UInt64Value, None when Envoy did not set it


@dataclass
class Call:
    domain: str
    descriptors: list[Descriptor]
    hits_addend: int  # the request-level field (0 = unset)
    codes: list[int] = field(default_factory=list)  # what the mock answered, per descriptor
    at: float = field(default_factory=time.monotonic)


def decode_request(data: bytes) -> Call:
    domain, descs, hits = "", [], 0
    for num, _, v in _fields(data):
        if num == 1:
            domain = v.decode()
        elif num == 2:
            entries, d_hits = [], None
            for dn, _, dv in _fields(v):
                if dn == 1:
                    kv = {en: ev.decode() for en, _, ev in _fields(dv)}
                    entries.append((kv.get(1, ""), kv.get(2, "")))
                elif dn == 3:
                    d_hits = 0  # a present wrapper with the default value 0 has no fields
                    for wn, _, wv in _fields(dv):
                        if wn == 1:
                            d_hits = wv
            descs.append(Descriptor(tuple(entries), d_hits))
        elif num == 3:
            hits = v
    return Call(domain, descs, hits)


def encode_response(overall: int, statuses: list[tuple[int, int]]) -> bytes:
    """statuses: (code, limit_remaining) per descriptor, in request order."""
    out = _enc_field(1, overall)
    for code, remaining in statuses:
        out += _enc_field(2, _enc_field(1, code) + _enc_field(3, remaining))
    return out


def encode_request(domain: str, entries, hits_addend: int | None = None) -> bytes:
    """A client's RateLimitRequest with one descriptor (its per-descriptor hits_addend when given)."""
    desc = b"".join(_enc_field(1, _enc_field(1, k.encode()) + _enc_field(2, v.encode())) for k, v in entries)
    if hits_addend is not None:
        desc += _enc_field(3, _enc_field(1, hits_addend) if hits_addend else b"")
    return _enc_field(1, domain.encode()) + _enc_field(2, desc)


def decode_response(data: bytes) -> tuple[int, list[tuple[int, int]], dict[str, str]]:
    """(overall_code, [(code, limit_remaining)] per descriptor, response_headers_to_add)."""
    overall, statuses, headers = 0, [], {}
    for num, _, v in _fields(data):
        if num == 1:
            overall = v
        elif num == 2:
            f = {n: val for n, _, val in _fields(v)}
            statuses.append((f.get(1, 0), f.get(3, 0)))
        elif num == 3:
            kv = {n: val.decode() for n, _, val in _fields(v)}
            headers[kv.get(1, "")] = kv.get(2, "")
    return overall, statuses, headers


def should_rate_limit(port: int, request: bytes, timeout: float = 5.0):
    """One ShouldRateLimit call to a rate limit service on loopback; the decoded response."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        return decode_response(call(request, timeout=timeout))


# ---------------------------------------------------------------------------------------------
# server


class MockRLS:
    """The mock service on a free loopback port (`.port`); `calls()` returns what it received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._limits: dict[tuple[tuple[str, str], ...], int] = {}
        self._used: dict[tuple[tuple[str, str], ...], int] = {}
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(self._should_rate_limit)  # raw bytes in and out
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("envoy.service.ratelimit.v3.RateLimitService",
                                                  {"ShouldRateLimit": handler}),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        if not self.port:
            raise RuntimeError("mock RLS: could not bind a loopback port")
        self._server.start()

    def set_limit(self, entries: list[tuple[str, str]] | tuple[tuple[str, str], ...], limit: int) -> None:
        """Limit (hits per window; the window never ends) for the descriptor with exactly these entries."""
        with self._lock:
            self._limits[tuple(entries)] = limit

    def used(self, entries) -> int:
        with self._lock:
            return self._used.get(tuple(entries), 0)

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def wait_calls(self, n: int, timeout: float = 10.0) -> list[Call]:
        """At least n calls (bounded wait: charges on stream done are sent after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            calls = self.calls()
            if len(calls) >= n or time.monotonic() > deadline:
                return calls
            time.sleep(0.05)

    def _should_rate_limit(self, request: bytes, context) -> bytes:
        call = decode_request(request)
        statuses = []
        with self._lock:
            for d in call.descriptors:
                hits = d.hits_addend if d.hits_addend is not None else (call.hits_addend or 1)
                after = self._used.get(d.entries, 0) + hits
                self._used[d.entries] = after
                limit = self._limits.get(d.entries)
                if limit is None:
                    statuses.append((OK, 0))
                else:
                    statuses.append((OVER_LIMIT if after > limit else OK, max(0, limit - after)))
            call.codes = [c for c, _ in statuses]
            self._calls.append(call)
        overall = OVER_LIMIT if any(c == OVER_LIMIT for c, _ in statuses) else OK
        return encode_response(overall, statuses)

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)
