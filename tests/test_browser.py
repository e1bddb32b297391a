"""The demo page (``make demo``) in a real browser: headless Chromium driven by Selenium.

It draws digits with mouse strokes on the page's canvases and reads the page's answer.
``make test-browser`` installs Chromium (Debian's ``chromium`` and ``chromium-driver``) and
the demo extra, then runs this file; without them every test here skips with one line.

``test_hand_drawn_digits`` measures the shipped models on 50 scripted digits (5 of each
class, two stroke widths) drawn through the page, and prints their digit accuracy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from drawn_digits import DIGITS, jittered
from server_log import server_faults

pytestmark = pytest.mark.browser

MISSING = [name for name in ("chromium", "chromedriver") if not shutil.which(name)]
MISSING += [name for name in ("selenium", "gradio") if importlib.util.find_spec(name) is None]
if MISSING:
    pytest.skip(
        f"no {', '.join(MISSING)}: `make test-browser` installs them and runs these tests", allow_module_level=True
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

# Chromium flags for a closed network: no background traffic, no sandbox as root
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--enable-unsafe-swiftshader",
    "--window-size=1400,1500",
]
HAND_DRAWN_FLOOR = {"beyond": 0.9, "ws_aux": 0.9}  # digit accuracy on the 50 scripted digits (measured: 100 %, 98 %)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """``python -m digitpairs.inference.demo --port P``; yields ``(url, seconds to start)``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "digitpairs.inference.demo", "--port", str(port)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.perf_counter() - start < 120, "the demo did not start in 120 s"
                time.sleep(0.2)
        yield url, time.perf_counter() - start
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert not server_faults(out), out[-3000:]  # a browser leaving mid-upload is no fault


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


class Page:
    """The demo page, as a person uses it: strokes on a canvas, then the pointer leaves it."""

    def __init__(self, driver, url: str) -> None:
        self.d = driver
        driver.get(url)
        self.wait(lambda: self.canvas("first") is not None, "the page did not load")

    def wait(self, ok, what: str, timeout: float = 30):
        end = time.time() + timeout
        while time.time() < end:
            try:
                value = ok()
            except Exception:  # noqa: BLE001 - the page is still rendering
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what} (after {timeout} s); answer: {self.text('verdict')!r}")

    def canvas(self, which: str):
        shown = [
            c
            for c in self.d.find_element(By.ID, f"{which}-canvas").find_elements(By.TAG_NAME, "canvas")
            if c.is_displayed()
        ]
        return shown[0] if shown else None

    def draw(self, which: str, strokes, wide: bool = False) -> None:
        """Draw ``strokes`` (points in [0, 1]) on a canvas; ``wide`` draws each stroke twice,
        a few pixels apart, for a wider line. Then the pointer leaves the canvas."""
        c = self.canvas(which)
        side = 0.78 * min(c.size["width"], c.size["height"])  # the drawing area, centred in the element
        for stroke in strokes:
            for shift in ((0, 0), (5, 5)) if wide else ((0, 0),):
                points = [(round((x - 0.5) * side) + shift[0], round((y - 0.5) * side) + shift[1]) for x, y in stroke]
                chain = ActionChains(self.d, duration=5).move_to_element_with_offset(c, *points[0]).click_and_hold()
                for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
                    chain.move_by_offset(x1 - x0, y1 - y0)
                chain.release().perform()
        self.leave()

    def leave(self) -> None:
        ActionChains(self.d).move_to_element(self.d.find_element(By.TAG_NAME, "h2")).perform()

    def clear(self, which: str) -> None:
        """The canvas's own clear button, then its brush again (clearing leaves no tool chosen)."""
        self.d.find_element(By.CSS_SELECTOR, f"#{which}-canvas button[aria-label='Clear canvas']").click()
        self.d.find_element(By.CSS_SELECTOR, f"#{which}-canvas button[aria-label='Brush']").click()
        self.leave()

    def text(self, elem_id: str) -> str:
        try:
            return self.d.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")
        except Exception:  # noqa: BLE001
            return ""

    def top_class(self, which: str) -> int | None:
        lines = [ln for ln in self.d.find_element(By.ID, f"{which}-probs").text.splitlines() if ln.strip()]
        return int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else None

    def choose_model(self, name: str) -> None:
        """Pick ``name`` in the model dropdown (its list opens on a click; a second try if it did not)."""
        for attempt in range(3):
            self.d.find_element(By.CSS_SELECTOR, "#model input").click()
            try:
                option = self.wait(
                    lambda: next(
                        o  # the chosen one reads "✓ name"
                        for o in self.d.find_elements(By.CSS_SELECTOR, "li[role='option']")
                        if o.is_displayed() and o.text.split()[-1:] == [name]
                    ),
                    f"no option {name}",
                    timeout=5,
                )
            except AssertionError:
                if attempt == 2:
                    raise
                self.leave()
                continue
            option.click()
            self.leave()
            return


def test_draw_a_two_and_a_seven_and_read_the_answer(server, browser, tmp_path):
    url, started = server
    page = Page(browser, url)
    rng = random.Random(0)
    page.draw("first", jittered(2, rng))
    page.draw("second", jittered(7, rng))
    page.wait(lambda: page.text("verdict") == "2 ≤ 7: yes", "no '2 ≤ 7: yes'")
    assert page.text("p-le").startswith("P(first ≤ second) = ") and page.text("p-le").endswith("(beyond)")
    assert (page.top_class("first"), page.top_class("second")) == (2, 7)
    browser.save_screenshot(str(tmp_path / "two-seven.png"))
    assert (tmp_path / "two-seven.png").stat().st_size > 10_000
    if os.environ.get("DEMO_SCREENSHOT"):  # the README's picture: DEMO_SCREENSHOT=docs/figures/demo.png
        shutil.copy(tmp_path / "two-seven.png", os.environ["DEMO_SCREENSHOT"])
    page.clear("first")
    page.clear("second")
    page.draw("first", jittered(7, rng))
    page.draw("second", jittered(2, rng))
    page.wait(lambda: page.text("verdict") == "7 ≤ 2: no", "no '7 ≤ 2: no'")
    print(f"\ndemo started in {started:.1f} s; screenshot {tmp_path / 'two-seven.png'}")
    assert started < 60


def test_the_page_asks_nothing_of_the_internet(server, browser):
    url, _ = server
    page = Page(browser, url)
    page.draw("first", jittered(3, random.Random(1)))
    page.wait(lambda: "second box" in page.text("verdict"), "no message about the empty second box")
    requests = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.add(message["params"]["request"]["url"])
    assert any(r.startswith(url) for r in requests)
    outside = sorted(r for r in requests if not r.startswith((url, "data:", "blob:")))
    assert not outside, outside


def upload(page: Page, which: str, path: Path) -> None:
    """Open the ``upload`` tab beside a canvas and give it ``path``."""
    tabs = [t for t in page.d.find_elements(By.CSS_SELECTOR, "button[role='tab']") if t.text.strip() == "upload"]
    tabs[0 if which == "first" else 1].click()
    page.wait(lambda: page.d.find_element(By.CSS_SELECTOR, f"#{which}-upload input[type='file']"), "no file input")
    page.d.find_element(By.CSS_SELECTOR, f"#{which}-upload input[type='file']").send_keys(str(path))


@pytest.mark.parametrize(
    "case, message",
    [
        ("white", "empty or all one colour"),
        ("text", "this file is not one"),
        ("huge", "at most 50 megapixels"),
    ],
)
def test_bad_input_is_a_message_on_the_page(case, message, server, browser, tmp_path):
    from PIL import Image

    url, _ = server
    page = Page(browser, url)
    page.draw("second", jittered(5, random.Random(2)))
    path = {"white": tmp_path / "white.png", "text": tmp_path / "notes.png", "huge": tmp_path / "huge.png"}[case]
    if case == "white":
        Image.new("RGB", (300, 200), "white").save(path)
    elif case == "text":
        path.write_text("not an image")
    else:
        Image.new("L", (8000, 7000)).save(path)
    upload(page, "first", path)
    page.wait(lambda: message in page.text("verdict"), f"no message {message!r}", timeout=60)
    assert page.text("verdict").startswith("The first digit cannot be read")


def test_hand_drawn_digits(server, browser, tmp_path):
    """50 scripted digits through the page (5 per class; 3 thin, 2 wide), read by both shipped models."""
    url, _ = server
    page = Page(browser, url)
    page.draw("second", jittered(5, random.Random(3)))
    rng = random.Random(2026)
    right = {"beyond": 0, "ws_aux": 0}
    misread = []
    n = 0
    for digit in DIGITS:
        for k in range(5):
            strokes, wide = jittered(digit, rng), k >= 3
            page.clear("first")
            page.wait(lambda: "first box" in page.text("verdict"), "the first canvas did not clear")
            page.draw("first", strokes, wide=wide)
            for name in ("beyond", "ws_aux") if n % 2 == 0 else ("ws_aux", "beyond"):  # one switch per digit
                if not page.text("p-le").endswith(f"({name})"):
                    page.choose_model(name)
                page.wait(
                    lambda name=name: "≤" in page.text("verdict") and page.text("p-le").endswith(f"({name})"),
                    f"no answer from {name}",
                )
                got = page.top_class("first")
                right[name] += got == digit
                if got != digit:
                    misread.append(f"{name}: {digit} ({'wide' if wide else 'thin'}) read as {got}")
            n += 1
    accuracy = {name: right[name] / n for name in right}
    report = {"digits": n, "accuracy": accuracy, "misread": misread}
    (tmp_path / "hand_drawn.json").write_text(json.dumps(report, indent=2))
    print(
        f"\nhand-drawn digits through the page: {n}; digit accuracy "
        + ", ".join(f"{k} {100 * v:.0f} %" for k, v in accuracy.items())
        + f"\nmisread: {misread}"
    )
    if os.environ.get("HAND_DRAWN_REPORT"):
        Path(os.environ["HAND_DRAWN_REPORT"]).write_text(json.dumps(report, indent=2))
    assert n == 50
    for name, floor in HAND_DRAWN_FLOOR.items():
        assert accuracy[name] >= floor, report
