#!/usr/bin/env python3
"""Regenerate workspace-hack/Cargo.toml (see its header for why the crate exists).

    scripts/workspace_hack.py           rewrite workspace-hack/Cargo.toml
    scripts/workspace_hack.py --check   exit 1 if it is out of date (after a dependency change)

Reads the unit graph of the cargo invocations `make test` makes for the host crates (it compiles
nothing; `--unit-graph` is unstable, hence RUSTC_BOOTSTRAP for this one query): every dependency that
comes out with more than one feature set (between invocations, or between the normal and the
build-script/proc-macro side of one) gets the union of them, in [dependencies] and in
[build-dependencies], until nothing changes. Dependencies only one side uses (wasmtime's for
host-tests, regex for the CLI) are optional, behind the feature named after that side, so the CLI
does not build wasmtime's crates nor host-tests the CLI's. Only needed to regenerate: building uses
the committed Cargo.toml alone.
"""
import collections
import json
import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HACK = os.path.join(ROOT, "workspace-hack", "Cargo.toml")
# The host-crate invocations of the Makefile, by side ("host-tests" with mocks, "cli").
SIDES = {
    "host-tests": ["build -p llmgw-host-tests --bin wasi-runner", "test -p llmgw-host-tests -p llmgw-mocks"],
    "cli": ["test -p llmgw"],
}
HOST = "x86_64-unknown-linux-gnu"
# Crates absent from this target's graph are declared for Linux only.
OTHER = "aarch64-apple-darwin"
MARKER = "[package]"


def unit_graph(args, target):
    cmd = ["cargo", *args.split(), "--target", target, "--unit-graph", "-Z", "unstable-options"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "RUSTC_BOOTSTRAP": "1"})
    if out.returncode:
        sys.exit(f"{' '.join(cmd)}:\n{out.stderr}")
    return json.loads(out.stdout)["units"]


def collect(target):
    """{(kind, "name@version"): set of feature sets}, {"name@version": sides}; kind is normal or build."""
    features, sides = collections.defaultdict(set), collections.defaultdict(set)
    for side, invocations in SIDES.items():
        for args in invocations:
            for unit in unit_graph(args, target):
                kinds = unit["target"]["kind"]
                if unit["pkg_id"].startswith("path+") or unit["mode"] != "build" or "custom-build" in kinds:
                    continue
                pkg = unit["pkg_id"].split("#")[1]
                kind = "build" if unit["platform"] is None else "normal"
                features[(kind, pkg)].add(frozenset(unit["features"]))
                sides[pkg].add(side)
    return features, sides


def current(lock_versions):
    """The features the current workspace-hack/Cargo.toml enables, by (kind, "name@version")."""
    with open(HACK, "rb") as f:
        manifest = tomllib.load(f)
    tables = [("normal", manifest.get("dependencies", {})), ("build", manifest.get("build-dependencies", {}))]
    for platform in manifest.get("target", {}).values():
        tables += [("normal", platform.get("dependencies", {})), ("build", platform.get("build-dependencies", {}))]
    enabled = collections.defaultdict(set)
    for kind, table in tables:
        for key, spec in table.items():
            name = spec.get("package", key)
            if spec["version"] not in lock_versions[name]:
                continue  # no longer in Cargo.lock
            pkg = (kind, f"{name}@{spec['version']}")
            enabled[pkg] |= set(spec.get("features", [])) | ({"default"} if spec.get("default-features", True) else set())
    return enabled


def render(lock_versions):
    features, sides = collect(HOST)
    other, _ = collect(OTHER)
    other_pkgs = {pkg for (kind, pkg) in other if kind == "normal"}
    enabled = current(lock_versions)
    sections, side_features = collections.defaultdict(list), collections.defaultdict(list)
    for pkg in sorted({pkg for (_, pkg) in features}):
        sets = features.get(("normal", pkg), set()) | features.get(("build", pkg), set())
        listed = {kind for kind in ("normal", "build") if (kind, pkg) in enabled}
        if len(sets) < 2 and not listed:
            continue
        union = set().union(*sets, *(enabled[(kind, pkg)] for kind in listed))
        name, version = pkg.rsplit("@", 1)
        key = name
        if len(lock_versions[name]) > 1:
            major, minor = version.split(".")[:2]
            key = f"{name}-{major}" if major != "0" else f"{name}-0-{minor}"
        optional = len(sides[pkg]) == 1
        if optional:
            side_features[next(iter(sides[pkg]))].append(f'"dep:{key}"')
        spec = (f'package = "{name}", ' if key != name else "") + f'version = "{version}"'
        if "default" not in union:
            spec += ", default-features = false"
        if optional:
            spec += ", optional = true"
        names = sorted(union - {"default"})
        if names:
            spec += ", features = [" + ", ".join(f'"{n}"' for n in names) + "]"
        linux_only = pkg not in other_pkgs and ("normal", pkg) in features
        for kind, table in (("normal", "dependencies"), ("build", "build-dependencies")):
            if (kind, pkg) in features or kind in listed:
                section = f"target.'cfg(target_os = \"linux\")'.{table}" if linux_only else table
                sections[section].append(f"{key} = {{ {spec} }}")
    out = ["[features]"]
    out += [f"{side} = [{', '.join(sorted(set(side_features[side])))}]" for side in SIDES]
    for section in sorted(sections, key=lambda s: (s.startswith("target"), s)):
        out += ["", f"[{section}]", *sections[section]]
    return "\n".join(out) + "\n"


def main():
    with open(os.path.join(ROOT, "Cargo.lock"), "rb") as f:
        lock = tomllib.load(f)
    lock_versions = collections.defaultdict(set)
    for package in lock["package"]:
        lock_versions[package["name"]].add(package["version"])
    with open(HACK) as f:
        original = f.read()
    head = original[: original.index(MARKER)]
    package = original[original.index(MARKER) :].split("\n\n", 1)[0]
    text = original
    for _ in range(10):  # new features can activate optional dependencies: repeat until stable
        new = f"{head}{package}\n\n{render(lock_versions)}"
        if new == text:
            break
        text = new
        with open(HACK, "w") as f:
            f.write(text)
    else:
        sys.exit("workspace-hack: no fixed point after 10 rounds")
    if "--check" in sys.argv[1:]:
        with open(HACK, "w") as f:
            f.write(original)
        if text != original:
            sys.exit("workspace-hack/Cargo.toml is out of date: run scripts/workspace_hack.py")
    print("workspace-hack/Cargo.toml", "up to date" if text == original else "rewritten")


if __name__ == "__main__":
    main()
