"""The gapwatch Grafana dashboard as code (grafana-foundation-sdk, typed builders).

Regenerate the committed JSON after a change here:

    python -m deploy.grafana.gapwatch_dashboard            # writes deploy/grafana/dashboards/gapwatch.json
    python -m deploy.grafana.gapwatch_dashboard --check    # exit 1 when the committed JSON is stale

Metric names and label names are not written here: every selector names a metric object of
`streams.metrics.Metrics` (or a recording rule of deploy/prometheus/rules/gapwatch.rules.yml,
or a series Prometheus makes itself), and a matcher on a label the metric does not carry
fails the generation. Template variables are objects too, used both to define the variable
and in every query that filters on it.

A development tool: the worker never imports it (grafana-foundation-sdk is a `dev` extra).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import ascii_uppercase
from typing import Literal

import yaml
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from prometheus_client import CollectorRegistry, Counter, Gauge

from streams.metrics import Metrics

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUTPUT = HERE / "dashboards" / "gapwatch.json"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "gapwatch.rules.yml"
REGENERATE = "python -m deploy.grafana.gapwatch_dashboard"

# ------------------------------------------------------------------------------------------
# The metric contract: series and label matchers
# ------------------------------------------------------------------------------------------

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


@dataclass(frozen=True)
class Matcher:
    label: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def __str__(self) -> str:
        return f'{self.label}{self.op}"{self.value}"'


def eq(label: str, value: str) -> Matcher:
    return Matcher(label, "=", value)


def ne(label: str, value: str) -> Matcher:
    return Matcher(label, "!=", value)


def re_(label: str, value: str) -> Matcher:
    return Matcher(label, "=~", value)


@dataclass(frozen=True)
class Series:
    """A series name with the labels it carries; calling it renders a checked selector."""

    name: str
    labels: frozenset[str]

    def __call__(self, *matchers: Matcher) -> str:
        unknown = [m.label for m in matchers if m.label not in self.labels]
        if unknown:
            raise ValueError(f"{self.name} has no label {unknown} (labels: {sorted(self.labels)})")
        if not matchers:
            return self.name
        return f"{self.name}{{{', '.join(str(m) for m in matchers)}}}"

    def label(self, name: str) -> str:
        """A label name of this series, checked (for `by (...)` and `label_values`)."""
        if name not in self.labels:
            raise ValueError(f"{self.name} has no label {name!r} (labels: {sorted(self.labels)})")
        return name


def worker_series(metric: Counter | Gauge) -> Series:
    """The series a prometheus_client metric of the worker exposes (counters gain `_total`)."""
    # prometheus_client keeps name, type and label names on the metric object.
    name: str = metric._name
    labels: tuple[str, ...] = metric._labelnames
    suffix = "_total" if metric._type == "counter" else ""
    return Series(name + suffix, frozenset(labels) | TARGET_LABELS)


def recorded_series(record: str) -> Series:
    """A recording rule of deploy/prometheus/rules/gapwatch.rules.yml, with the labels it keeps."""
    labels: set[str] | None = None
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("record") != record:
                continue
            labels = (labels or set()) | set(rule.get("labels", {}))
            for grouping in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
                labels |= {x.strip() for x in grouping.split(",") if x.strip()}
    if labels is None:
        raise ValueError(f"no recording rule {record} in {RULES.relative_to(ROOT)}")
    return Series(record, frozenset(labels) | TARGET_LABELS)


# The worker's metrics, built on a throwaway registry: names and labels come from streams/metrics.py.
M = Metrics(CollectorRegistry())
CONSUMED = worker_series(M.consumed)
INVALID = worker_series(M.invalid)
REDELIVERED = worker_series(M.redelivered)
LATE = worker_series(M.late)
BACKEND = worker_series(M.backend)
PLATFORM_EVENTS = worker_series(M.platform)
DUPLICATES = worker_series(M.duplicates)
WATERMARK_LAG = worker_series(M.watermark_lag)
CONSUMER_LAG = worker_series(M.consumer_lag)
WINDOWS_CLOSED = worker_series(M.windows_closed)
SEGMENT_RATIO = worker_series(M.segment_ratio)
SEGMENT_BASELINE = worker_series(M.segment_baseline)
SEGMENT_BASELINE_LOW = worker_series(M.segment_baseline_low)
SEGMENT_BASELINE_HIGH = worker_series(M.segment_baseline_high)
EVIDENCE = worker_series(M.evidence)
ACTIVE_GAPS = worker_series(M.active_gaps)
ALERTS_TOTAL = worker_series(M.alerts)
CHANGE_TS = worker_series(M.change_ts)
BUILD_INFO = worker_series(M.build_info)
# Recording rules and the series Prometheus makes itself.
RATIO_1H = recorded_series("gapwatch:platform_backend_ratio:1h")
UP = Series("up", TARGET_LABELS)
ALERTS = Series("ALERTS", frozenset({"alertname", "alertstate", "severity"}))

WORKER_JOB = "gapwatch-worker"  # the scrape job of deploy/prometheus/prometheus.yml

# ------------------------------------------------------------------------------------------
# Template variables
# ------------------------------------------------------------------------------------------

PROMETHEUS = "prometheus"
# The data source deploy/grafana/provisioning/datasources/prometheus.yml provisions.
PROVISIONED_DATASOURCE_UID = "gapwatch-prometheus"
DS = dm.DataSourceRef(type_val=PROMETHEUS, uid="${datasource}")


@dataclass(frozen=True)
class Var:
    """A query variable over one label of a series (`label_values(series{filters}, label)`)."""

    name: str
    title: str
    source: Series
    filters: tuple[Var, ...] = ()
    multi: bool = True
    default: str | None = None  # single-value variables: the value selected on load
    regex: str = ""

    @property
    def ref(self) -> str:
        return f"${self.name}"

    def matches(self) -> Matcher:
        """`label=~"$var"`: right for All (`.*`), several values and one value alike."""
        return re_(self.name, self.ref)

    def equals(self) -> Matcher:
        return eq(self.name, self.ref)

    def query(self) -> str:
        return f"label_values({self.source(*(f.matches() for f in self.filters))}, {self.source.label(self.name)})"

    def builder(self) -> PromQueryVariable:
        query = self.query()
        var = (
            PromQueryVariable(self.name)
            .label(self.title)
            .datasource(DS)
            .query({"query": query, "refId": f"{self.name}-var", "qryType": 1})
            .definition(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .regex(self.regex)
            .multi(self.multi)
            .include_all(self.multi)
        )
        if self.multi:
            var.all_value(".*").current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        else:
            assert self.default is not None, self.name
            var.current(dm.VariableOption(selected=True, text=self.default, value=self.default))
        return var


class _PromQueryVariableModel(dm.VariableModel):
    """The SDK's VariableModel plus `definition`: the query text Grafana's editor shows."""

    definition: str = ""

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {}
        for key, value in super().to_json().items():
            payload[key] = value
            if key == "query":  # where Grafana itself writes it
                payload["definition"] = self.definition
        return payload


class PromQueryVariable(db.QueryVariable):
    _internal: _PromQueryVariableModel

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._internal = _PromQueryVariableModel(type_val=dm.VariableType.QUERY, name=name)

    def definition(self, query: str) -> PromQueryVariable:
        self._internal.definition = query
        return self


NO_ROLLUP = "/^[^*]+$/"  # hide the rollup value `*` from the browser / region pickers

PLATFORM = Var("platform", "Platform", SEGMENT_RATIO)
EVENT_NAME = Var("event_name", "Event", SEGMENT_RATIO, (PLATFORM,), multi=False, default="purchase")
METRIC = Var("metric", "Metric", SEGMENT_RATIO, (PLATFORM, EVENT_NAME), multi=False, default="count_ratio")
BROWSER = Var("browser", "Browser", SEGMENT_RATIO, (PLATFORM, EVENT_NAME), regex=NO_ROLLUP)
REGION = Var("region", "Region", SEGMENT_RATIO, (PLATFORM, EVENT_NAME), regex=NO_ROLLUP)
VARIABLES = (PLATFORM, EVENT_NAME, METRIC, BROWSER, REGION)

ROLLUP = "*"  # the browser / region value of a rollup segment (all browsers, all regions)
RATE = "$__rate_interval"
RANGE = "$__range"


def by(series: Series, *labels: str) -> str:
    return ", ".join(series.label(name) for name in labels)


# ------------------------------------------------------------------------------------------
# Annotations
# ------------------------------------------------------------------------------------------


class _PromAnnotationModel(dm.AnnotationQuery):
    """A Prometheus annotation query: the SDK's AnnotationQuery lacks the Prometheus fields."""

    step: str = "1m"
    use_value_for_time: bool = False
    title_format: str = ""
    text_format: str = ""
    tag_keys: str = ""

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.pop("builtIn", None)
        payload.update({
            "step": self.step, "useValueForTime": self.use_value_for_time,
            "titleFormat": self.title_format, "textFormat": self.text_format, "tagKeys": self.tag_keys,
        })
        return payload


class PromAnnotation(db.AnnotationQuery):
    _internal: _PromAnnotationModel

    def __init__(self, name: str, expr: str) -> None:
        super().__init__()
        self._internal = _PromAnnotationModel(name=name, datasource=DS, expr=expr)

    def use_value_for_time(self, value: bool) -> PromAnnotation:
        self._internal.use_value_for_time = value
        return self

    def title_format(self, value: str) -> PromAnnotation:
        self._internal.title_format = value
        return self

    def text_format(self, value: str) -> PromAnnotation:
        self._internal.text_format = value
        return self

    def tag_keys(self, *labels: str) -> PromAnnotation:
        self._internal.tag_keys = ",".join(labels)
        return self


def annotation_queries() -> list[Builder[dm.AnnotationQuery]]:
    builtin = (
        db.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .built_in(1)
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
    )
    changes = (
        PromAnnotation("Changes", f"max by ({by(CHANGE_TS, 'kind', 'service')}) ({CHANGE_TS()}) * 1000")
        .enable(True).hide(False).icon_color("orange")
        .use_value_for_time(True)  # the value is the change time, in ms for Grafana
        .title_format("{{kind}} {{service}}")
        .text_format("change: {{kind}} on {{service}}")
        .tag_keys("kind", "service")
    )
    prom_alerts = (
        PromAnnotation("Prometheus alerts", ALERTS(re_("alertname", "Gapwatch.*"), eq("alertstate", "firing")))
        .enable(False).hide(False).icon_color("red")
        .title_format("{{alertname}}")
        .text_format("{{platform}} {{event_name}} {{topic}} {{instance}}")
        .tag_keys("alertname", "severity")
    )
    return [builtin, changes, prom_alerts]


# ------------------------------------------------------------------------------------------
# Panels
# ------------------------------------------------------------------------------------------

Steps = Sequence[tuple[float | None, str]]


def thresholds(steps: Steps) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def fixed(color: str) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="color", value=dm.FieldColor(mode=dm.FieldColorModeId.FIXED, fixed_color=color))


def prop(id_: str, value: object) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val=id_, value=value)


def target(expr: str, legend: str = "__auto", *, instant: bool = False) -> prom.Dataquery:
    query = prom.Dataquery().datasource(DS).expr(expr).legend_format(legend)
    if instant:
        return query.instant().format(PromQueryFormat.TABLE)
    return query.range()


def stat_panel(title: str, description: str, expr: str, unit: str, steps: Steps) -> stat.Panel:
    return (
        stat.Panel()
        .title(title).description(description).datasource(DS)
        .unit(unit).thresholds(thresholds(steps))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .text_mode(common.BigValueTextMode.VALUE)
        .targets(_ref_ids([target(expr)]))
    )


def ts_panel(
    title: str, description: str, targets: Sequence[prom.Dataquery], unit: str = "short",
    *, line_width: float = 2, fill_opacity: float = 0,
) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title).description(description).datasource(DS)
        .unit(unit).min(0)
        .line_width(line_width).fill_opacity(fill_opacity)
        .show_points(common.VisibilityMode.NEVER).span_nulls(True)
        .legend(
            VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .show_legend(True)
            .placement(common.LegendPlacement.RIGHT)
            .calcs(["lastNotNull"])
        )
        .tooltip(VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
        .targets(_ref_ids(targets))
    )


def table_panel(
    title: str, description: str, targets: Sequence[prom.Dataquery], unit: str, rename: dict[str, str],
    *, merge: bool = False, sort_desc_by: str | None = None,
) -> table.Panel:
    """A table of instant queries: the time column dropped, value columns renamed."""
    steps = [dm.DataTransformerConfig(id_val="merge", options={})] if merge else []
    steps.append(dm.DataTransformerConfig(
        id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": rename},
    ))
    if sort_desc_by is not None:
        steps.append(dm.DataTransformerConfig(
            id_val="sortBy", options={"sort": [{"field": sort_desc_by, "desc": True}]},
        ))
    return (
        table.Panel()
        .title(title).description(description).datasource(DS)
        .unit(unit)
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .transformations(steps)
        .targets(_ref_ids(targets))
    )


def _ref_ids(targets: Sequence[prom.Dataquery]) -> list[Builder[Dataquery]]:
    """refId A, B, C, ... in order (the table transformations name columns after them)."""
    assert len(targets) <= len(ascii_uppercase)
    return [query.ref_id(ref) for ref, query in zip(ascii_uppercase, targets, strict=False)]


# ------------------------------------------------------------------------------------------
# Layout: rows of the grid, filled left to right; panel ids in order
# ------------------------------------------------------------------------------------------


PanelBuilder = stat.Panel | timeseries.Panel | table.Panel


class Grid:
    def __init__(self, dash: db.Dashboard) -> None:
        self.dash = dash
        self.y = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self.dash.with_row(
            db.Row(title).id(self._id()).grid_pos(dm.GridPos(h=1, w=24, x=0, y=self.y))
        )
        self.y += 1

    def line(self, height: int, *panels: tuple[PanelBuilder, int]) -> None:
        x = 0
        for panel, width in panels:
            panel.id(self._id()).grid_pos(dm.GridPos(h=height, w=width, x=x, y=self.y))
            self.dash.with_panel(panel)
            x += width
        assert x <= 24, f"line at y={self.y} is {x} columns wide"
        self.y += height

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


# ------------------------------------------------------------------------------------------
# The dashboard
# ------------------------------------------------------------------------------------------

DESCRIPTION = (
    "Is each ad platform still seeing the same reality as the backend? Ratios per platform, "
    "browser and region with their baselines, gaps, alerts and pipeline health."
)


def build() -> db.Dashboard:
    dash = (
        db.Dashboard("gapwatch: tracking gaps")
        .uid("gapwatch")
        .tags(["gapwatch"])
        .editable()
        .description(DESCRIPTION)
        .version(1)
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .timezone("")
        .time("now-24h", "now")
        .links([])
        .annotations(annotation_queries())
    )
    datasource = (
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type(PROMETHEUS)
        .current(dm.VariableOption(selected=False, text="Prometheus", value=PROVISIONED_DATASOURCE_UID))
        .hide(dm.VariableHide.DONT_HIDE)
        .regex("")
    )
    datasource.build().refresh = dm.VariableRefresh.ON_DASHBOARD_LOAD  # no builder method for it
    dash.with_variable(datasource)
    for var in VARIABLES:
        dash.with_variable(var.builder())
    grid = Grid(dash)
    overview(grid)
    ratios(grid)
    gaps_and_alerts(grid)
    pipeline_health(grid)
    return dash


def overview(grid: Grid) -> None:
    gaps_by = by(ACTIVE_GAPS, "platform", "event_name", "metric", "direction")
    consumed = f"sum(rate({CONSUMED()}[{RATE}]))"
    grid.row("Overview")
    grid.line(
        4,
        (stat_panel(
            "Active tracking gaps",
            "Gap alerts currently firing (segments of the selected platforms and event names).",
            f"sum(max by ({gaps_by}) ({ACTIVE_GAPS(PLATFORM.matches(), EVENT_NAME.matches())})) or vector(0)",
            "short", [(None, "green"), (1, "red")],
        ), 4),
        (stat_panel(
            "Alerts fired in range",
            "Gap alerts that started firing in the dashboard's time range.",
            f"sum(increase({ALERTS_TOTAL(PLATFORM.matches(), eq('status', 'firing'))}[{RANGE}])) or vector(0)",
            "short", [(None, "green"), (1, "orange")],
        ).decimals(0), 4),
        (stat_panel(
            "Events / s",
            "Messages consumed per second over all topics and workers.",
            consumed, "reqps", [(None, "green")],
        ), 4),
        (stat_panel(
            "Invalid (DLQ) share",
            "Share of consumed messages that failed validation and went to gapwatch-dlq.",
            f"(sum(rate({INVALID()}[{RATE}])) or vector(0)) / {consumed}",
            "percentunit", [(None, "green"), (0.01, "orange"), (0.05, "red")],
        ), 4),
        (stat_panel(
            "Workers up",
            "Worker replicas Prometheus can scrape. More workers than partitions of the event topics sit idle.",
            f"sum({UP(eq('job', WORKER_JOB))})",
            "short", [(None, "red"), (1, "green")],
        ), 4),
        (stat_panel(
            "Watermark lag",
            "Wall clock minus the lowest event-time watermark: how far behind real time the closed "
            "windows are (large during replays and backfills).",
            f"max({WATERMARK_LAG()})",
            "s", [(None, "green"), (1800, "orange"), (7200, "red")],
        ), 4),
    )


def ratios(grid: Grid) -> None:
    seg = (PLATFORM.matches(), EVENT_NAME.matches())
    rollup = (eq("browser", ROLLUP), eq("region", ROLLUP))
    platform_band = ts_panel(
        f"{PLATFORM.ref}: ratio vs baseline band",
        "Platform/backend ratio of the last closed window of the whole platform segment (all "
        "browsers, regions), with the detector's baseline and its interval. A sustained move out "
        "of the band is what the detector alarms on. The dotted line is the recording rule over "
        "raw arrivals (pixel and capi copies both count): a cross-check only.",
        [
            target(f"max({SEGMENT_RATIO(*seg, *rollup, METRIC.equals())})", "ratio"),
            target(f"max({SEGMENT_BASELINE(*seg, *rollup, METRIC.equals())})", "baseline"),
            target(f"max({SEGMENT_BASELINE_LOW(*seg, *rollup, METRIC.equals())})", "baseline low"),
            target(f"max({SEGMENT_BASELINE_HIGH(*seg, *rollup, METRIC.equals())})", "baseline high"),
            target(
                f"max({RATIO_1H(*seg, *rollup, METRIC.equals(), eq('level', 'platform'))})",
                "raw arrivals, 1h",
            ),
        ],
    )
    (
        platform_band
        .override_by_name("baseline high", [
            prop("custom.fillBelowTo", "baseline low"),
            prop("custom.fillOpacity", 25),
            prop("custom.lineWidth", 0),
            fixed("green"),
        ])
        .override_by_name("baseline low", [prop("custom.lineWidth", 0), fixed("green")])
        .override_by_name("baseline", [
            prop("custom.lineStyle", common.LineStyle(fill="dash", dash=[10, 10])),
            fixed("green"),
        ])
        .override_by_name("ratio", [fixed("blue"), prop("custom.lineWidth", 3)])
        .override_by_name("raw arrivals, 1h", [
            prop("custom.lineStyle", common.LineStyle(fill="dot")),
            fixed("purple"),
            prop("custom.lineWidth", 1),
        ])
        .repeat(PLATFORM.name).repeat_direction("h").max_per_row(2)
    )
    by_browser = ts_panel(
        "Ratio by browser",
        "Drill-down: the platform x browser segments. A gap that only one browser shows (Safari "
        "ITP, a consent banner on iOS) stands out here.",
        [target(
            f"max by ({by(SEGMENT_RATIO, 'platform', 'browser')}) ({SEGMENT_RATIO(*seg, BROWSER.matches(), ne('browser', ROLLUP), eq('region', ROLLUP), METRIC.equals())})",
            "{{platform}} {{browser}}",
        )],
    )
    by_region = ts_panel(
        "Ratio by region",
        "Drill-down: the platform x region segments (consent regimes differ by region).",
        [target(
            f"max by ({by(SEGMENT_RATIO, 'platform', 'region')}) ({SEGMENT_RATIO(*seg, eq('browser', ROLLUP), REGION.matches(), ne('region', ROLLUP), METRIC.equals())})",
            "{{platform}} {{region}}",
        )],
    )
    segment = by(SEGMENT_RATIO, "platform", "event_name", "browser", "region")
    per_segment = (*seg, METRIC.equals())
    segments = table_panel(
        "Segments: ratio vs baseline",
        "Every segment the detectors track (the platform, each browser, each region; * = all) with "
        "its current ratio, baseline interval and detector evidence (>= 1 alarms), most suspicious "
        "first. Which segments moved and which did not is the localisation of a gap.",
        [
            target(
                f"max by ({segment}) ({SEGMENT_RATIO(*per_segment)}) and on ({segment}) "
                f"max by ({segment}) ({SEGMENT_BASELINE(*per_segment)})",
                instant=True,
            ),
            target(f"max by ({segment}) ({SEGMENT_BASELINE_LOW(*per_segment)})", instant=True),
            target(f"max by ({segment}) ({SEGMENT_BASELINE_HIGH(*per_segment)})", instant=True),
            target(f"max by ({segment}) ({EVIDENCE(*per_segment)})", instant=True),
        ],
        "short",
        {"Value #A": "ratio", "Value #B": "baseline low", "Value #C": "baseline high", "Value #D": "evidence"},
        merge=True, sort_desc_by="evidence",  # most suspicious first
    )
    segments.override_by_name("evidence", [
        prop("custom.cellOptions", common.TableColoredBackgroundCellOptions()),
        prop("thresholds", thresholds([(None, "green"), (0.5, "orange"), (1, "red")]).build()),
    ])
    evidence = ts_panel(
        "Detector evidence (top 10 segments)",
        "Detector statistic relative to its calibrated threshold; 1 is the alarm line.",
        [target(
            f"topk(10, max by ({by(EVIDENCE, 'platform', 'browser', 'region')}) ({EVIDENCE(*per_segment)}))",
            "{{platform}} {{browser}} {{region}}",
        )],
        line_width=1,
    )
    evidence.thresholds_style(GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE))
    evidence.thresholds(thresholds([(None, "transparent"), (1, "red")]))
    leaves = ts_panel(
        "Browser x region drill-down",
        "Leaf segments (one browser in one region) of the selected browsers and regions. Too sparse "
        "for their own detector; use them to see where inside a browser or region a gap sits.",
        [target(
            f"max by ({by(SEGMENT_RATIO, 'platform', 'browser', 'region')}) ({SEGMENT_RATIO(*seg, BROWSER.matches(), REGION.matches(), ne('browser', ROLLUP), ne('region', ROLLUP), METRIC.equals())})",
            "{{platform}} {{browser}} {{region}}",
        )],
    )
    grid.row("Platform / backend ratio")
    grid.line(9, (platform_band, 12))  # repeated per platform, two per line
    grid.line(9, (by_browser, 12), (by_region, 12))
    grid.line(9, (segments, 14), (evidence, 10))
    grid.line(8, (leaves, 24))


def gaps_and_alerts(grid: Grid) -> None:
    gap = by(ACTIVE_GAPS, "platform", "event_name", "metric", "direction")
    active = ts_panel(
        "Active gaps",
        "1 while a gap alert is firing for that platform, event name, metric and direction.",
        [target(
            f"max by ({gap}) ({ACTIVE_GAPS(PLATFORM.matches(), EVENT_NAME.matches())})",
            "{{platform}} {{event_name}} {{metric}} {{direction}}",
        )],
        fill_opacity=30,
    ).line_interpolation(common.LineInterpolation.STEP_AFTER).max(1)
    recent = table_panel(
        "Recent alerts (in range)",
        "Alerts emitted in the dashboard's time range by platform, verdict (tracking_gap / "
        "business_change / inconclusive), direction and status. Full alerts: gap-alerts topic and Slack.",
        [target(
            f"sort_desc(sum by ({by(ALERTS_TOTAL, 'platform', 'verdict', 'direction', 'status')}) "
            f"(increase({ALERTS_TOTAL(PLATFORM.matches())}[{RANGE}])))",
            instant=True,
        )],
        "none", {"Value": "alerts"},
    )
    per_hour = ts_panel(
        "Alerts per hour", "",
        [target(
            f"sum by ({by(ALERTS_TOTAL, 'platform', 'verdict', 'status')}) (increase({ALERTS_TOTAL(PLATFORM.matches())}[1h]))",
            "{{platform}} {{verdict}} {{status}}",
        )],
    )
    changes = table_panel(
        "Last change events",
        "Time of the last change (deploy, tag publish, consent update, ...) per kind and service; "
        "they are also drawn as annotations on every time series.",
        [target(f"sort_desc(max by ({by(CHANGE_TS, 'kind', 'service')}) ({CHANGE_TS()})) * 1000", instant=True)],
        "dateTimeAsIso", {"Value": "last change"},
    )
    grid.row("Gaps and alerts")
    grid.line(8, (active, 12), (recent, 12))
    grid.line(7, (per_hour, 12), (changes, 12))


def pipeline_health(grid: Grid) -> None:
    throughput = ts_panel(
        "Throughput by topic", "",
        [target(f"sum by ({by(CONSUMED, 'topic')}) (rate({CONSUMED()}[{RATE}]))", "{{topic}}")],
        "reqps",
    )
    events = ts_panel(
        "Platform vs backend events",
        "Valid events per second by arrival time (platform events raw, before pixel/server dedupe).",
        [
            target(
                f"sum by ({by(PLATFORM_EVENTS, 'platform')}) (rate({PLATFORM_EVENTS(PLATFORM.matches(), EVENT_NAME.matches(), BROWSER.matches(), REGION.matches())}[{RATE}]))",
                "{{platform}}",
            ),
            target(
                f"sum(rate({BACKEND(EVENT_NAME.matches(), BROWSER.matches(), REGION.matches())}[{RATE}]))",
                "backend",
            ),
        ],
        "reqps",
    ).override_by_name("backend", [fixed("text"), prop("custom.lineStyle", common.LineStyle(fill="dash", dash=[10, 10]))])
    invalid = ts_panel(
        "Invalid events (DLQ) by reason",
        "Messages that failed validation, by reason; each went to gapwatch-dlq with the reason in its headers.",
        [target(f"sum by ({by(INVALID, 'topic', 'reason')}) (rate({INVALID()}[{RATE}]))", "{{topic}} {{reason}}")],
        "reqps",
    )
    odd = ts_panel(
        "Late, redelivered and duplicate events",
        "Late: older than the allowed lateness (counted, not lost). Redelivered: seen again after a "
        "restart and skipped. Duplicate: the same event_id twice on one channel (a duplicate trigger).",
        [
            target(f"sum by ({by(LATE, 'topic')}) (rate({LATE()}[{RATE}]))", "late {{topic}}"),
            target(f"sum by ({by(REDELIVERED, 'topic')}) (rate({REDELIVERED()}[{RATE}]))", "redelivered {{topic}}"),
            target(
                f"sum by ({by(DUPLICATES, 'platform')}) (rate({DUPLICATES(PLATFORM.matches())}[{RATE}]))",
                "duplicate {{platform}}",
            ),
        ],
        "reqps",
    )
    lag = ts_panel(
        "Consumer lag", "Messages behind the end of the topic, over all workers.",
        [target(f"sum by ({by(CONSUMER_LAG, 'topic')}) ({CONSUMER_LAG()})", "{{topic}}")],
    )
    watermark = ts_panel(
        "Watermark lag", "Wall clock minus each worker's lowest partition watermark (event time).",
        [target(f"max by ({by(WATERMARK_LAG, 'instance')}) ({WATERMARK_LAG()})", "{{instance}}")],
        "s",
    )
    windows = ts_panel(
        "Windows closed", "Closed segment windows published per second, by hierarchy level.",
        [target(f"sum by ({by(WINDOWS_CLOSED, 'level')}) (rate({WINDOWS_CLOSED()}[{RATE}]))", "{{level}}")],
        "reqps",
    )
    build_info = table_panel(
        "Build", "",
        [target(f"count by ({by(BUILD_INFO, 'version')}) ({BUILD_INFO()})", instant=True)],
        "none", {"Value": "workers"},
    )
    grid.row("Pipeline health")
    grid.line(8, (throughput, 12), (events, 12))
    grid.line(8, (invalid, 12), (odd, 12))
    grid.line(8, (lag, 8), (watermark, 8), (windows, 8))
    grid.line(4, (build_info, 8))


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------


def render() -> str:
    """The dashboard JSON exactly as committed (two-space indent, trailing newline)."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is not what the code builds")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text() if OUTPUT.exists() else ""
    if args.check:
        if current == text:
            print(f"{OUTPUT.relative_to(ROOT)} is up to date")
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            str(OUTPUT.relative_to(ROOT)), "generated", n=2,
        ))
        print(f"\n{OUTPUT.relative_to(ROOT)} is stale: run `{REGENERATE}` and commit it", file=sys.stderr)
        return 1
    if current != text:
        OUTPUT.write_text(text)
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    else:
        print(f"{OUTPUT.relative_to(ROOT)} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
