"""PNG plots for the demo and reproduce reports (matplotlib, non-interactive Agg backend).

Each function takes plain tensors / arrays / floats, writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "plot_bin_series",
    "plot_privacy_histogram",
    "plot_score_grid",
    "plot_trajectories",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is in the dev and report extras
        raise ImportError(
            "Reports need matplotlib; install it with `pip install 'lightning_unlearn[report]'`."
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _np(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_privacy_histogram(
    privacy_losses: ArrayLike,
    path: str | Path,
    *,
    alpha: int,
    groups: Mapping[str, ArrayLike] | None = None,
    bins: int = 50,
) -> Path:
    """Histogram of log10 P(x, alpha) over the training set, with chosen groups overlaid.

    Args:
        privacy_losses: P(x, alpha) per training example (THEORY §3).
        path: PNG path.
        alpha: the Rényi order (for the axis label).
        groups: optional ``{label: P values of a group}`` drawn as rug marks below the axis.
        bins: histogram bins.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    p = _np(privacy_losses)
    logp = np.log10(np.clip(p, 1e-300, None))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(logp, bins=bins, color="#4c72b0", alpha=0.85)
    if groups:
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"][1:]
        for i, (label, values) in enumerate(groups.items()):
            g = np.log10(np.clip(_np(values), 1e-300, None))
            ax.plot(
                g,
                np.zeros_like(g),
                "|",
                ms=14,
                mew=1.5,
                color=colors[i % len(colors)],
                label=f"{label} (n={len(g)})",
            )
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel(f"log10 P(x, α={alpha})")
    ax.set_ylabel("training examples")
    ax.set_title("Per-instance privacy losses")
    return _save(fig, path)


def plot_bin_series(
    bin_labels: Sequence[str],
    series: Mapping[str, tuple[ArrayLike, ArrayLike | None]],
    path: str | Path,
    *,
    ylabel: str,
    title: str,
    xlabel: str = "P quantile bin (low → high privacy loss)",
) -> Path:
    """Mean (± spread) of a quantity per P bin, one line per series (e.g. per method).

    Args:
        bin_labels: labels of the bins, low P first.
        series: ``{name: (means, stds or None)}``, each of length ``len(bin_labels)``.
        path: PNG path.
        ylabel: y-axis label.
        title: plot title.
        xlabel: x-axis label.

    Returns:
        The PNG path.

    Raises:
        ValueError: a series has the wrong length.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    x = np.arange(len(bin_labels))
    for i, (name, (means, stds)) in enumerate(series.items()):
        m = _np(means)
        if len(m) != len(bin_labels):
            raise ValueError(
                f"Expected {len(bin_labels)} values for series {name!r}, but got {len(m)}."
            )
        s = None if stds is None else _np(stds)
        offset = (i - (len(series) - 1) / 2) * 0.08
        ax.errorbar(x + offset, m, yerr=s, marker="o", capsize=3, label=name)
    long = max((len(b) for b in bin_labels), default=0) > 10
    ax.set_xticks(
        x,
        list(bin_labels),
        fontsize=8,
        rotation=20 if long else 0,
        ha="right" if long else "center",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_grid(
    privacy_losses: ArrayLike,
    scores: Mapping[str, ArrayLike],
    path: str | Path,
    *,
    alpha: int,
    rhos: Mapping[str, float] | None = None,
    max_points: int = 4000,
    seed: int = 0,
) -> Path:
    """Scatter of log10 P against each difficulty score, one panel per score.

    Args:
        privacy_losses: P(x, alpha) per example.
        scores: ``{name: score per example}`` (same order as ``privacy_losses``).
        path: PNG path.
        alpha: the Rényi order (for the axis label).
        rhos: optional Spearman correlations shown in the panel titles.
        max_points: subsample to at most this many points (seeded) for readability.
        seed: seed of the subsample.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    p = np.log10(np.clip(_np(privacy_losses), 1e-300, None))
    idx = np.arange(len(p))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(p), max_points, replace=False))
    n = max(1, len(scores))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.3 * rows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, scores.items(), strict=False):
        v = _np(values)
        ax.scatter(p[idx], v[idx], s=3, alpha=0.35, color="#4c72b0")
        title = name if rhos is None or name not in rhos else f"{name} (ρ = {rhos[name]:.2f})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"log10 P(x, α={alpha})", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(scores) :]:
        ax.axis("off")
    return _save(fig, path)


def plot_trajectories(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    *,
    ylabel: str,
    title: str,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Metric against unlearning step, one line per run, with horizontal reference levels.

    Args:
        curves: ``{label: (steps, values)}``.
        path: PNG path.
        ylabel: y-axis label.
        title: plot title.
        references: ``{label: level}`` drawn as dashed horizontal lines (e.g. the oracle's).

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, (steps, values)) in enumerate(curves.items()):
        ax.plot(_np(steps), _np(values), marker=".", label=label, color=colors[i % len(colors)])
    styles = ("--", ":", "-.")
    for i, (label, level) in enumerate((references or {}).items()):
        ax.axhline(level, ls=styles[i % len(styles)], lw=1.2, color="0.3", label=label)
    ax.set_xlabel("unlearning step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)
