"""The browser tests' check of the demo server's log (``tests/server_log.py``)."""

from __future__ import annotations

from server_log import raised, server_faults

# the end of a log seen when the browser closed while the page was uploading a drawing
CLIENT_GONE = """* Running on local URL:  http://127.0.0.1:40123
ERROR:    Exception in ASGI application
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/uvicorn/protocols/http/h11_impl.py", line 407, in run_asgi
    result = await app(  # type: ignore[func-returns-value]
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/venv/lib/python3.11/site-packages/gradio/route_utils.py", line 936, in parse
    async for chunk in self.stream:
  File "/venv/lib/python3.11/site-packages/starlette/requests.py", line 252, in stream
    raise ClientDisconnect()
starlette.requests.ClientDisconnect
"""

OUR_FAULT = """Traceback (most recent call last):
  File "/repo/digitpairs/inference/demo.py", line 80, in answer
    x = to_digit(image)
ValueError: the image is 0x0 pixels
"""

CHAINED = """Traceback (most recent call last):
  File "/repo/a.py", line 1, in f
    g()
KeyError: 'first'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/repo/a.py", line 3, in f
    raise RuntimeError("no model")
RuntimeError: no model
"""

GROUP_OF_DISCONNECTS = """  + Exception Group Traceback (most recent call last):
  |   File "/venv/lib/python3.11/site-packages/anyio/_backends/_asyncio.py", line 767, in __aexit__
  |     raise BaseExceptionGroup(
  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "/venv/lib/python3.11/site-packages/starlette/requests.py", line 252, in stream
    |     raise ClientDisconnect()
    | starlette.requests.ClientDisconnect
    +------------------------------------
"""


def test_each_traceback_gives_its_exception_line():
    assert raised(CLIENT_GONE) == ["starlette.requests.ClientDisconnect"]
    assert raised(CHAINED) == ["KeyError: 'first'", "RuntimeError: no model"]
    assert raised(GROUP_OF_DISCONNECTS) == [
        "ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)",
        "starlette.requests.ClientDisconnect",
    ]
    assert raised("* Running on local URL:  http://127.0.0.1:7860\n") == []


def test_a_client_going_away_is_no_fault_but_any_other_traceback_is():
    assert server_faults(CLIENT_GONE) == []
    assert server_faults(GROUP_OF_DISCONNECTS) == []
    assert server_faults(CLIENT_GONE + OUR_FAULT) == ["ValueError: the image is 0x0 pixels"]
    assert server_faults(CHAINED) == ["KeyError: 'first'", "RuntimeError: no model"]
    assert server_faults("Traceback (most recent call last):\n") == ["(a traceback with no exception line)"]
