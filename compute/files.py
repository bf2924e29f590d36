"""Small file-system helpers the run path, fetch and the demo share."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, doc: Any, **dump_options: Any) -> None:
    """Write ``doc`` as JSON to ``path`` so that a reader (or a crash) never sees half a file: a sibling
    temporary file, then an atomic rename over ``path``. ``dump_options`` go to ``json.dump``."""
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8") as f:
        json.dump(doc, f, **dump_options)
        f.write("\n")
    os.replace(part, path)
