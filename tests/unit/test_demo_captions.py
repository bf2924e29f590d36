"""The demo captioner's text side (compute.demo.train_captioner), no model: how a training example is
encoded (a wrong prefix masked out of the loss) and how a continuation is parsed back into its parts.
(The shipped captioner itself is tested in regression/test_demo_captioner.py.)"""

from __future__ import annotations

from compute.demo.train_captioner import Example, build_tokenizer, encode, parse_continuation


def test_encode_masks_a_wrong_prefix() -> None:
    tok = build_tokenizer()
    inputs, targets = encode(tok, [Example("a photo of a star", "on a gray background", False)])
    words = tok("a photo of a star on a gray background", add_special_tokens=False)["input_ids"]
    assert inputs[0].tolist() == [tok.bos_token_id, *words]
    assert targets[0].tolist() == [-100] * 5 + words[5:] + [tok.eos_token_id]


def test_parse_continuation() -> None:
    p = "a photo of a red circle"
    assert parse_continuation(f"{p} on a blue background", p) == {"background": "blue", "distractor": None}
    assert parse_continuation(f"{p} on a blue background with a small green square", p) == {
        "background": "blue",
        "distractor": "green square",
    }
    assert parse_continuation(f"{p} on a blue background with", p) is None
    assert parse_continuation("a photo of a circle on a blue background", p) is None
