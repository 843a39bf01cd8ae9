"""Where the tests find things: the repository, its test data, and (optionally) ../shared."""

from __future__ import annotations

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
DATA_DIR = TESTS_DIR / "data"
SCENARIOS_DIR = TESTS_DIR / "scenarios"
# The project's shared reference material, beside a developer's checkout; a user's clone
# does not have it, so tests that read it skip with a reason when it is absent.
SHARED_DIR = REPO_ROOT.parent / "shared"
