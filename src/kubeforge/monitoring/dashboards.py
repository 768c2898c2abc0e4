"""kubeforge's Grafana dashboards as code, built with Grafana's foundation SDK.

The JSON is committed under ``monitoring/grafana/`` (one file per dashboard, the form the
Grafana chart's dashboard sidecar loads from ConfigMaps labelled ``grafana_dashboard``);
``make monitoring`` regenerates it and a test fails when it is stale. Dashboards pick their
Prometheus through a ``datasource`` variable, so they import into any Grafana unchanged.

Queries read the same series as the alert rules (and their recordings, from
:mod:`kubeforge.monitoring.rules`), so a runbook's dashboard shows what its alert saw.
:func:`all_queries` lists every expression with Grafana's variables resolved, for tests that
evaluate them against a real Prometheus.

The SDK is a development dependency (the ``dev`` extra): only regenerating the JSON needs it.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models

from . import rules
from .drift import MIN_SAMPLES

DIRECTORY = Path("monitoring/grafana")
"""Where the dashboards' JSON lives, relative to the repository root."""
TAGS = ["kubeforge"]
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
RESOLVED = {"$__rate_interval": "1m", "$__range": "1h"}
"""Values that stand in for Grafana's built-in variables when a query is evaluated outside Grafana."""

GATEWAY = 'namespace=~"$namespace", model=~"$model"'
DEPLOYMENT = 'namespace=~"$namespace", modeldeployment=~"$model"'
POD = 'namespace=~"$namespace", kubeforge_dev_modeldeployment=~"$model"'
"""Selects by the labels Prometheus takes from the pod (gateway and Triton), for series without model."""
VIEW = 'namespace=~"$namespace", featureview=~"$featureview"'
TRAFFIC = "namespace, model, version, role"


@dataclass(frozen=True)
class Query:
    """A PromQL expression and the legend of its series (Grafana's {{label}} template)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: a time series unless stat; width in grid columns (24 a row)."""

    title: str
    description: str
    unit: str
    queries: Sequence[Query]
    width: int = 12
    stat: bool = False
    stacked: bool = False
    thresholds: Sequence[tuple[float, str]] = ()

    def builder(self, panel_id: int) -> cogbuilder.Builder[models.Panel]:
        panel = stat.Panel() if self.stat else timeseries.Panel()
        panel.id(panel_id).title(self.title).description(self.description).datasource(DATASOURCE)
        panel.unit(self.unit).span(self.width).height(4 if self.stat else 8)
        for ref, query in zip(string.ascii_uppercase, self.queries, strict=False):
            target = prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref)
            panel.with_target(target.instant() if self.stat else target)
        if self.thresholds:
            steps = [models.Threshold(None, "green"), *(models.Threshold(v, color) for v, color in self.thresholds)]
            panel.thresholds(dashboard.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(steps))
            if isinstance(panel, timeseries.Panel):  # not self.stat
                style = common.GraphThresholdsStyleConfig().mode(common_models.GraphThresholdsStyleMode.DASHED)
                panel.thresholds_style(style)
        if self.stacked:
            assert isinstance(panel, timeseries.Panel), f"{self.title}: a stat panel does not stack"
            panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL)).fill_opacity(40)
        return panel


@dataclass(frozen=True)
class Variable:
    """A query variable: the values of the label called name in the series of selector (all of them by default)."""

    name: str
    label: str
    selector: str

    def builder(self) -> dashboard.QueryVariable:
        return (
            dashboard.QueryVariable(self.name)
            .label(self.label)
            .datasource(DATASOURCE)
            .query(f"label_values({self.selector}, {self.name})")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(models.VariableOption(selected=True, text="All", value="$__all"))
        )


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: the datasource variable, then variables, then titled rows of panels laid out left to right."""

    uid: str
    title: str
    description: str
    variables: Sequence[Variable]
    rows: Sequence[tuple[str, Sequence[Panel]]]

    def build(self) -> models.Dashboard:
        board = (
            dashboard.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(TAGS)
            .editable()
            .refresh("30s")
            .time("now-1h", "now")
            .timezone("browser")
            .tooltip(models.DashboardCursorSync.CROSSHAIR)
            .link(
                dashboard.DashboardLink("kubeforge")
                .type(models.DashboardLinkType.DASHBOARDS)
                .tags(TAGS)
                .as_dropdown(True)
            )
        )
        board.with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        for variable in self.variables:
            board.with_variable(variable.builder())
        ids = iter(range(1, 1000))
        for title, panels in self.rows:
            board.with_row(dashboard.Row(title).id(next(ids)))
            for panel in panels:
                board.with_panel(panel.builder(next(ids)))
        return board.build()


def _rate(metric: str, selector: str, by: str, window: str = RATE) -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{window}]))"


def _quantile(q: float, metric: str, selector: str, by: str) -> str:
    return f"histogram_quantile({q}, {_rate(metric + '_bucket', selector, by + ', le')})"


def _share(metric: str, selector: str, by: str, of: str) -> str:
    """Each by-group's share of its of-group's rate (a version's share of its deployment's traffic)."""
    return f"{_rate(metric, selector, by)}\n/ on ({of}) group_left ()\n{_rate(metric, selector, of)}"


_REQUESTS = "kubeforge_gateway_requests_total"
_DURATION = "kubeforge_gateway_request_duration_seconds"
_UPSTREAM = "kubeforge_upstream_requests_total"
_BURN = [(w.factor, color) for w, color in zip(rules.BURN_WINDOWS, ("red", "orange"), strict=True)]
_VERSION = "{{model}} v{{version}} {{role}}"
NAMESPACE = Variable("namespace", "Namespace", _REQUESTS)
MODEL = Variable("model", "ModelDeployment", f'{_REQUESTS}{{namespace=~"$namespace"}}')


def serving() -> Dashboard:
    failed = rules.ratio(f'{_REQUESTS}{{{GATEWAY}, code=~"5.."}}', f"{_REQUESTS}{{{GATEWAY}}}", TRAFFIC, RATE)
    burn = (
        f"{rules.error_ratio('1h')}{{{DEPLOYMENT}}}\n/ on (namespace, modeldeployment) group_left ()\n"
        f"max by (namespace, modeldeployment) ({rules.SLO_ERROR_RATIO}{{{DEPLOYMENT}}})"
    )
    per_version = "namespace, kubeforge_dev_modeldeployment, kubeforge_dev_model_version"
    triton_queue = (
        f"{_rate('nv_inference_queue_duration_us', POD, per_version)}\n/ 1e6 /\n"
        f"{_rate('nv_inference_request_success', POD, per_version)}"
    )
    triton_version = "{{kubeforge_dev_modeldeployment}} v{{kubeforge_dev_model_version}}"
    return Dashboard(
        "kubeforge-serving",
        "kubeforge / Serving",
        "What callers of a ModelDeployment get: requests, latency, errors by version and role, traffic split, "
        "fallbacks, SLO burn, and the Tritons behind the gateway.",
        [NAMESPACE, MODEL],
        [
            (
                "Traffic",
                [
                    Panel(
                        "Requests per second",
                        "Requests answered by the gateway, by the version that answered.",
                        "reqps",
                        [Query(_rate(_REQUESTS, GATEWAY, TRAFFIC), _VERSION)],
                    ),
                    Panel(
                        "Traffic split",
                        "Each version's share of its deployment's answered requests (a canary's weight, after "
                        "fallbacks).",
                        "percentunit",
                        [Query(_share(_REQUESTS, GATEWAY, TRAFFIC, "namespace, model"), _VERSION)],
                        stacked=True,
                    ),
                ],
            ),
            (
                "Latency",
                [
                    Panel(
                        "Latency p50 / p99 by version",
                        "Request received to response ready at the gateway.",
                        "s",
                        [
                            Query(_quantile(0.5, _DURATION, GATEWAY, TRAFFIC), f"p50 {_VERSION}"),
                            Query(_quantile(0.99, _DURATION, GATEWAY, TRAFFIC), f"p99 {_VERSION}"),
                        ],
                    ),
                    Panel(
                        "p99 against the SLO",
                        "p99 over 5 minutes per deployment (the ModelDeploymentLatencyHigh alert's) and its target.",
                        "s",
                        [
                            Query(f"{rules.LATENCY_P99}{{{DEPLOYMENT}}}", "p99 {{modeldeployment}}"),
                            Query(
                                f"max by (namespace, modeldeployment) ({rules.SLO_LATENCY_P99}{{{DEPLOYMENT}}})",
                                "target {{modeldeployment}}",
                            ),
                        ],
                    ),
                ],
            ),
            (
                "Errors",
                [
                    Panel(
                        "Errors by version and role",
                        "Share of the answered requests that were a 5xx, by the version that answered.",
                        "percentunit",
                        [Query(failed, _VERSION)],
                    ),
                    Panel(
                        "Responses by code",
                        "Answered requests by HTTP status (4xx are the caller's: bad input, unknown entity).",
                        "reqps",
                        [Query(_rate(_REQUESTS, GATEWAY, "namespace, model, code"), "{{model}} {{code}}")],
                        stacked=True,
                    ),
                    Panel(
                        "Error budget burn rate (1h)",
                        "5xx ratio over the last hour divided by the deployment's error SLO: 1 spends the "
                        "budget in exactly 30 days; the lines mark the burn rates that alert.",
                        "none",
                        [Query(burn, "{{modeldeployment}}")],
                        thresholds=sorted(_BURN),
                    ),
                    Panel(
                        "Upstream failures by outcome",
                        "Failed tries against each version's Triton (fallbacks may have hidden them from callers).",
                        "reqps",
                        [
                            Query(
                                _rate(f"{_UPSTREAM}", f'{GATEWAY}, outcome!="ok"', f"{TRAFFIC}, outcome"),
                                f"{_VERSION} {{{{outcome}}}}",
                            )
                        ],
                    ),
                    Panel(
                        "Fallbacks",
                        "Requests retried on the stable version, by the version that failed and why.",
                        "reqps",
                        [
                            Query(
                                _rate("kubeforge_fallbacks_total", GATEWAY, f"{TRAFFIC}, reason"),
                                f"{_VERSION} {{{{reason}}}}",
                            )
                        ],
                    ),
                    Panel(
                        "Route table reloads",
                        "Gateway route table reloads by result; a failed one leaves the previous table in force.",
                        "ops",
                        [
                            Query(
                                _rate(
                                    "kubeforge_route_table_reloads_total",
                                    POD,
                                    "namespace, kubeforge_dev_modeldeployment, result",
                                ),
                                "{{kubeforge_dev_modeldeployment}} {{result}}",
                            )
                        ],
                    ),
                ],
            ),
            (
                "Triton",
                [
                    Panel(
                        "Triton queue time",
                        "Mean time a request waited in Triton's queue before it ran, per version.",
                        "s",
                        [Query(triton_queue, triton_version)],
                    ),
                    Panel(
                        "Callers per joined Triton request",
                        "With spec.gateway.joinRequests: how many callers' requests each Triton request that "
                        "joined several carried (a request that found nothing of its version in flight goes alone "
                        "and is not counted).",
                        "none",
                        [
                            Query(
                                f"{_rate('kubeforge_gateway_joined_requests_total', GATEWAY, TRAFFIC)}\n/\n"
                                f"{_rate('kubeforge_gateway_joins_total', GATEWAY, TRAFFIC)}",
                                _VERSION,
                            )
                        ],
                    ),
                    Panel(
                        "Triton inference failures",
                        "Inferences Triton itself reports as failed, per version.",
                        "reqps",
                        [
                            Query(
                                _rate("nv_inference_request_failure", POD, per_version),
                                triton_version,
                            )
                        ],
                    ),
                ],
            ),
        ],
    )


def rollouts() -> Dashboard:
    """What the canary analysis judges, over time: weight, error rate and latency against stable, agreement."""
    upstream_failed = rules.ratio(
        f'{_UPSTREAM}{{{GATEWAY}, outcome!="ok"}}', f"{_UPSTREAM}{{{GATEWAY}}}", "namespace, model, role", RATE
    )
    predictions = "kubeforge_shadow_predictions_total"
    agreement = rules.ratio(
        f'{predictions}{{{GATEWAY}, result="agree"}}', f"{predictions}{{{GATEWAY}}}", "namespace, model, version", RATE
    )
    delta = "kubeforge_shadow_latency_delta"
    mean_delta = (
        f"sum by (namespace, model, version) (delta({delta}_sum_seconds{{{GATEWAY}}}[{RATE}]))\n/\n"
        f"sum by (namespace, model, version) (increase({delta}_seconds_count{{{GATEWAY}}}[{RATE}]))"
    )
    shadow = "{{model}} v{{version}}"
    role = "{{model}} {{role}}"
    return Dashboard(
        "kubeforge-rollouts",
        "kubeforge / Rollouts",
        "Canary rollouts and shadows: the canary's share of traffic, the metrics its analysis checks against "
        "the stable version, agreement of mirrored predictions, and rollbacks.",
        [NAMESPACE, MODEL],
        [
            (
                "Canary",
                [
                    Panel(
                        "Canary weight",
                        "Share of each deployment's answered requests by role: the canary's is its weight as "
                        "callers see it (requests a fallback moved to stable count as stable).",
                        "percentunit",
                        [Query(_share(_REQUESTS, GATEWAY, "namespace, model, role", "namespace, model"), role)],
                        stacked=True,
                    ),
                    Panel(
                        "Canary error rate vs stable",
                        "Failed tries (error, timeout, not ready) per role, as the analysis' error-rate check "
                        "counts them.",
                        "percentunit",
                        [Query(upstream_failed, role)],
                    ),
                    Panel(
                        "Canary p99 vs stable",
                        "p99 latency at the gateway per role, as the analysis' latency-p99 check reads it.",
                        "s",
                        [Query(_quantile(0.99, _DURATION, GATEWAY, "namespace, model, role"), role)],
                    ),
                    Panel(
                        "Shadow agreement",
                        "Share of mirrored predictions (shadow, or canary compared with stable) that agree with "
                        "the live answer: the analysis' agreement check.",
                        "percentunit",
                        [Query(agreement, shadow)],
                    ),
                ],
            ),
            (
                "Shadows",
                [
                    Panel(
                        "Shadow latency delta",
                        "Mirrored try duration minus the live try's, mean and p99 (negative: the shadow is faster).",
                        "s",
                        [
                            Query(mean_delta, f"mean {shadow}"),
                            Query(
                                _quantile(0.99, f"{delta}_seconds", GATEWAY, "namespace, model, version"),
                                f"p99 {shadow}",
                            ),
                        ],
                    ),
                    Panel(
                        "Shadow requests by outcome",
                        "Mirrored requests: ok, error, or dropped because the mirror queue was full.",
                        "reqps",
                        [
                            Query(
                                _rate("kubeforge_shadow_requests_total", GATEWAY, "namespace, model, version, outcome"),
                                f"{shadow} {{{{outcome}}}}",
                            )
                        ],
                    ),
                ],
            ),
            (
                "Outcomes",
                [
                    Panel(
                        "Rollbacks",
                        "Canaries the operator rolled back in the selected time range.",
                        "short",
                        [
                            Query(
                                "sum by (namespace, modeldeployment) "
                                f"(increase(kubeforge_rollbacks_total{{{DEPLOYMENT}}}[$__range]))",
                                "{{modeldeployment}}",
                            )
                        ],
                        width=8,
                        stat=True,
                    ),
                    Panel(
                        "ModelDeployments by readiness",
                        "ModelDeployments of the selected namespaces, by their Ready condition and its reason.",
                        "short",
                        [
                            Query(
                                'sum by (ready, reason) (kubeforge_resources{kind="ModelDeployment", '
                                'namespace=~"$namespace"})',
                                "ready={{ready}} {{reason}}",
                            )
                        ],
                        width=16,
                        stacked=True,
                    ),
                ],
            ),
        ],
    )


def drift() -> Dashboard:
    """Input and prediction drift per version against the training baseline, with the deployment's threshold."""
    threshold = Query(
        f"max by (namespace, modeldeployment) ({rules.DRIFT_PSI_THRESHOLD}{{{DEPLOYMENT}}})",
        "threshold {{modeldeployment}}",
    )
    version = "{{modeldeployment}} v{{version}} {{role}}"
    traffic = "{{model}} v{{version}} {{role}}"
    return Dashboard(
        "kubeforge-drift",
        "kubeforge / Drift",
        "How far live requests and predictions of each served version are from its training data (PSI, KS), "
        "over the gateway's sliding window, and how many samples that window holds; and how right its answers "
        "were, from labels fed back to the gateway (live accuracy, MAE, RMSE).",
        [NAMESPACE, MODEL],
        [
            (
                "Inputs",
                [
                    Panel(
                        "Feature PSI",
                        "Population stability index per feature (largest over gateway replicas) and the "
                        "deployment's drift threshold: 0.1-0.2 moderate, above 0.2 a shift.",
                        "none",
                        [Query(f"{rules.FEATURE_DRIFT}{{{DEPLOYMENT}}}", f"{version} {{{{feature}}}}"), threshold],
                    ),
                    Panel(
                        "Feature KS",
                        "Largest distance between the training and live CDFs per feature (0 same, 1 disjoint).",
                        "none",
                        [
                            Query(
                                f"max by ({TRAFFIC}, feature) (kubeforge_drift_ks{{{GATEWAY}}})",
                                "{{model}} v{{version}} {{role}} {{feature}}",
                            )
                        ],
                    ),
                ],
            ),
            (
                "Predictions",
                [
                    Panel(
                        "Prediction PSI",
                        "PSI of the predictions against their reference (training targets, or the version's "
                        "first predictions) and the deployment's drift threshold.",
                        "none",
                        [Query(f"{rules.PREDICTION_DRIFT}{{{DEPLOYMENT}}}", version), threshold],
                    ),
                    Panel(
                        "Window samples",
                        f"Requests in each gateway replica's drift window; below {MIN_SAMPLES} it reports no "
                        "statistics (too noisy).",
                        "short",
                        [Query(f"kubeforge_drift_window_samples{{{GATEWAY}}}", "{{pod}} v{{version}} {{role}}")],
                        thresholds=[(MIN_SAMPLES, "blue")],
                    ),
                ],
            ),
            (
                "Quality (fed-back labels)",
                [
                    Panel(
                        "Live accuracy",
                        "Share of labelled predictions that were right over the feedback window (classification); "
                        "shown once the window holds spec.monitoring.feedback.minLabels labels.",
                        "percentunit",
                        [Query(f"min by ({TRAFFIC}) (kubeforge_live_accuracy{{{GATEWAY}}})", traffic)],
                        width=8,
                    ),
                    Panel(
                        "Live MAE and RMSE",
                        "Mean absolute and root mean squared error of labelled predictions over the feedback window "
                        "(regression), once the window holds minLabels labels.",
                        "none",
                        [
                            Query(f"max by ({TRAFFIC}) (kubeforge_live_mae{{{GATEWAY}}})", f"MAE {traffic}"),
                            Query(f"max by ({TRAFFIC}) (kubeforge_live_rmse{{{GATEWAY}}})", f"RMSE {traffic}"),
                        ],
                        width=8,
                    ),
                    Panel(
                        "Labels fed back",
                        "Labels posted per second by result: joined to an answer, unknown (no remembered answer "
                        "with that id, e.g. another gateway replica answered) or expired (older than the ttl); and "
                        "answers forgotten before their ttl because the join store was full.",
                        "reqps",
                        [
                            Query(
                                _rate("kubeforge_feedback_labels_total", GATEWAY, "namespace, model, result"),
                                "{{model}} {{result}}",
                            ),
                            Query(
                                _rate("kubeforge_feedback_evicted_total", GATEWAY, "namespace, model"),
                                "{{model}} evicted",
                            ),
                        ],
                        width=8,
                    ),
                    Panel(
                        "Labels in the window",
                        "Labelled predictions in each gateway replica's feedback window; live quality needs "
                        "minLabels of them.",
                        "short",
                        [Query(f"kubeforge_live_labels{{{GATEWAY}}}", "{{pod}} v{{version}} {{role}}")],
                        width=24,
                    ),
                ],
            ),
        ],
    )


TRAINING = 'kind="TrainingJob", namespace=~"$namespace"'


def training() -> Dashboard:
    return Dashboard(
        "kubeforge-training",
        "kubeforge / Training",
        "TrainingJobs by phase, and the failed ones that keep the TrainingJobFailed alert firing.",
        [Variable("namespace", "Namespace", 'kubeforge_resources{kind="TrainingJob"}')],
        [
            (
                "Now",
                [
                    Panel(
                        f"{phase} TrainingJobs",
                        f"TrainingJobs in phase {phase}.",
                        "short",
                        [Query(f'sum(kubeforge_resources{{{TRAINING}, phase="{phase}"}}) or vector(0)')],
                        width=6,
                        stat=True,
                        thresholds=[(1, "red")] if phase == "Failed" else (),
                    )
                    for phase in ("Running", "Pending", "Succeeded", "Failed")
                ],
            ),
            (
                "Over time",
                [
                    Panel(
                        "TrainingJobs by phase",
                        "TrainingJobs of the selected namespaces by phase.",
                        "short",
                        [Query(f"sum by (phase) (kubeforge_resources{{{TRAINING}}})", "{{phase}}")],
                        stacked=True,
                    ),
                    Panel(
                        "Failed TrainingJobs",
                        "Failed TrainingJobs per namespace; a step up is a new failure, a step down a deletion.",
                        "short",
                        [
                            Query(
                                f'sum by (namespace) (kubeforge_resources{{{TRAINING}, phase="Failed"}})',
                                "{{namespace}}",
                            )
                        ],
                    ),
                ],
            ),
        ],
    )


def features() -> Dashboard:
    lookup = "kubeforge_feature_lookup_duration_seconds"
    view = "{{namespace}}/{{featureview}}"
    return Dashboard(
        "kubeforge-features",
        "kubeforge / Features",
        "FeatureViews: age of the newest online value against the ttl, materialization runs, and the gateways' "
        "online lookups (latency, misses).",
        [
            Variable("namespace", "Namespace", "kubeforge_featureview_freshness_seconds"),
            Variable("featureview", "FeatureView", 'kubeforge_featureview_freshness_seconds{namespace=~"$namespace"}'),
        ],
        [
            (
                "Freshness",
                [
                    Panel(
                        "Freshness vs ttl",
                        "Age of each view's newest online value, and its ttl: older values are not served.",
                        "s",
                        [
                            Query(f"kubeforge_featureview_freshness_seconds{{{VIEW}}}", f"age {view}"),
                            Query(f"kubeforge_featureview_ttl_seconds{{{VIEW}}}", f"ttl {view}"),
                        ],
                    ),
                    Panel(
                        "Freshness as share of ttl",
                        "Age of the newest value divided by the ttl: above 1 the view serves nothing.",
                        "percentunit",
                        [
                            Query(
                                f"kubeforge_featureview_freshness_seconds{{{VIEW}}}\n/ on (namespace, featureview)\n"
                                f"kubeforge_featureview_ttl_seconds{{{VIEW}}}",
                                view,
                            )
                        ],
                        thresholds=[(1, "red")],
                    ),
                ],
            ),
            (
                "Materialization",
                [
                    Panel(
                        "Materialization runs per hour",
                        "Runs that ended in the last hour, by result.",
                        "short",
                        [
                            Query(
                                f"sum by (namespace, featureview, result) "
                                f"(increase(kubeforge_materializations_total{{{VIEW}}}[1h]))",
                                f"{view} {{{{result}}}}",
                            )
                        ],
                    ),
                    Panel(
                        "Rows materialized per hour",
                        "Entity rows written to the online store in the last hour (0 with successful runs: the "
                        "source has no new data).",
                        "short",
                        [
                            Query(
                                "sum by (namespace, featureview) "
                                f"(increase(kubeforge_materialized_rows_total{{{VIEW}}}[1h]))",
                                view,
                            )
                        ],
                    ),
                ],
            ),
            (
                "Online lookups",
                [
                    Panel(
                        "Lookup latency p50 / p99",
                        "Time a gateway request waited for its one online-store read.",
                        "s",
                        [
                            Query(_quantile(0.5, lookup, VIEW, "namespace, featureview"), f"p50 {view}"),
                            Query(_quantile(0.99, lookup, VIEW, "namespace, featureview"), f"p99 {view}"),
                        ],
                    ),
                    Panel(
                        "Lookups per second",
                        "Online-store reads by the gateways.",
                        "ops",
                        [Query(_rate(f"{lookup}_count", VIEW, "namespace, featureview"), view)],
                    ),
                    Panel(
                        "Lookup misses",
                        "Feature values the online store could not serve: missing, or expired (older than the ttl); "
                        "a declared default may have stood in.",
                        "ops",
                        [
                            Query(
                                _rate("kubeforge_feature_lookup_misses_total", VIEW, "namespace, featureview, kind"),
                                f"{view} {{{{kind}}}}",
                            )
                        ],
                    ),
                ],
            ),
        ],
    )


def operators() -> Dashboard:
    reconcile = "kubeforge_reconcile_duration_seconds"
    return Dashboard(
        "kubeforge-operators",
        "kubeforge / Operators",
        "The kubeforge operators: resources by kind and phase, reconcile latency, rate and errors.",
        [],
        [
            (
                "Resources",
                [
                    Panel(
                        "Resources by kind and phase",
                        "TrainingJobs, ModelDeployments and FeatureViews in every namespace.",
                        "short",
                        [Query("sum by (kind, phase) (kubeforge_resources)", "{{kind}} {{phase}}")],
                        stacked=True,
                    ),
                    Panel(
                        "Not ready",
                        "Resources whose Ready condition is False, by kind, namespace and reason.",
                        "short",
                        [
                            Query(
                                'sum by (kind, namespace, reason) (kubeforge_resources{ready="False"})',
                                "{{kind}} {{namespace}} {{reason}}",
                            )
                        ],
                    ),
                ],
            ),
            (
                "Reconciles",
                [
                    Panel(
                        "Reconciles per second",
                        "Reconciles by kind (events, timers and children's changes).",
                        "ops",
                        [Query(_rate(f"{reconcile}_count", "", "kind"), "{{kind}}")],
                        width=8,
                    ),
                    Panel(
                        "Reconcile duration p50 / p99",
                        "Time one reconcile takes, by kind.",
                        "s",
                        [
                            Query(_quantile(0.5, reconcile, "", "kind"), "p50 {{kind}}"),
                            Query(_quantile(0.99, reconcile, "", "kind"), "p99 {{kind}}"),
                        ],
                        width=8,
                    ),
                    Panel(
                        "Reconcile errors by kind",
                        "Failed reconciles; kopf retries them.",
                        "ops",
                        [Query(_rate("kubeforge_reconcile_errors_total", "", "kind"), "{{kind}}")],
                        width=8,
                    ),
                ],
            ),
            (
                "Writes",
                [
                    Panel(
                        "ModelDeployment children applied per second",
                        "Children the operator sent to the API server, by kind: a rollout step or a spec change "
                        "sends the children it changes, a child deleted or edited by hand is sent again, and an "
                        "operator that starts again sends only those changed while it was down.",
                        "ops",
                        [Query(_rate("kubeforge_modeldeployment_child_applies_total", "", "kind"), "{{kind}}")],
                        width=24,
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = (serving, rollouts, drift, training, features, operators)


def render(board: Dashboard) -> str:
    """The JSON text of a dashboard, exactly as committed."""
    return JSONEncoder(sort_keys=True, indent=2).encode(board.build()) + "\n"


def rendered() -> dict[Path, str]:
    """Each dashboard's file (relative to the repository root) and its text."""
    return {DIRECTORY / f"{make().uid}.json": render(make()) for make in DASHBOARDS}


def _expressions(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for variable in board["templating"]["list"]:
        found = re.fullmatch(r"label_values\((.+), \w+\)", str(variable.get("query", "")))
        if found:
            yield f"variable {variable['name']}", found.group(1)
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"{panel['title']} {target['refId']}", target["expr"]


def resolve(expr: str, variables: Sequence[str]) -> str:
    """expr with Grafana's variables replaced by values Prometheus accepts (every variable: all values)."""
    for name, value in RESOLVED.items():
        expr = expr.replace(name, value)
    for name in variables:
        expr = re.sub(rf"\${name}\b", ".*", expr)
    return expr


def all_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query and variable, with Grafana's variables resolved."""
    queries = []
    for make in DASHBOARDS:
        board = json.loads(render(make()))
        names = [v["name"] for v in board["templating"]["list"]]
        queries += [(f"{board['uid']}: {where}", resolve(expr, names)) for where, expr in _expressions(board)]
    return queries
