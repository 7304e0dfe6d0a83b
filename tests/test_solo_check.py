"""A solo-learn checkout's ``solo/`` that shadows the patched install is refused in one line
(run from the root of a checkout, Python imports the checkout's unpatched ``solo``)."""

import subprocess
import sys


def test_a_shadowing_solo_package_is_refused_in_one_line(tmp_path):
    (tmp_path / "solo").mkdir()
    (tmp_path / "solo" / "__init__.py").write_text("raise SystemExit('the checkout was imported')\n")
    result = subprocess.run([sys.executable, "-c", "import solo_iclmsr.plugin.registry"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: Python imports solo from")
    assert str(tmp_path / "solo") in last and "shadows it" in last and "solo-iclmsr pretrain" in last
    assert "the checkout was imported" not in result.stderr  # refused before importing it


def test_the_installed_solo_is_accepted_from_elsewhere(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import solo_iclmsr.plugin.registry"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
