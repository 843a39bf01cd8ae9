"""scripts/setup (run by scripts/serve and scripts/test) installs the package only when
pyproject.toml or setup.py changed, or other extras are asked for: a restart does not
spend seconds reinstalling. Run against a copy of the script with a stand-in python that
records what it is asked to do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup"


def project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "setup")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (tmp_path / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path / "calls.log"}\n')
    python.chmod(0o755)
    return tmp_path


def setup(root: Path, *args: str) -> list[str]:
    log = root / "calls.log"
    log.unlink(missing_ok=True)
    subprocess.run(["bash", str(root / "scripts" / "setup"), *args], check=True, timeout=30)
    return log.read_text().splitlines() if log.exists() else []


def test_setup_installs_once_and_again_only_when_the_packaging_changes(tmp_path):
    root = project(tmp_path)
    assert any("install --quiet -e ." in call for call in setup(root))
    assert setup(root) == []  # nothing changed: no pip at all
    (root / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    assert any("install --quiet -e ." in call for call in setup(root))
    assert setup(root) == []


def test_the_test_extras_install_once_and_cover_the_plain_install(tmp_path):
    root = project(tmp_path)
    assert any("-e .[test]" in call for call in setup(root, "test"))
    assert setup(root, "test") == []
    assert setup(root) == []  # scripts/serve after scripts/test: already installed with more
