"""The report's plots: matplotlib figures drawn by the Agg renderer straight into PNG
bytes (no pyplot, no display, no global backend switch).

Labels and texts are data, so mathtext is off: a ``$`` in a label is a dollar sign.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from trainer.model.evaluation import RiskCoverage
from trainer.report.data import ReportData

# Drawn at 1.5 times the size shown, so they stay sharp on high-density screens.
DPI = 150
SHOWN_DPI = 100
STYLE = {
    "text.parse_math": False,
    "text.usetex": False,
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "legend.frameon": False,
}
BLUE, ORANGE, GREEN, GREY, RED = "#4C78A8", "#F58518", "#54A24B", "#9D9D9D", "#D62728"
SPLIT_COLOURS = {"train": BLUE, "eval": ORANGE}
LABEL_CHARACTERS = 28


@dataclass(frozen=True)
class Plot:
    name: str  # file name stem: <name>.png
    title: str  # the alt text
    png: bytes
    width: int  # CSS pixels it is shown at
    height: int

    @property
    def filename(self) -> str:
        return f"{self.name}.png"


def short(label: str, limit: int = LABEL_CHARACTERS) -> str:
    """A label cut to fit a tick (one line, at most ``limit`` characters)."""
    text = " ".join(str(label).split()) or repr(label)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def all_plots(data: ReportData) -> list[Plot]:
    """Every plot the run's data allows, in page order."""
    with rc_context(STYLE):
        plots = []
        labels, counts = data.confusion("eval")
        if labels:
            plots.append(confusion_matrix(labels, counts))
        per_label = data.per_label("eval")
        if per_label:
            plots.append(per_label_bars(per_label))
        if data.predictions is not None or data.risk_points("eval"):
            plots.append(risk_coverage(data))
        distribution = data.label_distribution()
        if distribution:
            plots.append(label_distribution(distribution))
        return plots


def _render(figure: Figure, name: str, title: str) -> Plot:
    buffer = io.BytesIO()
    # No "Software" entry: the bytes depend on the figure only.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    png = buffer.getvalue()
    width, height = _png_size(png)
    return Plot(name, title, png, round(width * SHOWN_DPI / DPI), round(height * SHOWN_DPI / DPI))


def _png_size(png: bytes) -> tuple[int, int]:
    # IHDR: width and height are the first two big-endian words after the chunk header.
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# -- (1) confusion matrix ------------------------------------------------------------


def confusion_matrix(labels: list[str], counts: np.ndarray) -> Plot:
    n = len(labels)
    support = counts.sum(axis=1)
    share = np.divide(counts, support[:, None], out=np.zeros_like(counts), where=support[:, None] > 0)
    # At most about as wide as the page's column (1,116 CSS pixels): shrinking it would shrink the text.
    side = min(max(4.8, 0.8 * n + 2.8), 8.8)
    figure = Figure(figsize=(side + 2.2, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
    font = 10 if n <= 8 else 8 if n <= 12 else 6.5 if n <= 20 else 5
    for i in range(n):
        for j in range(n):
            count = int(counts[i, j])
            text = f"{count:,}\n{share[i, j]:.0%}" if count and n <= 10 else f"{count:,}"
            axes.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=font,
                color="white" if share[i, j] > 0.55 else ("#333333" if count else "#B0B0B0"),
            )
    many = n > 12
    ticks = [short(label, 20 if many else LABEL_CHARACTERS) for label in labels]
    rotate = n > 5 or max(map(len, ticks)) > 9
    axes.set_xticks(range(n), ticks, rotation=40 if rotate else 0, ha="right" if rotate else "center",
                    rotation_mode="anchor")
    axes.set_yticks(range(n), [f"{tick}  ({int(s):,})" for tick, s in zip(ticks, support)])
    if many:
        axes.tick_params(labelsize=8)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("accepted label  (examples)")
    axes.set_title("Confusion matrix, eval split")
    for spine in axes.spines.values():
        spine.set_visible(False)
    figure.colorbar(image, ax=axes, shrink=0.75, label="share of the accepted label's examples (row)")
    return _render(figure, "confusion_matrix", "Confusion matrix of the eval split: counts, coloured by row share")


# -- (2) per-label bars -------------------------------------------------------------


def per_label_bars(per_label: dict[str, dict[str, float | None]]) -> Plot:
    labels = list(per_label)
    n = len(labels)
    figure = Figure(figsize=(10.5, 1.3 + 0.72 * n), layout="constrained")
    axes = figure.add_subplot()
    y = np.arange(n)
    height = 0.26
    for offset, (name, colour) in zip((-height, 0.0, height), (("precision", BLUE), ("recall", ORANGE), ("f1", GREEN))):
        values = [per_label[label].get(name) or 0.0 for label in labels]
        bars = axes.barh(y + offset, values, height=height * 0.92, color=colour, label=name if name != "f1" else "F1")
        axes.bar_label(bars, labels=[f"{value:.2f}" for value in values], padding=3, fontsize=8)
    axes.set_yticks(
        y, [f"{short(label)}\nsupport {int(per_label[label].get('support') or 0):,}" for label in labels]
    )
    axes.set_ylim(n - 0.5, -0.5)  # first label on top, no margins
    axes.set_xlim(0, 1.1)
    axes.set_xticks(np.linspace(0, 1, 6))
    axes.xaxis.grid(True, color="#E5E5E5")
    axes.set_axisbelow(True)
    axes.set_xlabel("score (eval split)")
    axes.set_title("Precision, recall and F1 per label, eval split", loc="left")
    figure.legend(loc="outside upper right", ncols=3)
    return _render(figure, "per_label", "Precision, recall and F1 per label of the eval split, with support")


# -- (3) risk–coverage --------------------------------------------------------------


def risk_coverage(data: ReportData) -> Plot:
    overall = data.overall("eval")
    predictions = data.predictions
    figure = Figure(figsize=(11.1 if predictions is not None else 7.5, 5.8), layout="constrained")
    if predictions is not None:
        curve_axes, threshold_axes = figure.subplots(1, 2, width_ratios=(1.15, 1.0))
    else:
        curve_axes, threshold_axes = figure.add_subplot(), None

    stored = data.risk_points("eval")
    top = max([risk for _, risk in stored] + [0.05])
    if predictions is not None:
        coverage, risk = fine_curve(predictions.confidence, predictions.correct)
        curve_axes.plot(coverage, risk, color=BLUE, linewidth=1.8, label=f"all {predictions.size:,} eval examples")
        top = max(top, float(risk[coverage >= 0.02].max()) if (coverage >= 0.02).any() else top)
    if stored:
        xs, ys = zip(*stored)
        curve_axes.plot(
            xs,
            ys,
            linestyle="none" if predictions is not None else "-",
            marker="o",
            markersize=4,
            color=GREY if predictions is not None else BLUE,
            label="stored points (risk_at_coverage)",
        )

    threshold = data.confidence_threshold
    coverage_at, selective = overall.get("coverage"), overall.get("selective_accuracy")
    if threshold is not None and coverage_at is not None and selective is not None:
        curve_axes.plot(
            [coverage_at], [1 - selective], marker="*", markersize=15, color=ORANGE, linestyle="none", zorder=5,
            label=f"confidence threshold {threshold:.2f}: coverage {coverage_at:.0%}, error {1 - selective:.1%}",
        )
    target = overall.get("target_precision")
    reached = overall.get("threshold_at_target_precision")
    if target is not None:
        curve_axes.axhline(1 - target, color=RED, linestyle=":", linewidth=1,
                           label=f"error allowed by target precision {target:.2f}")
        if reached is not None:
            covered = overall.get("coverage_at_target_precision") or 0.0
            precision = overall.get("precision_at_target_precision") or 0.0
            curve_axes.plot(
                [covered], [1 - precision], marker="D", markersize=8, color=RED, linestyle="none", zorder=5,
                label=f"threshold {reached:.3f} reaches it: coverage {covered:.0%}",
            )
    aurc = overall.get("aurc")
    curve_axes.set_xlim(0, 1.02)
    curve_axes.set_ylim(0, min(1.0, top * 1.25 + 0.01))
    curve_axes.set_xlabel("coverage (share of examples, most confident first)")
    curve_axes.set_ylabel("error rate of the covered examples")
    curve_axes.set_title(
        "Risk–coverage, eval split" + (f" (AURC {aurc:.3f})" if aurc is not None else ""), loc="left"
    )
    curve_axes.xaxis.grid(True, color="#EEEEEE")
    curve_axes.yaxis.grid(True, color="#EEEEEE")
    # Below the axes: the curve may run anywhere inside them.
    curve_axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=9)

    if threshold_axes is not None:
        grid, covered_share, accuracy = threshold_curves(predictions.confidence, predictions.correct)
        threshold_axes.plot(grid, covered_share, color=BLUE, linewidth=1.8, label="coverage")
        threshold_axes.plot(grid, accuracy, color=GREEN, linewidth=1.8, label="accuracy of the covered")
        if threshold is not None:
            threshold_axes.axvline(threshold, color=ORANGE, linewidth=1.2, label=f"confidence threshold {threshold:.2f}")
        if reached is not None:
            threshold_axes.axvline(reached, color=RED, linestyle=":", linewidth=1.2,
                                   label=f"target precision threshold {reached:.3f}")
        threshold_axes.set_xlim(0, 1)
        threshold_axes.set_ylim(0, 1.02)
        threshold_axes.set_xlabel("confidence threshold (top probability at least)")
        threshold_axes.set_ylabel("share")
        threshold_axes.set_title("What a threshold buys, eval split", loc="left")
        threshold_axes.xaxis.grid(True, color="#EEEEEE")
        threshold_axes.yaxis.grid(True, color="#EEEEEE")
        threshold_axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=9, ncols=2)
    return _render(
        figure,
        "risk_coverage",
        "Risk–coverage curve of the eval split with the confidence threshold and the target-precision threshold",
    )


def fine_curve(confidence: np.ndarray, correct: np.ndarray, points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The risk–coverage curve at every example (at most ``points`` of them), with the
    same tie rule as the stored ``risk_at_coverage`` rows (trainer.model.evaluation)."""
    n = len(confidence)
    curve = RiskCoverage(confidence, correct)
    counts = np.unique(np.linspace(1, n, min(n, points)).round().astype(int))
    coverage = counts / n
    return coverage, np.array([curve.risk_at(c) for c in coverage])


def threshold_curves(
    confidence: np.ndarray, correct: np.ndarray, steps: int = 401
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For thresholds 0…1: the share of examples covered (confidence at least the
    threshold) and the accuracy of those (NaN where none is)."""
    order = np.argsort(confidence, kind="stable")
    ranked = confidence[order]
    right_from = np.append(np.cumsum(correct[order][::-1])[::-1], 0)  # right answers from position i on
    grid = np.linspace(0.0, 1.0, steps)
    first = np.searchsorted(ranked, grid, side="left")
    covered = len(confidence) - first
    accuracy = np.divide(right_from[first], covered, out=np.full(steps, np.nan), where=covered > 0)
    return grid, covered / len(confidence), accuracy


# -- (4) label distribution ---------------------------------------------------------


def label_distribution(distribution: dict[str, dict[str, tuple[int, int]]]) -> Plot:
    splits = [split for split in ("train", "eval") if split in distribution] + sorted(
        set(distribution) - {"train", "eval"}
    )
    labels = sorted({label for rows in distribution.values() for label in rows})
    n = len(labels)
    figure = Figure(figsize=(10.5, 1.3 + 0.3 * len(splits) * n + 0.15 * n), layout="constrained")
    axes = figure.add_subplot()
    y = np.arange(n)
    height = 0.8 / len(splits)
    largest = 0.0
    for k, split in enumerate(splits):
        rows = distribution[split]
        total = sum(examples for examples, _ in rows.values()) or 1
        counts = [rows.get(label, (0, 0))[0] for label in labels]
        shares = [count / total for count in counts]
        largest = max(largest, *shares)
        bars = axes.barh(
            y - 0.4 + height * (k + 0.5),
            shares,
            height=height * 0.92,
            color=SPLIT_COLOURS.get(split, GREY),
            label=f"{split} ({total:,} examples)",
        )
        axes.bar_label(bars, labels=[f"{count:,} ({share:.0%})" for count, share in zip(counts, shares)],
                       padding=3, fontsize=8)
    axes.set_yticks(y, [short(label) for label in labels])
    axes.set_ylim(n - 0.5, -0.5)  # first label on top, no margins
    axes.set_xlim(0, min(1.0, largest * 1.3 + 0.02))
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axes.xaxis.grid(True, color="#E5E5E5")
    axes.set_axisbelow(True)
    axes.set_xlabel("share of the split's examples")
    axes.set_title("Examples per label and split (the run's dataset)", loc="left")
    figure.legend(loc="outside upper right", ncols=len(splits))
    return _render(figure, "label_distribution", "Examples per label in each split of the run's dataset")
