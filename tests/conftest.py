"""Fixtures every tier shares: a tiny random CLIP saved to disk, tiny COCO-format datasets, experiment
files, the command line as a real process, read-only SQL on a store, and the dashboard's test store.

Tiers (``make test`` runs them all; ``make test-fast`` only the first):
    unit/         pure functions and tiny in-memory inputs, seconds in all
    integration/  tiny random models built and saved here, real DuckDB files, real processes, AppTest
    regression/   the shipped demo models against stored reference numbers
    browser/      a real Streamlit server driven by a real headless Chromium
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tools.synthetic import make_coco, write_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
DASH_ABLATIONS = 22  # the dashboard store's run "tiny": paper sweep of 12 layers (21) + zero:5-8


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A 12-layer random CLIP (width 32, 32 px, patch 8: 17 tokens) in the save_pretrained layout."""
    from tools.synthetic import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("models") / "tiny-clip", layers=12, width=32, heads=4)


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    """A 6-layer random SiglipModel (width 32, 4 heads, 32 px, patch 8: 16 tokens, no CLS; perturbed so the
    logit bias, biases and norms are far from their initial values) in the save_pretrained layout."""
    from tools.synthetic_siglip import save_random_siglip

    return save_random_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")


@pytest.fixture(scope="session")
def tiny_siglip2(tmp_path_factory) -> Path:
    """A 6-layer random Siglip2Model (NaFlex; native grid 4 x 4 patches of 8 px) with its Siglip2Processor."""
    from tools.synthetic_siglip import save_random_siglip2

    return save_random_siglip2(tmp_path_factory.mktemp("models") / "tiny-siglip2")


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory) -> Path:
    """A CLIPModel shaped as OpenCLIP's published ones: exact GELU, 6 layers of width 48 with 6 heads, 10 tokens."""
    from tools.synthetic import save_openclip_shaped_clip

    return save_openclip_shaped_clip(tmp_path_factory.mktemp("models") / "tiny-openclip")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    """A tiny random BLIP conditional captioner with its processor."""
    from tools.synthetic import save_random_blip

    return save_random_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def tiny_ved(tmp_path_factory) -> Path:
    """A tiny random VisionEncoderDecoderModel (ViT + GPT-2) captioner with its tokenizer."""
    from tools.synthetic import save_random_vision_encoder_decoder

    return save_random_vision_encoder_decoder(tmp_path_factory.mktemp("models") / "tiny-ved")


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    """10 small JPEGs of cats and dogs (see tools.synthetic.make_coco)."""
    return make_coco(tmp_path / "coco")


def sql(db: Path, query: str, params=()) -> list[tuple]:
    """Rows of ``query`` on a read-only connection to ``db``."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(query, params).fetchall()


def flip(db: Path, offset: int) -> None:
    """Change 4 bytes of ``db`` at ``offset`` in place (each XOR 0xA5): a damaged block or header."""
    with open(db, "r+b") as f:
        f.seek(offset)
        data = f.read(4)
        f.seek(offset)
        f.write(bytes(b ^ 0xA5 for b in data))


def data_block(db: Path) -> int:
    """The byte offset of the middle of a block holding selection_t's values."""
    with duckdb.connect(str(db), read_only=True) as con:
        block = con.execute("SELECT max(block_id) FROM pragma_storage_info('selection_t')").fetchone()[0]
        size, total = con.execute("SELECT block_size, total_blocks FROM pragma_database_size()").fetchone()
    headers = db.stat().st_size - total * size  # DuckDB's file headers come before the first block
    return headers + block * size + size // 2


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m compute ARGS`` as a real process, from the repo root, offline."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "compute", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def dash_store(tiny_clip, tiny_blip, tmp_path_factory) -> Path:
    """The dashboard tests' store: 10 tiny COCO images (one unreadable), run "tiny" (the paper sweep plus
    zero:5-8, with BLIP captions) and run "tiny-singles" (the single layers, no captioner)."""
    from compute.config import load_experiment
    from compute.runner import run

    tmp = tmp_path_factory.mktemp("dashboard-store")
    db = tmp / "dash.duckdb"
    coco = make_coco(tmp / "coco", n=10, broken=(4,))
    tiny = write_experiment(tmp / "tiny.toml", tiny_clip, coco, db, name="tiny", extra=("zero:5-8",),
                            captioner=tiny_blip)
    singles = write_experiment(tmp / "singles.toml", tiny_clip, coco, db, name="tiny-singles", sweep="singles")
    for exp in (tiny, singles):
        run(load_experiment(exp), progress=False, echo=lambda _: None)
    return db


SIGLIP_EXTRAS = ("zero:2-3", "mean:4/h1", "knockout:5/patches>patches/h0,h2")


@pytest.fixture(scope="session")
def siglip_store(tiny_siglip, tiny_blip, tmp_path_factory) -> Path:
    """A store made on the tiny SigLIP: run "sig" (the paper and flow sweeps of its 6 layers plus SIGLIP_EXTRAS
    over 8 tiny COCO images, BLIP captions) and run "sig-new", its rescore with other prompts."""
    from compute.config import Prompt, load_experiment
    from compute.rescore import rescore
    from compute.runner import run
    from tools.synthetic import experiment_text

    tmp = tmp_path_factory.mktemp("siglip-store")
    db = tmp / "siglip.duckdb"
    coco = make_coco(tmp / "coco", n=8)
    text = experiment_text(tiny_siglip, coco, db, name="sig", extra=SIGLIP_EXTRAS, captioner=tiny_blip)
    (tmp / "sig.toml").write_text(text.replace('sweep = "paper"', 'sweep = ["paper", "flow"]'))
    run(load_experiment(tmp / "sig.toml"), progress=False, echo=lambda _: None)
    prompts = [Prompt("a photo of the dog", "dog"), Prompt("a small cat", "cat")]
    rescore(db, "sig", prompts, "sig-new", progress=False, echo=lambda _: None)
    return db


HEADS_EXTRAS = ("mean:2/h1", "knockout:3-4/patches>cls/h1", "zero:6/h0,h3")


@pytest.fixture(scope="session")
def heads_store(tiny_clip, tmp_path_factory) -> Path:
    """The Heads and Flow pages' store: run "tiny-heads", the heads and flow sweeps of the tiny CLIP (12
    layers x 4 heads) plus HEADS_EXTRAS over 8 tiny COCO images."""
    from compute.config import load_experiment
    from compute.runner import run
    from tools.synthetic import experiment_text

    tmp = tmp_path_factory.mktemp("heads-store")
    db = tmp / "heads.duckdb"
    coco = make_coco(tmp / "coco", n=8)
    text = experiment_text(tiny_clip, coco, db, name="tiny-heads", extra=HEADS_EXTRAS)
    (tmp / "heads.toml").write_text(text.replace('sweep = "paper"', 'sweep = ["heads", "flow"]'))
    run(load_experiment(tmp / "heads.toml"), progress=False, echo=lambda _: None)
    return db
