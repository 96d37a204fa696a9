"""A standard Python gRPC client (grpcio) against a real podsnapd on its Unix socket.

grpcio (1.57 and later) sends the socket's path as the HTTP/2 `:authority` of a `unix:` target.
That is not a valid authority, and the HTTP/2 server under podsnapd (the h2 crate, through
tonic and hyper) resets such a stream with PROTOCOL_ERROR before podsnapd sees it; h2 has no
option to accept it. The channel option `grpc.default_authority=localhost` (what grpc-go and
grpcurl send by default) makes every call work. These tests pin both halves, so a change on
either side (a grpcio that stops sending the path, an h2 that accepts it) shows up here and the
README's advice can follow it.

The calls use grpcio's generic stubs with hand-encoded protobuf (the requests are empty
messages), so no generated Python code or protoc is needed: health (`grpc.health.v1.Health/
Check`) and one podsnap RPC (`podsnap.v1.Podsnap/GetNodeInfo`).

Needs: pip install 'grpcio>=1.57' pytest, and podsnapd built (`cargo build --workspace --bins`;
PODSNAP_BIN names another directory). With PODSNAP_REQUIRE_PRIVILEGED=1 (make test as root)
a missing piece fails instead of skipping.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_NAME = "grpcio-node"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
GET_NODE_INFO = "/podsnap.v1.Podsnap/GetNodeInfo"
REQUIRED = os.environ.get("PODSNAP_REQUIRE_PRIVILEGED") == "1"


def missing(reason):
    if REQUIRED:
        pytest.fail(f"{reason} (PODSNAP_REQUIRE_PRIVILEGED=1)")
    pytest.skip(reason)


try:
    import grpc
except ImportError:  # pragma: no cover - depends on the machine
    grpc = None


def podsnapd_binary():
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return Path(os.environ.get("PODSNAP_BIN", os.path.join(target, "debug"))) / "podsnapd"


def field(message, number):
    """The bytes of length-delimited field `number` in a protobuf message (first occurrence)."""
    i = 0
    while i < len(message):
        key, i = varint(message, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(message, i)
        elif wire == 2:
            n, i = varint(message, i)
            if num == number:
                return message[i:i + n]
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return None


def varint(b, i):
    shift = value = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


@pytest.fixture(scope="module")
def daemon():
    if grpc is None:
        missing("python3 module grpcio not installed (pip install 'grpcio>=1.57')")
    if tuple(int(x) for x in grpc.__version__.split(".")[:2]) < (1, 57):
        missing(f"grpcio {grpc.__version__} is older than 1.57, which these tests describe")
    binary = podsnapd_binary()
    if not binary.is_file():
        missing(f"{binary} not built (cargo build --workspace --bins)")
    if shutil.which("runsc") is None:
        missing("runsc not on PATH")
    work = Path(tempfile.mkdtemp(prefix="podsnap-grpcio."))
    sock = work / "podsnapd.sock"
    log = open(work / "podsnapd.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "--listen", f"unix://{sock}", "--store", f"file://{work}/store",
         "--state-dir", str(work / "state"), "--runsc-root", str(work / "runsc-root"),
         "--node-name", NODE_NAME, "--socket-mode", "0600"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("podsnapd did not start: " + (work / "podsnapd.log").read_text())
        time.sleep(0.1)
    yield sock
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    shutil.rmtree(work, ignore_errors=True)


def call(channel, method, request=b""):
    rpc = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return rpc(request, timeout=10)


def test_grpcio_with_default_authority_localhost_calls_health_and_podsnap(daemon):
    options = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(f"unix://{daemon}", options=options) as ch:
        # HealthCheckResponse { status = SERVING (1) }: field 1, varint 1.
        assert call(ch, HEALTH_CHECK) == b"\x08\x01"
        info = call(ch, GET_NODE_INFO)
        assert field(info, 1) == NODE_NAME.encode()
        assert field(info, 2), "podsnap_version is empty"


def test_grpcio_default_authority_is_the_socket_path_and_is_refused(daemon):
    # Without the option grpcio names the socket path as :authority; the server resets the
    # stream before any handler runs, so every call fails the same way.
    with grpc.insecure_channel(f"unix://{daemon}") as ch:
        for method in (HEALTH_CHECK, GET_NODE_INFO):
            with pytest.raises(grpc.RpcError) as err:
                call(ch, method)
            assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE), \
                f"{method}: {err.value.code()} {err.value.details()}"
            assert "PROTOCOL_ERROR" in (err.value.details() or "") \
                or "RST_STREAM" in (err.value.details() or ""), err.value.details()
