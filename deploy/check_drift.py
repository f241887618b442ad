#!/usr/bin/env python3
"""Checks that deploy/ and the Dockerfile name only what the samp binary has: every SAMP_* env
var and every --flag they use appears in `samp ... --help`; the ports in the manifests are the
ones the config (validated by `samp serve --check`) listens on; the ConfigMap's samp.toml is a
valid configuration; the ghz configs call RPCs the proto defines, with request fields it
defines; the Grafana dashboard queries metrics samp exports. Exit 1 with every problem listed.
Usage: deploy/check_drift.py [path/to/samp]   (default target/release/samp)
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "release" / "samp"
problems = []


def helptext(*args):
    return subprocess.run([str(BIN), *args, "--help"], capture_output=True, text=True, check=True).stdout


# What the binary accepts.
helps = {cmd: helptext(*cmd.split()) for cmd in ["", "serve", "client", "client health", "quantize", "eval", "bench"]}
flags = {f for h in helps.values() for f in re.findall(r"(--[a-z][a-z0-9-]*)", h)}
envs = {e for h in helps.values() for e in re.findall(r"\[env: (SAMP_[A-Z_]+)=", h)}
envs.add("SAMP_LOG")  # the log filter (tracing EnvFilter), documented in README
envs.add("SAMP_ONEDNN")  # where libdnnl.so.3 is (kernels/onednn.rs), documented in README
subcommands = {"serve", "client", "health", "embed", "classify", "tag", "models", "quantize", "eval", "bench"}

# Everything deploy/ and the Dockerfile name.
texts = {p: p.read_text() for p in [ROOT / "Dockerfile", *sorted((ROOT / "deploy").rglob("*.yaml"))]}
for path, text in texts.items():
    for e in sorted(set(re.findall(r"\b(SAMP_[A-Z_]+)\b", text))):
        if e not in envs:
            problems.append(f"{path.relative_to(ROOT)}: env var {e} is not read by samp")
    # Flags inside exec-form arrays, the samp command lines.
    for arr in re.findall(r"\[([^\[\]]*\"--[^\[\]]*)\]", text):
        for f in re.findall(r"\"(--[a-z][a-z0-9-]*)\"", arr):
            if f not in flags:
                problems.append(f"{path.relative_to(ROOT)}: flag {f} is not a samp flag")

# Kubernetes: ports and the config file.
docs = [d for p in (ROOT / "deploy" / "kubernetes").glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
cm = by_kind["ConfigMap"][0]["data"]["samp.toml"]
with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
    f.write(cm)
checked = subprocess.run([str(BIN), "serve", "--config", f.name, "--check"], capture_output=True, text=True)
if checked.returncode != 0:
    problems.append(f"configmap.yaml samp.toml does not validate: {checked.stderr.strip()}")
    cfg = None
else:
    cfg = json.loads(checked.stdout)
dep = by_kind["Deployment"][0]["spec"]["template"]["spec"]
ctr = next(c for c in dep["containers"] if c["name"] == "samp")
ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
if cfg:
    for key, name in [("listen", "grpc"), ("metrics_listen", "metrics"), ("http_listen", "http")]:
        if cfg.get(key) is None:
            continue
        port = int(cfg[key].rsplit(":", 1)[1])
        if ports.get(name) != port:
            problems.append(f"deployment.yaml: containerPort {name}={ports.get(name)} but samp.toml {key} is {cfg[key]}")
    grace = cfg["shutdown_grace_seconds"]
    pre = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if dep["terminationGracePeriodSeconds"] <= grace + pre:
        problems.append(f"deployment.yaml: terminationGracePeriodSeconds must exceed shutdown_grace_seconds ({grace}) + preStop ({pre})")
for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
    spec = ctr.get(probe, {})
    grpc_ok = spec.get("grpc", {}).get("port") == ports.get("grpc")
    http_ok = spec.get("httpGet", {}).get("port") in ("http", ports.get("http")) and \
        spec["httpGet"].get("path") == "/health" and cfg is not None and cfg.get("http_listen") is not None
    if not (grpc_ok or http_ok):
        problems.append(f"deployment.yaml: {probe} probes neither the gRPC port nor the HTTP door's /health")
ann = dep.get("metadata", {}) or by_kind["Deployment"][0]["spec"]["template"]["metadata"]
ann = by_kind["Deployment"][0]["spec"]["template"]["metadata"]["annotations"]
if int(ann["prometheus.io/port"]) != ports.get("metrics"):
    problems.append("deployment.yaml: prometheus.io/port is not the metrics port")
for svc in by_kind["Service"]:
    for p in svc["spec"]["ports"]:
        if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
            problems.append(f"{svc['metadata']['name']}: targetPort {p['targetPort']} is not a container port")
docker = texts[ROOT / "Dockerfile"]
exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", docker, re.M) for p in line.split()}
if exposed != set(ports.values()):
    problems.append(f"Dockerfile EXPOSE {sorted(exposed)} != container ports {sorted(ports.values())}")

# ghz configs against the proto.
proto = (ROOT / "proto" / "samp" / "v1" / "samp.proto").read_text()
rpcs = set(re.findall(r"rpc (\w+)\((\w+)\)", proto))
messages = {m: set(re.findall(r"^\s+(?:repeated |optional )?[\w.]+ (\w+) = \d+;", body, re.M))
            for m, body in re.findall(r"message (\w+) \{(.*?)^\}", proto, re.M | re.S)}
for cfgfile in sorted((ROOT / "deploy" / "ghz").glob("*.json")):
    g = json.loads(cfgfile.read_text())
    pkg, svc, method = g["call"].rsplit(".", 2)
    req = dict(rpcs).get(method)
    if f"{pkg}.{svc}" != "samp.v1.Samp" or req is None:
        problems.append(f"{cfgfile.name}: call {g['call']} is not an RPC of samp.v1.Samp")
        continue
    if "proto" in g and not (ROOT / g["proto"]).is_file():
        problems.append(f"{cfgfile.name}: proto {g['proto']} does not exist")
    data = json.loads((ROOT / g["data-file"]).read_text())
    for i, msg in enumerate(data):
        extra = set(msg) - messages[req]
        if extra:
            problems.append(f"{g['data-file']}[{i}]: fields {sorted(extra)} are not in {req}")

# Grafana: metric names.
exported = set(re.findall(r'"(samp_[a-z0-9_]+)"', (ROOT / "src" / "metrics.rs").read_text()))
dash = (ROOT / "deploy" / "grafana" / "samp-dashboard.json").read_text()
for m in sorted(set(re.findall(r"\b(samp_[a-z0-9_]+)", dash))):
    base = re.sub(r"_(bucket|sum|count)$", "", m)
    if base not in exported and m not in exported:
        problems.append(f"samp-dashboard.json: metric {m} is not exported by samp")

if problems:
    print("deploy drift:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"deploy/ and Dockerfile agree with the binary: {len(envs)} env vars, {len(flags)} flags, ports {sorted(ports.values())}, "
      f"{len(list((ROOT / 'deploy' / 'ghz').glob('*.json')))} ghz configs, dashboard metrics")
