"""The CPU task of ``run --ray`` (compute.distributed): a batch of image files -> the model's pixels.

A module of its own, apart from the actor (compute.ray_workers): Ray imports a task's module in every worker
that runs it, and this one imports neither torch nor the model code, so a decode worker is ready in a tenth
of the time (0.1 s of imports against 1.1 s). It is a decode worker's ``compute.pixels.load`` with the
recipe the driver checked, on Ray Data's numpy batches: {column: array}, one row per image
(``compute.ray_workers.input_rows``). An image that cannot be used keeps its row with its message in
``error`` and zero pixels, for the driver to record in the errors view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compute.dataset import ImageLoadError, ImageRecord
from compute.pixels import Recipe, load


def decode(batch: dict[str, np.ndarray], recipe: Recipe) -> dict[str, np.ndarray]:
    """A CPU task: the batch's files -> ``pixels`` (n, 3, h, w) in the recipe's ship dtype (uint8 crops, or
    float32 values when the recipe runs the processor whole) and ``error`` ("" when the image decoded)."""
    h, w = recipe.size
    n = len(batch["image_id"])
    pixels = np.zeros((n, 3, h, w), recipe.ship_dtype)
    errors = np.full(n, "", dtype=object)
    for k in range(n):
        root = str(batch["root"][k])
        record = ImageRecord(int(batch["image_id"][k]), str(batch["file_name"][k]), Path(str(batch["path"][k])), (),
                             Path(root) if root else None)
        try:
            pixels[k] = load(recipe, record)
        except ImageLoadError as e:
            errors[k] = str(e)
    return {"image_id": batch["image_id"], "truth": batch["truth"], "pixels": pixels, "error": errors}
