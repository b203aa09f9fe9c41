"""The report document (Markdown + HTML from the same blocks) and the PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch

from lightning_unlearn.report import (
    Report,
    format_number,
    plot_bin_series,
    plot_privacy_histogram,
    plot_score_grid,
    plot_trajectories,
    plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_markdown_and_html_hold_the_same_content(tmp_path: Path) -> None:
    r = Report("Title <1>")
    r.add_heading("Section")
    r.add_paragraph("P uses `alpha` & more")
    r.add_bullets(["one", "two"])
    r.add_code("lightning-unlearn demo")
    r.add_table(["group", "steps", "auroc"], [["low", 3, 0.51234], ["high", None, float("nan")]])
    r.add_image("plots/a.png", "caption a")
    md_path, html_path = r.write(tmp_path, name="rep")
    md, page = md_path.read_text(), html_path.read_text()
    assert md.startswith("# Title <1>\n")
    assert "| low | 3 | 0.512 |" in md
    assert "| high | – | nan |" in md
    assert "![caption a](plots/a.png)" in md
    assert "<h1>Title &lt;1&gt;</h1>" in page  # escaped in HTML
    assert "<code>alpha</code> &amp; more" in page
    assert "<td>0.512</td>" in page
    assert '<img src="plots/a.png" alt="caption a">' in page
    assert page.count("<tr>") == 3


def test_table_rows_must_match_headers() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        Report("x").add_table(["a", "b"], [[1]])


def test_format_number() -> None:
    assert format_number(True) == "yes"
    assert format_number(1234567.0) == "1.23e+06"
    assert format_number(float("inf")) == "inf"


def _read_png(path: Path, size_in: tuple[float, float], dpi: int = 110) -> np.ndarray:
    """The PNG read back: its signature, its pixel size (the figure size at the save dpi), and
    enough drawn (non-white) pixels in more than two colours to rule out a blank canvas."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)
    w, h = size_in
    assert pixels.shape[:2] == (round(h * dpi), round(w * dpi))
    rgb = pixels[..., :3].reshape(-1, 3)
    drawn = (rgb < 0.98).any(axis=1)
    assert drawn.mean() > 0.02
    assert len(np.unique(np.round(rgb[drawn], 2), axis=0)) > 3
    return pixels


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure the plotting functions save, captured (open) just before it is written."""
    captured: list[Any] = []
    real = plots._save

    def keep(fig: Any, path: str | Path) -> Path:
        captured.append(fig)
        fig.canvas.draw()  # lay out before the saver closes it: the artists stay readable
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return captured


def test_histogram_draws_the_losses_and_the_groups(tmp_path: Path, figures: list[Any]) -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(200, generator=gen, dtype=torch.float64) * 100 + 1
    path = plot_privacy_histogram(p, tmp_path / "h.png", alpha=8, groups={"low": p[:5]}, bins=20)
    _read_png(path, (6.4, 3.8))
    ax = figures[0].axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    counts, _ = np.histogram(np.log10(p.numpy()), bins=20)  # independent: numpy's histogram
    np.testing.assert_array_equal(heights, counts)
    (rug,) = [line for line in ax.lines if line.get_label().startswith("low")]
    np.testing.assert_allclose(rug.get_xdata(), np.log10(p[:5].numpy()), rtol=1e-12)
    assert rug.get_label() == "low (n=5)"
    assert ax.get_xlabel() == "log10 P(x, α=8)"


def test_bin_series_and_trajectories_draw_their_inputs(tmp_path: Path, figures: list[Any]) -> None:
    means = {"finetune": [1.0, 2.0, 3.0], "sgld": [2.0, 3.0, 4.0]}
    series = {"finetune": (means["finetune"], [0.1, 0.2, 0.3]), "sgld": (means["sgld"], None)}
    path = plot_bin_series(
        ["b1", "b2", "b3"], series, tmp_path / "s.png", ylabel="steps", title="t"
    )
    _read_png(path, (6.4, 3.8))
    ax = figures[0].axes[0]
    drawn = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    for i, name in enumerate(["finetune", "sgld"]):
        line = drawn.get(name) or ax.containers[i].lines[0]
        np.testing.assert_allclose(line.get_ydata(), means[name])
        offset = (i - 0.5) * 0.08  # the series are spread around their bin
        np.testing.assert_allclose(line.get_xdata(), np.arange(3) + offset)
    # the error bars of "finetune" span mean +- std
    bars = ax.containers[0].lines[2][0].get_segments()
    np.testing.assert_allclose([seg[:, 1] for seg in bars], [[0.9, 1.1], [1.8, 2.2], [2.7, 3.3]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b1", "b2", "b3"]

    path = plot_trajectories(
        {"run": ([0, 5, 10], [1.0, 0.5, 0.2])},
        tmp_path / "t.png",
        ylabel="loss",
        title="t",
        references={"oracle": 0.3},
    )
    _read_png(path, (6.4, 3.8))
    ax = figures[1].axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_array_equal(lines["run"].get_xdata(), [0, 5, 10])
    np.testing.assert_array_equal(lines["run"].get_ydata(), [1.0, 0.5, 0.2])
    np.testing.assert_array_equal(lines["oracle"].get_ydata(), [0.3, 0.3])


def test_score_grid_draws_a_seeded_subsample_of_the_points(
    tmp_path: Path, figures: list[Any]
) -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(200, generator=gen, dtype=torch.float64) * 100 + 1
    scores = {"el2n": p.sqrt(), "grand": -p}
    path = plot_score_grid(
        p, scores, tmp_path / "g.png", alpha=8, rhos={"el2n": 1.0}, max_points=50, seed=3
    )
    _read_png(path, (8.0, 3.3))
    panels = figures[0].axes
    assert [ax.get_title() for ax in panels] == ["el2n (ρ = 1.00)", "grand"]
    logp = np.log10(p.numpy())
    for ax, values in zip(panels, scores.values(), strict=True):
        points = ax.collections[0].get_offsets()
        assert len(points) == 50
        # every drawn point is one example's (log10 P, score) pair, each example at most once
        rows = [int(np.argmin(np.abs(logp - x))) for x, _ in points]
        assert len(set(rows)) == 50
        np.testing.assert_allclose(points[:, 0], logp[rows], rtol=1e-12)
        np.testing.assert_allclose(points[:, 1], values.numpy()[rows], rtol=1e-12)


def test_bin_series_rejects_wrong_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Expected 2 values"):
        plot_bin_series(["a", "b"], {"m": ([1.0], None)}, tmp_path / "x.png", ylabel="", title="")
