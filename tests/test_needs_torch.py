"""The suite runs without torch (Python 3.12/3.13 here, `make test-venv TORCH=none`): what needs it is skipped.

Before, every test that built, exported or loaded a model through torch failed or errored (94 + 131 on 3.13).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_TESTS = '''
import pytest

@pytest.mark.needs_torch
def test_marked():
    import torch

@pytest.fixture
def torch_fixture():
    return pytest.importorskip("torch", reason="the fixture needs torch")

def test_through_a_fixture(torch_fixture):
    pass

def test_plain():
    pass
'''


def _pytest(tmp_path: Path, block_torch: bool) -> str:
    shutil.copy(REPO / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    needs_torch: needs torch\n")
    (tmp_path / "test_x.py").write_text(_TESTS)
    fake = tmp_path / "fake"  # a stand-in torch, so the with-torch side needs no real one
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("")
    setup = "sys.modules['torch'] = None" if block_torch else f"sys.path.insert(0, {str(fake)!r})"
    code = (f"import sys; {setup}; import pytest; "
            "sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', '-p', 'no:xdist', 'test_x.py']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_tests_that_need_torch_are_skipped_saying_so_where_it_is_missing(tmp_path):
    out = _pytest(tmp_path, block_torch=True)
    assert "1 passed, 2 skipped" in out, out
    assert "needs torch, which is not installed" in out and "the fixture needs torch" in out


def test_nothing_is_skipped_where_torch_is_installed(tmp_path):
    out = _pytest(tmp_path, block_torch=False)
    assert "3 passed" in out and "skipped" not in out, out


def test_the_marker_is_registered():
    out = subprocess.run([sys.executable, "-m", "pytest", "--markers", "-p", "no:cacheprovider"], cwd=REPO,
                         capture_output=True, text=True, timeout=120).stdout
    assert "@pytest.mark.needs_torch" in out
