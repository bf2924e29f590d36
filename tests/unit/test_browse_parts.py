"""The pieces behind browsing, without a server: whether a model is on this machine (against huggingface_hub's own
cache lookup), the page HTML that tells Streamlit's frontend where the app's root is (so it probes no page path
for /_stcore/health), the server's freeze of what imports left out of the collector's walks, the click
selection added to a chart's spec, and a metric's change shown as zero."""

from __future__ import annotations

import asyncio
import gc
import gzip
import importlib.util
import json
import sys
import types
import weakref

import altair as alt
import pandas as pd
import pytest
from helpers import APP

from compute.local_models import cached_file, missing_locally


def fake_hub_cache(root, repo: str, files: dict[str, list[str]], main: str | None) -> None:
    """A hub cache holding ``repo`` with ``files`` per snapshot (commit -> names); refs/main -> ``main``."""
    folder = root / ("models--" + repo.replace("/", "--"))
    for commit, names in files.items():
        for name in names:
            path = folder / "snapshots" / commit / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
    if main is not None:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(main)


@pytest.mark.parametrize("files, main", [
    ({"a" * 40: ["config.json", "model.safetensors"]}, "a" * 40),
    ({"a" * 40: ["config.json"]}, "a" * 40),  # config, no weights
    ({"a" * 40: ["model.safetensors"]}, "a" * 40),
    ({"a" * 40: ["config.json", "model.safetensors"], "b" * 40: ["pytorch_model.bin"]}, "b" * 40),  # main moved on
    ({"a" * 40: ["config.json", "pytorch_model.bin"]}, None),  # no ref stored
    ({}, None),
])
def test_the_cache_lookup_agrees_with_huggingface_hub(tmp_path, files, main):
    from huggingface_hub import try_to_load_from_cache

    repo = "org/model"
    fake_hub_cache(tmp_path, repo, files, main)
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        theirs = try_to_load_from_cache(repo, name, cache_dir=tmp_path)
        ours = cached_file(repo, name, tmp_path)
        assert (str(ours) if ours else None) == (theirs if isinstance(theirs, str) else None), name
    at_main = set(files.get(main, [])) if main else set()
    complete = "config.json" in at_main and bool({"model.safetensors", "pytorch_model.bin"} & at_main)
    assert (missing_locally(repo, tmp_path) is None) == complete


def test_missing_locally_names_what_is_missing(tmp_path):
    model = tmp_path / "clip"
    model.mkdir()
    assert missing_locally(str(model)) == f"the folder {model} has no config.json"
    (model / "config.json").write_text("{}")
    assert missing_locally(str(model)) is None
    assert missing_locally(str(tmp_path / "gone")) == f"the model folder {tmp_path / 'gone'} is not on this machine"
    assert missing_locally("a/b/c", tmp_path) == "the model folder a/b/c is not on this machine"
    assert missing_locally("org/nothing", tmp_path) == f"the model org/nothing is not in the local Hugging Face cache ({tmp_path})"
    fake_hub_cache(tmp_path, "org/clip", {"c" * 40: ["config.json", "model.safetensors"]}, "c" * 40)
    assert missing_locally("org/clip", tmp_path) is None


# --------------------------------------------------------------------------------------------------
# The page's HTML.

PAGE = b"<!DOCTYPE html><html><head><meta charset='UTF-8'/><script type='module' src='./static/js/x.js'></script></head></html>"


def serve_through(app, path: str = "/layers"):
    """Run the ASGI ``app`` on a GET of ``path``; -> (start message, body)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def answering(body: bytes, content_type: bytes, encoding: bytes | None = None, status: int = 200):
    async def app(scope, receive, send):
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        headers += [(b"content-encoding", encoding)] if encoding else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        half = len(body) // 2  # in two pieces, as a streamed file comes
        await send({"type": "http.response.body", "body": body[:half], "more_body": True})
        await send({"type": "http.response.body", "body": body[half:], "more_body": False})
    return app


@pytest.mark.parametrize("encoding", [None, b"gzip"])
def test_every_page_tells_the_frontend_the_apps_root_before_its_bundle_runs(encoding, monkeypatch):
    from dashboard import server

    monkeypatch.setattr(server.config, "get_option", lambda name: "" if name == "server.baseUrlPath" else None)
    raw = gzip.compress(PAGE) if encoding else PAGE
    start, body = serve_through(server.RootUrl(answering(raw, b"text/html", encoding)))
    headers = dict(start["headers"])
    assert b"content-encoding" not in headers and int(headers[b"content-length"]) == len(body)
    script = server.root_script("")
    assert body == PAGE.replace(b"<head>", b"<head>" + script)
    assert body.index(script) < body.index(b"type='module'")  # before the bundle reads window.__streamlit
    assert b'BACKEND_BASE_URL: location.origin + "/"' in script


def test_other_answers_pass_as_they_are(monkeypatch):
    from dashboard import server

    for body, kind, status in ((b"ok", b"text/plain", 200), (b"\x89PNG...", b"image/png", 200),
                               (PAGE, b"text/html", 304)):
        start, out = serve_through(server.RootUrl(answering(body, kind, status=status)))
        assert out == body and start["status"] == status


def test_the_root_follows_the_servers_base_url_path():
    from dashboard.server import root_script

    assert b'location.origin + "/lab/"' in root_script("lab")
    assert b'location.origin + "/lab/tools/"' in root_script("/lab/tools/")
    assert b'location.origin + "/"' in root_script("/")


class Node:
    """An object that can hold itself: garbage only a collection frees."""


def frozen(obj: object) -> bool:
    """Whether ``obj`` is in the collector's permanent generation (gc.get_objects lists every other one)."""
    return not any(o is obj for o in gc.get_objects())


def test_the_server_freezes_after_new_imports_only_once_collected_and_only_when_serving(monkeypatch):
    from dashboard import server

    monkeypatch.setattr(server, "serving", False)
    monkeypatch.setattr(server, "_modules_at_freeze", 0)
    alive = Node()
    server.freeze_imports()
    assert not frozen(alive)  # AppTest and the tools: Streamlit collects nothing after their runs

    monkeypatch.setattr(server, "serving", True)
    cycle = Node()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    del cycle
    server.freeze_imports()
    assert gone() is None  # collected first: garbage is never frozen
    assert frozen(alive)
    fresh = Node()
    server.freeze_imports()
    assert not frozen(fresh)  # no module imported since: nothing done
    monkeypatch.setitem(sys.modules, "newly_imported", types.ModuleType("newly_imported"))
    server.freeze_imports()
    assert frozen(fresh)


def test_only_the_server_importing_the_app_marks_this_process_as_serving(monkeypatch):
    from dashboard import server

    monkeypatch.setattr(server, "serving", False)
    spec = importlib.util.spec_from_file_location("app", APP)  # as uvicorn finds `app:app`
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "app", app)
    spec.loader.exec_module(app)
    assert server.serving is True


# --------------------------------------------------------------------------------------------------
# Clickable charts.


def test_clickable_adds_one_click_selection_on_the_marks_that_stand_for_something():
    from dashboard.clicks import PICK, clickable

    data = pd.DataFrame({"ablation": ["a", "b"], "x": [1, 2], "y": [0.5, 0.7]})
    base = alt.Chart(data).encode(x="x:O", y="y:Q")
    spec = alt.layer(base.mark_area(), base.mark_line(), base.mark_point(), base.mark_text(text="*"),
                     alt.Chart(data).mark_rule().encode(y=alt.datum(0.6))).to_dict()
    before = json.dumps(spec, sort_keys=True)
    out = clickable(spec)
    assert json.dumps(spec, sort_keys=True) == before  # the cached spec is not changed
    kinds = [v["mark"]["type"] if isinstance(v["mark"], dict) else v["mark"] for v in out["layer"]]
    assert kinds == ["rule", "area", "line", "point", "text"]  # the rule under the marks: it takes no click
    (param,) = [p for p in out["params"] if p["name"].startswith(PICK)]
    assert param["select"] == {"type": "point", "fields": ["ablation"], "on": "click", "clear": False}
    named = [v for v in out["layer"] if "name" in v]
    assert [v["mark"]["type"] for v in named] == ["point"] and param["views"] == [named[0]["name"]]
    assert named[0]["mark"]["cursor"] == "pointer"
    alt.Chart.from_dict(out)  # still a valid Vega-Lite spec


def test_two_clickable_layers_get_a_selection_each_and_vega_draws_them():
    import vl_convert

    from dashboard.clicks import clickable, selections

    data = pd.DataFrame({"ablation": ["a", "b", "c"], "x": [1, 2, 3], "y": [0.1, 0.2, 0.3], "held": [True, False, True]})
    base = alt.Chart(data).encode(x="x:O", y="y:Q")
    spec = alt.layer(base.transform_filter("datum.held").mark_point(filled=True),
                     base.transform_filter("!datum.held").mark_point(), base.mark_bar(opacity=0.2)).to_dict()
    out = clickable(spec)
    assert selections(out) == ["pick_0", "pick_1", "pick_2"]
    assert [p["views"] for p in out["params"]] == [[v["name"]] for v in out["layer"]]
    svg = vl_convert.vegalite_to_svg(out)  # one selection over two layers would be "Duplicate signal name"
    assert svg.count('aria-roledescription="point"') == 3


def test_picked_reads_streamlits_selection_event():
    from dashboard.clicks import picked

    assert picked({"selection": {"pick_1": [{"ablation": "identity:5"}], "pick_0": []}}) == {"ablation": "identity:5"}
    assert picked({"selection": {"pick_0": []}}) is None and picked({"selection": {}}) is None and picked(None) is None


def test_the_image_page_sizes_its_map_cells_by_the_charts_sides():
    from analysis import attention_charts
    from dashboard import attention_ui

    assert (attention_ui.SMALL_PX, attention_ui.LARGE_PX) == (attention_charts.SMALL_PX, attention_charts.LARGE_PX)


def test_a_change_shown_as_zero_is_grey_and_without_an_arrow():
    from dashboard.layout import delta

    assert delta("+0.000") == {"delta": "+0.000", "delta_color": "off", "delta_arrow": "off"}
    assert delta("-0.000 vs baseline")["delta_color"] == "off"
    assert delta("+0.002") == {"delta": "+0.002", "delta_color": "normal", "delta_arrow": "auto"}
    assert delta("-0.517 vs baseline") == {"delta": "-0.517 vs baseline", "delta_color": "normal", "delta_arrow": "auto"}
