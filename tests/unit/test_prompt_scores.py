"""The Prompt lab's arithmetic (analysis.prompt_scores) on small hand-made tensors: the lab's lines (templates,
ensembles, every bad line), the labels checked as the command line checks them, accuracy per ablation and
against the run's own prompts against plain loops, the breakdowns per prompt and per template, and one
image's frames."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from analysis import prompt_scores
from analysis.prompt_scores import SINGLE, LabPrompt, PromptScores, RunEmbeddings
from compute.config import DatasetConfig
from compute.significance import holm, mcnemar


def lab(text: str, label: str, template: str = SINGLE, texts: tuple[str, ...] | None = None) -> LabPrompt:
    return LabPrompt(text, label, texts or (text,), template)


def emb_of(image_labels, ablations, prompts=(), dataset=None) -> RunEmbeddings:
    return RunEmbeddings("m", "float32", list(range(10, 10 + len(image_labels))), image_labels, ablations,
                         torch.zeros(len(image_labels), len(ablations), 4), tuple(prompts),
                         dataset or DatasetConfig())


def test_lines_parse_to_prompts_and_a_line_without_a_bar_is_named():
    parsed = prompt_scores.parse_lines(" a photo of a cat | cat \n\n a photo of a dog|dog")
    assert [(p.text, p.label) for p in parsed.prompts] == [("a photo of a cat", "cat"), ("a photo of a dog", "dog")]
    assert parsed.problems == ()
    assert prompt_scores.parse_lines("a cat | cat\na dog").problems[0].startswith("line 2: write `text | label`")
    assert "duplicate prompt 'a cat'" in prompt_scores.parse_lines("a cat | cat\na cat | dog").problems[0]


def test_every_bad_line_is_listed_not_only_the_first():
    text = "\n".join(["a cat | cat", "a dog", "# a comment", " | cat", "a bird |", "a cat | dog", "a photo | cat, dog",
                      "a {label}; a drawing | cat", "a good line | dog"])
    parsed = prompt_scores.parse_lines(text)
    assert [p.split(":")[0] for p in parsed.problems] == ["line 2", "line 4", "line 5", "line 6", "line 7", "line 8"]
    assert "write `text | label`" in parsed.problems[0] and "empty text" in parsed.problems[1]
    assert "empty label" in parsed.problems[2] and "duplicate prompt 'a cat' (line 1" in parsed.problems[3]
    assert "takes one label, not 2" in parsed.problems[4] and "'a drawing'" in parsed.problems[5]
    assert [p.text for p in parsed.prompts] == ["a cat", "a good line"]  # the good lines still parse


def test_templates_and_ensembles_expand_as_in_experiment_files():
    parsed = prompt_scores.parse_lines("a drawing of a {label} | cat, dog\na {label}; a photo of a {label} | bird\n"
                                       "a sketch of a {label}", run_labels=["cat", "dog", "cat"])
    got = [(p.text, p.label, p.texts, p.template) for p in parsed.prompts]
    assert got == [
        ("a drawing of a cat", "cat", ("a drawing of a cat",), "a drawing of a {label}"),
        ("a drawing of a dog", "dog", ("a drawing of a dog",), "a drawing of a {label}"),
        ("mean of 2: a bird / a photo of a bird", "bird", ("a bird", "a photo of a bird"),
         "a {label}; a photo of a {label}"),
        ("a sketch of a cat", "cat", ("a sketch of a cat",), "a sketch of a {label}"),  # the run's labels, once
        ("a sketch of a dog", "dog", ("a sketch of a dog",), "a sketch of a {label}")]
    ensemble = parsed.prompts[2].prompt()
    assert ensemble.ensemble == ["a bird", "a photo of a bird"]  # what "Save as run" stores
    # The run's own prompts written as lines read back as the same prompts (an ensemble as its texts).
    own = (lab("a cat", "cat"), LabPrompt("mean of 2: x dog / y dog", "dog", ("x dog", "y dog"), SINGLE))
    back = prompt_scores.parse_lines(prompt_scores.run_lines(own)).prompts
    assert [(p.text, p.label, p.texts) for p in back] == [(p.text, p.label, p.texts) for p in own]


def test_labels_are_checked_as_the_command_line_checks_them(tmp_path):
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1}],
        "categories": [{"id": 1, "name": "circle", "supercategory": "shape"}, {"id": 2, "name": "square"}]}))
    emb = emb_of([("circle",)], ["baseline"], dataset=DatasetConfig(images=tmp_path, annotations=annotations))
    prompts = (lab("a circel", "circel"), lab("a sqare", "sqare"), lab("a circle", "circle"), lab("a square", "square"))
    errors, warnings, note = prompt_scores.label_checks(emb, prompts)
    assert errors == [
        f"prompt label 'circel' is carried by no image: the categories of {annotations} never name it; closest known "
        "labels: 'circle'",
        f"prompt label 'sqare' is carried by no image: the categories of {annotations} never name it; closest known "
        "labels: 'square', 'shape'"]  # every unknown label, in the command line's words (supercategories too)
    assert warnings == ["no image of the run carries the label(s) 'square': their prompts can never be correct "
                        "(fine for distractors)"]
    assert note == ""
    # The run's own distractors were warned about when it ran: not again.
    own = emb_of([("circle",)], ["baseline"], prompts=(lab("a square", "square"),), dataset=emb.dataset)
    assert prompt_scores.label_checks(own, prompts[2:])[1] == []
    # Where the dataset files are not (a shared store), the labels the run's images carry are the reference.
    gone = emb_of([("circle",)], ["baseline"], dataset=DatasetConfig(images=tmp_path, annotations=tmp_path / "no.json"))
    errors, _, note = prompt_scores.label_checks(gone, (lab("a circel", "circel"), lab("a circle", "circle")))
    assert errors == ["prompt label 'circel' is carried by no image of the run; closest known labels: 'circle'"]
    assert "could not be read" in note


def test_accuracy_per_ablation_is_the_share_of_images_whose_pick_carries_one_of_their_labels():
    torch.manual_seed(0)
    logits = torch.randn(7, 3, 4)  # (images, ablations, prompts)
    image_labels = [("cat",), ("dog",), ("cat", "dog"), ("bird",), ("car",), ("dog",), ()]
    prompt_labels = ["cat", "dog", "bird", "cat"]
    frame = prompt_scores.accuracy(logits, image_labels, prompt_labels, ["baseline", "identity:1", "zero:2"])
    expected = [sum(prompt_labels[int(logits[i, a].argmax())] in image_labels[i] for i in range(7)) / 7
                for a in range(3)]
    assert list(frame["ablation"]) == ["baseline", "identity:1", "zero:2"]
    assert list(frame["accuracy"]) == pytest.approx(expected)
    assert list(frame["change"]) == pytest.approx([x - expected[0] for x in expected])


def scores_of(logits, prompts, emb) -> PromptScores:
    labels = [p.label for p in prompts]
    correct = np.array([[labels[int(logits[i, a].argmax())] in emb.labels[i] for a in range(logits.shape[1])]
                        for i in range(logits.shape[0])])
    return PromptScores(tuple(prompts), logits, correct,
                        prompt_scores.accuracy(logits, emb.labels, labels, emb.ablations))


def test_against_the_runs_own_prompts_mcnemar_per_ablation_with_holm():
    torch.manual_seed(1)
    image_labels = [("cat",), ("dog",), ("cat", "dog"), ("bird",), ("dog",), ("cat",)] * 5
    ablations = ["baseline", "identity:1", "zero:2"]
    emb = emb_of(image_labels, ablations)
    mine = [lab("a cat", "cat"), lab("a dog", "dog"), lab("a bird", "bird")]
    theirs = [lab("photo cat", "cat"), lab("photo dog", "dog")]
    new, own = scores_of(torch.randn(30, 3, 3), mine, emb), scores_of(torch.randn(30, 3, 2), theirs, emb)
    frame = prompt_scores.versus(new, own, ablations)
    p = []
    for a in range(3):  # one ablation at a time, by hand
        only_run = sum(bool(own.correct[i, a]) and not new.correct[i, a] for i in range(30))
        only_lab = sum(bool(new.correct[i, a]) and not own.correct[i, a] for i in range(30))
        row = frame.iloc[a]
        assert (row["only_run"], row["only_lab"]) == (only_run, only_lab)
        assert row["change_vs_run"] == pytest.approx(new.correct[:, a].mean() - own.correct[:, a].mean())
        p.append(mcnemar(only_run, only_lab)[1])
    assert list(frame["p"]) == pytest.approx(p)
    assert list(frame["p_holm"]) == pytest.approx(holm(p))
    assert all((v != 0) == (q < 0.05 and not math.isclose(d, 0))
               for v, q, d in zip(frame["verdict"], frame["p_holm"], frame["change_vs_run"], strict=True))


def test_breakdowns_per_prompt_and_per_template_against_plain_loops():
    torch.manual_seed(2)
    image_labels = [("cat",), ("dog",), ("cat", "dog"), ("bird",), ("dog",), ("cat",), ()]
    emb = emb_of(image_labels, ["baseline", "identity:1"])
    prompts = [lab("a cat", "cat", "a {label}"), lab("a dog", "dog", "a {label}"), lab("one bird", "bird"),
               lab("the cat", "cat", "the {label}"), lab("the dog", "dog", "the {label}")]
    logits = torch.randn(7, 2, 5)
    result = scores_of(logits, prompts, emb)
    table = prompt_scores.per_prompt(result, emb, 1)
    picked = [int(logits[i, 1].argmax()) for i in range(7)]
    for k, row in table.iterrows():
        mine = [i for i in range(7) if picked[i] == k]
        carry = [i for i in range(7) if prompts[k].label in image_labels[i]]
        assert row["selected"] == len(mine) and row["images_of_label"] == len(carry)
        right = sum(prompts[k].label in image_labels[i] for i in mine) / len(mine) if mine else float("nan")
        assert row["right_when_selected"] == pytest.approx(right, nan_ok=True)
        assert row["recall"] == pytest.approx(sum(picked[i] == k for i in carry) / len(carry) if carry else math.nan,
                                              nan_ok=True)
    templates = prompt_scores.per_template(result, emb)
    assert list(dict.fromkeys(templates["template"])) == ["a {label}", SINGLE, "the {label}"]
    for group, keep in (("a {label}", [0, 1]), (SINGLE, [2]), ("the {label}", [3, 4])):
        for a, name in enumerate(emb.ablations):
            right = [prompts[keep[int(logits[i, a, keep].argmax())]].label in image_labels[i] for i in range(7)]
            got = templates[(templates["template"] == group) & (templates["ablation"] == name)]["accuracy"].item()
            assert got == pytest.approx(sum(right) / 7)


def test_one_images_frames_hold_its_logits_probabilities_and_picks():
    logits = torch.tensor([[[1.0, 3.0], [2.0, 0.0]], [[0.0, 0.0], [5.0, 1.0]]])  # (2 images, 2 ablations, 2 prompts)
    emb = emb_of([("cat",), ("dog",)], ["baseline", "zero:1"])
    emb = RunEmbeddings("m", "float32", [10, 20], emb.labels, emb.ablations, emb.embeddings, (), emb.dataset)
    result = scores_of(logits, [lab("a cat", "cat"), lab("a dog", "dog")], emb)
    scores, picks = prompt_scores.image_frames(result, emb, 20)
    assert list(scores["logit"]) == [0.0, 0.0, 5.0, 1.0]
    assert list(scores["prob"]) == pytest.approx([0.5, 0.5, *torch.tensor([5.0, 1.0]).softmax(0).tolist()])
    assert list(picks["selected_prompt"]) == ["a cat", "a cat"]
    assert list(scores["prompt"]) == ["a cat", "a dog", "a cat", "a dog"]
