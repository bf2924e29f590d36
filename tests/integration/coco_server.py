"""A small COCO-shaped tree (a real zip, real JPEGs) and a local HTTP server for it, for fetch tests.

The tree mirrors images.cocodataset.org::

    ROOT/annotations/annotations_trainval2017.zip   instances + captions of val2017, plus decoys
    ROOT/val2017/000000000101.jpg ...

The server can misbehave on purpose: truncate chosen files, or cut every image response once a
number of images went through whole (a connection dying mid-run), and it counts what it served.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

ARCHIVE = "annotations/annotations_trainval2017.zip"
DECOYS = ("annotations/person_keypoints_val2017.json", "annotations/instances_train2017.json")
CATEGORIES = [
    {"id": 16, "name": "bird", "supercategory": "animal"},
    {"id": 17, "name": "cat", "supercategory": "animal"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
]
# image id -> (category names, captions). Ids are not in file order, to test sorting by id.
IMAGES: dict[int, tuple[list[str], list[str]]] = {
    101: (["cat"], ["A black cat sleeping in a bathroom sink.", "A cat in a sink."]),
    102: (["cat"], ["a BLACK   CAT on a sofa"]),
    103: (["cat"], ["A black catalog next to a cat."]),  # not the phrase "black cat"
    104: (["cat", "dog"], ["A white cat and a brown dog."]),
    105: (["cat"], ["Two black cats on a bed."]),  # "black cats" is not the whole phrase "black cat"
    106: (["dog"], ["A dog looks at a black cat."]),
    107: (["dog"], ["A dog running on the beach."]),
    108: (["dog"], ["A puppy with a ball."]),
    109: (["dog", "bird"], ["A dog chasing a bird."]),
    110: (["bird"], ["A bird on a branch."]),
    111: (["bird"], ["Birds flying over water."]),
    112: (["bird"], ["A seagull on a rock."]),
}


def file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def ids_with(category: str) -> set[int]:
    return {image_id for image_id, (names, _) in IMAGES.items() if category in names}


@dataclass
class CocoTree:
    root: Path
    jpegs: dict[str, bytes]  # "val2017/000000000101.jpg" -> bytes served
    archive_bytes: bytes
    instances: dict[str, Any]
    captions: dict[str, Any]


def build_coco_tree(root: Path) -> CocoTree:
    """Write the tree under ``root``: small noisy JPEGs (sizes vary) and the annotations zip."""
    images, annotations, captions, jpegs = [], [], [], {}
    category_ids = {category["name"]: category["id"] for category in CATEGORIES}
    (root / "val2017").mkdir(parents=True)
    for index, (image_id, (names, texts)) in enumerate(sorted(IMAGES.items(), reverse=True)):
        width, height = 40 + 4 * index, 30 + 2 * index
        data = _jpeg(width, height, seed=image_id)
        rel = f"val2017/{file_name(image_id)}"
        (root / rel).write_bytes(data)
        jpegs[rel] = data
        images.append(
            {
                "id": image_id,
                "file_name": file_name(image_id),
                "width": width,
                "height": height,
                "coco_url": f"http://images.cocodataset.org/{rel}",
            }
        )
        for name in names:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[name],
                    "bbox": [1.0, 1.0, 10.0, 8.0],
                    "area": 80.0,
                    "iscrowd": 0,
                    "segmentation": [[1.0, 1.0, 11.0, 1.0, 11.0, 9.0, 1.0, 9.0]],
                }
            )
        for text in texts:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
    info = {"description": "COCO-shaped test tree", "year": 2017}
    instances = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    caption_doc = {"info": info, "licenses": [], "images": images, "annotations": captions}

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations/instances_val2017.json", json.dumps(instances))
        zf.writestr("annotations/captions_val2017.json", json.dumps(caption_doc))
        for decoy in DECOYS:
            zf.writestr(decoy, json.dumps({"decoy": "x" * 5000}))
    archive_bytes = buffer.getvalue()
    (root / ARCHIVE).parent.mkdir(parents=True)
    (root / ARCHIVE).write_bytes(archive_bytes)
    return CocoTree(root, jpegs, archive_bytes, instances, caption_doc)


def _jpeg(width: int, height: int, seed: int) -> bytes:
    # Noise makes the JPEG large enough (a few KB) that cutting it in half is a real truncation.
    noise = Image.effect_noise((width, height), 60 + seed % 40).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # 8 workers connecting at once must not wait on SYN retries


@dataclass
class ServerLog:
    """What the server served; ``served`` holds (path, range start, bytes sent, whole?) per request."""

    requests: Counter[str] = field(default_factory=Counter)
    served: list[tuple[str, int, int, bool]] = field(default_factory=list)

    def bytes_sent(self, path: str) -> int:
        return sum(sent for p, _, sent, _ in self.served if p == path)


class CocoServer:
    """Serve ``root`` on 127.0.0.1 (a free port) from a thread; use as a context manager.

    Knobs, changeable while it runs: ``truncate`` (paths sent half then cut), ``images_before_drop``
    (after that many whole image responses, every image response is cut), ``ranges`` (honour Range).
    """

    def __init__(self, root: Path):
        self.root = root
        self.truncate: set[str] = set()
        self.images_before_drop: int | None = None
        self.ranges = True
        self.log = ServerLog()
        self._lock = threading.Lock()
        self._whole_images = 0
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        # A short poll interval: shutdown() waits up to one interval, in every test's teardown.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> CocoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _decide_cut(self, path: str) -> bool:
        """Whether to cut this response short; counts whole image responses under the lock."""
        with self._lock:
            if path in self.truncate:
                return True
            if path.endswith(".jpg") and self.images_before_drop is not None:
                if self._whole_images >= self.images_before_drop:
                    return True
                self._whole_images += 1
            return False


def _handler_for(server: CocoServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            path = self.path.split("?", 1)[0].lstrip("/")
            with server._lock:
                server.log.requests[path] += 1
            target = (server.root / path).resolve()
            if not target.is_file() or server.root.resolve() not in target.parents:
                self.send_error(404)
                return
            data = target.read_bytes()
            start = 0
            range_header = self.headers.get("Range")
            if (
                server.ranges
                and range_header
                and range_header.startswith("bytes=")
                and range_header.endswith("-")
            ):
                start = int(range_header[len("bytes=") : -1])
                if start >= len(data):
                    self.send_error(416)
                    return
            body = data[start:]
            cut = server._decide_cut(path)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "image/jpeg" if path.endswith(".jpg") else "application/zip")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = len(body) // 2 if cut else len(body)
            self.wfile.write(body[:sent])
            self.wfile.flush()
            self.close_connection = True  # a cut response ends with the connection, like a dying link
            with server._lock:
                server.log.served.append((path, start, sent, not cut))

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler
