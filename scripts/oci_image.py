#!/usr/bin/env python3
"""Package llmgw_filter.wasm as an OCI image layout that Envoy Gateway's and Istio's Wasm fetchers accept.

The image is an ordinary OCI image manifest whose only (hence last) layer is a gzip tar holding
`plugin.wasm`: the fetchers take the last layer and extract the .wasm from it. (Envoy Gateway rejects
the single-layer `application/vnd.module.wasm.content.layer.v1+wasm` artifact form.)

Reproducible: the tar has fixed mtimes, owners and modes, and the gzip header has no name and mtime 0,
so the manifest digest depends only on the .wasm bytes and the annotations given.

    scripts/oci_image.py --wasm target/wasm32-wasip1/release/llmgw_filter.wasm --out target/oci/llmgw \
        --tag 0.1.0 --version 0.1.0 --revision $(git rev-parse HEAD) --source https://github.com/llmgw/llmgw
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer_tar(wasm: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mtime, info.mode = len(wasm), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of build-time facts.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(wasm: bytes, annotations: dict) -> dict:
    """Returns {digest: bytes} for every blob, plus the manifest descriptor."""
    tar = layer_tar(wasm)
    layer = gzip_bytes(tar)
    config = canonical({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [{
            "mediaType": LAYER,
            "digest": digest(layer),
            "size": len(layer),
            "annotations": {"org.opencontainers.image.title": "plugin.wasm"},
        }],
        "annotations": annotations,
    })
    blobs = {digest(b): b for b in (layer, config, manifest)}
    descriptor = {"mediaType": MANIFEST, "digest": digest(manifest), "size": len(manifest)}
    return {"blobs": blobs, "manifest": descriptor}


def write_layout(out: str, image: dict, tag: str) -> None:
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    for d, data in image["blobs"].items():
        with open(os.path.join(out, "blobs", "sha256", d.split(":", 1)[1]), "wb") as f:
            f.write(data)
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    descriptor = dict(image["manifest"], annotations={"org.opencontainers.image.ref.name": tag})
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": [descriptor]}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wasm", required=True)
    p.add_argument("--out", required=True, help="OCI image layout directory (replaced)")
    p.add_argument("--tag", default="latest")
    p.add_argument("--version", default="0.0.0")
    p.add_argument("--revision", default="unknown")
    p.add_argument("--source", default="https://github.com/llmgw/llmgw")
    args = p.parse_args(argv)
    with open(args.wasm, "rb") as f:
        wasm = f.read()
    if wasm[:4] != b"\0asm":
        print(f"{args.wasm} is not a WebAssembly module", file=sys.stderr)
        return 1
    annotations = {
        "org.opencontainers.image.source": args.source,
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.title": "llmgw-filter",
        "org.opencontainers.image.description": "llmgw: AI gateway proxy-wasm filter for Envoy",
    }
    image = build(wasm, annotations)
    write_layout(args.out, image, args.tag)
    print(f"{args.out}: {image['manifest']['digest']} ({len(wasm)} byte plugin.wasm, tag {args.tag})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
