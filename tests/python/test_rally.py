"""A Python client generated from proto/ against a real rallyd process.

Proves that the contract in proto/ is enough for a client in another language: the Python code
is generated from the .proto files at test time (nothing generated is committed), and every call
goes over gRPC to a `rallyd` started here on loopback with a temporary SQLite data directory.

Run it with `bash tests/python/run.sh`, which makes the virtual environment, generates the code
and builds rallyd. Directly: `python test_rally.py` or `pytest test_rally.py`, with the packages of
requirements.txt installed; the environment may give `RALLYD_BIN` (the rallyd binary; default
`${CARGO_TARGET_DIR:-/var/tmp/rally-target}/debug/rallyd`) and `RALLY_PY_GEN_DIR` (the generated
code; generated into a temporary directory when absent).

Every wait is bounded: each call has a deadline, rallyd's start-up and shutdown have one. rallyd
is stopped at the end, whatever happened (and dies with this process if it is killed).
"""

import atexit
import contextlib
import ctypes
import importlib
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

import grpc

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"

# How long rallyd may take to start (open SQLite, run migrations, bind) and to become SERVING.
STARTUP_SECONDS = 60.0
# How long rallyd may take to stop after SIGTERM (its grace period is set lower, below).
SHUTDOWN_SECONDS = 20.0
# The deadline of every unary call and of every stream.
CALL_SECONDS = 10.0
STREAM_SECONDS = 30.0
# rallyd's defaults, as documented in README.md (Configuration).
ACCESS_TOKEN_TTL = 900
REFRESH_TOKEN_TTL = 30 * 24 * 3600
DEFAULT_POOL_WAIT = 300

RALLY_SERVICES = [
    "rally.identity.v1.Identity",
    "rally.rooms.v1.Rooms",
    "rally.rooms.v1.Matchmaking",
    "rally.broker.v1.Broker",
]
REFLECTED_SERVICES = set(RALLY_SERVICES) | {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
# gRPC channel options: never go through an HTTP proxy from the environment (loopback only).
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


# --- generated code --------------------------------------------------------------------------


def generate_client(out_dir):
    """Generates the Python messages and stubs of every .proto under proto/ into `out_dir`."""
    from grpc_tools import protoc  # noqa: PLC0415 (only needed when run.sh did not generate)
    import importlib.resources  # noqa: PLC0415

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")


def load_generated():
    """Imports the generated modules, generating them first when run.sh did not."""
    gen_dir = os.environ.get("RALLY_PY_GEN_DIR")
    if not gen_dir:
        gen_dir = tempfile.mkdtemp(prefix="rally-py-gen-")
        atexit.register(shutil.rmtree, gen_dir, ignore_errors=True)
        generate_client(gen_dir)
    if not (pathlib.Path(gen_dir) / "rally" / "identity" / "v1" / "identity_pb2.py").is_file():
        raise RuntimeError(f"no generated Rally client in {gen_dir}")
    sys.path.insert(0, gen_dir)
    names = [
        "rally.identity.v1.identity_pb2",
        "rally.identity.v1.identity_pb2_grpc",
        "rally.rooms.v1.rooms_pb2",
        "rally.rooms.v1.rooms_pb2_grpc",
        "rally.rooms.v1.matchmaking_pb2",
        "rally.rooms.v1.matchmaking_pb2_grpc",
        "rally.broker.v1.broker_pb2",
        "rally.broker.v1.broker_pb2_grpc",
    ]
    return {name.rsplit(".", 1)[1]: importlib.import_module(name) for name in names}


GEN = load_generated()
identity_pb2 = GEN["identity_pb2"]
identity_grpc = GEN["identity_pb2_grpc"]
rooms_pb2 = GEN["rooms_pb2"]
rooms_grpc = GEN["rooms_pb2_grpc"]
matchmaking_pb2 = GEN["matchmaking_pb2"]
matchmaking_grpc = GEN["matchmaking_pb2_grpc"]
broker_pb2 = GEN["broker_pb2"]
broker_grpc = GEN["broker_pb2_grpc"]

from google.protobuf import descriptor_pool  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase,
)


# --- helpers ---------------------------------------------------------------------------------


class Deadline:
    """A point in time that bounds a wait."""

    def __init__(self, seconds, what):
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what

    def remaining(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {self.seconds:.0f} s: {self.what}")
        return left


def bearer(session):
    """The metadata every authenticated call carries."""
    return (("authorization", f"Bearer {session.access_token}"),)


def expect_code(code, call, *args, **kwargs):
    """Runs `call` and checks that it fails with `code`; returns the error."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        assert error.code() == code, (
            f"expected {code.name}, got {error.code().name}: {error.details()}"
        )
        return error
    raise AssertionError(f"expected {code.name}, but the call succeeded")


def first_of_stream(stream_call, *args, **kwargs):
    """Starts a server-streaming call and reads its first message (raises its status)."""
    call = stream_call(*args, timeout=STREAM_SECONDS, **kwargs)
    try:
        return next(call)
    finally:
        call.cancel()


def no_children_die_with_us():
    """Asks Linux to kill rallyd if this process dies without stopping it (runs in the child)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


# --- the server ------------------------------------------------------------------------------


class Rallyd:
    """A rallyd process on loopback with its own temporary data directory.

    It listens on port 0 (gRPC) and 0 (relay, UDP): the kernel picks free ports, and the real
    ones are read from rallyd's start-up log, so parallel runs never race for a port.
    """

    LISTENING = re.compile(r"gRPC listening on (127\.0\.0\.1:\d+)")
    RELAY = re.compile(r"relay listening on udp.*?addresses=\[(127\.0\.0\.1:\d+)\]")

    def __init__(self, binary, tls=False):
        self.binary = binary
        self.tls = tls
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="rally-py-test-"))
        self.log_path = self.workdir / "rallyd.log"
        self.process = None
        self.address = None
        self.relay_address = None
        self.channel = None
        self._lines = queue.Queue()
        self._reader = None

    def start(self):
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(
                f"no rallyd binary at {self.binary}: build it with `cargo build -p rallyd` "
                "or set RALLYD_BIN"
            )
        command = [
            str(self.binary),
            "--listen", "127.0.0.1:0",
            "--relay-listen", "127.0.0.1:0",
            "--data-dir", str(self.workdir / "data"),
            "--shutdown-grace-secs", "3",
            "--log-format", "text",
        ]
        if self.tls:
            self.pki = ScratchPki(self.workdir / "pki")
            command += ["--tls-cert-file", str(self.pki.cert), "--tls-key-file", str(self.pki.key)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RALLY_")}
        env["RALLY_LOG"] = "info"
        env["NO_COLOR"] = "1"
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            preexec_fn=no_children_die_with_us,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = Deadline(STARTUP_SECONDS, "rallyd to log its gRPC address")
        while self.address is None:
            try:
                line = self._lines.get(timeout=deadline.remaining())
            except queue.Empty:
                continue  # the next remaining() raises with the message
            if line is None:
                raise AssertionError(
                    f"rallyd exited during start-up with {self.process.wait()}:\n{self.log_tail()}"
                )
            if match := self.RELAY.search(line):
                self.relay_address = match.group(1)
            if match := self.LISTENING.search(line):
                self.address = match.group(1)
        self.channel = self.open_channel()
        self._wait_until_serving()
        return self

    def open_channel(self, ca_pem=None):
        """A channel to rallyd: TLS trusting `ca_pem` (default: the test CA) when it serves TLS."""
        if not self.tls:
            return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem if ca_pem is not None else self.pki.ca_pem()
        )
        return grpc.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)

    def _read_log(self):
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace")
                log.write(line)
                log.flush()
                self._lines.put(line)
        self._lines.put(None)

    def _wait_until_serving(self):
        """Polls the health service until rallyd says SERVING, within STARTUP_SECONDS."""
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = Deadline(STARTUP_SECONDS, f"rallyd at {self.address} to report SERVING")
        pause = 0.01
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"rallyd exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=min(deadline.remaining(), 2.0),
                    wait_for_ready=True,
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as error:
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
            # Back off between polls; the deadline above bounds the whole wait.
            time.sleep(min(pause, deadline.remaining()))
            pause = min(pause * 2, 0.5)

    def stop(self):
        """Stops rallyd (SIGTERM, then SIGKILL) and returns its exit code."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=SHUTDOWN_SECONDS)
                raise AssertionError(
                    f"rallyd did not stop within {SHUTDOWN_SECONDS:.0f} s of SIGTERM; killed"
                ) from None
        if self._reader is not None:
            self._reader.join(timeout=SHUTDOWN_SECONDS)
        return self.process.returncode

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "".join(text.splitlines(keepends=True)[-lines:])

    def remove(self):
        shutil.rmtree(self.workdir, ignore_errors=True)


class ScratchPki:
    """A CA and a server certificate for localhost and 127.0.0.1, made with the openssl CLI."""

    def __init__(self, folder, ca_name="Rally Python test CA"):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ca_cert = folder / "ca.pem"
        self.cert = folder / "tls.crt"
        self.key = folder / "tls.key"
        ca_key = folder / "ca.key"
        csr = folder / "tls.csr"
        extensions = folder / "server.ext"
        extensions.write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            "extendedKeyUsage=serverAuth\n"
            "basicConstraints=critical,CA:FALSE\n"
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl(
            "req", "-x509", *ec, "-keyout", ca_key, "-out", self.ca_cert, "-days", "2",
            "-subj", f"/CN={ca_name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
        openssl("req", *ec, "-keyout", self.key, "-out", csr, "-subj", "/CN=localhost")
        openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", ca_key,
            "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", extensions,
        )
        # rallyd refuses a key other users may read.
        os.chmod(self.key, 0o600)

    def ca_pem(self):
        return self.ca_cert.read_bytes()


def openssl(*args):
    """Runs the openssl CLI; fails the test with its output when it fails."""
    run = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=CALL_SECONDS
    )
    if run.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {run.stderr.strip()}")


def rallyd_binary():
    explicit = os.environ.get("RALLYD_BIN")
    if explicit:
        return pathlib.Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/rally-target")
    return pathlib.Path(target) / "debug" / "rallyd"


class Rally:
    """Stubs for every service on one channel, and the users the tests share."""

    def __init__(self, server):
        self.server = server
        channel = server.channel
        self.identity = identity_grpc.IdentityStub(channel)
        self.rooms = rooms_grpc.RoomsStub(channel)
        self.matchmaking = matchmaking_grpc.MatchmakingStub(channel)
        self.broker = broker_grpc.BrokerStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.users = {}  # name -> {"password", "registered", "session"}

    def register_and_login(self, name, display_name):
        password = f"correct horse {uuid.uuid4().hex[:8]}"
        registered = self.identity.Register(
            identity_pb2.RegisterRequest(
                username=name, password=password, display_name=display_name
            ),
            timeout=CALL_SECONDS,
        ).session
        logged_in = self.identity.Login(
            identity_pb2.LoginRequest(username=name.upper(), password=password),
            timeout=CALL_SECONDS,
        ).session
        self.users[name] = {
            "password": password,
            "display_name": display_name,
            "registered": registered,
            "session": logged_in,
        }
        return logged_in

    def session(self, name):
        return self.users[name]["session"]

    def user_id(self, name):
        return self.session(name).user.user_id


def start_rally(tls=False):
    """Starts rallyd (over TLS when `tls`) and signs in the two users every scenario uses (alice
    and bob)."""
    server = Rallyd(rallyd_binary(), tls=tls)
    try:
        server.start()
        rally = Rally(server)
        rally.register_and_login("alice", "Alice")
        rally.register_and_login("bob", "Bob")
        return rally
    except BaseException:
        print(f"rallyd log:\n{server.log_tail()}", file=sys.stderr)
        server.stop()
        server.remove()
        raise


def print_to_stderr(text):
    print(text, file=sys.stderr)


def stop_rally(rally, failed, show=print_to_stderr):
    """Stops rallyd; it must exit 0 (graceful shutdown on SIGTERM). Shows its log on failure."""
    server = rally.server
    try:
        was_running = server.process.poll() is None
        code = server.stop()
        if failed or not was_running or code != 0:
            show(f"rallyd log, last lines ({server.log_path}):\n{server.log_tail()}")
        assert was_running, f"rallyd died during the tests with {server.process.returncode}"
        assert code == 0, f"rallyd exited with {code} after SIGTERM"
    finally:
        server.remove()


try:
    import pytest
except ImportError:  # plain `python test_rally.py` needs no pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module", params=["plaintext", "tls"])
    def rally(request):
        """One rallyd and two signed-in users for every test of this file: every test runs once
        against a plaintext rallyd on loopback and once over TLS with a CA made for the run."""
        started = start_rally(tls=request.param == "tls")
        yield started
        # Past pytest's output capture, so that the log is seen when a test failed.
        capture = request.config.pluginmanager.get_plugin("capturemanager")

        def show(text):
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                print_to_stderr(f"\n{text}")

        stop_rally(started, request.session.testsfailed > 0, show)


# --- the tests -------------------------------------------------------------------------------


def test_health_reports_serving_for_every_service(rally):
    for service in ["", *RALLY_SERVICES]:
        reply = rally.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=CALL_SECONDS
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, (
            f"health of {service or '(server)'!r} is "
            f"{health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        )
    # Watch answers with the current status first.
    watch = rally.health.Watch(
        health_pb2.HealthCheckRequest(service="rally.broker.v1.Broker"), timeout=STREAM_SECONDS
    )
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watch.cancel()
    expect_code(
        grpc.StatusCode.NOT_FOUND,
        rally.health.Check,
        health_pb2.HealthCheckRequest(service="rally.nothing.v1.Nothing"),
        timeout=CALL_SECONDS,
    )


def reflect(channel, method, request):
    """One request on a ServerReflectionInfo stream of `method`; returns the one answer."""
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([request]), timeout=CALL_SECONDS)
    answers = list(call)
    assert len(answers) == 1, f"{method}: {len(answers)} answers to one request"
    return answers[0]


def method_shapes(service):
    """A service's methods: names, message types and streaming, comparable across pools."""
    return sorted(
        (
            m.name,
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    )


def test_reflection_lists_every_service_with_the_generated_methods(rally):
    channel = rally.server.channel
    # grpc.reflection.v1alpha, through grpcio-reflection's descriptor database.
    database = ProtoReflectionDescriptorDatabase(channel)
    listed = set(database.get_services())
    assert listed == REFLECTED_SERVICES, f"reflection (v1alpha) lists {sorted(listed)}"
    pool = descriptor_pool.DescriptorPool(database)
    generated = {
        "rally.identity.v1.Identity": identity_pb2.DESCRIPTOR.services_by_name["Identity"],
        "rally.rooms.v1.Rooms": rooms_pb2.DESCRIPTOR.services_by_name["Rooms"],
        "rally.rooms.v1.Matchmaking": matchmaking_pb2.DESCRIPTOR.services_by_name["Matchmaking"],
        "rally.broker.v1.Broker": broker_pb2.DESCRIPTOR.services_by_name["Broker"],
    }
    for name, ours in generated.items():
        theirs = pool.FindServiceByName(name)
        assert method_shapes(theirs) == method_shapes(ours), f"{name}: reflection and proto/ differ"
    # grpc.reflection.v1 has the same messages on the wire as v1alpha (grpcurl asks it first).
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = reflect(channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", request)
    listed_v1 = {s.name for s in answer.list_services_response.service}
    assert listed_v1 == REFLECTED_SERVICES, f"reflection (v1) lists {sorted(listed_v1)}"
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="rally.rooms.v1.Room")
    answer = reflect(channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", request)
    files = answer.file_descriptor_response.file_descriptor_proto
    assert files, "reflection (v1) has no file for rally.rooms.v1.Room"


def test_users_register_and_log_in(rally):
    now = time.time()
    for name, display_name in [("alice", "Alice"), ("bob", "Bob")]:
        user = rally.users[name]
        registered, session = user["registered"], user["session"]
        assert registered.user.username == name
        assert registered.user.display_name == display_name
        uuid.UUID(registered.user.user_id)
        assert session.user.user_id == registered.user.user_id, "login reached another account"
        assert session.session_id and session.session_id != registered.session_id
        for s in (registered, session):
            assert s.access_token.count(".") == 2, "the access token is not a compact JWT"
            assert s.refresh_token and s.refresh_token != s.access_token
            access_left = s.access_token_expires_at.ToSeconds() - now
            refresh_left = s.refresh_token_expires_at.ToSeconds() - now
            assert abs(access_left - ACCESS_TOKEN_TTL) < 120, f"access token: {access_left} s"
            assert abs(refresh_left - REFRESH_TOKEN_TTL) < 120, f"refresh token: {refresh_left} s"
        account = rally.identity.GetAccount(
            identity_pb2.GetAccountRequest(), metadata=bearer(session), timeout=CALL_SECONDS
        )
        assert account.user.user_id == session.user.user_id
        assert account.has_password
        assert account.session_id == session.session_id
    assert rally.user_id("alice") != rally.user_id("bob")
    bob = rally.identity.GetUser(
        identity_pb2.GetUserRequest(user_id=rally.user_id("bob")),
        metadata=bearer(rally.session("alice")),
        timeout=CALL_SECONDS,
    ).user
    assert (bob.username, bob.display_name) == ("bob", "Bob")
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        rally.identity.Login,
        identity_pb2.LoginRequest(username="alice", password="not alice's password"),
        timeout=CALL_SECONDS,
    )
    expect_code(
        grpc.StatusCode.ALREADY_EXISTS,
        rally.identity.Register,
        identity_pb2.RegisterRequest(username="ALICE", password="another password"),
        timeout=CALL_SECONDS,
    )
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        rally.identity.Register,
        identity_pb2.RegisterRequest(username="_bad", password="long enough password"),
        timeout=CALL_SECONDS,
    )


def test_calls_without_a_valid_access_token_are_unauthenticated(rally):
    token = rally.session("alice").access_token
    refused = [
        (),
        (("authorization", "Bearer not-a-token"),),
        (("authorization", f"Basic {token}"),),
        (("authorization", token),),
        (("authorization", f"Bearer {token[:-4]}AAAA"),),
    ]
    for metadata in refused:
        error = expect_code(
            grpc.StatusCode.UNAUTHENTICATED,
            rally.rooms.GetCurrentRoom,
            rooms_pb2.GetCurrentRoomRequest(),
            metadata=metadata,
            timeout=CALL_SECONDS,
        )
        assert error.details(), "UNAUTHENTICATED without a message"
    error = expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        rally.identity.GetAccount,
        identity_pb2.GetAccountRequest(),
        timeout=CALL_SECONDS,
    )
    assert "authorization" in error.details(), error.details()
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        rally.matchmaking.Enqueue,
        matchmaking_pb2.EnqueueRequest(pool="default"),
        timeout=CALL_SECONDS,
    )
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        first_of_stream,
        rally.rooms.WatchRoom,
        rooms_pb2.WatchRoomRequest(room_id=str(uuid.uuid4())),
    )
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        first_of_stream,
        rally.broker.Attach,
        iter([]),
    )
    # The scheme is case-insensitive; the same token with it is accepted.
    rally.rooms.GetCurrentRoom(
        rooms_pb2.GetCurrentRoomRequest(),
        metadata=(("authorization", f"bearer {token}"),),
        timeout=CALL_SECONDS,
    )


def test_room_watcher_sees_a_member_join(rally):
    alice, bob = rally.session("alice"), rally.session("bob")
    created = rally.rooms.CreateRoom(
        rooms_pb2.CreateRoomRequest(capacity=4, data={"mode": "python"}),
        metadata=bearer(alice),
        timeout=CALL_SECONDS,
    ).room
    assert created.owner_user_id == alice.user.user_id
    assert [m.user_id for m in created.members] == [alice.user.user_id]
    assert created.sequence == 0
    assert created.visibility == rooms_pb2.ROOM_VISIBILITY_PUBLIC
    assert created.join_policy == rooms_pb2.JOIN_POLICY_OPEN
    assert dict(created.data) == {"mode": "python"}

    watch = rally.rooms.WatchRoom(
        rooms_pb2.WatchRoomRequest(room_id=created.room_id),
        metadata=bearer(alice),
        timeout=STREAM_SECONDS,
    )
    try:
        first = next(watch)
        assert first.WhichOneof("payload") == "snapshot", f"first message: {first}"
        assert first.snapshot.sequence == 0
        assert [m.user_id for m in first.snapshot.members] == [alice.user.user_id]

        joined = rally.rooms.JoinRoom(
            rooms_pb2.JoinRoomRequest(room_id=created.room_id),
            metadata=bearer(bob),
            timeout=CALL_SECONDS,
        )
        assert joined.left_room_id == ""
        assert joined.room.sequence == 1
        assert [m.user_id for m in joined.room.members] == [alice.user.user_id, bob.user.user_id]

        message = next(watch)
        assert message.WhichOneof("payload") == "event", f"second message: {message}"
        event = message.event
        assert event.sequence == 1
        assert event.WhichOneof("kind") == "member_joined", f"event: {event}"
        assert event.member_joined.member.user_id == bob.user.user_id
        assert event.member_joined.member.display_name == "Bob"
    finally:
        watch.cancel()

    # Resuming after sequence 0 replays the same event, without a snapshot.
    replayed = first_of_stream(
        rally.rooms.WatchRoom,
        rooms_pb2.WatchRoomRequest(room_id=created.room_id, after_sequence=0),
        metadata=bearer(bob),
    )
    assert replayed.WhichOneof("payload") == "event"
    assert replayed.event.sequence == 1
    assert replayed.event.member_joined.member.user_id == bob.user.user_id

    current = rally.rooms.GetCurrentRoom(
        rooms_pb2.GetCurrentRoomRequest(), metadata=bearer(bob), timeout=CALL_SECONDS
    )
    assert current.HasField("room") and current.room.room_id == created.room_id
    expect_code(
        grpc.StatusCode.OUT_OF_RANGE,
        first_of_stream,
        rally.rooms.WatchRoom,
        rooms_pb2.WatchRoomRequest(room_id=created.room_id, after_sequence=99),
        metadata=bearer(bob),
    )


def watch_ticket_to_the_end(rally, session, ticket_id):
    """Every state of a ticket until its stream ends (which must follow a final status)."""
    states = []
    call = rally.matchmaking.WatchTicket(
        matchmaking_pb2.WatchTicketRequest(ticket_id=ticket_id),
        metadata=bearer(session),
        timeout=STREAM_SECONDS,
    )
    try:
        for message in call:
            states.append(message.ticket)
    finally:
        call.cancel()
    assert states, f"ticket {ticket_id}: the watch sent nothing"
    assert call.code() == grpc.StatusCode.OK, f"ticket watch ended with {call.code()}"
    return states


def test_two_players_are_matched_in_the_default_pool(rally):
    alice, bob = rally.session("alice"), rally.session("bob")
    # They share a room first: the match moves both out of it.
    lobby = rally.rooms.CreateRoom(
        rooms_pb2.CreateRoomRequest(capacity=2), metadata=bearer(alice), timeout=CALL_SECONDS
    ).room
    rally.rooms.JoinRoom(
        rooms_pb2.JoinRoomRequest(room_id=lobby.room_id), metadata=bearer(bob), timeout=CALL_SECONDS
    )

    tickets = {}
    for name, session in [("alice", alice), ("bob", bob)]:
        ticket = rally.matchmaking.Enqueue(
            matchmaking_pb2.EnqueueRequest(pool="default", numeric_attributes={"skill": 1200}),
            metadata=bearer(session),
            timeout=CALL_SECONDS,
        ).ticket
        assert ticket.status == matchmaking_pb2.TICKET_STATUS_QUEUED, f"{name}: {ticket}"
        assert ticket.user_id == session.user.user_id and ticket.pool == "default"
        waits = ticket.expires_at.ToSeconds() - ticket.created_at.ToSeconds()
        assert waits == DEFAULT_POOL_WAIT, f"the default pool's tickets wait {waits} s"
        tickets[name] = ticket

    matches = {}
    for name, session in [("alice", alice), ("bob", bob)]:
        states = watch_ticket_to_the_end(rally, session, tickets[name].ticket_id)
        final = states[-1]
        assert [s.status for s in states[:-1]] == [matchmaking_pb2.TICKET_STATUS_QUEUED] * (
            len(states) - 1
        ), f"{name}: states before the last are not all QUEUED: {states}"
        assert final.status == matchmaking_pb2.TICKET_STATUS_MATCHED, f"{name}: {final}"
        assert final.HasField("match_result")
        matches[name] = final.match_result
    match = matches["alice"]
    assert matches["bob"] == match, f"alice and bob got different matches: {matches}"
    assert list(match.user_ids) == [alice.user.user_id, bob.user.user_id]

    room = rally.rooms.GetCurrentRoom(
        rooms_pb2.GetCurrentRoomRequest(), metadata=bearer(bob), timeout=CALL_SECONDS
    ).room
    assert room.room_id == match.room_id
    assert room.capacity == 2
    assert room.visibility == rooms_pb2.ROOM_VISIBILITY_PRIVATE
    assert room.join_policy == rooms_pb2.JOIN_POLICY_INVITE_ONLY
    assert room.owner_user_id == alice.user.user_id, "the longest-waiting ticket's user owns it"
    assert [m.user_id for m in room.members] == [alice.user.user_id, bob.user.user_id]
    assert set(room.invited_user_ids) == {alice.user.user_id, bob.user.user_id}

    # The lobby saw both leave (reason LEFT) and closed; its stream then ends.
    events = []
    call = rally.rooms.WatchRoom(
        rooms_pb2.WatchRoomRequest(room_id=lobby.room_id, after_sequence=1),
        metadata=bearer(alice),
        timeout=STREAM_SECONDS,
    )
    try:
        events = [m.event for m in call]
    finally:
        call.cancel()
    assert call.code() == grpc.StatusCode.OK, f"the lobby's watch ended with {call.code()}"
    assert [e.sequence for e in events] == list(range(2, 2 + len(events))), "sequence gap"
    left = {
        e.member_left.user_id: e.member_left.reason
        for e in events
        if e.WhichOneof("kind") == "member_left"
    }
    assert left == {
        alice.user.user_id: rooms_pb2.LEAVE_REASON_LEFT,
        bob.user.user_id: rooms_pb2.LEAVE_REASON_LEFT,
    }, f"lobby events: {events}"
    assert events[-1].WhichOneof("kind") == "room_closed", f"lobby events: {events}"


def test_refresh_rotates_tokens_and_reuse_revokes_the_session(rally):
    device = rally.identity.DeviceLogin(
        identity_pb2.DeviceLoginRequest(device_id=f"py-test-{uuid.uuid4().hex}"),
        timeout=CALL_SECONDS,
    )
    assert device.created
    first = device.session
    second = rally.identity.Refresh(
        identity_pb2.RefreshRequest(refresh_token=first.refresh_token), timeout=CALL_SECONDS
    ).session
    assert second.session_id == first.session_id
    assert second.user.user_id == first.user.user_id
    assert second.refresh_token != first.refresh_token
    account = rally.identity.GetAccount(
        identity_pb2.GetAccountRequest(), metadata=bearer(second), timeout=CALL_SECONDS
    )
    assert account.session_id == first.session_id and not account.has_password
    # The rotated token presented again: refused, and the whole session is revoked.
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        rally.identity.Refresh,
        identity_pb2.RefreshRequest(refresh_token=first.refresh_token),
        timeout=CALL_SECONDS,
    )
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        rally.identity.Refresh,
        identity_pb2.RefreshRequest(refresh_token=second.refresh_token),
        timeout=CALL_SECONDS,
    )


def test_broker_attach_welcomes_and_answers_ping(rally):
    session = rally.identity.DeviceLogin(
        identity_pb2.DeviceLoginRequest(device_id=f"py-broker-{uuid.uuid4().hex}"),
        timeout=CALL_SECONDS,
    ).session
    outbox = queue.Queue()

    def requests():
        while True:
            try:
                message = outbox.get(timeout=STREAM_SECONDS)
            except queue.Empty:
                return
            if message is None:
                return
            yield message

    call = rally.broker.Attach(requests(), metadata=bearer(session), timeout=STREAM_SECONDS)
    try:
        outbox.put(
            broker_pb2.AttachRequest(
                request_id=1,
                hello=broker_pb2.Hello(
                    certificate_fingerprint=bytes(range(32)),
                    candidates=[
                        broker_pb2.Candidate(
                            kind=broker_pb2.CANDIDATE_KIND_HOST,
                            address=broker_pb2.SocketAddress(ip="127.0.0.1", port=40000),
                            priority=100,
                        )
                    ],
                    client_version="rally-python-test/1",
                ),
            )
        )
        welcome = next(call)
        assert welcome.request_id == 1 and welcome.WhichOneof("body") == "welcome", welcome
        assert welcome.welcome.user_id == session.user.user_id
        assert welcome.welcome.keepalive_interval.ToMilliseconds() == 10_000
        assert welcome.welcome.detach_grace_period.ToMilliseconds() == 30_000
        reflectors = [f"{a.ip}:{a.port}" for a in welcome.welcome.reflector_addresses]
        assert reflectors == [rally.server.relay_address], f"reflectors {reflectors}"
        outbox.put(broker_pb2.AttachRequest(request_id=2, ping=broker_pb2.Ping(nonce=42)))
        pong = next(call)
        assert pong.request_id == 2 and pong.WhichOneof("body") == "pong", pong
        assert pong.pong.nonce == 42
    finally:
        outbox.put(None)
        call.cancel()


def test_tls_refuses_a_server_certificate_from_another_ca(rally):
    if not rally.server.tls:
        if pytest is not None:
            pytest.skip("the plaintext server has no certificate to refuse")
        return
    stranger = ScratchPki(rally.server.workdir / "stranger", ca_name="Someone else's CA")
    channel = rally.server.open_channel(ca_pem=stranger.ca_pem())
    try:
        expect_code(
            grpc.StatusCode.UNAVAILABLE,
            health_pb2_grpc.HealthStub(channel).Check,
            health_pb2.HealthCheckRequest(service=""),
            timeout=CALL_SECONDS,
        )
    finally:
        channel.close()
    # The same call with the right CA goes through.
    rally.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_SECONDS)


TESTS = [
    test_health_reports_serving_for_every_service,
    test_reflection_lists_every_service_with_the_generated_methods,
    test_users_register_and_log_in,
    test_calls_without_a_valid_access_token_are_unauthenticated,
    test_room_watcher_sees_a_member_join,
    test_two_players_are_matched_in_the_default_pool,
    test_refresh_rotates_tokens_and_reuse_revokes_the_session,
    test_broker_attach_welcomes_and_answers_ping,
    test_tls_refuses_a_server_certificate_from_another_ca,
]


def main():
    """Runs every test in order against a plaintext rallyd, then a TLS one, without pytest."""
    passed = failed = 0
    for tls in (False, True):
        rally = start_rally(tls=tls)
        try:
            for test in TESTS:
                try:
                    test(rally)
                except Exception:  # noqa: BLE001 (report every failure, then fail the run)
                    failed += 1
                    print(f"FAILED {test.__name__} (tls={tls})", file=sys.stderr)
                    traceback.print_exc()
                else:
                    passed += 1
                    print(f"passed {test.__name__} (tls={tls})")
        finally:
            stop_rally(rally, failed > 0)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
