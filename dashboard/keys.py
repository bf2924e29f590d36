"""Keyboard shortcuts for a page's own buttons and links. Streamlit has no key handler: ``listen`` adds, once
per browser tab, a small script (no outside request, no data in it) that turns a key press into a click on the
button or link inside the container ``bound(key)`` made, if the page shows one. Keys typed into a text field, a
select box or with a modifier held are left alone.

A key is a ``KeyboardEvent.key`` name: "ArrowLeft", "ArrowRight", "Escape".
"""

from __future__ import annotations

from typing import Any

import streamlit as st

PREFIX = "shortcut-"  # a bound container's key; Streamlit gives it the class st-key-<key>

SCRIPT = """<script>
(() => {
  if (window.__clipLabKeys) return;  // one listener per tab: Streamlit keeps the document across pages
  window.__clipLabKeys = true;
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    const from = event.target;
    if (from && (from.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(from.tagName))) return;
    if (!/^[A-Za-z]+$/.test(event.key)) return;
    const target = document.querySelector(`.st-key-PREFIX${event.key} :is(button, a)`);
    if (!target || target.disabled) return;
    event.preventDefault();
    target.click();
  });
})();
</script>""".replace("PREFIX", PREFIX)


def listen() -> None:
    """Make the bound containers of this page answer their keys."""
    st.html(SCRIPT, unsafe_allow_javascript=True)


def bound(key: str, container: Any = None) -> Any:
    """A container whose button or link a press of ``key`` clicks (with ``listen`` on the page)."""
    return (container if container is not None else st).container(key=PREFIX + key)
