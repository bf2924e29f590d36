"""A run's life in the store (compute.lifecycle), the same for ``run`` and ``rescore``: what is pending, and a
run of the same name with another identity refused in one message, with nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import sql

from compute import store
from compute.ablations import Ablation
from compute.dataset import ImageRecord
from compute.lifecycle import ConfigMismatch, OpenRun, create_or_resume
from compute.prompts import Prompt

ABLATIONS = [Ablation("baseline"), Ablation("identity", (1,)), Ablation("zero", (2,))]


def images(*ids: int) -> list[ImageRecord]:
    return [ImageRecord(i, f"{i}.jpg", Path(f"/x/{i}.jpg"), ("cat",)) for i in ids]


def opened(done: set[tuple[int, int]], *ids: int) -> OpenRun:
    row = store.RunRow(1, "t", "m", "running", {}, "h", 12, len(ids), "float32", None, 1)
    return OpenRun(row, images(*ids), ABLATIONS, done)


def test_an_image_is_pending_until_every_ablation_of_it_is_committed():
    run = opened({(1, 0), (1, 1), (1, 2), (2, 0)}, 1, 2, 3)
    assert [r.image_id for r in run.pending()] == [2, 3]
    assert run.pending_ablations(run.pending()) == [0, 1, 2]  # image 3 needs ablation 0, image 2 does not
    assert run.pending_ablations(images(2)) == [1, 2]
    assert run.pending_ablations(images(1)) == []


def new_run(prompts: list[str], name: str = "t") -> store.NewRun:
    identity = {"clip": "m", "prompts": prompts, "ablations": ["paper"]}
    config = {"name": name, "identity": identity}
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return store.NewRun(name=name, model="m", config_json=json.dumps(config), config_hash=digest, n_layers=12,
                        embedding_dtype="float32", images=images(1, 2), prompts=[Prompt(p, "cat") for p in prompts],
                        ablations=ABLATIONS)


def test_a_run_is_created_then_resumed_and_another_identity_is_refused_in_one_message(tmp_path):
    db = tmp_path / "s.duckdb"
    said: list[str] = []
    first = create_or_resume(db, new_run(["a cat"]), said.append)
    assert said == [f"new run 't' in {db}: 2 images x 3 ablations x 1 prompts"] and first.done == set()
    again = create_or_resume(db, new_run(["a cat"]), said.append)
    assert again.run_id == first.run_id and said[-1] == f"resuming run 't' in {db}"
    before = sql(db, "SELECT * FROM run_t")
    with pytest.raises(ConfigMismatch) as e:
        create_or_resume(db, new_run(["a dog"]), said.append)
    message = str(e.value)
    assert message.startswith(f"run 't' already exists in {db} with a different configuration (differs in: prompts)")
    assert "another name" in message and f"python -m compute delete t --db {db}" in message
    assert sql(db, "SELECT * FROM run_t") == before and len(said) == 2  # nothing written, nothing said
