#!/usr/bin/env python3
"""render.py IN OUT CFG0 [CFG1...]: replace the i-th line '__WASM_FILTER__' with the wasm http filter snippet
(plugin configuration string CFGi), indented like the placeholder line."""
import sys, textwrap
src, out, cfgs = sys.argv[1], sys.argv[2], sys.argv[3:]
tpl = textwrap.dedent(open("/work/spike-fallback/wasm_filter.yaml.tpl").read()).rstrip("\n")
tpl = tpl.replace("__WASM__", "/work/spike-fallback/target/wasm32-wasip1/release/spike_filter.wasm")
import os
if os.environ.get("ALLOW_STOP"):
    tpl = tpl.replace("\n      root_id: spike", "\n      root_id: spike\n      allow_on_headers_stop_iteration: true")
lines, i = [], 0
for ln in open(src).read().split("\n"):
    if ln.strip() == "__WASM_FILTER__":
        ind = ln[: len(ln) - len(ln.lstrip())]
        snip = tpl.replace("__CFG__", cfgs[i]).replace("vm_id: spike", f"vm_id: spike{i}")
        lines += [ind + s for s in snip.split("\n")]
        i += 1
    else:
        lines.append(ln)
open(out, "w").write("\n".join(lines))
