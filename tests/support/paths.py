"""Where the tests find things: the repository, its test data, and (optionally) ../shared."""

from __future__ import annotations

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
DATA_DIR = TESTS_DIR / "data"
SCENARIOS_DIR = TESTS_DIR / "scenarios"
# Third-party data the tests need, kept in the repository with its licence notes.
SPEC_EXAMPLES_DIR = DATA_DIR / "cds-hooks-spec"
SYNTHEA_DIR = DATA_DIR / "synthea"
# The project's own register of published figures (evidence/register.toml).
EVIDENCE_REGISTER = REPO_ROOT / "evidence" / "register.toml"
# The project's shared reference material, beside a developer's checkout; a user's clone
# does not have it, so the few tests that compare with it skip with a reason when absent.
SHARED_DIR = REPO_ROOT.parent / "shared"
