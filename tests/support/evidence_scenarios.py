"""A patient for every card type and situation whose evidence page draws something
different: what the page and the browser tests render (issue 17)."""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.clinical.evaluate import CardResult
from support.chart import BONE_METASTASIS, CHEMODENERVATION, HYPERTENSION, MVD, MWA_THORACIC, RFA, Chart

TODAY = "2025-08-01"


@dataclass(frozen=True)
class Scenario:
    card_id: str
    hook: str
    situation: str  # the card file's situation the page is for (as of issue 17; not asserted)
    chart: Chart

    def result(self) -> CardResult:
        result = self.chart.result(self.card_id, self.hook, today=TODAY)
        assert result is not None, f"{self.card_id} does not fire"
        return result


def scenarios() -> dict[str, Scenario]:
    amr = Chart().hfs(onset="2018-01-01").mvd("2025-06-01T08:00:00Z", "2025-06-01T11:00:00Z")
    amr.local_observation("amr-intraop-result", "2025-06-01T10:30:00Z", valueString="persisted")
    return {
        "rfa-after": Scenario(
            "rfa-recurrence",
            "patient-view",
            "after-rfa",
            Chart().hfs(onset="2019-03-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z"),
        ),
        "rfa-past-last-point": Scenario(
            "rfa-recurrence",
            "patient-view",
            "after-rfa",
            Chart().hfs(onset="2019-03-01").rfa("2024-03-10T08:00:00Z", "2024-03-10T08:45:00Z"),
        ),
        "rfa-order": Scenario("rfa-recurrence", "order-select", "rfa-ordered", Chart().hfs().hypertension().order(RFA)),
        "amr-after-mvd": Scenario("amr-persistence", "patient-view", "after-mvd-first-months", amr),
        "amr-order": Scenario(
            "amr-persistence", "order-select", "mvd-ordered", Chart().hfs(onset="2019-05-01").order(MVD)
        ),
        "mvd-spasm-free": Scenario(
            "mvd-recurrence",
            "patient-view",
            "spasm-free-to-five-years",
            Chart().hfs(onset="2015-01-01", status="resolved").mvd("2022-08-01T08:00:00Z").hypertension("2010-01-01"),
        ),
        "mvd-spasm-back": Scenario(
            "mvd-recurrence",
            "patient-view",
            "persistent-after-mvd",
            Chart().hfs(onset="2015-01-01").mvd("2022-08-01T08:00:00Z").hfs(onset="2024-10-01", status="recurrence"),
        ),
        "mvd-after-revision": Scenario(
            "mvd-recurrence",
            "patient-view",
            "spasm-free-first-year",
            Chart()
            .hfs(onset="2015-01-01", status="resolved")
            .mvd("2020-03-01T08:00:00Z")
            .mvd("2025-01-15T08:00:00Z")
            .hypertension("2010-01-01"),
        ),
        "mvd-revision-ordered": Scenario(
            "mvd-recurrence",
            "order-sign",
            "revision-ordered",
            Chart()
            .hfs(onset="2015-01-01")
            .mvd("2022-08-01T08:00:00Z")
            .hfs(onset="2024-10-01", status="recurrence")
            .order(MVD),
        ),
        "btxa-order": Scenario(
            "btxa-response",
            "order-select",
            "btxa-ordered",
            Chart().hfs().condition(HYPERTENSION, onset="2015-06-01").order(CHEMODENERVATION),
        ),
        "mwa-pain": Scenario(
            "spinal-metastasis-mwa",
            "patient-view",
            "painful-metastasis",
            Chart().condition(BONE_METASTASIS, onset="2025-01-01").pain("2025-07-20T09:00:00Z", 7),
        ),
        "mwa-order": Scenario(
            "spinal-metastasis-mwa",
            "order-sign",
            "mwa-ordered",
            Chart().condition(BONE_METASTASIS, onset="2025-01-01").pain("2025-07-20T09:00:00Z", 7).order(MWA_THORACIC),
        ),
    }
