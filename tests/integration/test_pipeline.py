"""The run's pipeline: decode workers give the image processor's own pixels, a bad image is an error row,
a killed worker ends the run with one line (never a hang), and the store writer commits every batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, cli, sql, start_cli
from PIL import Image

from compute import store
from compute.dataset import ImageRecord, open_image
from compute.loader import Loader
from compute.models import BACKEND
from compute.pixels import recipe
from compute.writer import BatchWriter, WriterFailed
from tools.synthetic import make_coco, write_experiment


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[ImageRecord]:
    """Real files of many shapes and modes, two of them unusable, in the order a run would read them."""
    root = tmp_path_factory.mktemp("jpegs")
    make_coco(root / "photos", n=6, size=(640, 480), photo=True)
    paths = sorted((root / "photos" / "images").glob("*.jpg"))
    odd = root / "odd"
    odd.mkdir()
    rng = np.random.default_rng(1)
    for name, (w, h), mode in [("portrait.jpg", (480, 640), "RGB"), ("grey.jpg", (301, 199), "L"),
                               ("tiny.png", (23, 17), "RGBA"), ("wide.jpg", (1000, 333), "RGB"),
                               ("cmyk.jpg", (250, 260), "CMYK")]:
        channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(odd / name)
        paths.append(odd / name)
    (odd / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    paths.insert(3, odd / "broken.jpg")
    paths.insert(7, odd / "missing.jpg")
    return [ImageRecord(i, p.name, p, ()) for i, p in enumerate(paths, start=1)]


def processors(tiny_clip):
    from transformers import AutoImageProcessor, CLIPImageProcessorPil

    return {
        "openai-clip-224": CLIPImageProcessorPil(),  # openai/clip-vit-base-patch16's settings
        "tiny-model": AutoImageProcessor.from_pretrained(tiny_clip, **BACKEND),  # loaded as a run loads it, 32 px
        # not the shortest-edge + centre-crop kind: the workers use the processor's own crop
        "squash-40": CLIPImageProcessorPil(size={"height": 40, "width": 40}, do_center_crop=False),
    }


@pytest.mark.parametrize("name", ["openai-clip-224", "tiny-model", "squash-40"])
def test_workers_give_exactly_the_image_processors_pixels(tiny_clip, jpegs, name):
    processor = processors(tiny_clip)[name]
    good = [r for r in jpegs if r.file_name not in ("broken.jpg", "missing.jpg")]
    want = processor(images=[open_image(r.path) for r in good], return_tensors="pt")["pixel_values"]
    fast = recipe(processor, ship_uint8=False)
    assert fast.table is not None  # the table of the processor's own rescale + normalise is in use
    assert (fast.direct is not None) == (name != "squash-40")  # and the direct crop where it applies
    # Processes and one thread; pixels made by the workers, or uint8 crops mapped on the device.
    for workers, ship_uint8, batch_size in [(2, False, 4), (2, True, 5), (0, False, 16)]:
        with Loader(processor, "cpu", torch.float32, batch_size, workers, ship_uint8=ship_uint8) as loader:
            batches = list(loader.batches(jpegs))
            if workers:
                assert len(loader.pids) == workers
        got = torch.cat([b.pixel_values for b in batches if b.pixel_values is not None])
        assert got.dtype == torch.float32 and torch.equal(got, want), (workers, ship_uint8)
        assert [r.image_id for b in batches for r in b.records] == [r.image_id for r in good]
        assert [i for b in batches for i in b.attempted] == [r.image_id for r in jpegs]
        errors = [e for b in batches for e in b.errors]
        assert [(e[0], e[1]) for e in errors] == [(4, "load"), (8, "load")]
        assert "cannot decode broken.jpg" in errors[0][2] and "not found" in errors[1][2]


def mode_files(root: Path) -> dict[str, Path]:
    """Files of every image mode whose conversion to RGB is not PIL's plain convert("RGB"), and plain ones."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    h, w = 260, 300  # a shape the processors resize and crop
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    rgb = Image.fromarray(np.clip(np.asarray(coarse, np.int16) + rng.integers(-25, 26, (h, w, 3)), 0, 255)
                          .astype(np.uint8))
    alpha = Image.fromarray(np.linspace(0, 255, w * h).reshape(h, w).astype(np.uint8))  # 0 to opaque
    rgba, la = rgb.copy(), rgb.convert("L")
    rgba.putalpha(alpha)
    la.putalpha(alpha)
    palette = rgb.quantize(32)
    palette.info["transparency"] = int(np.asarray(palette)[h // 2, w // 2])
    alphas = rgb.quantize(32)
    alphas.info["transparency"] = bytes(range(0, 256, 8))  # an alpha per palette entry (PNG tRNS)
    sixteen = np.asarray(rgb.convert("L"), np.uint16) * 257 + rng.integers(0, 257, (h, w)).astype(np.uint16)
    files = {"RGBA": (rgba, "PNG"), "LA": (la, "PNG"), "P with a transparent index": (palette, "PNG"),
             "P with an alpha table": (alphas, "PNG"), "I;16": (Image.fromarray(sixteen), "PNG"),
             "CMYK": (rgb.convert("CMYK"), "JPEG"), "L": (rgb.convert("L"), "PNG"), "RGB": (rgb, "PNG"),
             "1": (rgb.convert("1"), "PNG")}
    out = {}
    for k, (name, (image, fmt)) in enumerate(files.items()):
        path = root / f"{k:02d}.img"  # the decoder goes by content, not by name
        image.save(path, fmt, **({"transparency": image.info["transparency"]} if "transparency" in image.info else {}))
        out[name] = path
    return out


def reference_image(path: Path) -> Image.Image:
    """What the image processor is to be given, built here without compute.dataset: the decoded file, with
    16-bit samples scaled to 8 bits by their high byte (the processor would clip them to white)."""
    image = Image.open(path)
    image.load()
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    return image  # the processor converts it to RGB itself (transparency onto white)


@pytest.mark.parametrize("name", ["openai-clip-224", "tiny-model", "squash-40"])
def test_pixels_of_every_image_mode_are_the_image_processors(tiny_clip, tmp_path, name):
    """Transparent, palette, 16-bit, CMYK, greyscale, bilevel and RGB files: the workers' pixels, made on the
    host or as uint8 crops mapped through the table (the GPU path), equal the processor's own on the decoded
    file (its conversion composites transparency onto white), 16-bit scaled to 8 bits first."""
    processor = processors(tiny_clip)[name]
    files = mode_files(tmp_path / "modes")
    records = [ImageRecord(k, p.name, p, (), tmp_path / "modes") for k, p in enumerate(files.values(), start=1)]
    want = processor(images=[reference_image(p) for p in files.values()], return_tensors="pt")["pixel_values"]
    fast = recipe(processor, ship_uint8=True)
    assert fast.table is not None and (fast.direct is not None) == (name != "squash-40")  # not the fallback
    for workers, ship_uint8 in [(2, False), (2, True), (0, True)]:
        with Loader(processor, "cpu", torch.float32, 4, workers, ship_uint8=ship_uint8) as loader:
            assert loader.recipe.table is not None and loader.recipe.ship_uint8 == ship_uint8
            batches = list(loader.batches(records))
        assert not [e for b in batches for e in b.errors]
        got = torch.cat([b.pixel_values for b in batches])
        for k, mode in enumerate(files):
            assert torch.equal(got[k], want[k]), (mode, workers, ship_uint8)
    # The conversion matters: PIL's convert("RGB") (the old one) differs where the file is transparent, and
    # the processor alone clips a 16-bit file to white.
    with warnings.catch_warnings():  # PIL warns that convert("RGB") drops a palette's alpha table
        warnings.simplefilter("ignore")
        plain = [Image.open(p).convert("RGB") for p in files.values()]
    plain = processor(images=plain, return_tensors="pt")["pixel_values"]
    changed = {mode for k, mode in enumerate(files) if not torch.equal(plain[k], want[k])}
    assert changed == {"RGBA", "LA", "P with an alpha table", "I;16"}, changed
    clipped = processor(images=[Image.open(files["I;16"])], return_tensors="pt")["pixel_values"][0]  # (3, h, w)
    assert torch.all(clipped == clipped[:, :1, :1])  # one value per channel: white
    assert not torch.equal(clipped, want[list(files).index("I;16")])


def test_a_processor_the_recipe_cannot_reproduce_runs_whole(jpegs):
    """A processor that always rescales (its crop is never uint8) cannot use the table: the workers run it
    whole, and the pixels are still its own."""
    from transformers import CLIPImageProcessorPil

    class AlwaysRescales(CLIPImageProcessorPil):
        def __call__(self, images, **kwargs):
            kwargs["do_rescale"] = True
            return super().__call__(images, **kwargs)

    processor = AlwaysRescales()
    assert recipe(processor, ship_uint8=True).table is None
    good = jpegs[:3]
    with Loader(processor, "cpu", torch.float32, 2, 2) as loader:
        got = torch.cat([b.pixel_values for b in loader.batches(good)])
    torch.testing.assert_close(got, processor(images=[open_image(r.path) for r in good],
                                              return_tensors="pt")["pixel_values"], rtol=0, atol=0)


def test_a_processor_alike_reuses_the_checked_recipe_and_any_other_is_checked_anew(jpegs):
    """The recipe is checked once per kind of processor in a process: a second processor of the same class
    and attributes gets it without calling the processor (and carries its own processor); another class, other
    attributes (set at creation or later) or the other shipping get their own check, and their own recipe."""
    from transformers import CLIPImageProcessorPil

    calls = []

    def counted() -> type:  # a class of this test alone, each time: nothing cached for it yet
        class Counted(CLIPImageProcessorPil):
            def __call__(self, images, **kwargs):
                calls.append(len(images))
                return super().__call__(images, **kwargs)
        return Counted

    Counted = counted()
    first = recipe(Counted(), ship_uint8=True)
    assert calls and first.table is not None and first.direct is not None
    del calls[:]
    again = Counted()
    reused = recipe(again, ship_uint8=True)
    assert calls == [] and reused.processor is again
    assert (reused.size, reused.direct, reused.ship_uint8) == (first.size, first.direct, True)
    assert np.array_equal(reused.table, first.table) and not reused.table.flags.writeable
    for other, size in [(Counted(size={"shortest_edge": 200}, crop_size={"height": 200, "width": 200}), (200, 200)),
                        (counted()(), (224, 224))]:  # alike, but of another class
        got = recipe(other, ship_uint8=True)
        assert calls and got.size == size and got.processor is other
        del calls[:]
    assert recipe(Counted(), ship_uint8=False).ship_uint8 is False and calls
    del calls[:]
    again.image_mean = [0.0, 0.0, 0.0]  # an attribute changed after creation: another processor
    changed = recipe(again, ship_uint8=True)
    assert calls and not np.array_equal(changed.table, first.table)
    # and the recipe it found is still the processor's own pixels
    good = [r for r in jpegs if r.file_name not in ("broken.jpg", "missing.jpg")][:3]
    with Loader(again, "cpu", torch.float32, 2, 0) as loader:
        got = torch.cat([b.pixel_values for b in loader.batches(good)])
    torch.testing.assert_close(got, again(images=[open_image(r.path) for r in good], return_tensors="pt")
                               ["pixel_values"], rtol=0, atol=0)


def test_the_one_probe_image_is_the_first_of_the_probes():
    """check_image_embedding's probe (probe_image) is the recipe's first probe, made alone: the same pixels."""
    from compute.pixels import probe_image, probe_images

    for seed in (0, 7):
        one, first = probe_image(seed), probe_images(seed)[0]
        assert (one.mode, one.size) == (first.mode, first.size) == ("RGB", (640, 480))
        assert one.tobytes() == first.tobytes()


def test_every_image_processor_is_the_pil_one_even_where_torchvision_would_be_picked(
        monkeypatch, tiny_clip, tiny_siglip, tiny_siglip2, tiny_blip, tiny_ved):
    """Where torchvision is installed (most GPU machines) transformers picks processors that resize with it,
    and the same image gave other pixels there than here. The loader asks for PIL whatever is installed: the
    choice is watched as transformers makes it, on a machine made to look as if it had torchvision."""
    from transformers.image_processing_backends import PilBackend
    from transformers.models.auto import image_processing_auto as auto

    from compute.models import load_captioner, load_clip

    chosen = []
    resolve = auto._resolve_backend
    monkeypatch.setattr(auto, "is_torchvision_available", lambda: True)
    monkeypatch.setattr(auto, "_resolve_backend", lambda *a, **k: chosen.append(resolve(*a, **k)) or chosen[-1])
    assert auto._resolve_backend(None, None, "CLIPImageProcessor") == "torchvision"  # the default, so made
    chosen.clear()
    processors = [load_clip(str(m), "cpu", "float32").processor.image_processor
                  for m in (tiny_clip, tiny_siglip, tiny_siglip2)]
    processors += [load_captioner(str(m), "cpu", "float32").image_processor for m in (tiny_blip, tiny_ved)]
    assert chosen == ["pil"] * 5
    assert all(isinstance(p, PilBackend) for p in processors)


TORCH_IN_WORKERS = """
import sys
from pathlib import Path
import torch
from transformers import CLIPImageProcessorPil
from compute.dataset import ImageRecord
from compute.loader import Loader

class ComputesWithTorch(CLIPImageProcessorPil):
    def __call__(self, images, **kwargs):
        kwargs["do_rescale"] = True  # neither the direct crop nor the table: the workers call it whole
        out = super().__call__(images, **kwargs)
        out["pixel_values"] = (torch.as_tensor(out["pixel_values"]) * 1.0).numpy()  # torch's threads, used
        return out

paths = sorted(Path(sys.argv[1]).glob("*.jpg"))
records = [ImageRecord(i, p.name, p, ()) for i, p in enumerate(paths)]
torch.rand(4_000_000).mul(2.0)  # this process's intra-op threads, started before the fork
with Loader(ComputesWithTorch(), "cpu", torch.float32, 4, 2) as loader:
    print("decoded", sum(len(b.records) for b in loader.batches(records)))
"""


def test_a_processor_that_computes_with_torch_runs_in_the_forked_workers(tmp_path):
    """transformers' torchvision-backed processors compute with torch. A process forked after its parent
    started torch's OpenMP threads waited forever in its first parallel op (seen on a GPU machine with
    torchvision); a worker now computes on one thread. A process of its own: its parent must have used the
    threads, and a hang must end in a timeout, not a stuck suite."""
    coco = make_coco(tmp_path / "coco", n=8, size=(320, 240), photo=True)
    proc = subprocess.run([sys.executable, "-c", TORCH_IN_WORKERS, str(coco / "images")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["decoded", "8"], proc.stderr[-2000:]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the workers")
def test_a_killed_worker_ends_the_run_with_one_line_then_a_rerun_completes(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=80, size=(320, 240), photo=True)
    db = tmp_path / "w.duckdb"
    exp = write_experiment(tmp_path / "w.toml", tiny_clip, coco, db, batch_size=2, categories=())
    cmd = ["run", str(exp), "--no-progress", "--workers", "2"]
    proc = start_cli(*cmd)  # a real process, forked: its decode workers are its children
    try:
        deadline = time.monotonic() + 120
        while not (db.exists() and sql_count(db) > 0) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # the sweep has committed a batch: the workers are at work
        workers = children(proc.pid)
        assert proc.poll() is None and len(workers) == 2, "the run ended before a worker could be killed"
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)  # a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: decode worker") and "killed by signal 9" in lines[0], err
    assert "resume" in lines[0]
    partial = sql_count(db)
    assert 0 < partial < 80 * 21
    again = cli(*cmd)  # the rerun in this process: only the killed run's process is under test
    assert again.returncode == 0, again.stderr
    assert sql(db, "SELECT COUNT(*), COUNT(DISTINCT (image_id, ablation)) FROM selections") == [(80 * 21, 80 * 21)]
    assert sql(db, "SELECT status FROM runs") == [("complete",)]


def sql_count(db: Path) -> int:
    try:
        return sql(db, "SELECT COUNT(*) FROM selection_t")[0][0]
    except Exception:  # locked by the writer, or not created yet
        return 0


def batch(image_ids: list[int], ablations: int, prompts: int, dim: int, seed: int) -> store.BatchResult:
    rng = np.random.default_rng(seed)
    n = len(image_ids)
    logits = rng.normal(size=(n, ablations, prompts)).astype(np.float32)
    sel = store.Selection(logits, logits, logits.argmax(-1).astype(np.int16), np.ones((n, ablations), bool),
                          np.ones((n, ablations), np.float32), np.zeros((n, ablations), np.float32),
                          np.ones((n, ablations), np.float32))
    emb = rng.normal(size=(n, ablations, dim)).astype(np.float16)
    return store.BatchResult(np.array(image_ids, np.int64), np.arange(ablations, dtype=np.int16), sel, emb, [],
                             image_ids)


def test_the_writer_commits_every_batch_in_few_sessions_and_embeddings_round_trip(tmp_path):
    from compute.ablations import sweep
    from compute.prompts import Prompt

    db = tmp_path / "s.duckdb"
    ablations = sweep("singles", 3)
    records = [ImageRecord(i, f"{i}.jpg", tmp_path / f"{i}.jpg", ("cat",)) for i in range(1, 41)]
    with store.connect(db) as con:
        run_id = store.create_run(con, store.NewRun("r", "m", "{}", "h", 3, "float16", records,
                                                    [Prompt("a", "cat"), Prompt("b", "dog")], ablations))
    batches = [batch(list(range(i, i + 4)), len(ablations), 2, 24, seed=i) for i in range(1, 41, 4)]
    committed = []
    with BatchWriter(db, run_id, per_open=4, on_commit=committed.append) as writer:
        for b in batches:
            writer.put(b)
    assert committed == batches
    assert writer.stats.batches == 10 and 3 <= writer.stats.sessions < 10  # several batches per open
    assert sql(db, "SELECT COUNT(*) FROM selection_t") == [(40 * len(ablations),)]
    with store.connect(db, read_only=True) as con:
        keys, got = store.embeddings(con, run_id, list(range(1, 41)), "float16")
    want = np.concatenate([b.embeddings.reshape(-1, 24) for b in batches]).astype(np.float32)
    assert keys[:2] == [(1, 0), (1, 1)] and np.array_equal(got, want)


def test_a_writer_that_cannot_write_stops_the_run_with_its_reason(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriterFailed, match="could not write to"), \
            BatchWriter(tmp_path / "file" / "s.duckdb", 1) as writer:
        for i in range(20):  # the first put may be queued before the failure is known
            writer.put(batch([i], 2, 2, 4, seed=i))
