"""Where the app's selection lives: the store path (command line / environment) and the URL query params.

Every choice that defines a view (run, ablation, filters, image, page of the grid) is a query param, so a
copied URL reopens the same view. Widgets are bound to a param with ``param_select``: the URL wins when
it changed from outside (a pasted or followed link), the widget wins when the user moved it, and the
last value is remembered for the session so switching pages keeps the context.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from compute.store import default_db

_LAST = "_last_params"  # session_state key: param -> the value last shown

T = TypeVar("T")


def db_path(argv: Sequence[str] | None = None) -> Path:
    """The store to read: ``--db PATH`` after ``--`` on the streamlit command line, else the default store
    of every verb ($CLIP_LAB_DB, else data/results.duckdb). Never a query param: a URL must not choose which
    file the server opens."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--db")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return Path(known.db).expanduser().resolve() if known.db else default_db()


def _remembered() -> dict[str, Any]:
    return st.session_state.setdefault(_LAST, {})


def param_select(
    label: str,
    options: Sequence[T],
    param: str,
    *,
    default: T | None = None,
    format_func: Callable[[T], str] = str,
    container: Any = None,
    help: str | None = None,
) -> T:
    """A select box bound to the query param ``param``; returns the chosen option.

    The URL holds ``str(option)``; an unknown value in the URL falls back to the value last shown, then
    to ``default`` (or the first option). Options must be non-empty.
    """
    if not options:
        raise ValueError(f"no options for {param!r}")
    by_text = {str(o): o for o in options}
    fallback = default if default in options else options[0]
    last = _remembered()
    key = f"param:{param}"
    url = st.query_params.get(param)
    if url is not None and url != last.get(param) and url in by_text:
        chosen = by_text[url]  # the URL changed from outside: follow it
    elif st.session_state.get(key) in options:
        chosen = st.session_state[key]  # the widget, as the user left it
    elif url in by_text:
        chosen = by_text[url]
    else:
        remembered = last.get(param)
        chosen = by_text.get(remembered, fallback) if remembered is not None else fallback
    st.session_state[key] = chosen  # set before the widget is created: it starts there, no default passed
    box = container if container is not None else st
    value = box.selectbox(label, list(options), key=key, format_func=format_func, help=help)
    set_param(param, value)
    return value


def get_param(param: str, default: str = "") -> str:
    """A param's value as text: the URL's, else the value last shown in this session (a page reached from
    the sidebar keeps the image or ablation chosen on another), else ``default``. Unchecked: callers
    validate it against what they allow."""
    url = st.query_params.get(param)
    if url is not None:
        return url
    return str(_remembered().get(param, default))


def set_param(param: str, value: Any) -> None:
    """Write ``param`` to the URL and remember it. Defaults are written too: a shared URL must not change
    meaning when the defaults do (a newer run, another sweep)."""
    text = str(value)
    _remembered()[param] = text
    if st.query_params.get(param) != text:
        st.query_params[param] = text


def reset_param(param: str, value: Any) -> None:
    """Move a bound widget to ``value`` before it is drawn (e.g. page 1 when the filters change); the URL
    follows, so ``param_select`` does not take the old URL value for a link followed from outside."""
    st.session_state[f"param:{param}"] = value
    set_param(param, value)
