"""The model report (JSON for machines, HTML with a server-side SVG calibration plot for
people) and the site-overlay entry of a learned model.

Nothing here sees a patient: the inputs are aggregates (counts, estimates, grouped
calibration points, predictor ranges). The overlay entry uses the site-overlay format the
service loads today (`[models.<card-id>]`: label, version, coefficients, coding, and for a
Cox model reference, reference_label and baseline_survival; for a logistic one intercept).
"""

from __future__ import annotations

import html
import json
import math

from markupsafe import Markup

from cds_service import pages
from cds_service.formatting import exact, significant

REPORT_FORMAT = "hfs-cds-learned-model-report/1"


# ---------------------------------------------------------------------------- overlay
def overlay_text(report: dict) -> str:
    """The `[models.<card-id>]` table of the site overlay, with provenance as comments."""
    card = report["card"]["id"]
    model = report["model"]
    prov = report["provenance"]
    lines = [
        f"# Learned by `cds-service learn {card}` ({prov['generated_at']}) from {prov['fhir_server']}",
        f"# Status: {report['status']}. Review the model report before deploying: {report['files']['report_html']}",
        "# Merge this table into the site overlay file (site_overlay setting).",
        f"[models.{card}]",
        f"label = {_str(model['label'])}",
        f"version = {_str(model['version'])}",
        "# The model's report, relative to the overlay file (keep them together, or edit the path).",
        f"report = {_str(report['files']['report_json'])}",
    ]
    coefficients = ", ".join(f"{_key(c['predictor'])} = {_num(c['estimate'])}" for c in report["coefficients"])
    lines.append(f"coefficients = {{ {coefficients} }}")
    if model["kind"] == "logistic":
        lines.append(f"intercept = {_num(report['intercept']['estimate'])}")
    else:
        lines.append(f"reference_label = {_str(report['baseline_survival']['reference_label'])}")
    for c in report["coefficients"]:
        if c["coding"] is not None:
            lines += [
                "",
                f"[models.{card}.coding.{_key(c['predictor'])}]",
                f"scale = {_num(c['coding']['scale'])}",
                f"offset = {_num(c['coding']['offset'])}",
            ]
    if model["kind"] == "cox":
        lines += ["", f"[models.{card}.reference]"]
        lines += [f"{_key(k)} = {_num(v)}" for k, v in report["baseline_survival"]["reference_coded"].items()]
        lines += ["", f"[models.{card}.baseline_survival]"]
        for horizon, value in report["baseline_survival"]["at"].items():
            if value is not None:
                lines.append(f"{_str(horizon)} = {_num(value)}")
    return "\n".join(lines) + "\n"


def _str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a TOML basic string


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else _str(name)


def _num(value: float) -> str:
    return exact(value)


# ---------------------------------------------------------------------------- JSON
def report_json(report: dict) -> str:
    return json.dumps(_finite(report), indent=2, ensure_ascii=False) + "\n"


def _finite(value):
    """NaN / infinity are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------- SVG
def calibration_svg(groups: list[dict], title: str) -> str:
    """Observed vs predicted risk by group, with the line of perfect calibration. Plain SVG."""
    size, pad = 360, 48
    top = max([0.1] + [g["predicted"] for g in groups] + [g["observed"] for g in groups])
    top = min(1.0, math.ceil(top * 10 + 0.5) / 10)
    span = size - 2 * pad

    def x(v: float) -> float:
        return pad + span * v / top

    def y(v: float) -> float:
        return size - pad - span * v / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" stroke="#888"/>',
        f'<line x1="{x(0):.1f}" y1="{y(0):.1f}" x2="{x(top):.1f}" y2="{y(top):.1f}" stroke="#888" '
        'stroke-dasharray="4 3"/>',
    ]
    ticks = 5
    for i in range(ticks + 1):
        v = top * i / ticks
        parts.append(f'<text x="{x(v):.1f}" y="{size - pad + 16}" font-size="11" text-anchor="middle">{v:.0%}</text>')
        parts.append(f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.0%}</text>')
    parts.append(
        f'<text x="{size / 2}" y="{size - 8}" font-size="12" text-anchor="middle">Predicted risk (mean of group)</text>'
    )
    parts.append(
        f'<text x="14" y="{size / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {size / 2})">Observed risk</text>'
    )
    for g in groups:
        parts.append(
            f'<circle cx="{x(g["predicted"]):.1f}" cy="{y(g["observed"]):.1f}" r="4" fill="#1f5fa8">'
            f"<title>n={g['n']}: predicted {g['predicted']:.1%}, observed {g['observed']:.1%}</title></circle>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------- HTML
def report_html(report: dict, svg: str | None) -> str:
    """The report for people (templates/model_report.html.j2, autoescaped); the SVG is
    this module's calibration plot, whose text is escaped where it is built."""
    r = _finite(report)
    model = r["model"]
    counts = r["counts"]
    cohort = [
        ["Patients in the extraction", counts["patients_scanned"]],
        ["With the index event", counts["with_index_event"]],
        ["Included", counts["included"]],
        ["Events", counts.get("events")],
        ["Predictor parameters", counts.get("predictors")],
        ["Events per predictor parameter", _fmt(counts.get("events_per_predictor"))],
    ]
    cohort += [[f"Excluded: {reason}", n] for reason, n in counts["excluded"].items()]
    if r.get("follow_up"):
        f = r["follow_up"]
        cohort.append([f"Follow-up ({f['unit']}): median / max", f"{_fmt(f['median'])} / {_fmt(f['max'])}"])
    coefficients = [
        [
            c["label"],
            c["coding_text"],
            _fmt(c["estimate"]),
            f"{_fmt(c['ci_low'])} to {_fmt(c['ci_high'])}",
            f"{_fmt(c['ratio'])} ({_fmt(c['ratio_ci_low'])}-{_fmt(c['ratio_ci_high'])})",
            _published(c.get("published")),
        ]
        for c in r.get("coefficients") or []
    ]
    intercept = ""
    if r.get("coefficients") and r.get("intercept"):
        i = r["intercept"]
        intercept = f"Intercept {_fmt(i['estimate'])} (95 % CI {_fmt(i['ci_low'])} to {_fmt(i['ci_high'])})."
    baseline = None
    if r.get("baseline_survival"):
        b = r["baseline_survival"]
        baseline = {
            "reference_label": b["reference_label"],
            "header": [f"Time ({model['time_unit']})", "Event-free", "Note"],
            "rows": [
                [h, _fmt(v), "" if v is not None else "beyond the follow-up of the data"] for h, v in b["at"].items()
            ],
        }
    performance = None
    if r.get("performance"):
        p = r["performance"]
        performance = {
            "rows": [
                ["C-statistic", _fmt(p["c_statistic_apparent"]), _fmt(p["c_statistic_optimism_corrected"])],
                [
                    "Calibration slope",
                    _fmt(p["calibration_slope_apparent"]),
                    _fmt(p["calibration_slope_optimism_corrected"]),
                ],
                [
                    f"Calibration intercept ({p['calibration_intercept_definition']})",
                    _fmt(p["calibration_intercept_apparent"]),
                    _fmt(p["calibration_intercept_optimism_corrected"]),
                ],
            ],
            "bootstrap": f"Bootstrap: {p['bootstrap_resamples']} resamples ({p['bootstrap_failed']} could not be fitted).",
        }
    horizon = r["calibration"].get("horizon") if svg else None
    prov = r["provenance"]
    provenance = [
        ["FHIR server", prov["fhir_server"]],
        [
            "Extraction",
            f"{prov['extraction']['method']} ({prov['extraction']['level']} level), types "
            + ", ".join(prov["extraction"]["types"]),
        ],
        ["Extraction started", prov["extraction_started"]],
        ["Server transaction time", prov["extraction"]["transaction_time"]],
        ["Report generated", prov["generated_at"]],
        ["Card", f"{r['card']['id']} {r['card']['version']}"],
        [
            "Definition",
            f"{r['definition']['path']} {r['definition']['version']} (sha256 {r['definition']['sha256'][:12]})",
        ],
        ["Code", ", ".join(f"{k} {v}" for k, v in prov["versions"].items())],
    ]
    return (
        pages.render(
            "model_report.html.j2",
            card_id=r["card"]["id"],
            status=r["status"],
            message=r["message"],
            outcome=f"{model['outcome']} ({model['kind']} model"
            + (f", time in {model['time_unit']}" if model.get("time_unit") else "")
            + ").",
            sample_size_rule=r["minimums"]["sample_size_rule"],
            checks=[
                [c["name"], _fmt(c["value"]), c["required"], "yes" if c["passed"] else "NO"]
                for c in r["minimums"]["checks"]
            ],
            cohort=cohort,
            coefficients=coefficients,
            ratio_name="Hazard ratio" if model["kind"] == "cox" else "Odds ratio",
            intercept=intercept,
            baseline=baseline,
            performance=performance,
            svg=Markup(svg) if svg else None,
            horizon=f"Risk by {_fmt(horizon)} {model['time_unit']}; observed by Kaplan-Meier."
            if horizon is not None
            else "",
            ranges=[[pid, _range(v)] for pid, v in (r.get("predictor_ranges") or {}).items()],
            provenance=provenance,
        )
        + "\n"
    )


def _published(p: dict | None) -> str:
    if not p:
        return "not published"
    text = f"{_fmt(p['coefficient'])}"
    if p.get("ratio") is not None:
        text += f" (ratio {_fmt(p['ratio'])})"
    return text


def _range(v: dict) -> str:
    if "prevalence" in v:
        return f"{v['present']} of {v['n']} ({_fmt(100 * v['prevalence'])} %)"
    unit = f" {v['unit']}" if v.get("unit") else ""
    return f"{_fmt(v['min'])} to {_fmt(v['max'])}{unit}"


def _fmt(value) -> str:
    return significant(value)
