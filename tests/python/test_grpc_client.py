"""An independent client against the real `samp serve` binary: Python grpcio, no proto files.

The server binds 127.0.0.1:0 and logs its address; the test discovers the services through
server reflection, builds request messages from the reflected descriptors, checks health, calls
every RPC, then sends SIGTERM and expects a clean exit. Run by scripts/test.sh.
"""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "samp"
MODELS = ROOT / "models"


ADDR = {}


@pytest.fixture(scope="module")
def server():
    assert BIN.exists(), "build first: cargo build --release"
    proc = subprocess.Popen(
        [str(BIN), "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
         "--model", f"mini={MODELS / 'all-MiniLM-L6-v2'}",
         "--model", f"sentiment={MODELS / 'minilm-sentiment'}",
         "--model", f"pii={MODELS / 'rampart-pii'}"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1", "SAMP_LOG_FORMAT": "json"})
    addr = None
    deadline = time.time() + 120
    while time.time() < deadline and addr is None:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r'"grpc":"([0-9.]+:[0-9]+)"', line)
        if m:
            addr = m.group(1)
    assert addr, "the server did not report its address"
    ADDR["grpc"] = addr
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    yield proc, channel
    channel.close()
    if proc.poll() is None:
        proc.kill()


def reflected(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(db)
    return db, pool


def call(channel, pool, method, **fields):
    svc = pool.FindServiceByName("samp.v1.Samp")
    m = svc.FindMethodByName(method)
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    stub = channel.unary_unary(f"/samp.v1.Samp/{method}", request_serializer=req_cls.SerializeToString,
                               response_deserializer=resp_cls.FromString)
    return stub(req_cls(**fields), timeout=30)


def test_reflection_lists_the_services(server):
    _, channel = server
    db, _ = reflected(channel)
    services = set(db.get_services())
    assert {"samp.v1.Samp", "grpc.health.v1.Health"} <= services


def test_health_is_serving(server):
    _, channel = server
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "samp.v1.Samp"):
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_samp_client_health_command(server):
    """The health check the Dockerfile's HEALTHCHECK runs: exit 0 and SERVING; a dead address fails."""
    ok = subprocess.run([str(BIN), "client", "--addr", f"http://{ADDR['grpc']}", "--timeout-ms", "5000", "health"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout
    dead = subprocess.run([str(BIN), "client", "--addr", "http://127.0.0.1:1", "--timeout-ms", "2000", "health"],
                          capture_output=True, text=True, timeout=30)
    assert dead.returncode != 0 and "127.0.0.1:1" in dead.stderr


def test_every_rpc(server):
    _, channel = server
    _, pool = reflected(channel)
    r = call(channel, pool, "Embed", texts=["hello world", "second"], model="mini")
    assert len(r.embeddings) == 2 and len(r.embeddings[0].values) == 384
    assert abs(sum(v * v for v in r.embeddings[0].values) - 1.0) < 1e-4
    assert r.served.model == "mini" and r.served.variant == "float32"
    r = call(channel, pool, "Classify", inputs=[{"text": "I loved it"}, {"pair": {"a": "Dull.", "b": "Boring."}}])
    assert [x.label for x in r.results][0] == "POSITIVE" and len(r.results) == 2
    r = call(channel, pool, "Tag", texts=["My name is John Smith"])
    assert [(e.label, e.start, e.end) for e in r.results[0].entities] == [("GIVEN_NAME", 11, 15), ("SURNAME", 16, 21)]
    r = call(channel, pool, "ListModels")
    assert sorted(m.name for m in r.models) == ["mini", "pii", "sentiment"]
    r = call(channel, pool, "GetModel", model="pii")
    assert r.task == "tag" and len(r.labels) == 35


def test_errors_have_codes(server):
    _, channel = server
    _, pool = reflected(channel)
    with pytest.raises(grpc.RpcError) as e:
        call(channel, pool, "Embed", texts=[], model="mini")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        call(channel, pool, "Embed", texts=["x"], model="missing")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_exits_cleanly(server):
    proc, channel = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
