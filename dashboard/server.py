"""How the dashboard is served: Streamlit's own server, with the app's root URL written into every page's HTML.

``streamlit run dashboard/app.py`` finds the ``st.App`` that app.py defines and serves it with uvicorn (Streamlit's
ASGI mode); the script each session runs is app.py itself. Two additions: ``RootUrl``, a middleware, and
``freeze_imports``, which keeps Streamlit's collection after every script run from walking every module's objects.

Why: Streamlit's frontend does not know where the app's root is. Opened at a page's URL (``/layers``), it probes
``/layers/_stcore/health`` and ``/layers/_stcore/host-config`` first, which the server answers 404 (they exist at
the root only), then the root: two 404s on every load of every page but the root, in the browser's console and
in every proxy log. Told the root (``window.__streamlit.BACKEND_BASE_URL``, which its bundle reads once as it
starts) it probes the root alone. So every HTML response gets, first thing in its ``<head>``, a one-line script
that sets it: the page's origin plus ``server.baseUrlPath``. The script holds no data, only that path (JSON).
A proxy that serves the app under a prefix of its own should set ``server.baseUrlPath`` to that prefix.
"""

from __future__ import annotations

import gc
import gzip
import json
import sys
import threading

from streamlit import config

HEAD = b"<head>"


def root_script(base_url_path: str) -> bytes:
    """The script that tells Streamlit's frontend where the app's root is (``base_url_path``: the server's
    ``server.baseUrlPath``, "" for none)."""
    path = "/" + "/".join(p for p in base_url_path.split("/") if p) + "/" if base_url_path.strip("/") else "/"
    return (f"<script>window.__streamlit = Object.assign({{}}, window.__streamlit, "
            f"{{BACKEND_BASE_URL: location.origin + {json.dumps(path)}}});</script>").encode()


def inject(html: bytes, script: bytes) -> bytes:
    """``script`` right after ``<head>`` (before the bundle's module script); ``html`` as is without one."""
    at = html.find(HEAD)
    return html if at < 0 else html[:at + len(HEAD)] + script + html[at + len(HEAD):]


class RootUrl:
    """ASGI middleware: ``root_script`` in every HTML page a GET is answered with (200); every other response passes as it is,
    streamed. Runs outside Streamlit's gzip middleware, so it decompresses the page (a few kB) it rewrites."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict = {}
        body: list[bytes] = []
        rewrite = False

        async def relay(message) -> None:
            nonlocal rewrite
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                rewrite = message.get("status") == 200 and headers.get(b"content-type", b"").startswith(b"text/html")
                if rewrite:
                    start.update(message)  # held until the body is whole
                else:
                    await send(message)
                return
            if not rewrite or message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            headers = [(k, v) for k, v in start.get("headers", [])]
            html = b"".join(body)
            if any(k.lower() == b"content-encoding" and v.strip() == b"gzip" for k, v in headers):
                html = gzip.decompress(html)
            html = inject(html, root_script(str(config.get_option("server.baseUrlPath") or "")))
            kept = [(k, v) for k, v in headers if k.lower() not in (b"content-encoding", b"content-length")]
            await send({**start, "headers": [*kept, (b"content-length", str(len(html)).encode())]})
            await send({"type": "http.response.body", "body": html})

        await self.app(scope, receive, relay)


# Set by app.py when `streamlit run` imports it to find its `app`: this process is the dashboard's server, where
# Streamlit collects garbage after every script run. (AppTest runs app.py without importing it, and collects
# nothing after a run.)
serving = False
_modules_at_freeze = 0
_freeze_lock = threading.Lock()


def freeze_imports() -> None:
    """At the start of a script run: ``freeze_new_imports()`` in the server, nothing elsewhere.

    Why: after each script run Streamlit collects garbage in full (``runner.postScriptGC``), walking every
    object of the process: with torch and transformers imported that is 0.2-0.27 s of CPU per run (measured
    here), spent before the session's next run can start; after a freeze, 1-2 ms. At the start of a run,
    nothing a run made is alive (unless another session is mid-run): what is frozen is modules, classes,
    functions, caches and sessions, which live on.
    """
    if serving:
        freeze_new_imports()


def freeze_new_imports() -> None:
    """When modules were imported since the last call (a page's first run imports torch, transformers,
    Altair...): collect garbage, then move every object alive to the collector's permanent generation, out of
    every later collection's walk. Collected first, so no garbage is frozen; a frozen object is still freed when
    its last reference goes, it is only never walked for cycles again."""
    global _modules_at_freeze
    with _freeze_lock:
        if len(sys.modules) == _modules_at_freeze:
            return
        gc.collect()
        gc.freeze()
        _modules_at_freeze = len(sys.modules)
