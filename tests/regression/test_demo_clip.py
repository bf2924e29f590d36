"""The shipped toy CLIP (data/demo/models/clip): small, loads offline in a fresh interpreter, and tells the
demo's shapes apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compute.demo.data import write_coco

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "data" / "demo" / "models" / "clip"

_SHIPPED_CHECK = """
import json, sys
from pathlib import Path
import numpy as np, torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor
from compute.demo.train_clip import predict, shape_prompts
from compute.demo.data import SHAPES
from compute.models import BACKEND

model_dir, shapes = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(2)
model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
processor = CLIPProcessor.from_pretrained(model_dir, **BACKEND)
inst = json.loads((shapes / "annotations" / "instances_val.json").read_text())
names = {c["id"]: c["name"] for c in inst["categories"]}
main = {}
for a in sorted(inst["annotations"], key=lambda a: a["area"]):
    main[a["image_id"]] = names[a["category_id"]]  # largest annotation last: the main object
images = [Image.open(shapes / "val" / i["file_name"]).convert("RGB") for i in inst["images"]]
picks = predict(model, processor, images, shape_prompts())
acc = float(np.mean([SHAPES[k] == main[i["id"]] for k, i in zip(picks, inst["images"])]))
ids = processor.tokenizer("a photo of a red circle")["input_ids"]
print(json.dumps({"acc": acc, "dtype": str(next(model.parameters()).dtype), "ids": ids,
                  "eos": model.config.text_config.eos_token_id}))
"""


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="demo model not trained yet")
def test_shipped_model_loads_offline_and_is_accurate(tmp_path: Path) -> None:
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size <= 10 * 2**20
    shapes = tmp_path / "shapes"
    write_coco(shapes, "val", 100, seed=0)
    # A fresh interpreter, so HF_HUB_OFFLINE=1 is in force from the first transformers import.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _SHIPPED_CHECK, str(SHIPPED), str(shapes)],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dtype"] == "torch.float32"
    # CLIP pools at the end token: it must be appended, and its id must not be the legacy 2.
    assert result["ids"][-1] == result["eos"] != 2
    assert result["acc"] >= 0.95
