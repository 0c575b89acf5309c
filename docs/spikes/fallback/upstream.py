#!/usr/bin/env python3
"""Tiny echo upstream: upstream.py PORT NAME MODE  (MODE: ok | 500 | 429 | hang | slowstream)"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, name, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                ln = int(self.rfile.readline().strip().split(b";")[0], 16)
                if ln == 0:
                    self.rfile.readline(); break
                out += self.rfile.read(ln); self.rfile.readline()
            return out
        n = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(n) if n else b""
    def do_POST(self):
        body = self._read_body()
        print(f"UPSTREAM {name} mode={mode} path={self.path} host={self.headers.get('Host')} "
              f"auth={self.headers.get('Authorization')} te={self.headers.get('Transfer-Encoding')} "
              f"cl={self.headers.get('Content-Length')} attempt={self.headers.get('x-envoy-attempt-count')} body={body.decode(errors='replace')}",
              flush=True)
        if mode == "hang":
            time.sleep(8)
        if mode == "slowstream":  # SSE-like: headers + first chunk now, rest after 2.5s (total > 1s per-try timeout)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i, part in enumerate([b'"part1",', b'"part2-after-2.5s"']):
                    if i:
                        time.sleep(2.5)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part)); self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n"); self.wfile.flush()
                print(f"UPSTREAM {name} slowstream finished writing", flush=True)
            except Exception as e:
                print(f"UPSTREAM {name} slowstream write failed: {e!r}", flush=True)
            return
        code = {"500": 500, "429": 429}.get(mode, 200)
        out = json.dumps({"from": name, "code": code}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        try:
            self.wfile.write(out)
        except Exception:
            pass
    do_GET = do_POST

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
