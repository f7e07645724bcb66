"""`dfd serve`'s caps, each provoked exactly: the app (dfd.serve.create_app, the identity model) served by uvicorn
in a thread on a loopback port with dfd.serve_guard's protocol, so the test can hold the queue and count the
connections itself; and the pure checks (Host, Origin, multipart) on their own.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import threading
import time

import pytest

from dfd.serve_guard import GuardSettings, allowed_hosts, refusal, same_origin, server_config
from dfd.serve_upload import Upload, UploadError, find_file_part
from tests.conftest import portrait
from tests.test_serve import free_port

PHOTO = portrait("obama2.jpg").read_bytes()


@contextlib.contextmanager
def app_server(max_connections: int = 4, **limits):
    """uvicorn serving create_app({"identity"}, Limits(**limits)) in a thread → (port, app, uvicorn.Server)."""
    import uvicorn

    from dfd.serve import Limits, create_app
    from dfdcore.restoration.restorer import IdentityModel

    app = create_app({"identity": IdentityModel(128)}, Limits(**limits))
    port = free_port()
    settings = GuardSettings(allowed_hosts("127.0.0.1"), header_timeout=30, max_connections=max_connections)
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port, app, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def exchange(port: int, data: bytes, timeout: float = 60) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it or is silent for a second."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        got, deadline = b"", time.monotonic() + timeout
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while time.monotonic() < deadline:
                sock.settimeout(1 if b"\r\n\r\n" in got else timeout)
                if not (chunk := sock.recv(65536)):
                    break
                got += chunk
        return got


def status_and_json(reply: bytes) -> tuple[int, dict, str]:
    """(status, JSON body, head) of a raw HTTP/1.1 reply."""
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head.decode("latin-1").lower()


def post_head(port: int, length: int) -> bytes:
    return (f"POST /api/restore?model=identity&upscale=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_full_queue_answers_429_with_retry_after_before_reading_the_body():
    with app_server(max_bytes=10**6, max_waiting=1) as (port, app, _):
        queue, release = app.state.queue, threading.Event()

        async def hold():  # one job running, one waiting: the waiting room (1) is full
            await asyncio.gather(queue.run("a", lambda: release.wait(60)), queue.run("b", lambda: release.wait(60)))

        holder = threading.Thread(target=asyncio.run, args=(hold(),))
        holder.start()
        try:
            deadline = time.monotonic() + 30
            while queue.state("b")["state"] != "queued":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            # the head alone, no body: had the server waited for the body, it would never answer (idle 30 s)
            started = time.monotonic()
            status, reply, head = status_and_json(exchange(port, post_head(port, 50_000), timeout=25))
        finally:
            release.set()
            holder.join(timeout=60)
        assert (status, reply["error"]) == (429, "busy") and time.monotonic() - started < 20, reply
        assert "retry-after: " in head and "1 uploads are already waiting" in reply["detail"]


def test_connections_past_the_cap_are_answered_503_in_json():
    with app_server(max_connections=4, max_bytes=10**6) as (port, _, server):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        deadline = time.monotonic() + 30
        while len(server.server_state.connections) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        config = f"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        status, reply, head = status_and_json(exchange(port, config))
        assert (status, reply["error"]) == (503, "busy") and "--max-connections" in reply["detail"], reply
        assert "connection: close" in head
        idle.pop().close()  # 3 idle + this one: within the cap
        while len(server.server_state.connections) > 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert status_and_json(exchange(port, config))[0] == 200
        for sock in idle:
            sock.close()


def test_bytes_held_by_unfinished_uploads_are_capped_and_given_back():
    with app_server(max_bytes=10**6, max_bytes_in_flight=1_500_000) as (port, app, _):
        in_flight = app.state.in_flight
        first = socket.create_connection(("127.0.0.1", port), timeout=30)
        first.sendall(post_head(port, 10**6) + bytes(900_000))  # then stalls, holding 900 kB
        deadline = time.monotonic() + 30
        while in_flight.held < 900_000:
            assert time.monotonic() < deadline, in_flight.held
            time.sleep(0.02)
        status, reply, _ = status_and_json(exchange(port, post_head(port, 700_000) + bytes(700_000)))
        assert (status, reply["error"]) == (503, "busy") and "--max-bytes-in-flight" in reply["detail"], reply
        first.close()
        while in_flight.held:
            assert time.monotonic() < deadline, in_flight.held
            time.sleep(0.02)
        status, reply, _ = status_and_json(exchange(port, post_head(port, len(PHOTO)) + PHOTO, timeout=120))
        assert status == 200 and len(reply["faces"]) == 1, reply


def scope(path: str = "/api/restore", scheme: str = "http", **headers) -> dict:
    pairs = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": "POST", "path": path, "scheme": scheme, "headers": pairs}


LOCAL = allowed_hosts("127.0.0.1")


@pytest.mark.parametrize("request_scope, reason", [
    (scope(host="127.0.0.1:8000"), None),
    (scope(host="localhost:8000", origin="http://localhost:8000"), None),
    (scope(host="[::1]:8000", origin="http://[::1]:8000"), None),
    (scope(host="LOCALHOST.:8000", origin="http://localhost:8000", sec_fetch_site="same-origin"), None),
    (scope(host="127.0.0.1", origin="http://127.0.0.1:80"), None),  # default ports
    (scope(host="127.0.0.1:8000", origin="http://127.0.0.1:8001"), "cross-site request"),
    (scope(host="127.0.0.1:8000", origin="null"), "cross-site request"),
    (scope(host="127.0.0.1:8000", origin="https://127.0.0.1:8000"), "cross-site request"),  # another scheme
    (scope(host="127.0.0.1:8000", sec_fetch_site="cross-site"), "cross-site request"),
    (scope(host="attacker.example:8000", origin="http://attacker.example:8000"), "host not allowed"),
    (scope(host="127.0.0.1.attacker.example"), "host not allowed"),
    (scope(), "host not allowed"),  # no Host at all
    (scope(path="/", host="127.0.0.1:8000", sec_fetch_site="cross-site"), None),  # a link to the page
])
def test_host_and_origin_rules(request_scope, reason):
    why = refusal(request_scope, LOCAL)
    assert (why and why[1]) == reason, why
    if why:
        assert why[0] == 403


def test_allowed_hosts():
    assert allowed_hosts("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("192.168.1.5", ["Photos.LAN", "10.0.0.2:8000"]) >= {"192.168.1.5", "photos.lan", "10.0.0.2"}
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")
    everyone = allowed_hosts("127.0.0.1", ["*"])
    assert refusal(scope(host="anything.example"), everyone) is None
    assert refusal(scope(host="anything.example", origin="http://other.example"), everyone)[1] == "cross-site request"
    assert same_origin("https://photos.lan", "photos.lan:443", "https") and not same_origin("nonsense:x", "a", "http")


def spooled(data: bytes) -> Upload:
    spool = tempfile.SpooledTemporaryFile()
    spool.write(data)
    return Upload(spool, size=len(data), length=len(data))


def test_the_one_file_part_is_found_in_a_multipart_body():
    kind = "multipart/form-data; boundary=XyZ"
    upload = spooled(b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n"
                     b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename*=UTF-8''caf%C3%A9.jpg\r\n"
                     b"Content-Type: image/jpeg\r\n\r\n\xff\xd8--XyZ not a boundary\r\n\r\n--XyZ--\r\n")
    find_file_part(upload, kind)
    assert upload.filename == "café.jpg" and upload.read() == b"\xff\xd8--XyZ not a boundary\r\n"
    for body, reason in [(b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nab", "bad"),
                         (b"no boundary here", "bad"), (b"--XyZ--\r\n", "one")]:
        with pytest.raises(UploadError) as refused:
            find_file_part(spooled(body), kind)
        assert refused.value.status == 400 and refused.value.reason.startswith(reason), refused.value
    with pytest.raises(UploadError, match="boundary missing"):
        find_file_part(spooled(b"--XyZ--\r\n"), "multipart/form-data")
