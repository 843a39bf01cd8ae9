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
from cds_service.content.model_report import REPORT_FORMAT, ModelReport, build_report
from cds_service.formatting import NOT_AVAILABLE, exact, number, significant

__all__ = ["REPORT_FORMAT", "calibration_svg", "overlay_text", "report_html", "report_json"]


# ---------------------------------------------------------------------------- overlay
def overlay_text(report: dict | ModelReport) -> str:
    """The `[models.<card-id>]` table of the site overlay, with provenance as comments."""
    report = _read(report)
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
def report_json(report: dict | ModelReport) -> str:
    """The report's JSON, validated with the one declared format first (pydantic
    ValidationError: the reader would refuse it, so it is not written)."""
    return (report if isinstance(report, ModelReport) else build_report(report)).to_json()


def _read(report: dict | ModelReport) -> dict:
    """The report as the reader sees it: validated, as plain data."""
    validated = report if isinstance(report, ModelReport) else build_report(report)
    return validated.model_dump(mode="json")


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
def report_html(report: dict | ModelReport, svg: str | None) -> str:
    """The report for people (templates/model_report.html.j2, autoescaped): the rows are
    prepared here as plain text; the SVG is this module's calibration plot, whose text is
    escaped where it is built."""
    r = _read(report)
    model = r["model"]
    horizon = r["calibration"].get("horizon") if svg else None
    return (
        pages.render(
            "model_report.html.j2",
            card_id=r["card"]["id"],
            status=r["status"],
            message=r["message"],
            outcome=f"{model['outcome']} ({model['kind']} model"
            + (f", time in {model['time_unit']}" if model.get("time_unit") else "")
            + ").",
            model_card=_model_card_rows(r),
            predictor_definitions=[
                [p["label"], p["definition"], p["coding"]] for p in r["model_card"]["predictor_definitions"]
            ],
            sample_size_rule=r["minimums"]["sample_size_rule"] or "not stated",
            checks=[
                [c["name"], _fmt(c["value"]), c["required"], "yes" if c["passed"] else "NO"]
                for c in r["minimums"]["checks"]
            ],
            cohort=_cohort_rows(r),
            coefficients=[
                [
                    c["label"] or c["predictor"],
                    c["coding_text"] or "",
                    _fmt(c["estimate"]),
                    f"{_fmt(c['ci_low'])} to {_fmt(c['ci_high'])}",
                    f"{_fmt(c['ratio'])} ({_fmt(c['ratio_ci_low'])}-{_fmt(c['ratio_ci_high'])})",
                    _published(c.get("published")),
                ]
                for c in r["coefficients"]
            ],
            ratio_name="Hazard ratio" if model["kind"] == "cox" else "Odds ratio",
            intercept=_intercept(r),
            baseline=_baseline(r),
            performance=_performance(r),
            subgroups=[
                [
                    f"{g['by']}: {g['level']}",
                    g["n"],
                    g["events"],
                    g["note"] or _interval(g["observed_expected"]),
                    g["note"] or _interval(g["c_statistic"]),
                ]
                for g in r["subgroups"]
            ],
            monitoring=[_monitoring_run(run) for run in r["monitoring"]],
            svg=Markup(svg) if svg else None,
            horizon=f"Risk by {_fmt(horizon)} {model['time_unit']}; observed by Kaplan-Meier."
            if horizon is not None
            else "",
            ranges=[[pid, _range(v)] for pid, v in r["predictor_ranges"].items()],
            provenance=_provenance_rows(r),
        )
        + "\n"
    )


def _model_card_rows(r: dict) -> list[list]:
    """The TRIPOD+AI items of a deployed model (content/model_report.py)."""
    m = r["model_card"]
    a = r.get("approval")
    rng = m["data_range"]
    rows = [
        ["Intended use", m["intended_use"]],
        ["Intended users", m["intended_users"]],
        ["Setting", m["setting"]],
        ["Data source", r["provenance"]["fhir_server"]],
        ["Index dates", f"{rng['first_index'] or NOT_AVAILABLE} to {rng['last_index'] or NOT_AVAILABLE}"],
        ["Outcome", m["outcome_definition"]],
        ["Missing inputs", m["missing_inputs"]],
        ["Updating policy", m["updating_policy"]],
        [
            "Approved for deployment",
            f"by {a['approved_by']} on {a['approved_at']}" + (f" ({a['note']})" if a.get("note") else "")
            if a
            else "NOT APPROVED (cds-service approve)",
        ],
    ]
    if r.get("recalibration"):
        c = r["recalibration"]
        rows.append(
            [
                "Recalibration",
                f"of version {c['of_version']}: intercept {_fmt(c['intercept'])}, slope {_fmt(c['slope'])} "
                f"({c['events']} events)",
            ]
        )
    return rows


def _cohort_rows(r: dict) -> list[list]:
    counts = r["counts"]
    rows = [
        ["Patients in the extraction", _fmt(counts["patients_scanned"])],
        ["With the index event", _fmt(counts["with_index_event"])],
        ["Included", counts["included"]],
        ["Events", counts["events"]],
        ["Predictor parameters", _fmt(counts["predictors"])],
        ["Events per predictor parameter", _fmt(counts["events_per_predictor"])],
    ]
    rows += [[f"Excluded: {reason}", n] for reason, n in counts["excluded"].items()]
    if r.get("follow_up"):
        f = r["follow_up"]
        rows.append([f"Follow-up ({f['unit']}): median / max", f"{_fmt(f['median'])} / {_fmt(f['max'])}"])
    return rows


def _intercept(r: dict) -> str:
    if not (r["coefficients"] and r.get("intercept")):
        return ""
    i = r["intercept"]
    return f"Intercept {_fmt(i['estimate'])} (95 % CI {_fmt(i['ci_low'])} to {_fmt(i['ci_high'])})."


def _baseline(r: dict) -> dict | None:
    b = r.get("baseline_survival")
    if not b:
        return None
    return {
        "reference_label": b["reference_label"],
        "header": [f"Time ({r['model']['time_unit']})", "Event-free", "Note"],
        "rows": [[h, _fmt(v), "" if v is not None else "beyond the follow-up of the data"] for h, v in b["at"].items()],
    }


def _performance(r: dict) -> dict | None:
    p = r.get("performance")
    if not p or all(v is None for v in p.values()):
        return None
    return {
        "rows": [
            ["C-statistic", _fmt(p["c_statistic_apparent"]), _fmt(p["c_statistic_optimism_corrected"])],
            [
                "Calibration slope",
                _fmt(p["calibration_slope_apparent"]),
                _fmt(p["calibration_slope_optimism_corrected"]),
            ],
            [
                f"Calibration intercept ({p['calibration_intercept_definition'] or NOT_AVAILABLE})",
                _fmt(p["calibration_intercept_apparent"]),
                _fmt(p["calibration_intercept_optimism_corrected"]),
            ],
        ],
        "bootstrap": f"Bootstrap: {_fmt(p['bootstrap_resamples'])} resamples "
        f"({_fmt(p['bootstrap_failed'])} could not be fitted).",
    }


def _monitoring_run(run: dict) -> dict:
    """One `cds-service monitor` run: its windows, the whole period, and the drift test."""
    rows = [
        [f"{w['start']} to {w['end']}", w["n"], w["events"], w["note"] or _interval(w["observed_expected"])]
        for w in run["windows"]
    ]
    rows.append([f"all since {run['since']}", run["n"], run["events"], _interval(run["observed_expected"])])
    d = run["drift"]
    drift = (
        f"Drift test: {d['method']} (false-alarm rate {number(d['alpha'])}); statistic {_fmt(d['statistic'])}, "
        f"threshold {_fmt(d['threshold'])}: {'ALARM' if d['alarm'] else 'no alarm'}. "
        f"Calibration slope {_interval(run['calibration_slope'])}; C-statistic {_fmt(run['c_statistic'])}."
    )
    return {"run_at": run["run_at"], "status": run["status"], "reason": run["reason"], "rows": rows, "drift": drift}


def _provenance_rows(r: dict) -> list[list]:
    prov = r["provenance"]
    extraction = prov["extraction"]
    d = r["definition"]
    return [
        ["FHIR server", prov["fhir_server"]],
        [
            "Extraction",
            f"{extraction['method']} ({extraction['level']} level), types " + ", ".join(extraction["types"])
            if extraction
            else NOT_AVAILABLE,
        ],
        ["Extraction started", _fmt(prov["extraction_started"])],
        ["Server transaction time", _fmt(extraction["transaction_time"] if extraction else None)],
        ["Report generated", prov["generated_at"]],
        ["Card", f"{r['card']['id']} {r['card']['version'] or ''}".rstrip()],
        ["Definition", f"{d['path']} {d['version']} (sha256 {d['sha256'][:12]})" if d else NOT_AVAILABLE],
        ["Code", ", ".join(f"{k} {v}" for k, v in prov["versions"].items())],
    ]


def _interval(i: dict | None) -> str:
    if not i or i.get("estimate") is None:
        return NOT_AVAILABLE
    if i.get("low") is None:
        return _fmt(i["estimate"])
    return f"{_fmt(i['estimate'])} ({_fmt(i['low'])} to {_fmt(i['high'])})"


def _published(p: dict | None) -> str:
    if not p:
        return "not published"
    text = _fmt(p["coefficient"])
    if p.get("ratio") is not None:
        text += f" (ratio {_fmt(p['ratio'])})"
    return text


def _range(v: dict) -> str:
    if v.get("prevalence") is not None:
        return f"{_fmt(v['present'])} of {v['n']} ({_fmt(100 * v['prevalence'])} %)"
    unit = f" {v['unit']}" if v.get("unit") else ""
    return f"{_fmt(v['min'])} to {_fmt(v['max'])}{unit}"


def _fmt(value) -> str:
    return significant(value)


# ---------------------------------------------------------------------------- rewriting a report
class ReportFileError(Exception):
    """A report file cannot be read or written. `reason` is safe to show (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_report_file(path) -> ModelReport:
    from pathlib import Path

    from pydantic import ValidationError

    try:
        return ModelReport.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise ReportFileError(f"{path}: not a model report of this version ({where}: {first['msg']})") from None


def write_report_files(report: ModelReport, json_path) -> None:
    """The JSON and, beside it, the HTML (named in `files`) of a changed report."""
    from pathlib import Path

    json_path = Path(json_path)
    svg = None
    if report.calibration.groups:
        svg = calibration_svg(
            [g.model_dump() for g in report.calibration.groups], f"Calibration of the {report.card.id} model"
        )
    html_name = report.files.report_html if report.files else json_path.name.replace(".json", ".html")
    json_path.write_text(report.to_json(), encoding="utf-8")
    (json_path.parent / html_name).write_text(report_html(report, svg), encoding="utf-8")


def approve(path, by: str, note: str | None, at: str) -> ModelReport:
    """Record that a person approved the report's model for deployment."""
    report = read_report_file(path)
    if report.status != "passed":
        raise ReportFileError(
            f"{path}: status {report.status!r}: only a model whose report passed its minimums can be approved"
        )
    if not by.strip():
        raise ReportFileError("--by: the approver's name is empty")
    data = report.model_dump(mode="json")
    data["approval"] = {"approved_by": by.strip(), "approved_at": at, "note": note}
    approved = build_report(data)
    write_report_files(approved, path)
    return approved
