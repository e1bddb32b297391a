"""A web page where you draw two digits and the model compares them (``make demo``).

    python -m digitpairs.inference.demo                      # http://127.0.0.1:7860
    python -m digitpairs.inference.demo --port 8000 --model outputs/runs/<time>

Two canvases, a digit each; an image file uploaded beside a canvas takes its drawing's place. After every
stroke the page shows, for each digit, the 14x14 input the model reads (enlarged) and its
10 class probabilities, then P(first <= second) and the answer in words, e.g.
``2 ≤ 7: yes``. The digits are prepared exactly as ``predict.py`` prepares image files
(:func:`digitpairs.inference.predict.prepare_image`). A choice of model: the shipped ones
(``beyond``, ``ws_aux``) and any checkpoint given with ``--model``.

Gradio is an optional extra (``pip install -e '.[demo]'``). The page works offline: no
analytics, no fonts or scripts from the internet (system fonts), and it listens on
127.0.0.1 only. Bad input (an empty canvas, an image of one colour, a file that is not an
image, an image over the size limit) shows a message on the page, never a traceback.

Local only, against web pages too (:class:`LocalOnly`): a request is answered only if its
``Host`` is the address served (``127.0.0.1:<port>`` or ``localhost:<port>``; anything else,
e.g. a page that rebinds its own name to 127.0.0.1, gets 400) and its ``Origin``, when it
has one, is that address too (anything else gets 403, without CORS headers). The model's
queue holds at most ``QUEUE_SIZE`` waiting requests: more are refused at once (HTTP 503,
"Queue is full"). Uploads, drawings and the images shown live in a folder of the server's
own, deleted ``--cache-age`` seconds after they were written and wholly when it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitpairs.inference.predict import compare, load_digit, load_model, prepare_image
from digitpairs.inference.pretrained import NAMES, resolve_model
from digitpairs.utils.errors import ConfigError

SCALE = 12  # the 14x14 input is shown enlarged to 168x168
CANVAS = 280  # pixels a side: a digit drawn at about the size of a finger's stroke
QUEUE_SIZE = 8  # requests waiting for the model at most (one runs at a time, 0.1-0.3 s each on 2 cores)
CACHE_AGE = 600  # seconds an upload, a drawing or a shown image is kept (then deleted; all at stop)


@dataclass
class Answer:
    """What the page shows for one pair: per digit the enlarged input (``uint8 (168, 168)``)
    and its class probabilities (``{"0": p, ...}``), then the comparison in words."""

    inputs: list[np.ndarray | None]
    probabilities: list[dict[str, float] | None]
    p_le: str
    verdict: str


def enlarged(digit: torch.Tensor) -> np.ndarray:
    """A ``float32 (14, 14)`` digit in 0-255 as a ``uint8 (168, 168)`` image, each pixel a
    ``SCALE`` x ``SCALE`` block (what the model reads, not smoothed)."""
    return np.kron(digit.clamp(0, 255).round().to(torch.uint8).numpy(), np.ones((SCALE, SCALE), dtype=np.uint8))


def read_digit(value: Any, label: str):
    """The digit of a canvas value (Gradio's ``{"composite": image, ...}``) or of an uploaded
    file's path, prepared as ``predict.py`` prepares files; None for an empty canvas.

    Raises:
        ConfigError: an image with no digit, of one colour, over the size limit, or a file
            that is not an image.
    """
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return load_digit(value, f"{label} digit")
    img = value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value))
    return prepare_image(img, f"{label} digit", "the drawing")


class Comparer:
    """Loads each model once and answers a pair of drawings.

    Args:
        choices: model name -> checkpoint file (the shipped models and any given).
    """

    def __init__(self, choices: dict[str, Path]) -> None:
        self.choices = choices
        self._loaded: dict[str, tuple] = {}
        self._loading = threading.Lock()  # each model loaded once, whichever thread asks first

    def model(self, name: str):
        with self._loading:
            if name not in self._loaded:
                self._loaded[name] = load_model(str(self.choices[name]))
            return self._loaded[name]

    def __call__(self, first: Any, second: Any, name: str) -> Answer:
        """Prepare both drawings and compare them; a drawing that cannot be read is a
        message in the verdict, never an exception."""
        digits, messages = [], []
        for label, value in (("first", first), ("second", second)):
            try:
                digit = read_digit(value, label)
            except ConfigError as err:
                digit = None
                messages.append(f"The {label} digit cannot be read: {err.allowed}.")
            else:
                if digit is None:
                    messages.append(f"Draw a digit in the {label} box, or upload an image of one.")
            digits.append(digit)
        inputs = [None if d is None else enlarged(d.image) for d in digits]
        if messages:
            return Answer(inputs, [None, None], "", " ".join(messages))
        model, mean, std = self.model(name)
        r = compare(model, digits[0].image, digits[1].image, mean, std)
        probs = [None, None]
        if r["first"] is not None:
            probs = [{str(i): p for i, p in enumerate(r[f"{k}_probs"])} for k in ("first", "second")]
        answer = "yes" if r["le"] else "no"
        verdict = f"{r['first']} ≤ {r['second']}: {answer}" if r["first"] is not None else f"first ≤ second: {answer}"
        return Answer(inputs, probs, f"P(first ≤ second) = {r['p_le']:.3f} ({name})", verdict)


def build(comparer: Comparer, default: str, cache_age: int = CACHE_AGE):
    """The Gradio page (``gr.Blocks``) around ``comparer``; the files it writes (uploads,
    drawings, the images shown) are deleted ``cache_age`` seconds after they were written,
    checked every ``min(60, cache_age)`` seconds while it is served, and all when it stops."""
    import gradio as gr
    from PIL import Image

    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )  # no web fonts: offline
    brush = gr.Brush(default_size=18, colors=["#000000"], color_mode="fixed")
    blank = {"background": Image.new("RGB", (CANVAS, CANVAS), "white"), "layers": [], "composite": None}
    with gr.Blocks(
        title="digitpairs: is the first digit <= the second?",
        analytics_enabled=False,
        delete_cache=(min(60, cache_age), cache_age),
    ) as page:
        gr.Markdown("## Is the first digit ≤ the second?\nDraw a digit in each box (or upload an image).")
        with gr.Row():
            canvases, uploads, inputs, bars = [], [], [], []
            for label in ("first", "second"):
                with gr.Column():
                    with gr.Tab("draw"):
                        canvases.append(
                            gr.Sketchpad(
                                value=blank,
                                label=f"{label} digit",
                                type="pil",
                                image_mode="RGBA",
                                brush=brush,
                                canvas_size=(CANVAS, CANVAS),
                                fixed_canvas=True,
                                layers=False,
                                elem_id=f"{label}-canvas",
                            )
                        )
                    with gr.Tab("upload"):
                        uploads.append(
                            gr.File(  # not gr.Image: Gradio would decode it and a bad file would be a traceback
                                label=f"{label} digit (an image file; it takes the drawing's place)",
                                type="filepath",
                                elem_id=f"{label}-upload",
                            )
                        )
                    inputs.append(
                        gr.Image(
                            label="what the model reads (14x14)",
                            height=SCALE * 14 + 48,
                            interactive=False,
                            elem_id=f"{label}-input",
                        )
                    )
                    bars.append(gr.Label(label="class probabilities", num_top_classes=10, elem_id=f"{label}-probs"))
        with gr.Row():
            model = gr.Dropdown(choices=list(comparer.choices), value=default, label="model", elem_id="model")
            p_le = gr.Textbox(label="probability", interactive=False, elem_id="p-le")
            verdict = gr.Textbox(label="answer", interactive=False, elem_id="verdict")

        def update(first, second, first_file, second_file, name):
            a = comparer(
                first if first_file is None else first_file, second if second_file is None else second_file, name
            )
            return (*a.inputs, *a.probabilities, a.p_le, a.verdict)

        outputs = [*inputs, *bars, p_le, verdict]
        listen = dict(
            fn=update,
            inputs=[*canvases, *uploads, model],
            outputs=outputs,
            show_progress="hidden",
            trigger_mode="always_last",
            concurrency_id="model",  # one queue for every event: one model call at a time
            concurrency_limit=1,
        )
        for canvas in canvases:  # a canvas commits its strokes when the pointer leaves it: its input event
            canvas.input(**listen)
            canvas.clear(**listen)
        for trigger in (*uploads, model):
            trigger.change(**listen)
    return page, theme


class LocalOnly:
    """ASGI middleware: answer only requests that the page served on ``127.0.0.1:port`` makes.

    A request (HTTP or WebSocket) whose ``Host`` header is not ``127.0.0.1:port`` or
    ``localhost:port`` gets 400: a page elsewhere that rebinds its own name to 127.0.0.1
    (DNS rebinding) sends its own name as the Host. A request with an ``Origin`` header that
    is not ``http://`` one of those gets 403, preflights included, with no CORS header: no
    other page may read an answer, upload a file or run the model (Gradio's own CORS
    middleware echoes any Origin, with credentials, when the Host is foreign). Other
    scopes (lifespan) pass through.

    Args:
        app: the ASGI app to guard.
        port: the port served, 1-65535.
    """

    def __init__(self, app, port: int) -> None:
        self.app = app
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        if port == 80:  # browsers leave the default port out of Host
            self.hosts |= {"127.0.0.1", "localhost"}
        self.origins = {f"http://{host}" for host in self.hosts}
        self.served = f"http://127.0.0.1:{port}"

    def refusal(self, headers) -> tuple[int, str] | None:
        """``(status, one line)`` for a request that is not the page's own, else None."""
        host, origin = headers.get("host", ""), headers.get("origin")
        if host.lower() not in self.hosts:
            return 400, f"Invalid host header {host!r}: this demo answers {self.served} only"
        if origin is not None and origin.lower() not in self.origins:
            return 403, f"Origin {origin!r} refused: this demo answers its own page ({self.served}) only"
        return None

    async def __call__(self, scope, receive, send) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import PlainTextResponse
        from starlette.websockets import WebSocketClose

        refused = self.refusal(Headers(scope=scope)) if scope["type"] in ("http", "websocket") else None
        if refused is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await WebSocketClose(code=1008, reason=refused[1])(scope, receive, send)
        else:
            await PlainTextResponse(refused[1] + "\n", status_code=refused[0])(scope, receive, send)


def serve(page, theme, port: int, cache: Path) -> None:
    """Serve ``page`` on ``127.0.0.1:port`` until interrupted (Ctrl+C or SIGTERM), guarded by
    :class:`LocalOnly`, with its queue bounded (``QUEUE_SIZE``); ``cache``, the folder of its
    files (``GRADIO_TEMP_DIR``), is removed when it stops."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    @contextlib.asynccontextmanager
    async def remove_cache_at_stop(app):
        try:
            yield
        finally:  # after Gradio's own shutdown (it runs inside this one), before uvicorn re-raises SIGTERM
            shutil.rmtree(cache, ignore_errors=True)

    page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1, api_open=False)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=remove_cache_at_stop)
    app.add_middleware(LocalOnly, port=port)  # outermost: before Gradio's own CORS middleware
    gr.mount_gradio_app(
        app,
        page,
        path="/",
        server_name="127.0.0.1",
        server_port=port,
        footer_links=[],
        theme=theme,
        max_file_size="20mb",
        show_error=False,
        ssr_mode=False,
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=3)
    print(f"The demo: http://127.0.0.1:{port} (Ctrl+C stops it)", flush=True)
    try:
        uvicorn.Server(config).run()  # it stops on SIGINT or SIGTERM, then raises that signal again
    except KeyboardInterrupt:  # Ctrl+C: the server has stopped and removed its files
        print("The demo stopped.", flush=True)


def main(argv: list[str] | None = None) -> None:
    """``make demo``: serve the page on 127.0.0.1 (``--port``, default 7860)."""
    parser = argparse.ArgumentParser(description="A web page where you draw two digits and a model compares them.")
    parser.add_argument("--port", type=int, default=7860, help="the port on 127.0.0.1 (default 7860)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="a checkpoint file or run folder to offer beside the shipped models (repeatable)",
    )
    parser.add_argument(
        "--cache-age",
        type=int,
        default=CACHE_AGE,
        help=f"seconds an uploaded or shown image is kept before it is deleted (default {CACHE_AGE})",
    )
    args = parser.parse_args(argv)
    from digitpairs.utils.errors import one_line_errors

    with one_line_errors():
        if not 1 <= args.port <= 65535:
            raise ConfigError("--port", args.port, "a port in 1..65535")
        if not 1 <= args.cache_age <= 86400:
            raise ConfigError("--cache-age", args.cache_age, "seconds in 1..86400")
        with socket.socket() as probe:  # a port in use: one line now, not a server's traceback later
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            try:
                probe.bind(("127.0.0.1", args.port))
            except OSError as err:
                raise ConfigError("--port", args.port, f"a free port on 127.0.0.1 ({err.strerror})") from None
        choices = {name: resolve_model(name) for name in NAMES}
        for given in args.model:
            choices[given] = resolve_model(given)
        for path in choices.values():
            load_model(str(path))  # every checkpoint checked before the page starts
    cache = Path(tempfile.mkdtemp(prefix="digitpairs-demo-"))  # the server's own: removed at stop
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # before gradio is imported: it reads it then
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry
    try:
        page, theme = build(Comparer(choices), args.model[-1] if args.model else "beyond", args.cache_age)
        serve(page, theme, args.port, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
