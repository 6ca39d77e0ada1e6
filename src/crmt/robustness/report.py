"""The robustness report: the paper's Table 2 layout in Markdown, ``metrics.json`` and the figures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crmt.robustness.records import CONSTRUCTION_LIPSCHITZ_SOURCE, RobustnessResults
from crmt.robustness.figures import (
    plot_accuracy_vs_radius,
    plot_certified_accuracy,
    plot_eta_ratio_heatmap,
)
from crmt.robustness.certify import ROUNDING_MARGIN
from crmt.robustness.results import (
    AdaptiveSummary,
    Certificate,
    RobustnessMetrics,
    SmoothedCertificate,
    SurvivalCurve,
)
from crmt.robustness.threats import Scope, Threat

SMOOTHING_RADII_OVER_SIGMA: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
"""The radii (multiples of sigma) of the smoothing table's certified-accuracy columns."""


def _cell(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, the first column left-aligned and the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _joint_smoothed(metrics: RobustnessMetrics) -> SmoothedCertificate | None:
    """The multi-modal scope's smoothing certificate (noise on every modality), if smoothed."""
    if metrics.smoothed is None:
        return None
    return next(certificate for scope, certificate in metrics.smoothed.items() if scope.multimodal)


SMOOTHED_COLUMN = "smoothed certified acc. at the budget"
"""The accuracy table's column of the joint smoothing certificate at the multi-modal budget."""


def _budget_cell(certificate: SmoothedCertificate | None) -> str:
    """Smoothed certified accuracy at the budget, marked where the budget exceeds R_max (0 by construction)."""
    if certificate is None:
        return _cell(None)
    cell = _cell(certificate.accuracy_at_budget)
    if certificate.budget_out_of_reach:
        cell += f" (budget > R_max {certificate.max_radius:.2f})"
    return cell


def accuracy_table(metrics_by_name: Mapping[str, RobustnessMetrics]) -> str:
    """Markdown table of accuracies, one row per model, the columns of the paper's Table 2 (the
    first model's threats): clean, multi-modal FGM/PGD, uni-modal FGM/PGD, missing; then, when a
    model was smoothed, its joint smoothed certified accuracy at the multi-modal budget (marked where the
    budget is beyond the reach R_max of its smoothing settings)."""
    threats = next(iter(metrics_by_name.values())).threats
    header = ["method", *(threat.title for threat in threats)]
    rows = [
        [name, *(_cell(metrics.accuracy.get(threat)) for threat in threats)] for name, metrics in metrics_by_name.items()
    ]
    smoothed = [_joint_smoothed(metrics) for metrics in metrics_by_name.values()]
    if any(certificate is not None for certificate in smoothed):
        header.append(SMOOTHED_COLUMN)
        for row, certificate in zip(rows, smoothed, strict=True):
            row.append(_budget_cell(certificate))
    return markdown_table(header, rows)


def _audit_cell(metrics: RobustnessMetrics) -> str:
    """``violations/eligible`` of l2-PGD, and of the adaptive suite when it was run."""
    audit = metrics.audit
    if audit is None:
        return "-"
    cell = f"{audit.violations}/{audit.eligible}"
    return cell if audit.adaptive_violations is None else f"{cell} (adaptive {audit.adaptive_violations}/{audit.eligible})"


def certificate_table(metrics_by_name: Mapping[str, RobustnessMetrics]) -> str:
    """Markdown table of mean estimated certified radii, the audit (l2-PGD, and the adaptive suite when
    run) and the eta log-ratio."""
    modalities = next(iter(metrics_by_name.values())).modalities
    header = ["method", "mean radius", *(f"mean radius {m}" for m in modalities), "audit violations",
              "mean radius, model's own tau~", "mean log eta ratio"]
    rows = []
    for name, metrics in metrics_by_name.items():
        certified = metrics.certified
        if certified is None:
            rows.append([name, *["-"] * (len(header) - 1)])
            continue
        own, ratio = metrics.certified_model, metrics.eta_ratio
        rows.append([
            name,
            _cell(certified.multimodal.mean),
            *(_cell(certified.radii[Scope((m,))].mean) for m in modalities),
            _audit_cell(metrics),
            _cell(own.multimodal.mean if own is not None else None),
            _cell(ratio.mean_log_ratio if ratio is not None else None),
        ])
    return markdown_table(header, rows)


def sound_bound_line(metrics: RobustnessMetrics) -> str:
    """The layer-product bound's radii in one sentence (it certifies next to nothing: no headline column)."""
    sound = metrics.certified_sound
    modalities = ", ".join(f"{scope.modalities[0]} {summary.mean:.2e}" for scope, summary in sound.radii.items()
                           if not scope.multimodal)
    return (f"Radii from the layer-product Lipschitz bound ({sound.lipschitz}, sound but far too loose to "
            f"certify much): mean multi-modal radius {sound.multimodal.mean:.2e}; uni-modal: {modalities}.")


def sound_budget_rows(certificate: Certificate, budget_of: Callable[[Scope], float]) -> list[list[str]]:
    """Per scope of a sound certificate: its budget, certified accuracy at the budget and at half of it,
    mean and median radius."""
    rows = []
    for scope, summary in certificate.radii.items():
        budget = budget_of(scope)
        rows.append([scope.label, f"{budget:g}", _cell(summary.curve.at(budget)), _cell(summary.curve.at(budget / 2)),
                     _cell(summary.mean), _cell(summary.median)])
    return rows


def sound_section(metrics: RobustnessMetrics) -> list[str]:
    """Certified accuracy from the sound radii of 1-Lipschitz encoders (and the model's own sound tau, CRMT), with
    their audit: the guarantee, not an estimate."""
    settings, audit = metrics.settings, metrics.audit
    header = ["certificate", "scope", "budget", "certified acc. at the budget", "at half the budget",
              "mean radius", "median radius"]
    certificates = {"sound, exact head rows": metrics.certified_sound}
    if metrics.certified_model is not None and metrics.certified_model.lipschitz.startswith("sound"):
        certificates["sound, Theorem 3.5 (model's tau)"] = metrics.certified_model
    rows = [[name, *row] for name, certificate in certificates.items()
            for row in sound_budget_rows(certificate, settings.budget)]
    lines = ["", "## Sound certified radii (1-Lipschitz encoders)", "",
             f"Lipschitz constants: {metrics.certified_sound.lipschitz}. Every radius holds for every perturbation "
             f"of that l2 size (float32, each margin lowered by {ROUNDING_MARGIN:g} x (1 + max |logit|) for rounding); "
             "the estimated radii above are not guarantees.", "", markdown_table(header, rows)]
    if audit is not None and audit.sound is not None:
        sound = audit.sound
        lines += ["", f"Audit of the sound radii (the same attacks as above): {sound.violations} of {sound.eligible} "
                      "certified samples beaten" + (f", adaptive {sound.adaptive_violations}"
                                                   if sound.adaptive_violations is not None else "")
                  + " (any violation would be a bug)."]
    return lines


def smoothing_table(metrics: RobustnessMetrics) -> str:
    """Markdown table of the smoothing certificates, one row per scope: the scope's table budget, the
    abstention rate, the certified accuracy at ``SMOOTHING_RADII_OVER_SIGMA`` x sigma and at the budget
    (marked where the budget exceeds R_max)."""
    sigma = metrics.settings.smoothing.sigma
    radii = [factor * sigma for factor in SMOOTHING_RADII_OVER_SIGMA]
    header = ["scope (noised)", "budget", "abstention rate", *(f"certified acc. r = {r:g}" for r in radii),
              "certified acc. at the budget"]
    rows = [
        [_smoothing_scope(scope), f"{certificate.budget:g}", _cell(certificate.abstention_rate),
         *(_cell(certificate.curve.at(r)) for r in radii), _budget_cell(certificate)]
        for scope, certificate in metrics.smoothed.items()
    ]
    return markdown_table(header, rows)


def _smoothing_scope(scope: Scope) -> str:
    return "joint (every modality)" if scope.multimodal else f"{scope.modalities[0]} only"


def smoothing_section(metrics: RobustnessMetrics) -> list[str]:
    """The report's randomized-smoothing section: settings, the certified subset, the reach R_max, the table."""
    joint = _joint_smoothed(metrics)
    subset = ""
    if joint.certified < metrics.samples:
        subset = " (a subset of the test split, spread evenly over its dataset indices)"
    return [
        "",
        "## Randomized smoothing (sound certificates)",
        "",
        f"Cohen et al.'s CERTIFY (ICML 2019) on the smoothed classifier: Gaussian noise of std sigma = "
        f"{joint.sigma:g} in the normalised input space, on every modality (joint: an l2 certificate on the "
        f"joint perturbation) or on one modality with the others clean; n0 = {joint.n0} selection and n = "
        f"{joint.n} estimation draws; each radius holds with probability >= 1 - alpha = {1 - joint.alpha:g}. "
        f"{joint.certified} of {metrics.samples} test samples certified{subset}. "
        f"Abstentions count as wrong. Smoothing at these settings cannot certify beyond R_max = sigma * "
        f"Phi^-1(alpha^(1/n)) = {joint.max_radius:.3f} (every one of the n draws voting for the top class); "
        f"the certified accuracy at any r > R_max, and so the budget column where budget > R_max, is 0 by "
        f"construction, whatever the model. The guarantee is about the smoothed classifier, not the model itself.",
        "",
        smoothing_table(metrics),
    ]


def _scope_name(scope: Scope) -> str:
    return "multi-modal (joint)" if scope.multimodal else f"{scope.modalities[0]} only"


def adaptive_table(metrics: RobustnessMetrics) -> str:
    """One row per scope: the budget, the paper's PGD, the adaptive worst case, their gap, and how many
    correctly classified samples each attack of the suite broke first and how many it left standing."""
    adaptive = metrics.adaptive
    header = ["scope", "budget", "PGD-l2 (paper)", "adaptive", "gap", *(f"first broken by {name}" for name in adaptive.attacks),
              "left standing by the suite"]
    rows = []
    for scope, counts in adaptive.broken_by.items():
        budget = metrics.settings.budget(scope)
        paper = metrics.accuracy.get(Threat("pgd", scope.modalities, budget))
        worst = metrics.accuracy.get(Threat("adaptive", scope.modalities, budget))
        gap = None if paper is None or worst is None else worst - paper
        rows.append([_scope_name(scope), f"{budget:g}", _cell(paper), _cell(worst), "-" if gap is None else f"{gap:+.3f}",
                     *(str(counts[name]) for name in adaptive.attacks), str(counts["standing"])])
    return markdown_table(header, rows)


def flag_lines(adaptive: AdaptiveSummary) -> list[str]:
    """The raised sanity checks, one line each (empty when none is raised)."""
    return [f"- {check.line()}" for check in adaptive.raised]


def adaptive_section(metrics: RobustnessMetrics) -> list[str]:
    """The report's adaptive-evaluation section: the suite, the per-scope table and every sanity check."""
    adaptive = metrics.adaptive
    return [
        "",
        "## Adaptive evaluation (the worst case over every attack tried)",
        "",
        f"Suite `{adaptive.suite}`: {adaptive.size.describe()}, each attack on the samples every earlier one left "
        f"standing, then the paper's FGM and PGD on the same ball; a sample counts as broken when any iterate "
        f"inside its ball is misclassified. Its accuracies are upper bounds on the true robust accuracy, as "
        f"good as this suite and no better; they are the numbers claims are judged on.",
        "",
        adaptive_table(metrics),
        "",
        "Sanity checks (Carlini et al. 2019; AutoAttack's flags):",
        "",
        *(f"- {check.line()}" for check in adaptive.checks),
    ]


@dataclass
class ReportFiles:
    """Paths of one report's files (figures that do not apply are ``None``)."""

    markdown: Path
    metrics: Path
    accuracy_vs_radius: Path
    eta_ratio_heatmap: Path | None
    certified_accuracy: Path | None

    def images(self) -> dict[str, Path]:
        names = ("accuracy_vs_radius", "eta_ratio_heatmap", "certified_accuracy")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def render_markdown(name: str, metrics: RobustnessMetrics) -> str:
    """The Markdown report of one model."""
    settings = metrics.settings
    parts = [f"# Robustness report: {name}", ""]
    if metrics.adaptive is not None and metrics.adaptive.raised:
        parts += ["**FLAGGED: sanity checks of the adaptive evaluation are raised; its accuracies may overstate "
                  "robustness:**", "", *flag_lines(metrics.adaptive), ""]
    adaptive = ""
    if metrics.adaptive is not None:
        adaptive = (f" Adaptive: the worst case per sample over the suite `{metrics.adaptive.suite}` (below) and the "
                    "paper's FGM and PGD, on the same budget.")
    parts += [
        f"{metrics.samples} samples. Multi-modal attacks: joint l2 budget {settings.multimodal_eps}; "
        f"uni-modal attacks: l2 budget {settings.unimodal_eps} on one modality; FGM and PGD-l2 are the paper's "
        f"protocol (PGD: {settings.steps} steps of {settings.step_fraction:.3g} x budget, from the clean input): "
        f"upper bounds that a stronger attack can lower.{adaptive} Missing modality: input set to {settings.missing_fill}.",
        "",
        "## Accuracy (the layout of the paper's Table 2)",
        "",
        accuracy_table({name: metrics}),
    ]
    if metrics.adaptive is not None:
        parts += adaptive_section(metrics)
    if metrics.certified is not None:
        audit = metrics.audit
        own = metrics.certified_model
        parts += [
            "",
            "## Certified radii",
            "",
            f"Lipschitz constants: {metrics.certified.lipschitz}, the same protocol for every strategy"
            + (f"; the model's own radius: {own.lipschitz}" if own is not None else "")
            + f". Audit: l2-PGD with "
            f"{settings.audit_steps} steps inside {settings.audit_fraction} x each estimated radius, from the "
            f"multi-modal PGD's example rescaled into it, beat "
            f"{audit.violations} of {audit.eligible} certified samples (violation rate "
            f"{audit.violation_rate:.3f})"
            + (f"; with the adaptive suite's APGD-CE and APGD-T in the same balls, {audit.adaptive_violations} of {audit.eligible} "
               f"(violation rate {audit.adaptive_violation_rate:.3f})" if audit.adaptive_violations is not None else "")
            + ".",
            "",
            certificate_table({name: metrics}),
        ]
        if metrics.certified_sound is not None and metrics.certified_sound.lipschitz == CONSTRUCTION_LIPSCHITZ_SOURCE:
            parts += sound_section(metrics)
        elif metrics.certified_sound is not None:
            parts += ["", sound_bound_line(metrics)]
    elif metrics.sound_note:
        parts += ["", f"Certified radii: {metrics.sound_note}."]
    if metrics.smoothed is not None:
        parts += smoothing_section(metrics)
    return "\n".join(parts) + "\n"


def certified_curves(metrics: RobustnessMetrics) -> dict[str, dict[str, SurvivalCurve]]:
    """The exact certified-accuracy curves to draw, by family ("estimated", "smoothed, sound", and
    the layer-product bound when computed) and scope label."""
    families: dict[str, dict[str, SurvivalCurve]] = {}
    if metrics.certified is not None:
        families["estimated"] = {scope.label: summary.curve for scope, summary in metrics.certified.radii.items()}
    if metrics.smoothed is not None:
        families["smoothed, sound"] = {scope.label: c.curve for scope, c in metrics.smoothed.items()}
    if metrics.certified_sound is not None:
        by_construction = metrics.certified_sound.lipschitz == CONSTRUCTION_LIPSCHITZ_SOURCE
        families["1-Lipschitz encoders, sound" if by_construction else "layer-product bound, sound"] = {
            scope.label: summary.curve for scope, summary in metrics.certified_sound.radii.items()
        }
    return families


def adaptive_points(metrics: RobustnessMetrics) -> dict[str, tuple[float, float]]:
    """Per scope label: (table budget, adaptive accuracy), to mark beside the paper-protocol curves."""
    if metrics.adaptive is None:
        return {}
    points = {}
    for scope in metrics.curves.accuracy:
        budget = metrics.settings.budget(scope)
        value = metrics.accuracy.get(Threat("adaptive", scope.modalities, budget))
        if value is not None:
            points[scope.label] = (budget, value)
    return points


def write_report(
    results: RobustnessResults, folder: Path, name: str, context: dict[str, object] | None = None
) -> ReportFiles:
    """Write ``report.md``, ``metrics.json`` and the PNG figures of ``results`` into ``folder``;
    ``context`` (what the numbers depend on: seed, threads, device, versions, skipped clips) goes
    into ``metrics.json`` under ``run``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = results.metrics()
    document = {"name": name, **metrics.to_json(), **({"run": context} if context is not None else {})}
    metrics_path = folder / "metrics.json"
    metrics_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (folder / "per_sample.json").write_text(json.dumps(results.per_sample()) + "\n", encoding="utf-8")
    markdown_path = folder / "report.md"
    markdown_path.write_text(render_markdown(name, metrics), encoding="utf-8")
    accuracy_path = plot_accuracy_vs_radius(
        metrics.curves.radii,
        {scope.label: values for scope, values in metrics.curves.accuracy.items()},
        folder / "accuracy_vs_radius.png",
        f"{name}: accuracy under l2-PGD (the paper's protocol)",
        adaptive_points(metrics),
    )
    heatmap_path = certified_path = None
    if metrics.eta_ratio is not None:
        heatmap_path = plot_eta_ratio_heatmap(metrics.eta_ratio, folder / "eta_ratio_heatmap.png")
    families = certified_curves(metrics)
    if families:
        joint = _joint_smoothed(metrics)
        certified_path = plot_certified_accuracy(
            families, folder / "certified_accuracy.png", f"{name}: certified accuracy",
            joint.max_radius if joint is not None else None,
        )
    return ReportFiles(markdown_path, metrics_path, accuracy_path, heatmap_path, certified_path)
