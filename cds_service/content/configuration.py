"""Client-set card switches and a card budget (issue 19), in the shape of the Da Vinci CRD
guide's configuration extensions.

Discovery lists, per service, `extension["org.example.hfs-cds.configuration-options"]`:
one boolean option per card the hook can show (code = the card id), one per situation of
that card on the hook (code = `<card id>.<situation id>`) and the integer `max-cards`. Each
option is `{code, type, name, description, default}` (CRD's CDSHookServicesExtension-
Configuration). A hook request may send `extension["org.example.hfs-cds.configuration"]`,
an object of option code -> value. Unknown options are ignored; the extension is never
required; the defaults are everything on and no budget (as many cards as can fire). The
namespace is ours, not `davinci-crd.*`: CRD binds its option codes to CRD's card types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cds_service.errors import bad_request

if TYPE_CHECKING:
    from cds_service.content.cards import CardContent

T = TypeVar("T")

OPTIONS_EXTENSION = "org.example.hfs-cds.configuration-options"
REQUEST_EXTENSION = "org.example.hfs-cds.configuration"
MAX_CARDS = "max-cards"
_INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Option:
    code: str
    type: str  # "boolean" | "integer"
    name: str
    description: str
    default: bool | int

    def discovery_entry(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "type": self.type,
            "name": self.name,
            "description": self.description,
            "default": self.default,
        }


@dataclass(frozen=True)
class Configuration:
    """What a call's client switched off, and its card budget (None: no budget)."""

    cards_off: frozenset[str] = frozenset()
    situations_off: frozenset[str] = frozenset()  # "<card id>.<situation id>"
    max_cards: int | None = None

    def shows_card(self, card_id: str) -> bool:
        return card_id not in self.cards_off

    def shows(self, card_id: str, situation_id: str) -> bool:
        return card_id not in self.cards_off and f"{card_id}.{situation_id}" not in self.situations_off


DEFAULT = Configuration()


def options_for(cards: Sequence[CardContent], hook: str) -> tuple[Option, ...]:
    """The options of the service answering `hook`: its cards, their situations, the budget."""
    options: list[Option] = []
    for card in cards:
        options.append(Option(card.id, "boolean", card.title, f"Show the card '{card.title}' (default: shown).", True))
        for s in card.situations:
            if hook in s.hooks:
                words = s.id.replace("-", " ").replace("_", " ")
                options.append(
                    Option(
                        f"{card.id}.{s.id}",
                        "boolean",
                        f"{card.title}: {words}",
                        f"Show this card when the situation '{words}' holds (default: shown).",
                        True,
                    )
                )
    options.append(
        Option(
            MAX_CARDS,
            "integer",
            "Maximum number of cards",
            "At most this many cards per call, the most urgent first (critical, warning, info), "
            f"then in the order of discovery (default: {len(cards)}, every card that fires).",
            len(cards),
        )
    )
    return tuple(options)


def read_configuration(extension: dict[str, Any] | None, options: tuple[Option, ...]) -> Configuration:
    """The request's configuration: unknown option codes are ignored, a known option with a
    value of the wrong type is a 400 naming the option."""
    sent = (extension or {}).get(REQUEST_EXTENSION)
    if sent is None:
        return DEFAULT
    if not isinstance(sent, dict):
        raise bad_request(f"extension.{REQUEST_EXTENSION} must be an object of option code -> value")
    by_code = {o.code: o for o in options}
    cards_off: set[str] = set()
    situations_off: set[str] = set()
    max_cards = None
    for code, value in sent.items():
        option = by_code.get(code)
        if option is None:
            continue
        where = f"extension.{REQUEST_EXTENSION}.{code}"
        if option.type == "boolean":
            if not isinstance(value, bool):
                raise bad_request(f"{where} must be true or false")
            if not value:
                (situations_off if "." in code else cards_off).add(code)
        else:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad_request(f"{where} must be a whole number, 0 or more")
            max_cards = value
    return Configuration(frozenset(cards_off), frozenset(situations_off), max_cards)


def within_budget(items: list[T], indicators: list[str], configuration: Configuration) -> list[T]:
    """The cards the budget allows (`indicators[i]` is the indicator of `items[i]`): the most
    urgent first, then in order; those kept stay in the order they came."""
    if configuration.max_cards is None or len(items) <= configuration.max_cards:
        return items
    ranked = sorted(range(len(items)), key=lambda i: (_INDICATOR_RANK.get(indicators[i], 3), i))
    kept = set(ranked[: configuration.max_cards])
    return [item for i, item in enumerate(items) if i in kept]
