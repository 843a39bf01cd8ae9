"""The clinical content ships with the package: a wheel built from the repository (a
non-editable install) finds cards/ inside the installed package and serves the same cards,
with the same ids and versions, as the checkout."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from support.paths import REPO_ROOT

from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.cards import content_versions, load_cards
from cds_service.content.services import load_services

PROBE = """
import json
from pathlib import Path
from cds_service.config import DEFAULT_CARDS_DIR, Settings
from cds_service.startup import build_runtime
from cds_service import pages

runtime = build_runtime(Settings(instance_path=Path("instance")))  # what the service serves
print(json.dumps({
    "cards_dir": str(runtime.settings.cards_dir),
    "versions": runtime.content_version,
    "schema": (DEFAULT_CARDS_DIR / "schema" / "card.schema.json").is_file(),
    "services": sorted(runtime.services),
    "templates": pages.render("not_found.html.j2", title="t", css="").count("Evidence page not found"),
}))
"""


@pytest.mark.slow
def test_a_wheel_built_from_the_repository_serves_the_same_cards(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps", "-q", "-w", str(wheels)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = wheels.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    # The dependencies come from this environment's site-packages, added as a plain path:
    # its .pth files (the editable install of the checkout) are not processed there.
    venv_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    )
    (venv_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run = subprocess.run([str(python), "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    shipped = json.loads(run.stdout.strip().splitlines()[-1])

    assert Path(shipped["cards_dir"]).is_relative_to(venv_site)  # the installed copy, not the checkout
    assert DEFAULT_CARDS_DIR == REPO_ROOT / "cards"  # the checkout still reads the repository's cards/
    assert shipped["versions"] == content_versions(load_cards(DEFAULT_CARDS_DIR))
    assert shipped["schema"] is True
    assert shipped["services"] == sorted(load_services(DEFAULT_CARDS_DIR / "services.toml"))
    assert shipped["templates"] == 1  # the page templates ship as package data
