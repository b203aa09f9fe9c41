"""The demo's report: plots and a Markdown / HTML page from the demo's summary dictionary
(:func:`~lightning_unlearn.experiments.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_unlearn.report.document import Report
from lightning_unlearn.report.plots import (
    plot_bin_series,
    plot_privacy_histogram,
    plot_trajectories,
)

__all__ = ["write_demo_report"]


def write_demo_report(
    out: Path, summary: dict[str, Any], privacy: torch.Tensor, groups: dict[str, torch.Tensor]
) -> tuple[Path, Path]:
    """Write the PNG plots and ``report.md`` / ``report.html`` into ``out``.

    Args:
        out: output directory.
        summary: the demo's summary (rows, trajectories, constants, ...); each row's
            ``original`` / ``unlearned`` / ``oracle`` entries are
            :func:`~lightning_unlearn.unlearning.result.evaluate_splits` metrics.
        privacy: P(x, order) of every training example.
        groups: ``{group name: forget ids}``.

    Returns:
        The Markdown and HTML paths.
    """
    _write_plots(out / "plots", summary, privacy, groups)
    r = Report("lightning-unlearn demo: who is hard to forget, and proof it worked")
    _add_privacy(r, summary)
    _add_budget(r, summary)
    _add_oracle_comparison(r, summary["rows"])
    _add_barriers_and_files(r, summary["rows"])
    return r.write(out)


def _write_plots(
    plots: Path, summary: dict[str, Any], privacy: torch.Tensor, groups: dict[str, torch.Tensor]
) -> None:
    order = summary["order"]
    rows = summary["rows"]
    plot_privacy_histogram(
        privacy,
        plots / "privacy_histogram.png",
        alpha=order,
        groups={name: privacy[ids] for name, ids in groups.items()},
    )
    traj = summary["trajectories"]
    plot_trajectories(
        {k: (v["steps"], v["forget_loss"]) for k, v in traj.items()},
        plots / "forget_loss_trajectory.png",
        ylabel="forget-set mean loss",
        title="Forget-set loss while unlearning (grey: oracle levels)",
        references={f"oracle, {k.split(',')[0]}": v["oracle_forget_loss"] for k, v in traj.items()},
    )
    plot_trajectories(
        {k: (v["steps"], v["mia_auroc"]) for k, v in traj.items()},
        plots / "mia_auroc_trajectory.png",
        ylabel="loss-threshold MIA AUROC (forget vs test)",
        title="Membership inference while unlearning (0.5 = unseen)",
        references={"chance (0.5)": 0.5},
    )
    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = list(groups)
    series: dict[str, tuple[list[float], None]] = {}
    for method in methods:
        by = {r["group"]: r for r in rows if r["method"] == method}
        series[f"steps used ({method})"] = ([float(by[g]["steps"]) for g in names], None)
    first = {r["group"]: r for r in rows if r["method"] == methods[0]}
    series["budget (THEORY §5)"] = ([float(first[g]["budget"]) for g in names], None)
    plot_bin_series(
        names,
        series,
        plots / "budget_vs_steps.png",
        ylabel="unlearning steps",
        title="Calibrated budget and steps actually needed",
        xlabel="forget set",
    )


def _add_privacy(r: Report, summary: dict[str, Any]) -> None:
    order = summary["order"]
    q = summary["privacy_quantiles"]
    r.add_paragraph(
        f"Data: {summary['dataset']} ({summary['num_train']} training examples). A GroupNorm CNN "
        f"was trained for the number of epochs given below with `PerInstancePrivacyMonitor` "
        f"attached; test accuracy {summary['fit']['test_acc']:.3f}, training took "
        f"{summary['train_seconds']} s."
    )
    r.add_code(summary["command"])
    r.add_heading("1. Per-instance privacy losses")
    r.add_paragraph(
        f"P(x, α={order}) is each example's Rényi privacy loss accumulated over training "
        "(THEORY §3), in the nominal convention: no noise was added to training, so these are "
        "calibrated difficulty scores, not a privacy guarantee. Quantiles (0, 10, 50, 90, "
        "100 %): " + ", ".join(f"{v:.3g}" for v in q.values()) + "."
    )
    r.add_image("plots/privacy_histogram.png", "Distribution of log10 P; marks: forget sets")


def _add_budget(r: Report, summary: dict[str, Any]) -> None:
    c = summary["constants"]
    rows = summary["rows"]
    r.add_heading("2. Unlearning with the calibrated budget")
    r.add_paragraph(
        "Each forget set gets the budget of THEORY §5, "
        "k = ceil(α C_LSI / (σ² η) · log(c_α (c_2α P(F, 4α) + D0) / (ε − D_irr))), with "
        f"α={c['alpha']}, C_LSI={c['c_lsi']}, σ={c['langevin_sigma']}, η={c['lr']}, "
        f"ε={c['target_epsilon']}, D0={c['d0']}, D_irr={c['d_irr']} and P(F) the maximum over "
        "the set. These constants are our derivation from Chien et al. 2024 and Mironov 2017; "
        "C_LSI is unknown for deep networks, so it acts as a calibration knob. Larger P, "
        "larger budget."
    )
    stop = summary.get("stop", "auroc")
    rule = (
        f"the loss-calibrated rule (membership AUROC of forget vs test losses within "
        f"{summary.get('tolerance')} of 0.5, or below)"
    )
    if stop == "observe":
        r.add_paragraph(
            f"Every run spent its whole budget while {rule} was checked every few steps; "
            "'rule would stop at' is the first check where it was met. 'Steps to oracle level' "
            f"is THEORY §6's steps-to-unlearn: the first check where the forget set's mean loss "
            f"is within τ={summary.get('tau')} of the retrained oracle's (–: not within the "
            "budget)."
        )
    else:
        r.add_paragraph(
            f"Runs stopped early when {rule} was met ('stop reason: calibrated'). 'Steps to "
            f"oracle level' is THEORY §6's steps-to-unlearn (τ={summary.get('tau')} on the mean "
            "loss; –: not reached)."
        )
    r.add_table(
        [
            "forget set",
            "method",
            "P(F)",
            "budget",
            "steps used",
            "stop reason",
            "rule would stop at",
            "steps to oracle level",
            "seconds",
        ],
        [
            [
                x["group"],
                x["method"],
                x["P_forget"],
                x["budget"],
                x["steps"],
                x["stop_reason"],
                x.get("rule_would_stop_at"),
                None if x.get("steps_to_oracle", -1) < 0 else x["steps_to_oracle"],
                x["seconds"],
            ]
            for x in rows
        ],
    )
    r.add_paragraph(
        "Caveat on the rule: it compares the forget set with typical test data. Examples with "
        "high P are atypical: even a model that never saw them gives them higher losses than "
        "typical test data (see the oracle rows below), so the rule can be met at once for a "
        "high-P set and never for a low-P set of easy examples. The oracle comparison is the "
        "reference; the rule is what is available without an oracle."
    )
    r.add_image("plots/budget_vs_steps.png", "Budget and steps used per forget set")


def _add_oracle_comparison(r: Report, rows: list[dict[str, Any]]) -> None:
    r.add_heading("3. Did it work? Comparison with retrained oracles")
    r.add_paragraph(
        "The oracle is a fresh model retrained without the forget set with the same recipe. "
        "A successful unlearning run brings the forget set's loss, accuracy and membership "
        "AUROC close to the oracle's while keeping test accuracy."
    )
    headers = [
        "forget set",
        "method",
        "model",
        "forget loss",
        "forget acc",
        "MIA AUROC",
        "retain acc",
        "test acc",
    ]
    table = []
    for x in rows:
        for label in ("original", "unlearned", "oracle"):
            m = x[label]
            table.append(
                [
                    x["group"],
                    x["method"],
                    label,
                    m["forget"]["loss"],
                    m["forget"]["accuracy"],
                    m.get("forget_mia_auroc"),
                    m["retain"]["accuracy"],
                    m.get("heldout", {}).get("accuracy"),
                ]
            )
    r.add_table(headers, table)
    r.add_image("plots/forget_loss_trajectory.png", "Forget-set loss against unlearning steps")
    r.add_image("plots/mia_auroc_trajectory.png", "MIA AUROC against unlearning steps")


def _add_barriers_and_files(r: Report, rows: list[dict[str, Any]]) -> None:
    r.add_heading("4. Loss barriers")
    barriers = {x["group"]: x["barrier_original_oracle"] for x in rows}
    r.add_paragraph(
        "Loss barrier on the forget set between the original model and its oracle (THEORY §6; "
        "Sepahvand et al. 2025 report larger barriers for larger P): "
        + ", ".join(f"{g}: {b:.3g}" for g, b in barriers.items())
        + "."
    )
    r.add_heading("Files")
    r.add_bullets(
        [
            "`model.ckpt`: the trained model; `privacy_ledger.pt` / `.csv`: the ledger",
            "`forget_ids_*.json`: the forget sets; `result_*.json`: each unlearning run",
            "`summary.json`: every number above; `tensorboard/`: `tensorboard --logdir` it",
        ]
    )
