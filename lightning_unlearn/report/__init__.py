"""Reports: PNG plots (matplotlib, Agg backend) and a Markdown + HTML document."""

from lightning_unlearn.report.document import Report, format_number
from lightning_unlearn.report.plots import (
    plot_bin_series,
    plot_privacy_histogram,
    plot_score_grid,
    plot_trajectories,
)

__all__ = [
    "Report",
    "format_number",
    "plot_bin_series",
    "plot_privacy_histogram",
    "plot_score_grid",
    "plot_trajectories",
]
