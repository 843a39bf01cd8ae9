"""The card summaries of the story charts, from any checkout of the service (for a review of
a change: the same charts through the code before and after it).

    # write the charts of tests/support/story_charts.py as JSON beside this script
    .venv/bin/python tests/scenarios/story/summarise.py export
    # the summaries each card gives for each chart, with the code of a checkout
    .venv/bin/python tests/scenarios/story/summarise.py run --tree /path/to/checkout
    # both, side by side, as Markdown
    .venv/bin/python tests/scenarios/story/summarise.py compare --before /tmp/base --after .

Only the cds_service package and cards/ of the checkout are used (its own code and card
files); the charts are the JSON files here. Charts are judged as of their own date.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CARD_IDS = ("rfa-recurrence", "amr-persistence", "mvd-recurrence", "btxa-response", "spinal-metastasis-mwa")


def export() -> None:
    sys.path.insert(0, str(HERE.parents[1]))  # tests/ (support.*)
    from support.story_charts import CHARTS, TODAY

    for story in CHARTS:
        chart = story.build()
        data = {
            "name": story.name,
            "rule": story.rule,
            "hook": story.hook,
            "today": TODAY.isoformat(),
            "resources": chart.resources,
            "drafts": chart.drafts,
            "selections": chart.selections,
        }
        (HERE / f"{story.name}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def run(tree: Path) -> dict:
    sys.path.insert(0, str(tree))
    from datetime import date

    from cds_service.clinical.evaluate import evaluate
    from cds_service.clinical.record_build import build_record
    from cds_service.clinical.render import render
    from cds_service.content.cards import load_cards
    from cds_service.terminology.concepts_file import load_concepts

    cards_dir = tree / "cards"
    concepts = load_concepts(cards_dir, None)
    cards = load_cards(cards_dir, None, concepts)
    out = {}
    for path in sorted(HERE.glob("*.json")):
        chart = json.loads(path.read_text(encoding="utf-8"))
        hook = chart["hook"]
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in chart["resources"]],
        }
        drafts = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in chart["drafts"]]}
        record = build_record(
            {"chart": bundle},
            draft_orders=drafts if hook != "patient-view" else None,
            selections=chart["selections"] if hook == "order-select" else None,
            concepts=concepts,
            today=date.fromisoformat(chart["today"]),
        )
        fired = {}
        for card in cards:
            result = evaluate(card, record, hook)
            if result is not None:
                shown = render(result)
                fired[card.id] = {
                    "situation": result.situation.id,
                    "summary": shown["summary"],
                    "detail": shown["detail"],
                    "source": shown["source"]["label"],
                    "suggestions": len(shown.get("suggestions", [])),
                }
        out[chart["name"]] = {"rule": chart["rule"], "hook": hook, "cards": fired}
    return out


def compare(before: Path, after: Path) -> str:
    def summaries(tree: Path) -> dict:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "run", "--tree", str(tree)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
        )
        return json.loads(done.stdout)

    old, new = summaries(before), summaries(after)
    lines = []
    for name, chart in new.items():
        lines.append(f"### {name} ({chart['hook']}; {chart['rule']})\n")
        ids = [c for c in CARD_IDS if c in chart["cards"] or c in old[name]["cards"]]
        if not ids:
            lines.append("- no card, before or after\n")
        for cid in ids:
            b = old[name]["cards"].get(cid)
            a = chart["cards"].get(cid)
            lines.append(f"- **{cid}**")
            lines.append(f"  - before: {b['summary'] + ' (' + b['situation'] + ')' if b else '(does not fire)'}")
            lines.append(f"  - after: {a['summary'] + ' (' + a['situation'] + ')' if a else '(does not fire)'}")
            if a and b:
                lines.extend(_changed(b, a))
        lines.append("")
    return "\n".join(lines)


def _changed(before: dict, after: dict, limit: int = 6) -> list[str]:
    """The card's detail lines, source and suggestions that changed (as - / + lines)."""
    old = [x for x in before["detail"].splitlines() if x.strip()]
    new = [x for x in after["detail"].splitlines() if x.strip()]
    out = []
    gone = [x for x in old if x not in new][:limit]
    added = [x for x in new if x not in old][:limit]
    for mark, items in (("-", gone), ("+", added)):
        for x in items:
            x = " ".join(x.split())
            out.append(f"    {mark} {x[:400] + ('...' if len(x) > 400 else '')}")
    if before["source"] != after["source"]:
        out.append(f"    source: {before['source']} -> {after['source']}")
    if before["suggestions"] != after["suggestions"]:
        out.append(f"    suggestions: {before['suggestions']} -> {after['suggestions']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("export", "run", "compare"))
    parser.add_argument("--tree", type=Path)
    parser.add_argument("--before", type=Path)
    parser.add_argument("--after", type=Path)
    args = parser.parse_args()
    if args.what == "export":
        export()
    elif args.what == "run":
        print(json.dumps(run(args.tree.resolve()), indent=1))
    else:
        print(compare(args.before.resolve(), args.after.resolve()))


if __name__ == "__main__":
    main()
