"""The caption stage on tiny random BLIP and VisionEncoderDecoder captioners saved to and loaded from disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import sql
from PIL import Image

from compute.captions import continue_prefix
from compute.config import load_experiment
from compute.dataset import open_image
from compute.errors import InputError
from compute.models import load_captioner, load_clip
from compute.runner import run
from compute.scoring import image_embeddings_unablated, text_embeddings
from tools.synthetic import make_coco, write_experiment


@pytest.fixture(params=["blip", "vision-encoder-decoder"])
def captioner(request, tiny_blip, tiny_ved):
    return request.param, {"blip": tiny_blip, "vision-encoder-decoder": tiny_ved}[request.param]


def test_captions_generated_once_per_distinct_prefix_equal_one_by_one_generation(tiny_clip, captioner, tmp_path):
    kind, cap_dir = captioner
    coco = make_coco(tmp_path / "coco", n=6)
    db = tmp_path / "r.duckdb"
    more = "[captions]\nmax_new_tokens = 6\nnum_beams = 2\nbatch_size = 4\n"
    path = write_experiment(tmp_path / "e.toml", tiny_clip, coco, db, extra=("zero:1-12",), more=more,
                            captioner=cap_dir)
    result = run(load_experiment(path), progress=False, echo=lambda _: None)

    sel = sql(db, """SELECT s.image_id, s.ablation, s.prompt, s.caption, s.caption_score, i.path
                      FROM selections s JOIN image_t i ON i.image_id = s.image_id ORDER BY ALL""")
    assert len(sel) == 6 * 22 and all(r[3] is not None for r in sel)
    assert all(r[3].startswith(r[2]) for r in sel)  # each caption continues its selected prompt
    distinct = {(r[0], r[2]) for r in sel}
    assert len(distinct) < len(sel)  # ablations share prefixes, so sharing is tested
    stats = result.captions
    assert stats.keys == stats.generated == len(distinct)  # each distinct (image, prefix) generated once
    assert 0 < stats.generate_calls < stats.generated  # batched by prefix
    assert sql(db, "SELECT COUNT(*) FROM caption_cache_t") == [(len(distinct),)]

    # The same captions as generating for every (image, ablation) one by one.
    cap = load_captioner(str(cap_dir), "cpu")
    for image_id, ablation, prompt, caption, _, image_path in sel[:: max(1, len(sel) // 25)]:
        one = continue_prefix(cap, [open_image(Path(image_path))], prompt, 6, 2)[0]
        assert one == caption, (image_id, ablation)

    # caption_score is the cosine of the unablated image embedding with the caption's text embedding.
    clip = load_clip(str(tiny_clip), "cpu")
    image_id, _, _, caption, score, image_path = sel[0]
    img = torch.from_numpy(image_embeddings_unablated(clip, [Path(image_path)]))
    img = img / img.norm(dim=-1, keepdim=True)
    expected = float((img @ text_embeddings(clip, [caption]).T)[0, 0])
    assert abs(expected - score) < 1e-5


def test_a_second_run_reuses_the_caption_cache(tiny_clip, tiny_ved, tmp_path):
    coco = make_coco(tmp_path / "coco", n=4)
    db = tmp_path / "r.duckdb"
    said, stats = [], []
    for name in ("first", "second"):
        path = write_experiment(tmp_path / f"{name}.toml", tiny_clip, coco, db, name=name, sweep="singles",
                                captioner=tiny_ved)
        stats.append(run(load_experiment(path), progress=False, echo=said.append).captions)
    first, second = stats
    assert first.keys == first.generated > 0  # nothing cached yet
    assert second.keys == first.keys and second.generated == second.generate_calls == 0  # all from the cache
    a = sql(db, "SELECT image_id, ablation, caption FROM selections WHERE run = 'first' ORDER BY ALL")
    b = sql(db, "SELECT image_id, ablation, caption FROM selections WHERE run = 'second' ORDER BY ALL")
    assert a == b
    assert sql(db, "SELECT status FROM runs ORDER BY run") == [("complete",), ("complete",)]
    summary = [s for s in said if "caption_score" in s]
    assert summary  # the summary table gains the study's second column


def test_a_clip_folder_is_not_a_captioner(tiny_clip):
    with pytest.raises(InputError, match="not a supported captioner"):
        load_captioner(str(tiny_clip), "cpu")


def test_generation_settings_change_the_cache_key():
    from compute.store import caption_key

    def key(model: str, max_new_tokens: int, num_beams: int, batch_size: int) -> str | None:
        # a run's stored config, as compute.config.Experiment.to_json writes it
        return caption_key({"model": {"captioner": model}, "captions": {
            "max_new_tokens": max_new_tokens, "num_beams": num_beams, "batch_size": batch_size}})

    a, b, c = key("m", 5, 1, 2), key("m", 5, 1, 64), key("m", 5, 3, 2)
    assert a == b != c
    assert key("n", 5, 1, 2) != a and key("m", 6, 1, 2) != a
    assert key("none", 5, 1, 2) is None


def test_the_caption_starts_with_the_prompt_exactly_as_written(captioner):
    """Case and out-of-vocabulary words of the prefix survive (only new tokens are decoded)."""
    _, cap_dir = captioner
    cap = load_captioner(str(cap_dir), "cpu")
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    for prefix in ("A Photo of a Zebra", "a photo of a black cat"):
        out = continue_prefix(cap, [image, image], prefix, 4, 1)
        assert all(c.startswith(prefix) for c in out), out
