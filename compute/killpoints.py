"""Crash tests' hook: ``CLIP_LAB_KILL_AT=STAGE:N`` makes the process SIGKILL itself the N-th time it
reaches the named point ``STAGE`` (N defaults to 1), so a test can land a crash in a chosen stage.

Points (see the callers): ``mean`` (a batch of the dataset-mean pass, before its statistics are saved),
``sweep`` (inside a batch's transaction, before COMMIT; also a batch that only decomposes images done
before decomposition was enabled), ``components`` (recording a run's decomposition components), ``textspan``
(inside the transaction that writes the TextSpan descriptions), ``caption`` (inside a caption chunk's cache
transaction), ``caption-fill`` (inside the transaction that fills the selections' captions), ``rescore``
(inside a rescore batch's transaction), ``delete`` (after each statement of delete's transaction),
``migrate`` (inside a store migration's transaction), ``create`` (inside the run-creation transaction).
Unset, a call costs one comparison.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "CLIP_LAB_KILL_AT"
_STAGE, _, _NTH = (os.environ.get(KILL_ENV) or "").partition(":")
_seen = 0


def kill_point(stage: str) -> None:
    """SIGKILL this process at the configured visit of ``stage`` (tests only; nothing when unset)."""
    global _seen
    if stage != _STAGE:
        return
    _seen += 1
    if _seen == int(_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)
