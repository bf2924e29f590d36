"""Every piece of the app's state, in one place: the store path, the URL query params and the widgets bound
to them, what the session remembers, and what lives for one script run only.

- The store comes from the command line or the environment (``db_path``), never from a URL.
- Every choice that defines a view (run, ablation, filters, image, page of the grid, prompts) is a query
  param, so a copied URL reopens the same view. Widgets are bound to a param (``param_select``,
  ``param_multiselect``, ``param_text``): the URL wins when it changed from outside (a pasted or followed
  link), the widget wins when the user moved it, and the last value is remembered for the session, so
  switching pages keeps the context. A bound widget's key is ``widget_key(param)``.
- ``changed`` remembers other values for the session (e.g. the Failures filters, to go back to page 1).
- A script run (``script_run``) holds the run context every page draws from (``dashboard.context``) and
  the reading state of ``dashboard.reading``. It is thread-local: Streamlit runs each session's script on
  its own thread, and a connection must never outlive the run that opened it.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from analysis.text import md
from compute.store import default_db

_LAST = "_last_params"  # session_state key: param -> the value last shown
_MEMORY = "_remembered"  # session_state key: name -> a value ``changed`` keeps
_DEFAULTED = "_defaulted"  # session_state key: the params whose value is a page's default, chosen by nobody

T = TypeVar("T")


def db_path(argv: Sequence[str] | None = None) -> Path:
    """The store to read: ``--db PATH`` after ``--`` on the streamlit command line, else the default store
    of every verb ($CLIP_LAB_DB, else data/results.duckdb). Never a query param: a URL must not choose which
    file the server opens."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--db")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return Path(known.db).expanduser().resolve() if known.db else default_db()


# --------------------------------------------------------------------------------------------------
# One script run.


@dataclass
class ScriptRun:
    """What lives for one run of the script, not the session."""

    db: Path
    context: Any = None  # the run the page shows (dashboard.context.Context), set by context.sidebar
    reader: Any = None  # dashboard.reading's connection, shared by this run's cache misses
    snapshot: tuple | None = None  # the store's change token this run reads (dashboard.reading)
    chart_rows: int = 0  # rows of chart columns drawn so far (their keys)
    notices: Any = None  # the container above the page that ``notice`` writes to (set by app.py)


_thread = threading.local()


@contextmanager
def script_run(db: Path) -> Iterator[ScriptRun]:
    """The scope of one script run reading ``db``."""
    run = _thread.run = ScriptRun(db)
    try:
        yield run
    finally:
        _thread.run = None


def this_run() -> ScriptRun | None:
    """The script run on this thread, or None outside one (a fragment's rerun, a button's callback)."""
    return getattr(_thread, "run", None)


# --------------------------------------------------------------------------------------------------
# Query params and the widgets bound to them.


def widget_key(param: str) -> str:
    """The key of the widget bound to ``param`` (AppTest finds widgets by it)."""
    return f"param:{param}"


def _remembered() -> dict[str, Any]:
    return st.session_state.setdefault(_LAST, {})


def notice(text: str) -> None:
    """One line above the page (Markdown: escape data with analysis.text.md): what the URL asked for that is
    not there, and what is shown instead. Nothing outside a script run of app.py."""
    run = this_run()
    if run is not None and run.notices is not None:
        run.notices.warning(text)


def _defaulted() -> set[str]:
    return st.session_state.setdefault(_DEFAULTED, set())


def _user_chose(param: str) -> None:
    _defaulted().discard(param)


def _bound(param: str, decode: Callable[[str], T | None], valid: Callable[[Any], bool], fallback: T,
           missing: Callable[[str, T], str] | None = None, own_default: bool = False) -> T:
    """The value a widget bound to ``param`` starts from, set as its state before it is drawn: the URL's
    when it changed from outside, else the widget's as the user left it, else the URL's, else the value last
    shown, else ``fallback``. ``decode`` reads URL text (None: not a value), ``valid`` checks widget state.
    A URL value from outside that is not a value is said (``notice``), in ``missing(asked, shown)``'s words.
    ``own_default``: a value that is only another page's default (nobody chose it: not a link, not the user)
    gives way to ``fallback``, which is then kept as if chosen (a running run's next batch must not move it)."""
    last = _remembered()
    key = widget_key(param)
    url = st.query_params.get(param)
    from_url = decode(url) if url is not None else None
    outside = url is not None and url != last.get(param)
    defaulted = _defaulted()
    if from_url is not None and outside:
        chosen = from_url  # the URL changed from outside (a link, a pasted address): follow it
        defaulted.discard(param)
    elif own_default and param in defaulted:
        chosen = fallback  # this page's default, then kept: it must not move under the user as data lands
        defaulted.discard(param)
    elif key in st.session_state and valid(st.session_state[key]):
        chosen = st.session_state[key]  # the widget, as the user left it
    elif from_url is not None:
        chosen = from_url
    else:
        remembered = last.get(param)
        decoded = decode(remembered) if remembered is not None else None
        chosen = decoded if decoded is not None else fallback
        if decoded is None:
            defaulted.add(param)
    if outside and from_url is None and missing is not None:
        notice(missing(url, chosen))
    st.session_state[key] = chosen  # the widget starts there; no default is passed to it
    return chosen


def _missing(noun: str, scope: str, shown: Callable[[Any], str]) -> Callable[[str, Any], str]:
    return lambda asked, chosen: (f"No {md(noun)} “{md(asked)}” {md(scope)} (from the URL): showing "
                                  f"{md(noun)} {md(shown(chosen))} instead.")


def param_select(
    label: str,
    options: Sequence[T],
    param: str,
    *,
    default: T | None = None,
    format_func: Callable[[T], str] = str,
    container: Any = None,
    help: str | None = None,
    noun: str | None = None,
    scope: str = "here",
    own_default: bool = False,
) -> T:
    """A select box bound to the query param ``param``; returns the chosen option.

    The URL holds ``str(option)``; an unknown value in the URL falls back to the value last shown, then
    to ``default`` (or the first option), and a line above the page says so: "No {noun} “nope” {scope}:
    showing {noun} {format_func(shown)} instead" (``noun``: the label in lower case unless given; ``scope``
    where the options come from, e.g. "in run tiny"). ``own_default``: this page's ``default`` wins over a
    value that was only another page's default (see ``_bound``). Options must be non-empty.
    """
    if not options:
        raise ValueError(f"no options for {param!r}")
    by_text = {str(o): o for o in options}
    _bound(param, by_text.get, lambda v: v in options, default if default in options else options[0],
           _missing(noun or label.lower(), scope, format_func), own_default)
    box = container if container is not None else st
    value = box.selectbox(label, list(options), key=widget_key(param), format_func=format_func, help=help,
                          on_change=_user_chose, args=(param,))
    set_param(param, value)
    return value


def param_multiselect(
    label: str,
    options: Sequence[str],
    param: str,
    *,
    sep: str,
    default: Sequence[str] = (),
    container: Any = None,
    help: str | None = None,
    noun: str | None = None,
    scope: str = "here",
) -> list[str]:
    """A multiselect of texts bound to ``param``, in the order chosen; the URL holds them joined by ``sep``
    (a character no option holds). Unknown entries in the URL are dropped, and said as in ``param_select``;
    none left falls back as there, then to ``default``."""

    def decode(text: str) -> list[str] | None:
        return [o for o in text.split(sep) if o in options] or None

    url = st.query_params.get(param)
    if url is not None and url != _remembered().get(param):
        unknown = [o for o in url.split(sep) if o and o not in options]
        if unknown and decode(url) is not None:  # some kept: say which were left out
            notice(f"No {md(noun or label.lower())} {', '.join(f'“{md(o)}”' for o in unknown)} {md(scope)} "
                   "(from the URL): left out.")
    _bound(param, decode, lambda v: isinstance(v, list) and all(o in options for o in v),
           [o for o in default if o in options],
           lambda asked, chosen: f"None of “{md(asked)}” is a {md(noun or label.lower())} {md(scope)} (from the URL): "
           f"showing {md(', '.join(chosen) or 'none')} instead.")
    box = container if container is not None else st
    value = box.multiselect(label, list(options), key=widget_key(param), help=help, on_change=_user_chose,
                            args=(param,))
    set_param(param, sep.join(value))
    return value


def param_text(label: str, param: str, *, default: str = "", container: Any = None, **kwargs: Any) -> str:
    """A text area bound to ``param`` (``kwargs`` go to ``st.text_area``: height, help)."""
    _bound(param, lambda text: text, lambda v: isinstance(v, str), default)
    box = container if container is not None else st
    value = box.text_area(label, key=widget_key(param), on_change=_user_chose, args=(param,), **kwargs)
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


def url_param(param: str, default: str = "") -> str:
    """A param as the URL has it now, nothing remembered (what a followed link carries). Unchecked."""
    return st.query_params.get(param, default)


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
    st.session_state[widget_key(param)] = value
    set_param(param, value)
    _user_chose(param)


# --------------------------------------------------------------------------------------------------
# Other values the session remembers.


def changed(name: str, value: Any) -> bool:
    """Remember ``value`` under ``name`` for the session; True when it differs from the value remembered
    before (False the first time)."""
    memory = st.session_state.setdefault(_MEMORY, {})
    before = memory.get(name, value)
    memory[name] = value
    return before != value
