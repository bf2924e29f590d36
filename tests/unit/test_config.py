"""Experiment files: keys, types, defaults, relative paths, and the errors bad files get."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import ROOT

from compute.config import load_experiment
from compute.errors import InputError
from compute.prompts import load_prompts

GOOD = """
name = "coco-cats-dogs"
[model]
clip = "openai/clip-vit-base-patch16"
captioner = "none"
device = "auto"
[dataset]
images = "coco/val2017"
annotations = "coco/annotations/instances_val2017.json"
categories = ["cat", "dog"]
[[prompts]]
text = "a photo of a dog"
label = "dog"
[[prompts]]
text = "a photo of a cat"
label = "cat"
[ablations]
sweep = "paper"
extra = ["zero:5-8", "identity:1,5,9"]
[store]
db = "../data/results.duckdb"
"""


def write(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "experiments"
    folder.mkdir(exist_ok=True)
    path = folder / "e.toml"
    path.write_text(text)
    return path


def test_the_design_example_parses_with_paths_relative_to_the_file(tmp_path):
    exp = load_experiment(write(tmp_path, GOOD))
    folder = (tmp_path / "experiments").resolve()
    assert exp.name == "coco-cats-dogs"
    assert exp.model.clip == "openai/clip-vit-base-patch16"  # a hub id stays a hub id
    assert exp.dataset.images == folder / "coco/val2017"
    assert exp.dataset.annotations == folder / "coco/annotations/instances_val2017.json"
    assert exp.store.db == (tmp_path / "data/results.duckdb").resolve()
    assert [p.label for p in exp.prompts] == ["dog", "cat"]
    assert exp.ablations.extra == ["zero:5-8", "identity:1,5,9"]
    assert exp.model.batch_size == 16 and exp.store.embeddings == "float32"


def test_local_model_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "models" / "clip").mkdir(parents=True)
    exp = load_experiment(write(tmp_path, GOOD.replace("openai/clip-vit-base-patch16", "../models/clip")))
    assert exp.model.clip == str((tmp_path / "models" / "clip").resolve())


def test_identity_ignores_device_and_batch_size_but_not_prompts(tmp_path):
    a = load_experiment(write(tmp_path, GOOD))
    b = load_experiment(write(tmp_path, GOOD.replace('device = "auto"', 'device = "cpu"\nbatch_size = 3')))
    c = load_experiment(write(tmp_path, GOOD.replace('"a photo of a dog"', '"a photo of a puppy"')))
    assert a.identity_hash() == b.identity_hash()
    assert a.identity_hash() != c.identity_hash()


@pytest.mark.parametrize(
    "edit, message",
    [
        (('name = "coco-cats-dogs"', 'name = "x"\ncolour = "red"'), "unknown key 'colour' in top level"),
        (('device = "auto"', 'device = "auto"\ngpu = true'), r"unknown key 'gpu' in \[model\]"),
        (('categories = ["cat", "dog"]', 'categories = ["cat"]\ncats = 1'), r"unknown key 'cats' in \[dataset\]"),
        (('sweep = "paper"', 'sweep = "paper"\nlayers = 3'), r"unknown key 'layers' in \[ablations\]"),
        (('label = "dog"', 'label = "dog"\nweight = 2'), r"unknown key 'weight' in \[prompts #1\]"),
        (('db = "../data/results.duckdb"', 'db = "x"\npath = "y"'), r"unknown key 'path' in \[store\]"),
        (('name = "coco-cats-dogs"', ""), "'name' is required"),
        (('clip = "openai/clip-vit-base-patch16"', ""), r"missing key 'clip' in \[model\]"),
        (('images = "coco/val2017"', ""), r"missing key 'images' in \[dataset\]"),
        (('device = "auto"', 'device = "tpu"'), "model.device = 'tpu' is not one of"),
        (('sweep = "paper"', 'sweep = "everything"'), "ablations.sweep = 'everything' is not one of"),
        (('extra = ["zero:5-8", "identity:1,5,9"]', 'extra = ["identity:1-"]'), "malformed layers"),
        (('extra = ["zero:5-8", "identity:1,5,9"]', 'extra = ["blur:3"]'), "unknown ablation kind 'blur'"),
        (('categories = ["cat", "dog"]', 'categories = [1, 2]'), "dataset.categories must be a list of strings"),
        (('device = "auto"', 'batch_size = 0'), "model.batch_size must be a positive integer"),
        (('text = "a photo of a cat"', 'text = "a photo of a dog"'), "duplicate prompt 'a photo of a dog'"),
        (('label = "dog"', 'label = ""'), "text and label must not be empty"),
        (('name = "coco-cats-dogs"', 'name = "coco-cats-dogs" ='), "not valid TOML"),
        (('sweep = "paper"', 'sweep = ["heads", "all"]'), "ablations.sweep = 'all' is not one of"),
        (('sweep = "paper"', 'sweep = []'), "ablations.sweep must name a sweep"),
        (('sweep = "paper"', 'sweep = 3'), "ablations.sweep must be str or a list of strings"),
        (('extra = ["zero:5-8", "identity:1,5,9"]', 'extra = ["identity:1-99999999999999999999"]'),
         "layer 99999999999999999999 is beyond any model"),
        (('extra = ["zero:5-8", "identity:1,5,9"]', 'extra = ["zero:3/h0-99999999999"]'),
         "head 99999999999 is beyond any model"),
        (('extra = ["zero:5-8", "identity:1,5,9"]', 'extra = ["identity:3/patches>cls"]'), "takes no target"),
    ],
)
def test_bad_experiments_get_one_clear_error(tmp_path, edit, message):
    old, new = edit
    assert old in GOOD
    with pytest.raises(InputError, match=message) as info:
        load_experiment(write(tmp_path, GOOD.replace(old, new, 1)))
    assert "\n" not in str(info.value)


def test_sweep_takes_a_name_or_a_list_with_duplicates_dropped(tmp_path):
    both = load_experiment(write(tmp_path, GOOD.replace('sweep = "paper"', 'sweep = ["heads", "flow", "heads"]')))
    assert both.ablations.sweep == ["heads", "flow"]
    one = load_experiment(write(tmp_path, GOOD.replace('sweep = "paper"', 'sweep = ["paper", "paper"]')))
    plain = load_experiment(write(tmp_path, GOOD))
    assert one.ablations.sweep == "paper"
    assert one.identity_hash() == plain.identity_hash()  # the same run, however it is spelled
    assert both.identity_hash() != plain.identity_hash()


def test_extras_are_stored_as_canonical_labels(tmp_path):
    text = GOOD.replace('extra = ["zero:5-8", "identity:1,5,9"]',
                        'extra = ["knockout: 10 / patches>cls / h7", "zero:5-8/h4,h2,h3"]')
    exp = load_experiment(write(tmp_path, text))
    assert exp.ablations.extra == ["knockout:10/patches>cls/h7", "zero:5-8/h2-4"]


def test_no_prompts_is_an_error(tmp_path):
    text = GOOD.split("[[prompts]]")[0] + GOOD.split('label = "cat"')[1]
    with pytest.raises(InputError, match="no prompts"):
        load_experiment(write(tmp_path, text))


def test_missing_experiment_file(tmp_path):
    with pytest.raises(InputError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.toml")


def test_prompt_files_for_rescore(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[prompts]]\ntext = "a photo of a puppy"\nlabel = "dog"\n')
    assert [(p.text, p.label) for p in load_prompts(path)] == [("a photo of a puppy", "dog")]
    path.write_text('name = "x"\n[[prompts]]\ntext = "a"\nlabel = "b"\n')
    with pytest.raises(InputError, match="unknown key 'name'"):
        load_prompts(path)


# --------------------------------------------------------------------------------------------------
# Templates and ensembles.

PROMPTS_OF_GOOD = GOOD[GOOD.index("[[prompts]]"):GOOD.index("[ablations]")]


def test_a_template_expands_to_one_prompt_per_label_after_the_listed_prompts(tmp_path):
    text = GOOD.replace(PROMPTS_OF_GOOD, '[[prompts]]\ntext = "a dog"\nlabel = "dog"\n'
                        '[[templates]]\ntext = "a photo of a {label} here"\nlabels = ["cat", "dog"]\n'
                        '[[templates]]\ntext = "a {label}"\nlabels = ["bird"]\n')
    exp = load_experiment(write(tmp_path, text))
    assert [(p.text, p.label, p.ensemble) for p in exp.prompts] == [
        ("a dog", "dog", []), ("a photo of a cat here", "cat", []), ("a photo of a dog here", "dog", []),
        ("a bird", "bird", [])]
    stored = json.loads(exp.to_json())["prompts"]  # the expanded prompts, as the run keeps them
    assert stored == [{"text": p.text, "label": p.label} for p in exp.prompts]
    assert "templates" not in json.loads(exp.to_json())


def test_a_template_is_the_same_run_as_the_prompts_it_expands_to(tmp_path):
    listed = load_experiment(write(tmp_path, GOOD))
    templated = load_experiment(write(tmp_path, GOOD.replace(
        PROMPTS_OF_GOOD, '[[templates]]\ntext = "a photo of a {label}"\nlabels = ["dog", "cat"]\n')))
    assert [(p.text, p.label) for p in templated.prompts] == [(p.text, p.label) for p in listed.prompts]
    assert templated.identity() == listed.identity() and templated.identity_hash() == listed.identity_hash()
    assert templated.to_json() == listed.to_json()


def test_an_ensemble_is_one_prompt_per_label_named_for_its_texts_and_part_of_the_identity(tmp_path):
    text = GOOD.replace(PROMPTS_OF_GOOD, '[[templates]]\nensemble = ["a photo of a {label}", "a drawing of a {label}"]'
                        '\nlabels = ["dog", "cat"]\n')
    exp = load_experiment(write(tmp_path, text))
    dog, cat = exp.prompts
    assert (dog.label, dog.ensemble) == ("dog", ["a photo of a dog", "a drawing of a dog"])
    assert dog.text == "mean of 2: a photo of a dog / a drawing of a dog" and dog.texts == dog.ensemble
    assert exp.identity()["prompts"][0] == [dog.text, "dog", dog.ensemble]
    # Stored as a [[prompts]] entry with its ensemble, which reads back as the same prompt (rescore rebuilds
    # an experiment from its stored config).
    back = json.loads(exp.to_json())["prompts"]
    assert back[0] == {"text": dog.text, "label": "dog", "ensemble": dog.ensemble}
    again = load_experiment(write(tmp_path, GOOD.replace(PROMPTS_OF_GOOD, "".join(
        f"[[prompts]]\ntext = {json.dumps(p['text'])}\nlabel = {json.dumps(p['label'])}\n"
        f"ensemble = {json.dumps(p['ensemble'])}\n" for p in back))))
    assert again.identity_hash() == exp.identity_hash()
    # Another ensemble is another run.
    other = load_experiment(write(tmp_path, text.replace("a drawing of a {label}", "a sketch of a {label}")))
    assert other.identity_hash() != exp.identity_hash()


@pytest.mark.parametrize("table, message", [
    ('text = "a photo"\nlabels = ["cat"]', r"template 'a photo' does not hold \{label\}"),
    ('text = "a {label}"\nlabels = []', "labels must list at least one"),
    ('text = "a {label}"', r"missing key 'labels' in \[templates #1\]"),
    ('labels = ["cat"]', "needs text = .* or ensemble"),
    ('text = "a {label}"\nensemble = ["b {label}"]\nlabels = ["cat"]', "one of the two"),
    ('text = "a {label}"\nlabels = ["cat"]\nweight = 2', r"unknown key 'weight' in \[templates #1\]"),
    ('text = "a photo of a {label}"\nlabels = ["dog"]', "duplicate prompt 'a photo of a dog'"),
    ('ensemble = ["a {label}", "b"]\nlabels = ["cat"]', "template 'b' does not hold"),
    ('text = "a {label}"\nlabels = "cat"', "templates #1.labels must be a list of strings"),
])
def test_bad_templates_get_one_clear_error(tmp_path, table, message):
    with pytest.raises(InputError, match=message) as info:
        load_experiment(write(tmp_path, GOOD.replace("[ablations]", f"[[templates]]\n{table}\n[ablations]")))
    assert "\n" not in str(info.value)


def test_prompt_files_take_templates(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[templates]]\nensemble = ["a photo of a {label}", "a {label}"]\nlabels = ["dog"]\n'
                    '[[templates]]\ntext = "a small {label}"\nlabels = ["cat"]\n')
    assert [(p.text, p.ensemble) for p in load_prompts(path)] == [
        ("mean of 2: a photo of a dog / a dog", ["a photo of a dog", "a dog"]), ("a small cat", [])]
    shipped = load_prompts(ROOT / "experiments" / "prompts" / "shapes-ensemble.toml")
    assert [p.label for p in shipped] == ["circle", "square", "triangle", "cross", "star"]
    assert all(len(p.ensemble) == 3 for p in shipped)


IDENTITIES = Path(__file__).parent / "reference" / "experiment_identities.json"


def test_the_shipped_experiments_keep_the_identity_of_the_runs_they_made():
    """The identity (and so the config hash a stored run is resumed by) of every shipped experiment, recorded
    before templates existed (paths relative to the checkout): demo-heads and demo-attributes now write their
    35 prompts as one template and must still resume the runs their 35 [[prompts]] made."""
    reference = json.loads(IDENTITIES.read_text())
    shipped = sorted(p.name for p in (ROOT / "experiments").glob("*.toml"))
    assert shipped == sorted(reference)
    assert "[[templates]]" in (ROOT / "experiments" / "demo-heads.toml").read_text()
    for name in shipped:
        exp = load_experiment(ROOT / "experiments" / name)
        expected = json.loads(json.dumps(reference[name]).replace("<ROOT>", str(ROOT)))
        assert exp.identity() == expected, name
        digest = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:16]
        assert exp.identity_hash() == digest, name  # the hash as it was computed when those runs were made
