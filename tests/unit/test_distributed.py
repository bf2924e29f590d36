"""The plain parts of ``run --ray``, without Ray: a result batch becomes exactly what a single-process run
commits (a batch Ray delivers twice is written once), decode tasks make a decode worker's pixels, and the
Ray options are checked."""

from __future__ import annotations

import numpy as np
import pytest

from compute.dataset import ImageRecord
from compute.distributed import check_address, to_result
from compute.errors import InputError
from compute.pixels import load, recipe
from compute.ray_decode import decode
from compute.ray_workers import input_rows
from compute.validation import check_gpus


def columns(ids: list[int], errors: list[str], a: int = 3, p: int = 2, e: int = 4) -> dict[str, np.ndarray]:
    """A result batch as the actor returns it, each value telling its image, ablation and prompt apart."""
    n = len(ids)
    base = np.array(ids, np.float32)[:, None] * 100 + np.arange(a, dtype=np.float32)[None, :]  # (n, A)
    logits = base[..., None] + np.arange(p, dtype=np.float32) / 10  # (n, A, P)
    return {"image_id": np.array(ids, np.int64), "error": np.array(errors, dtype=object), "logits": logits,
            "probs": logits / 1000, "prompt_id": np.ones((n, a), np.int16), "correct": np.ones((n, a), bool),
            "confidence": base, "margin": base + 1, "score_baseline": base + 2,
            "embeddings": np.repeat(base[..., None], e, axis=2).astype(np.float16)}


def test_a_result_batch_keeps_new_rows_and_records_errors():
    written: set[int] = set()
    result = to_result(columns([1, 2, 3], ["", "", "cannot decode 3.jpg"]), [0, 1, 2], written)
    assert result.image_ids.tolist() == [1, 2] and result.ablation_ids.tolist() == [0, 1, 2]
    assert result.errors == [(3, "load", "cannot decode 3.jpg")] and result.attempted == [1, 2, 3]
    assert result.selection.logits.shape == (2, 3, 2) and result.embeddings.shape == (2, 3, 4)
    assert result.selection.logits[1, 0, 1] == np.float32(200.1)
    assert written == {1, 2, 3}

    # Ray retried a batch: its rows come again, alone or beside new ones; only the new ones are written.
    assert to_result(columns([1, 2, 3], ["", "", "x"]), [0, 1, 2], written) is None
    again = to_result(columns([3, 4], ["x", ""]), [0, 1, 2], written)
    assert again.image_ids.tolist() == [4] and again.errors == [] and again.attempted == [4]


def test_a_result_batch_of_the_pending_ablations_is_written_under_their_ids():
    # The actor scored ablation 1 alone (compute.scoring.score_batch with the sweep's keep): one column.
    result = to_result(columns([5, 6], ["", ""], a=1), [1], set())
    assert result.ablation_ids.tolist() == [1]
    assert result.selection.logits[:, 0, 0].tolist() == [500.0, 600.0]
    assert result.selection.score_baseline.tolist() == [[502.0], [602.0]]
    assert result.embeddings.shape == (2, 1, 4)


def test_a_batch_none_of_whose_images_decoded_records_its_errors():
    result = to_result(columns([7], ["file not found: 7.jpg"]), [0, 1, 2], set())
    assert result.selection is None and result.embeddings is None and len(result.image_ids) == 0
    assert result.errors == [(7, "load", "file not found: 7.jpg")] and result.attempted == [7]


def test_a_decode_task_makes_a_decode_workers_pixels(tmp_path):
    from transformers import CLIPImageProcessorPil

    from tools.synthetic import make_coco

    coco = make_coco(tmp_path / "coco", n=4, broken=(2,), size=(61, 47), photo=True)
    records = [ImageRecord(i, f"{i:012d}.jpg", coco / "images" / f"{i:012d}.jpg", ("cat",), coco / "images")
               for i in range(1, 5)]
    records.append(ImageRecord(9, "../outside.jpg", coco / "images" / "../outside.jpg", (), coco / "images"))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    full = recipe(processor, ship_uint8=True)
    lean = full.without_processor()
    assert lean.processor is None and lean.ship_uint8  # a decode task needs neither it nor transformers
    rows = input_rows(records, ["cat", "dog"])
    batch = {k: np.array([r[k] for r in rows]) if k != "path" else np.array([r[k] for r in rows], dtype=object)
             for k in rows[0]}
    out = decode(batch, lean)
    assert out["truth"].tolist() == [[True, False]] * 4 + [[False, False]]
    for k, record in enumerate(records):
        if record.image_id in (2, 9):
            assert out["error"][k] and not out["pixels"][k].any()
        else:
            assert out["error"][k] == "" and np.array_equal(out["pixels"][k], load(full, record))


def test_a_decode_task_imports_neither_torch_nor_the_model_code():
    """Ray imports a task's module in each worker that runs it: the decode task's starts without torch."""
    import subprocess
    import sys

    from helpers import ROOT

    probe = ("import sys; import compute.ray_decode; "
             "print(sorted(m for m in ('torch', 'transformers', 'compute.ray_workers', 'compute.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("text", ["local", "auto", "ray://head:10001", "ray://head", "10.0.0.7:6379", "[::1]:6379",
                                  "ray://[fe80::1]:10001", "node-3.cluster.example"])
def test_ray_addresses(text):
    assert check_address(text) == text


@pytest.mark.parametrize("text", ["", "ray://", "head:", "http://head:8265", "a b", "ray://head:10001/x"])
def test_not_ray_addresses(text):
    with pytest.raises(InputError, match="is not a Ray address"):
        check_address(text)


@pytest.mark.parametrize(("value", "ok"), [(0, True), (0.25, True), (1, True), (4.0, True), (64, True), (-1, False),
                                           (1.5, False), (65, False), (float("nan"), False), (float("inf"), False)])
def test_gpus_per_actor(value, ok):
    if ok:
        assert check_gpus(value, "--ray-gpus-per-actor") == value
    else:
        with pytest.raises(InputError, match="--ray-gpus-per-actor"):
            check_gpus(value, "--ray-gpus-per-actor")
