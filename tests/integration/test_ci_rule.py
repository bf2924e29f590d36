"""CI's rule (conftest.py, CLIP_LAB_CI=1 from .ci/run): a skipped browser, Ray or root-only test, or a test module
skipped at import, fails the run; other skips (an optional package missing) stay skips. Shown on a probe file
run by a real pytest with the rule's hooks (helpers.py) as its only plugin, with and without the variable."""

from __future__ import annotations

import os
import subprocess

from helpers import run_probe

PROBE = '''
import pytest

@pytest.mark.ray
def test_ray_skipped():
    pytest.skip("no Ray here")

@pytest.fixture
def chromium():
    pytest.skip("CHROMIUM MISSING")

@pytest.mark.browser
def test_browser_skipped_by_its_fixture(chromium):
    pass

@pytest.mark.root
@pytest.mark.skipif(True, reason="not root")
def test_root_skipped():
    pass

def test_optional_package_skipped():
    pytest.skip("scipy is not installed here")

def test_passes():
    pass
'''
MODULE_PROBE = 'import pytest\n\npytest.importorskip("no_such_package_here")\n\ndef test_never_collected():\n    pass\n'


def probe(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "test_probe_module.py").write_text(MODULE_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CLIP_LAB_CI"}
    return run_probe(tmp_path, "-p", "helpers", "-rA", "--continue-on-collection-errors",
                     env={**env, **({"CLIP_LAB_CI": "1"} if ci else {})})


def test_outside_ci_every_skip_is_a_skip(tmp_path):
    result = probe(tmp_path, ci=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed, 5 skipped" in result.stdout, result.stdout[-3000:]


def test_in_ci_a_browser_ray_or_root_skip_fails_and_an_optional_one_does_not(tmp_path):
    result = probe(tmp_path, ci=True)
    assert result.returncode == 1, result.stdout[-3000:]
    out = result.stdout
    for kind, test, reason in (("ray", "test_ray_skipped", "no Ray here"),
                               ("browser", "test_browser_skipped_by_its_fixture", "CHROMIUM MISSING"),
                               ("root", "test_root_skipped", "not root")):
        assert f"a {kind} test was skipped in CI (CLIP_LAB_CI=1), where it must run: Skipped: {reason}" in out, out
        assert any(line.startswith(("FAILED", "ERROR")) and test in line for line in out.splitlines()), (test, out)
    assert "a test module was skipped in CI (CLIP_LAB_CI=1), where every module must run: Skipped: could not " \
        "import 'no_such_package_here'" in out, out
    assert "SKIPPED [1] test_probe.py:" in out and "scipy is not installed here" in out
    assert "1 passed, 1 skipped" in out
