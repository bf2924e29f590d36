"""``python -m tools.bench`` refuses what it would not do as asked, before any section starts."""

from __future__ import annotations

import pytest

from tools import bench


@pytest.mark.parametrize(("argv", "said"), [
    (["--only", "sweep", "--smoke"], "--smoke: sweep has no smoke size (only gpu, precision, attribution)"),
    (["--only", "precision,heads,siglip", "--smoke"], "--smoke: heads, siglip have no smoke size"),
    (["--smoke"], "--smoke: sweep, heads, siglip, rescore, captions, dashboard, pipeline, busy, ray have no smoke"),
    (["--only", "sweep,nope"], "unknown section 'nope'"),
])
def test_a_smoke_size_a_section_lacks_or_an_unknown_section_is_refused(argv, said, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(bench, "SECTIONS", {name: (lambda *a, **kw: started.append(a)) for name in bench.SECTIONS})
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2 and said in capsys.readouterr().err
    assert started == []


def test_the_smoke_sections_run_at_their_smoke_size(monkeypatch):
    asked = {}
    monkeypatch.setattr(bench, "SECTIONS", {name: (lambda tmp, name=name, **kw: asked.setdefault(name, kw)) for name in bench.SECTIONS})
    assert bench.main(["--only", "precision,attribution", "--smoke"]) == 0
    assert asked == {"precision": {"smoke": True}, "attribution": {"smoke": True}}
    asked.clear()
    assert bench.main(["--only", "sweep,attribution"]) == 0
    assert asked == {"sweep": {}, "attribution": {"smoke": False}}
