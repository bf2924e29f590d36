"""Where an exported file came from, written into the file wherever its format has room for it.

A ``Provenance`` names the run, its model (hub id or folder) and the model's revision where known, the
experiment's hash (the resumption identity the store keeps beside the run), the store's file name, the
tool's version (pyproject's version and the git commit of this checkout, ``+dirty`` with uncommitted
changes) and the export's date (UTC; ``SOURCE_DATE_EPOCH`` fixes it, for byte-identical exports).

``stamp`` puts it into a file by its extension:

- PDF: the document information dictionary (Title, Subject, Keywords, Creator, CreationDate and one key per
  field), appended as an incremental update, so the drawing is untouched;
- SVG: a ``<metadata>`` element (Dublin Core) and a comment, right after the opening tag;
- PNG: iTXt text chunks (Title, Description, Software, Source, Creation Time, Comment);
- LaTeX: ``%`` comment lines (analysis.latex writes them with the table); Markdown: an HTML comment;
- Parquet: the schema's key-value metadata (``clip_lab_provenance``, JSON);
- CSV: nothing. A comment line would break CSV readers, so a CSV's provenance is in the pack's README,
  which lists every file of the pack with its SHA-256 and this record.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import os
import re
import struct
import subprocess
import tomllib
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

ROOT = Path(__file__).resolve().parents[1]
TOOL = "CLIP Attention Lab"


@functools.cache
def tool_version() -> str:
    """"CLIP Attention Lab 0.1.0 (git 1a2b3c4d5e6f)": pyproject's version and this checkout's commit."""
    try:
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        version = "unknown version"
    commit = ""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            commit = f" (git {head.stdout.strip()}{'+dirty' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{TOOL} {version}{commit}"


def export_time() -> dt.datetime:
    """Now (UTC, whole seconds), or SOURCE_DATE_EPOCH when it is set (reproducible exports)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        return dt.datetime.fromtimestamp(int(epoch), dt.UTC)
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def model_revision(model: str, config: dict) -> str:
    """The model's revision as far as it is known: the run's record, a Hugging Face cache snapshot folder,
    else what the model name is (a local folder, or a hub id whose revision the run did not record)."""
    recorded = (config.get("model") or {}).get("revision") or (config.get("vision") or {}).get("revision")
    if recorded:
        return str(recorded)
    snapshot = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", model)
    if snapshot:
        return snapshot.group(1)
    if model.startswith(("/", ".", "~")) or Path(model).expanduser().exists():
        return "a local folder (no hub revision)"
    return "not recorded by the run (the hub's default branch when it ran)"


@dataclass(frozen=True)
class Provenance:
    run: str
    model: str
    revision: str
    experiment_hash: str
    run_created: str
    run_status: str
    store: str
    tool: str
    exported: str
    parent_run: str = ""  # a rescore's source run

    @classmethod
    def of_run(cls, row: dict, store: Path | str) -> Provenance:
        """From a run's row (analysis.queries.run_provenance) and its store's path (only its name is kept)."""
        config = row.get("config") or {}
        if isinstance(config, str):
            config = json.loads(config)
        return cls(run=str(row["run"]), model=str(row["model"]), revision=model_revision(str(row["model"]), config),
                   experiment_hash=str(row.get("config_hash") or ""), run_created=str(row.get("created_at") or ""),
                   run_status=str(row.get("status") or ""), store=Path(store).name, tool=tool_version(),
                   exported=export_time().isoformat().replace("+00:00", "Z"),
                   parent_run=str(row.get("parent_run") or ""))

    def fields(self) -> list[tuple[str, str]]:
        """(name, value) in reading order, empty values left out."""
        names = {"run": "Run", "parent_run": "Rescored from", "model": "Model", "revision": "Model revision",
                 "experiment_hash": "Experiment hash", "run_created": "Run created", "run_status": "Run status",
                 "store": "Store", "tool": "Made by", "exported": "Exported"}
        values = asdict(self)
        return [(label, values[key]) for key, label in names.items() if values[key]]

    def lines(self) -> list[str]:
        return [f"{name}: {value}" for name, value in self.fields()]


# --------------------------------------------------------------------------------------------------
# Into the files.


def stamp(name: str, content: bytes | str, prov: Provenance, what: str) -> bytes | str:
    """``content`` of the file ``name`` with ``prov`` written into it where its format allows (see the module
    docstring); ``what``: one line saying what the file shows."""
    ext = name.rsplit(".", 1)[-1].lower()
    if ext == "svg":
        return svg(content if isinstance(content, str) else content.decode(), prov, what)
    if ext == "png":
        return png(_bytes(content), prov, what)
    if ext == "pdf":
        return pdf(_bytes(content), prov, what)
    if ext == "md":
        return markdown(content if isinstance(content, str) else content.decode(), prov, what)
    if ext == "parquet":
        return parquet(_bytes(content), prov, what)
    return content  # csv: see the README; tex: analysis.latex writes the comment with the table


def _bytes(content: bytes | str) -> bytes:
    return content.encode() if isinstance(content, str) else content


def svg(text: str, prov: Provenance, what: str) -> str:
    """A Dublin Core ``<metadata>`` block and a comment after the opening ``<svg>`` tag."""
    end = text.index(">", text.index("<svg")) + 1
    comment = "<!-- " + xml_escape(f"{what}. " + "; ".join(prov.lines())).replace("--", "- -") + " -->"
    meta = (
        '<metadata><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/"><rdf:Description>'
        f"<dc:title>{xml_escape(what)}</dc:title>"
        f"<dc:source>{xml_escape(f'run {prov.run} of store {prov.store}')}</dc:source>"
        f"<dc:creator>{xml_escape(prov.tool)}</dc:creator>"
        f"<dc:date>{xml_escape(prov.exported)}</dc:date>"
        f"<dc:description>{xml_escape('; '.join(prov.lines()))}</dc:description>"
        "</rdf:Description></rdf:RDF></metadata>"
    )
    return text[:end] + comment + meta + text[end:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(data: bytes, prov: Provenance, what: str) -> bytes:
    """iTXt chunks (UTF-8, uncompressed) right after IHDR."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    ihdr_end = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    texts = {"Title": what, "Description": "; ".join(prov.lines()), "Software": prov.tool,
             "Source": f"run {prov.run} of store {prov.store}", "Creation Time": prov.exported,
             "Comment": json.dumps(asdict(prov))}
    chunks = b"".join(_png_chunk(b"iTXt", k.encode("latin-1") + b"\x00\x00\x00\x00\x00" + v.encode())
                      for k, v in texts.items())
    return data[:ihdr_end] + chunks + data[ihdr_end:]


def _pdf_text(value: str) -> bytes:
    """A PDF text string: UTF-16BE with its byte-order mark, as hex (any character, no escaping)."""
    return b"<FEFF" + value.encode("utf-16-be").hex().upper().encode() + b">"


def pdf(data: bytes, prov: Provenance, what: str) -> bytes:
    """A new document information dictionary, appended as an incremental update (PDF 1.7, 7.5.6): one new
    object, a cross-reference section for it and a trailer pointing back at the previous one."""
    tail = data[-2048:]
    startxref = int(re.findall(rb"startxref\s+(\d+)", tail)[-1])
    trailer = re.findall(rb"trailer\s*<<(.*?)>>\s*startxref", data, re.S)[-1]
    size = int(re.search(rb"/Size\s+(\d+)", trailer).group(1))
    root = re.search(rb"/Root\s+(\d+\s+\d+\s+R)", trailer).group(1)
    when = dt.datetime.fromisoformat(prov.exported.replace("Z", "+00:00")).strftime("D:%Y%m%d%H%M%SZ")
    info = {"Title": what, "Subject": f"run {prov.run} of store {prov.store}", "Creator": prov.tool,
            "Producer": "vl-convert (svg2pdf)", "Keywords": "; ".join(prov.lines())}
    info |= {name.replace(" ", ""): value for name, value in prov.fields()}
    body = b"".join(b"/" + k.encode() + b" " + _pdf_text(v) + b"\n" for k, v in info.items())
    body += b"/CreationDate (" + when.encode() + b")\n"
    out = io.BytesIO()
    out.write(data if data.endswith(b"\n") else data + b"\n")
    offset = out.tell()
    out.write(b"%d 0 obj\n<<\n" % size + body + b">>\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 1\n0000000000 65535 f \n%d 1\n%010d 00000 n \n" % (size, offset))
    out.write(b"trailer\n<< /Size %d /Root %s /Info %d 0 R /Prev %d >>\nstartxref\n%d\n%%%%EOF\n"
              % (size + 1, root, size, startxref, xref))
    return out.getvalue()


def markdown(text: str, prov: Provenance, what: str) -> str:
    """An HTML comment above the Markdown: invisible where it is rendered, there in the source."""
    lines = [f"{what}."] + prov.lines()
    return "<!--\n" + "\n".join(line.replace("--", "- -") for line in lines) + "\n-->\n\n" + text


def parquet(data: bytes, prov: Provenance, what: str) -> bytes:
    """The Parquet file rewritten with the provenance in its schema's key-value metadata."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    meta = {**(table.schema.metadata or {}),
            b"clip_lab_provenance": json.dumps({"what": what, **asdict(prov)}).encode()}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    return buf.getvalue()
