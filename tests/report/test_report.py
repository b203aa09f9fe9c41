"""The report document (Markdown + HTML from the same blocks) and the PNG plots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_unlearn.report import (
    Report,
    format_number,
    plot_bin_series,
    plot_privacy_histogram,
    plot_score_grid,
    plot_trajectories,
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


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def test_plots_write_pngs(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(200, generator=gen, dtype=torch.float64) * 100 + 1
    paths = [
        plot_privacy_histogram(p, tmp_path / "h.png", alpha=8, groups={"low": p[:5]}),
        plot_bin_series(
            ["b1", "b2", "b3"],
            {"finetune": ([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]), "sgld": ([2.0, 3.0, 4.0], None)},
            tmp_path / "s.png",
            ylabel="steps",
            title="t",
        ),
        plot_score_grid(
            p,
            {"el2n": p.sqrt(), "grand": -p},
            tmp_path / "g.png",
            alpha=8,
            rhos={"el2n": 1.0},
            max_points=50,
        ),
        plot_trajectories(
            {"run": ([0, 5, 10], [1.0, 0.5, 0.2])},
            tmp_path / "t.png",
            ylabel="loss",
            title="t",
            references={"oracle": 0.3},
        ),
    ]
    assert all(_is_png(path) for path in paths)


def test_bin_series_rejects_wrong_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Expected 2 values"):
        plot_bin_series(["a", "b"], {"m": ([1.0], None)}, tmp_path / "x.png", ylabel="", title="")
