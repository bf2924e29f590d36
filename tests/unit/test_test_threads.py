"""The suite's own thread share (tests/conftest.py pytest_configure): the process that starts N xdist workers hands
them cores // N torch threads each through its environment (and imports no torch itself), a worker keeps what it
was handed, a plain run takes every core, and a value the user gave wins."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from compute.loader import default_workers


@pytest.fixture
def configure(monkeypatch, pytestconfig):
    """tests/conftest.py's pytest_configure on a config that starts ``tx`` workers, in environment ``env``: the
    OMP_NUM_THREADS it leaves and the threads torch then has (torch's threads restored afterwards). (Found
    among pytest's plugins by its path: the browser tier's conftest.py is a module named "conftest" too.)"""
    conftest = pytestconfig.pluginmanager.get_plugin(str(Path(__file__).resolve().parents[1] / "conftest.py"))
    before = torch.get_num_threads()

    def call(tx: list[str] | None, env: dict[str, str]) -> tuple[str, int]:
        torch.set_num_threads(before)
        for name in ("OMP_NUM_THREADS", "PYTEST_XDIST_WORKER_COUNT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config = SimpleNamespace(getoption=lambda name, default=None: tx if name == "tx" else default)
        conftest.pytest_configure(config)
        return os.environ["OMP_NUM_THREADS"], torch.get_num_threads()

    yield call
    torch.set_num_threads(before)


def test_workers_get_their_share_of_the_cores_and_a_users_value_wins(configure):
    cores, now = default_workers(), torch.get_num_threads()
    share = str(max(1, cores // 2))
    assert configure(["popen", "popen"], {}) == (share, now)  # the process that starts 2 workers: theirs
    assert configure([], {"PYTEST_XDIST_WORKER_COUNT": "2", "OMP_NUM_THREADS": share}) == (share, int(share))
    assert configure([], {"PYTEST_XDIST_WORKER_COUNT": "2"}) == (share, int(share))  # started some other way
    assert configure(None, {}) == (str(cores), cores)  # -n 0 or no xdist: every core
    assert configure(["popen"] * 2 * cores, {}) == ("1", now)  # never none
    assert configure(["popen", "popen"], {"OMP_NUM_THREADS": "3"}) == ("3", now)
    assert configure(None, {"OMP_NUM_THREADS": "3"}) == ("3", 3)
    assert configure(["popen", "popen"], {"OMP_NUM_THREADS": "many"}) == (share, now)
