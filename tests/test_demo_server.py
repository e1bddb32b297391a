"""The demo's web server over HTTP (``python -m digitpairs.inference.demo``), as another web
page or a burst of clients would use it: a foreign ``Host`` (DNS rebinding), a foreign
``Origin``, a burst of requests on the model's queue, and the files it keeps.

These need the demo extra (Gradio) but no browser; without Gradio they skip with one line.
They run in ``make test`` wherever the extra is installed, and in ``make test-demo`` and
``make test-browser``, which install it.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from server_log import server_faults

from digitpairs.inference.demo import QUEUE_SIZE, LocalOnly

if importlib.util.find_spec("gradio") is None:
    pytest.skip("no gradio: `make test-demo` installs the demo extra and runs these tests", allow_module_level=True)

pytestmark = pytest.mark.slow  # each test starts the demo server

EXAMPLES = PROJECT_ROOT / "examples"
FIRST_UPLOAD = 4  # the page's event "the first upload changed" (fn_index): it runs the model
BURST = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_in(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` -> its size in bytes, but torch's compile cache (torch
    makes ``torchinductor_<user>`` in the temporary folder when it is imported)."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and not p.relative_to(folder).parts[0].startswith("torchinductor_")
    }


class Demo:
    """``python -m digitpairs.inference.demo --port P *args`` with its own temporary folder
    (``TMPDIR``, where it keeps its files); ``request`` talks HTTP to it."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port, self.tmp = free_port(), tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.host = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "digitpairs.inference.demo", "--port", str(self.port), *args],
            cwd=PROJECT_ROOT,
            env={**os.environ, "TMPDIR": str(tmp)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        start = time.perf_counter()
        while True:
            try:
                if self.request("GET", "/")[0] == 200:
                    break
            except OSError:
                assert self.proc.poll() is None, self.proc.stdout.read()
                assert time.perf_counter() - start < 120, "the demo did not start in 120 s"
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """``(status, {header: value} lower-case, body)``; ``headers`` may replace ``Host``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in {"Host": self.host, **(headers or {})}.items():
                conn.putheader(key, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def upload(self, path: Path, headers: dict | None = None):
        """POST ``path`` to Gradio's upload route; ``(status, headers, body)``."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.request("POST", "/gradio_api/upload", body, {**content_type, **(headers or {})})

    def uploaded(self, path: Path) -> str:
        status, _, body = self.upload(path)
        assert status == 200, body
        return json.loads(body)[0]

    def join(self, first: str, second: str, session: str, headers: dict | None = None):
        """Ask the model about two uploaded files (the page's first-upload event)."""
        files = [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in (first, second)]
        body = {"data": [None, None, *files, "beyond"], "fn_index": FIRST_UPLOAD, "session_hash": session}
        json_type = {"Content-Type": "application/json"}
        return self.request(
            "POST", "/gradio_api/queue/join", json.dumps(body).encode(), {**json_type, **(headers or {})}
        )

    def answer(self, session: str) -> dict:
        """The ``process_completed`` message of ``session`` (Gradio's event stream)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", f"/gradio_api/queue/data?session_hash={session}")
            response = conn.getresponse()
            assert response.status == 200
            for line in response:
                if line.startswith(b"data:"):
                    message = json.loads(line[5:])
                    if message["msg"] == "process_completed":
                        return message
        finally:
            conn.close()
        raise AssertionError(f"no answer for session {session}")

    def ask(self, first: str, second: str, headers: dict | None = None) -> tuple[int, bytes, dict | None, float]:
        """Join the queue and wait for the answer: ``(join status, join body, answer or None, seconds)``."""
        session, start = uuid.uuid4().hex, time.perf_counter()
        status, _, body = self.join(first, second, session, headers)
        answer = self.answer(session) if status == 200 else None
        return status, body, answer, time.perf_counter() - start

    def stop(self) -> str:
        """SIGTERM (what ``kill`` and service managers send), then its log; it must exit within 20 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"the demo did not stop in 20 s on SIGTERM:\n{out[-3000:]}") from None
        return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    server = Demo(tmp_path_factory.mktemp("demo-tmp"))
    yield server
    out = server.stop()
    assert not server_faults(out), out[-3000:]


def verdict(answer: dict) -> str:
    assert answer["success"], answer
    return answer["output"]["data"][-1]


@pytest.mark.parametrize(
    "host", ["rebound.example:{port}", "evil.example", "127.0.0.1:{other}", "localhost.:{port}", ""]
)
def test_a_foreign_host_is_refused_before_any_work(demo, host):
    """A page that rebinds its own name to 127.0.0.1 sends that name as the Host: it may not
    read the page's config, upload a file or run the model."""
    host = host.format(port=demo.port, other=demo.port + 1)
    refused = f"Invalid host header {host!r}: this demo answers http://127.0.0.1:{demo.port} only\n".encode()
    before = files_in(demo.tmp)
    probe = EXAMPLES / "two.png"
    origin = {"Origin": f"http://{host}"}
    for status, headers, body in (
        demo.request("GET", "/config", headers={"Host": host}),
        demo.request("GET", "/", headers={"Host": host}),
        demo.upload(probe, headers={"Host": host, **origin}),
        demo.join("x", "y", uuid.uuid4().hex, headers={"Host": host, **origin}),
        demo.request(
            "OPTIONS", "/gradio_api/upload", headers={"Host": host, **origin, "Access-Control-Request-Method": "POST"}
        ),
    ):
        assert (status, body) == (400, refused)
        assert "access-control-allow-origin" not in headers
    assert files_in(demo.tmp) == before  # nothing uploaded


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}"])
def test_the_hosts_served_are_answered(demo, host):
    host = host.format(port=demo.port)
    status, _, body = demo.request("GET", "/config", headers={"Host": host})
    assert status == 200 and json.loads(body)["root"] == f"http://{host.lower()}"


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://evil.example:{port}",
        "null",
        "http://localhost:{other}",
        "https://127.0.0.1:{port}",
    ],
)
def test_a_foreign_origin_is_refused_and_never_reflected(demo, origin):
    origin = origin.format(port=demo.port, other=demo.port + 1)
    refused = f"Origin {origin!r} refused: this demo answers its own page (http://127.0.0.1:{demo.port}) only\n"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    for status, headers, body in (
        demo.request("GET", "/config", headers={"Origin": origin}),
        demo.request("OPTIONS", "/gradio_api/queue/join", headers=preflight),
        demo.upload(EXAMPLES / "two.png", headers={"Origin": origin}),  # a form post needs no preflight
    ):
        assert (status, body) == (403, refused.encode())
        assert not [k for k in headers if k.startswith("access-control-")]


def test_the_page_own_origin_is_answered(demo):
    for origin in (f"http://127.0.0.1:{demo.port}", f"http://localhost:{demo.port}"):
        status, headers, _ = demo.request("GET", "/config", headers={"Origin": origin})
        assert status == 200 and headers.get("access-control-allow-origin") in (None, origin)


def test_a_burst_is_refused_at_once_and_the_user_waits_little(demo):
    """40 requests at once on a queue of 8: the ones it cannot hold are refused at once
    (HTTP 503, Gradio's "Queue is full"), the others answered within the time of about 8
    calls; then a user's request is answered as if alone."""
    two, seven = demo.uploaded(EXAMPLES / "two.png"), demo.uploaded(EXAMPLES / "seven_black_on_white.png")
    status, _, alone, alone_s = demo.ask(two, seven)
    assert status == 200 and verdict(alone) == "2 ≤ 7: yes"
    results: list[tuple[int, bytes, dict | None, float]] = []
    start = threading.Barrier(BURST)

    def client() -> None:
        start.wait()
        results.append(demo.ask(two, seven))

    threads = [threading.Thread(target=client) for _ in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == BURST
    refused = [r for r in results if r[0] == 503]
    answered = [r for r in results if r[0] == 200]
    assert len(refused) + len(answered) == BURST, [r[:2] for r in results if r[0] not in (200, 503)]
    assert len(answered) <= 2 * QUEUE_SIZE, f"{len(answered)} of {BURST} queued"
    assert all(b"Queue is full" in body for _, body, _, _ in refused)
    assert all(verdict(answer) == "2 ≤ 7: yes" for _, _, answer, _ in answered)
    refusal_s = max(s for *_, s in refused)
    wait_s = max(s for *_, s in results)
    assert refusal_s < 5, f"a refusal took {refusal_s:.1f} s"
    assert wait_s < 20, f"a client waited {wait_s:.1f} s"  # the time of about 9 calls, not of 40
    status, _, after, after_s = demo.ask(two, seven)  # the user, once the burst is answered or refused
    assert status == 200 and verdict(after) == "2 ≤ 7: yes"
    print(
        f"\nburst of {BURST}: {len(refused)} refused (slowest refusal {refusal_s:.2f} s), {len(answered)} answered;"
        f" longest wait {wait_s:.2f} s; one call alone {alone_s:.2f} s, after the burst {after_s:.2f} s"
    )


def test_files_are_deleted_after_their_age_and_all_at_stop(tmp_path):
    """10 uploads of about 1 MB each and the model's answers on them: with ``--cache-age 3``
    they are gone within seconds while the server runs, and its folder is gone when SIGTERM
    stops it."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for k in range(10):  # noise: a PNG of about 1 MB, each its own
        Image.merge("RGB", [Image.effect_noise((600, 600), 100) for _ in "RGB"]).save(images / f"noise{k}.png")
    uploaded_bytes = sum(p.stat().st_size for p in images.glob("*.png"))
    demo = Demo(tmp_path / "tmp", "--cache-age", "3")
    try:
        paths = [demo.uploaded(p) for p in sorted(images.glob("*.png"))]
        held = sum(files_in(demo.tmp).values())
        assert held >= uploaded_bytes  # every upload is on disk while it is fresh
        status, _, answer, _ = demo.ask(paths[0], paths[1])  # the answer writes the two images shown
        assert status == 200 and answer["success"]
        deadline = time.perf_counter() + 20
        while sum(files_in(demo.tmp).values()) > 1000 and time.perf_counter() < deadline:
            time.sleep(0.5)
        aged = files_in(demo.tmp)
        assert sum(aged.values()) <= 1000, aged  # left: the blank canvas of the page (a few hundred bytes)
        status, _, answer, _ = demo.ask(paths[0], paths[1])  # a page that still shows a deleted upload
        assert status == 200 and verdict(answer).startswith("The first digit cannot be read: an existing image file")
    finally:
        out = demo.stop()
    assert demo.proc.returncode is not None
    assert files_in(demo.tmp) == {}, files_in(demo.tmp)
    assert not [p for p in demo.tmp.iterdir() if p.name.startswith("digitpairs-demo-")]
    assert not server_faults(out), out[-3000:]
    print(
        f"\n10 uploads: {held / 1e6:.1f} MB held; after 3 s of age: {sum(aged.values())} bytes; after SIGTERM: 0 files"
    )


def test_a_foreign_websocket_is_closed_before_the_app_sees_it():
    """Gradio's page speaks HTTP (server-sent events); a WebSocket route added to it later
    is guarded the same way: closed with 1008 (policy violation) before it is accepted."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    async def echo(websocket):
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    client = TestClient(LocalOnly(Starlette(routes=[WebSocketRoute("/ws", echo)]), port=7860))
    with client.websocket_connect("/ws", headers={"Host": "127.0.0.1:7860"}) as ws:
        assert ws.receive_text() == "hello"
    for headers in ({"Host": "rebound.example:7860"}, {"Host": "127.0.0.1:7860", "Origin": "http://evil.example"}):
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws", headers=headers):
            pass
        assert refused.value.code == 1008
