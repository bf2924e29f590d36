"""The Prompt lab's arithmetic (analysis.prompt_scores) on small hand-made tensors: the lab's lines, accuracy
per ablation against a plain loop, and one image's frames."""

from __future__ import annotations

import pytest
import torch

from analysis import prompt_scores
from analysis.prompt_scores import PromptScores, RunEmbeddings
from compute.errors import InputError


def test_lines_parse_to_prompts_and_a_line_without_a_bar_is_named():
    prompts = prompt_scores.parse_lines(" a photo of a cat | cat \n\n a photo of a dog|dog")
    assert [(p.text, p.label) for p in prompts] == [("a photo of a cat", "cat"), ("a photo of a dog", "dog")]
    with pytest.raises(InputError, match="line 2: write `text | label`"):
        prompt_scores.parse_lines("a cat | cat\na dog")
    with pytest.raises(InputError, match="duplicate prompt"):  # the experiment file's checks
        prompt_scores.parse_lines("a cat | cat\na cat | dog")


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


def test_one_images_frames_hold_its_logits_probabilities_and_picks():
    logits = torch.tensor([[[1.0, 3.0], [2.0, 0.0]], [[0.0, 0.0], [5.0, 1.0]]])  # (2 images, 2 ablations, 2 prompts)
    emb = RunEmbeddings("m", "float32", [10, 20], [("cat",), ("dog",)], ["baseline", "zero:1"], torch.zeros(2, 2, 4))
    prompts = (("a cat", "cat"), ("a dog", "dog"))
    result = PromptScores(prompts, logits, prompt_scores.accuracy(logits, emb.labels, ["cat", "dog"], emb.ablations))
    scores, picks = prompt_scores.image_frames(result, emb, 20)
    assert list(scores["logit"]) == [0.0, 0.0, 5.0, 1.0]
    assert list(scores["prob"]) == pytest.approx([0.5, 0.5, *torch.tensor([5.0, 1.0]).softmax(0).tolist()])
    assert list(picks["selected_prompt"]) == ["a cat", "a cat"]
    assert list(scores["prompt"]) == ["a cat", "a dog", "a cat", "a dog"]
