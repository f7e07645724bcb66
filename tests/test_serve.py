"""`dfd serve` for real: the command started as a process on a loopback port, spoken to over HTTP, and its page
driven in headless Chromium (Debian's package, over the Chrome DevTools Protocol) — no mocks.

The server holds a small random network (128-px faces, ngf 8, K 16) and the identity model, with small limits
(300 kB, 3 megapixels) so that refusals are cheap to provoke.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "dfdcore" / "assets" / "grace_hopper.jpg"  # 512 × 512, one face
SCREENSHOT = ROOT / "docs" / "images" / "serve.png"
MAX_BYTES, MAX_PIXELS = 300_000, 3_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_process(log_path: Path, *options: str):
    """`python -m dfd.serve` (a small random network, on the CPU) with ``options`` on a free loopback port, its
    stdout and stderr to ``log_path``; yields (base URL, the process) once /api/config answers."""
    port = free_port()
    log = log_path.open("w+")
    process = subprocess.Popen([sys.executable, "-m", "dfd.serve", "--port", str(port), "--random-weights",
                                "--face-size", "128", "--ngf", "8", "--k", "16", "--device", "cpu", *options],
                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # torch, dlib and the models load first: ~15 s on a busy 2-core machine
    while True:
        try:
            urllib.request.urlopen(url + "/api/config", timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.seek(0)
                pytest.fail(f"dfd serve did not start (exit {process.poll()}):\n{log.read()}")
            time.sleep(0.3)
    try:
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """dfd serve with small limits (300 kB, 3 megapixels); its base URL."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_process(log, "--max-bytes", str(MAX_BYTES), "--max-pixels", str(MAX_PIXELS)) as (url, _):
        yield url


def post(url: str, data: bytes, ticket: str = "", **params) -> tuple[int, dict]:
    """POST the file bytes to /api/restore → (HTTP status, JSON reply)."""
    query = urllib.parse.urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()})
    request = urllib.request.Request(f"{url}/api/restore?{query}", data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream", "X-Dfd-Ticket": ticket})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.load(reply)


def png_of(reply: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["image"]))).convert("RGB"))


def test_config_lists_the_models_built_at_start(server):
    config = get(server + "/api/config")
    assert list(config["models"]) == ["random", "identity"]
    assert config["models"]["random"] == "RANDOM WEIGHTS - not a restoration"
    assert (config["max_bytes"], config["max_pixels"]) == (MAX_BYTES, MAX_PIXELS)


def test_a_photo_comes_back_restored_at_the_upscale_with_its_face(server):
    # strength 1: all of the random network's change (auto leaves her sharp 190-px face as it is: next test)
    status, reply = post(server, PHOTO.read_bytes(), model="random", upscale=2, name="grace_hopper.jpg", strength=1)
    assert status == 200, reply
    assert reply["strength"] == 1.0 and reply["faces"][0]["strength"] == 1.0
    restored = png_of(reply)
    assert restored.shape == (1024, 1024, 3) and (reply["width"], reply["height"]) == (1024, 1024)
    assert reply["input"] == {"width": 512, "height": 512}
    assert len(reply["faces"]) == 1
    x1, y1, x2, y2 = reply["faces"][0]["box"]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512 and x2 - x1 > 100  # her face is ~190 px wide
    # The random network changes the face; where no face is pasted (the photo's lower, left and right borders,
    # outside the aligned face's square) the output is the bicubic upscale. Measured: 54 in the box vs 0.4-0.8 of 255.
    original = np.asarray(Image.open(PHOTO).convert("RGB").resize((1024, 1024), Image.BICUBIC), dtype=np.float32)
    diff = np.abs(restored.astype(np.float32) - original).mean(axis=2)
    assert diff[2 * y1:2 * y2, 2 * x1:2 * x2].mean() > 10
    assert max(diff[-100:].mean(), diff[:, :100].mean(), diff[:, -100:].mean()) < 2


def test_a_sharp_face_is_left_as_it_was_with_the_default_strength(server):
    status, reply = post(server, PHOTO.read_bytes(), model="random", upscale=1, name="grace_hopper.jpg")
    assert status == 200, reply
    assert reply["strength"] == "auto" and reply["faces"][0]["strength"] == 0.0
    from dfdcore.io.images import decode_image

    original = decode_image(PHOTO.read_bytes()).rgb8  # as the server decodes it
    assert np.array_equal(png_of(reply), original)  # even a random network's change is not pasted
    status, reply = post(server, PHOTO.read_bytes(), model="random", strength="strong")
    assert status == 422 and "strength must be 'auto' or a number in [0, 1]" in str(reply), reply


def test_identity_at_upscale_1_gives_the_photo_back(server):
    status, reply = post(server, PHOTO.read_bytes(), model="identity", upscale=1, only_largest=True)
    assert status == 200, reply
    restored, original = png_of(reply).astype(np.float32), np.asarray(Image.open(PHOTO).convert("RGB"), np.float32)
    assert restored.shape == original.shape == (512, 512, 3)
    assert np.abs(restored - original).mean() < 4  # measured 2.7 of 255: the face warped there and back, blurred
    assert reply["fidelity"] is None and reply["label"] == "identity (faces pasted back unchanged)"


def no_face_png() -> bytes:
    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (200, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.stack([ramp, ramp.T, ramp], axis=2)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data, params, reason", [
    (PHOTO.read_bytes()[:20_000], {}, "truncated image"),
    (b"\xff\xd8\xff" + bytes(5000), {}, "corrupt image"),
    (b"hello, this is not a photograph\n" * 10, {}, "not an image"),
    (b"", {}, "empty file"),
    (no_face_png(), {}, "no face"),
    (PHOTO.read_bytes(), {"upscale": 9}, "bad option"),
    (PHOTO.read_bytes(), {"model": "gfpgan"}, "bad option"),
])
def test_bad_uploads_are_refused_with_their_reason(server, data, params, reason):
    status, reply = post(server, data, **params)
    assert (status, reply["error"]) == (422, reason), reply
    assert reply["detail"] and "Traceback" not in reply["detail"]


def test_uploads_over_the_limits_are_refused_with_413(server):
    status, reply = post(server, bytes(MAX_BYTES + 1))
    assert (status, reply["error"]) == (413, "file too large"), reply
    assert str(MAX_BYTES) in reply["detail"]
    buffer = io.BytesIO()  # 2000 × 2000 = 4 MP of black: 20 kB on disk, over the 3 MP limit
    Image.new("RGB", (2000, 2000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < MAX_BYTES
    status, reply = post(server, buffer.getvalue())
    assert (status, reply["error"]) == (413, "image too large"), reply
    assert "4000000" in reply["detail"]


def test_two_concurrent_uploads_are_restored_one_after_the_other(server):
    tickets, replies, seen = ("first-ticket", "second-ticket"), {}, set()
    start = threading.Barrier(3)
    done = threading.Event()

    def upload(ticket):
        start.wait()
        replies[ticket] = post(server, PHOTO.read_bytes(), ticket=ticket, model="random", upscale=2)

    def watch():
        start.wait()
        while not done.is_set():
            for ticket in tickets:
                where = get(f"{server}/api/queue?ticket={ticket}")
                seen.add((ticket, where["state"], where["ahead"]))
            time.sleep(0.05)

    threads = [threading.Thread(target=upload, args=(t,)) for t in tickets] + [threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    for thread in threads[:2]:
        thread.join(timeout=120)
    done.set()
    threads[2].join(timeout=30)
    assert all(replies[t][0] == 200 for t in tickets), replies
    (a0, a1), (b0, b1) = sorted((replies[t][1]["started"], replies[t][1]["finished"]) for t in tickets)
    assert a1 - a0 > 0.2 and b0 >= a1, f"restorations overlap: [{a0}, {a1}] and [{b0}, {b1}]"
    later = max(tickets, key=lambda t: replies[t][1]["started"])
    earlier = min(tickets, key=lambda t: replies[t][1]["started"])
    assert (later, "queued", 1) in seen and (earlier, "running", 0) in seen, sorted(seen)


def test_the_queue_runs_one_job_at_a_time_and_refuses_beyond_its_waiting_room():
    from dfd.serve import RestoreQueue, UploadError

    queue, release, log = RestoreQueue(max_waiting=1), threading.Event(), []

    def job(name):
        def run():
            log.append(f"{name} start")
            release.wait(timeout=30)
            log.append(f"{name} end")
            return name
        return run

    async def scenario():
        first = asyncio.ensure_future(queue.run("a", job("a")))
        second = asyncio.ensure_future(queue.run("b", job("b")))
        while queue.state("a")["state"] != "running":
            await asyncio.sleep(0.01)
        states = queue.state("a"), queue.state("b")
        with pytest.raises(UploadError) as refused:
            await queue.run("c", job("c"))
        release.set()
        return states, refused.value, await first, await second

    try:
        (a, b), refused, *results = asyncio.run(scenario())
    finally:
        queue.close()
    assert a == {"state": "running", "ahead": 0, "waiting": 1} and b == {"state": "queued", "ahead": 1, "waiting": 1}
    assert (refused.status, refused.reason) == (429, "busy") and int(refused.headers["Retry-After"]) >= 1
    assert results == ["a", "b"] and log == ["a start", "a end", "b start", "b end"]
    assert queue.state("a")["state"] == "unknown"  # finished tickets are forgotten


# --- the page, in headless Chromium -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed when missing (about 40 s with apt-get on this machine)."""
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if shutil.which("chromium") is None and subprocess.run(install, check=False, stdout=subprocess.DEVNULL,
                                                           timeout=600).returncode:
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL, timeout=300)  # stale lists
        subprocess.run(install, check=True, stdout=subprocess.DEVNULL, timeout=600)
    return shutil.which("chromium")


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket: commands by id, events ignored."""

    def __init__(self, websocket_url: str) -> None:
        from websockets.sync.client import connect

        self.socket = connect(websocket_url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)

    def __call__(self, method: str, **params) -> dict:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)
        return value

    def upload(self, selector: str, path: Path) -> None:
        root = self("DOM.getDocument")["root"]["nodeId"]
        node = self("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self("DOM.setFileInputFiles", files=[str(path)], nodeId=node)  # fires the input's change event


@pytest.fixture()
def page(chromium, server, tmp_path):
    """A headless Chromium tab on dfd serve's page."""
    process = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}",
                                "--window-size=1000,1000", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = tmp_path / "profile" / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, "chromium did not start"
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    targets = get(f"http://127.0.0.1:{port}/json/list")
    tab = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
    tab("Page.enable")
    tab("Page.navigate", url=server + "/")
    tab.wait_for("document.readyState === 'complete' && document.getElementById('model').options.length === 2")
    yield tab
    tab.socket.close()
    process.terminate()
    process.wait(timeout=30)


def slide(page: DevTools, percent: int) -> None:
    page.evaluate(f"{{ const s = document.getElementById('slider'); s.value = {percent}; "
                  "s.dispatchEvent(new Event('input')); }")


def test_the_page_restores_an_uploaded_photo(page):
    page.evaluate("document.getElementById('model').value = 'random'")
    page.upload("#file", PHOTO)
    state = page.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
    status = page.evaluate("document.getElementById('status').textContent")
    assert state == "done", status
    assert status.startswith("1 face(s) restored")
    page.wait_for("document.getElementById('after').complete && document.getElementById('before').complete")
    assert page.evaluate("document.getElementById('after').naturalWidth") == 1024  # 512 px × upscale 2
    assert page.evaluate("document.getElementById('before').naturalWidth") == 512
    sizes = page.evaluate("['after', 'before'].map(id => { const r = document.getElementById(id)"
                          ".getBoundingClientRect(); return [r.width, r.height]; })")
    assert sizes[0] == sizes[1] and sizes[0][0] > 300, sizes  # the original lies exactly over the restored image
    slide(page, 20)
    assert "80%" in page.evaluate("document.getElementById('before').style.clipPath")  # 20 % of the original shows
    assert page.evaluate("document.querySelectorAll('#boxes .box').length") == 1
    assert page.evaluate("document.querySelectorAll('#faces tbody tr').length") == 1
    assert "RANDOM WEIGHTS" in page.evaluate("document.getElementById('label').textContent")
    slide(page, 50)
    height = page.evaluate("Math.ceil(document.documentElement.scrollHeight)")
    shot = page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": 1000, "height": height, "scale": 1})
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    assert picture.size[0] == 1000
    picture.quantize(256).save(SCREENSHOT, optimize=True)  # a palette: a third of the bytes in the repository


def test_the_page_shows_why_a_file_is_refused(page, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(PHOTO.read_bytes()[:20_000])
    page.upload("#file", broken)
    assert page.wait_for("document.body.dataset.state === 'error' && 'error'") == "error"
    assert page.evaluate("document.getElementById('status').textContent").startswith("truncated image:")
    assert page.evaluate("document.getElementById('result').hidden")


def test_the_page_shows_its_upload_queued_behind_another(page, server):
    blocker = threading.Thread(target=post, args=(server, PHOTO.read_bytes()), kwargs={"ticket": "blocker",
                                                                                         "model": "random"})
    blocker.start()
    deadline = time.monotonic() + 60
    while get(f"{server}/api/queue?ticket=blocker")["state"] != "running":
        assert time.monotonic() < deadline, "the blocking upload never started"
        time.sleep(0.02)
    page.evaluate("document.getElementById('model').value = 'identity'")
    page.upload("#file", PHOTO)
    states = set()
    while (state := page.evaluate("document.body.dataset.state")) not in ("done", "error"):
        states.add((state, page.evaluate("document.getElementById('status').textContent")))
        assert time.monotonic() < deadline + 60, states
        time.sleep(0.05)
    blocker.join(timeout=60)
    assert state == "done", page.evaluate("document.getElementById('status').textContent")
    assert ("queued", "Queued: 1 photograph(s) ahead of yours …") in states, states
