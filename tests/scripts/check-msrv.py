#!/usr/bin/python3
"""Every dependency of milter-core (all features, dev-dependencies excepted) declares a
rust-version at or below milter-core's own. Reads `cargo metadata`; exits 1 naming the
offenders. The other MSRV check is clippy's incompatible_msrv lint (see
milter-core/README.md for what neither covers)."""
import json
import subprocess
import sys

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--all-features"],
    check=True, capture_output=True, text=True).stdout)
pkgs = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = next(i for i, p in pkgs.items() if p["name"] == "milter-core")


def ver(s):
    return tuple(int(x) for x in s.split("."))


msrv = ver(pkgs[root]["rust_version"])
seen, stack = set(), [root]
while stack:
    i = stack.pop()
    if i in seen:
        continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        if all(k["kind"] == "dev" for k in d["dep_kinds"]):
            continue
        stack.append(d["pkg"])
bad = [(pkgs[i]["name"], pkgs[i]["version"], pkgs[i]["rust_version"])
       for i in seen - {root}
       if pkgs[i].get("rust_version") and ver(pkgs[i]["rust_version"]) > msrv]
for name, v, rv in bad:
    print(f"{name} {v} needs rust {rv} > milter-core's {pkgs[root]['rust_version']}")
print(f"milter-core rust-version {pkgs[root]['rust_version']}: "
      f"{len(seen) - 1} dependencies checked, {len(bad)} newer")
sys.exit(1 if bad else 0)
