"""Shape checks for the TOML content files (cards, concepts), shared by their loaders.

Each raises the loader's own error class (a ConfigError) naming the place in the file, so
a mistake in clinical content stops the service at start-up with a message a reviewer can
act on.
"""

from __future__ import annotations

from cds_service.config import ConfigError


def table(value: object, where: str, error: type[ConfigError] = ConfigError) -> dict:
    if not isinstance(value, dict):
        raise error(f"{where}: must be a table")
    return value


def listing(value: object, where: str, error: type[ConfigError] = ConfigError) -> list:
    if not isinstance(value, list):
        raise error(f"{where}: must be a list")
    return value


def known_keys(
    entry: dict, allowed: set[str], where: str, required: set[str] = frozenset(), error: type[ConfigError] = ConfigError
) -> None:
    unknown = set(entry) - set(allowed)
    if unknown:
        raise error(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    missing = set(required) - set(entry)
    if missing:
        raise error(f"{where}: missing {', '.join(sorted(missing))}")
