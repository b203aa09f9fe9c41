"""The demo's report: plots and a Markdown / HTML page from the demo's summary dictionary
(:func:`~lightning_unlearn.experiments.demo.run_demo`)."""

from __future__ import annotations

import math
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
        summary: the demo's summary (rows, trajectories, reference models, ...); each row's
            ``original`` / ``unlearned`` / ``oracle`` entries are
            :func:`~lightning_unlearn.unlearning.result.evaluate_splits` metrics (``unlearned``
            is ``None`` for a request sent to retraining).
        privacy: P(x, order) of every training example.
        groups: ``{group name: forget ids}``.

    Returns:
        The Markdown and HTML paths.
    """
    _write_plots(out / "plots", summary, privacy, groups)
    r = Report("lightning-unlearn demo: who is hard to forget, and how much effort it takes")
    _add_privacy(r, summary)
    _add_reference(r, summary)
    _add_requests(r, summary)
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
        {k: (v["steps"], v["forget_loss"]) for k, v in traj.items() if v["steps"]},
        plots / "forget_loss_trajectory.png",
        ylabel="forget-set mean loss",
        title="Forget-set loss while unlearning (grey: oracle levels)",
        references={f"oracle, {k.split(',')[0]}": v["oracle_forget_loss"] for k, v in traj.items()},
    )
    tolerances = {v["tolerance"] for v in traj.values()}
    plot_trajectories(
        {k: (v["flagged_steps"], v["flagged"]) for k, v in traj.items() if v["flagged_steps"]},
        plots / "out_flagged_trajectory.png",
        ylabel="forget examples flagged as members",
        title="Per-example OUT test while unlearning (stop: at most the tolerance)",
        references={f"tolerance ({t})": float(t) for t in sorted(tolerances)},
    )
    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = list(groups)
    series: dict[str, tuple[list[float], None]] = {}
    for method in methods:
        by = {r["group"]: r for r in rows if r["method"] == method}
        series[f"steps used ({method})"] = ([float(by[g]["steps"]) for g in names], None)
        series[f"budget ({method})"] = ([_steps(by[g]["budget"]["steps"]) for g in names], None)
    plot_bin_series(
        names,
        series,
        plots / "budget_vs_steps.png",
        ylabel="unlearning steps",
        title="Budget (gap: none, sent to retraining) and steps used",
        xlabel="forget set",
    )


def _steps(value: int | None) -> float:
    return math.nan if value is None else float(value)


def _add_privacy(r: Report, summary: dict[str, Any]) -> None:
    order = summary["order"]
    q = summary["privacy_quantiles"]
    r.add_paragraph(
        f"Data: {summary['dataset']} ({summary['num_train']} training examples). A "
        f"{summary.get('model', 'cnn')} was trained for {summary.get('epochs')} epochs with "
        f"`PerInstancePrivacyMonitor` attached; test accuracy {summary['fit']['test_acc']:.3f}, "
        f"training took {summary['train_seconds']} s."
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


def _add_reference(r: Report, summary: dict[str, Any]) -> None:
    ref = summary["reference"]
    rule = ref["rule"]
    r.add_heading("2. Reference models, the OUT rule and the budget")
    reused = f"; {ref['reused']} of them were found on disk and reused" if ref["reused"] else ""
    r.add_paragraph(
        f"{ref['k']} reference models were trained with the same recipe ({ref['epochs']} "
        f"epochs) on balanced random halves, so every example is OUT of {ref['k'] // 2} of "
        f"them ({ref['seconds']} s{reused}; `reference/`). From them, every forget example gets "
        "its own OUT distribution of the logit-scaled confidence, and an example is flagged "
        f"('still looks trained on') when its score exceeds {rule['threshold']}. The two "
        "tolerances, how many flagged examples and how high a mean score a set never trained on "
        f"shows, come from the reference models themselves (level {rule['level']}); the scores "
        "are read through the model's held-out map, a line fitted on the test set from the "
        "reference models' confidence to the model's (THEORY §6; the documentation's "
        "'Calibrated unlearning' page derives it)."
    )
    cals = ref["calibrations"]
    if cals:
        r.add_paragraph(
            "The budget needs no constant: k = a·log P + b (THEORY §5's form) is fitted from "
            "fine-tuning runs of reference models on probe examples they trained on, with an "
            f"80 % prediction interval ({ref['calibration_seconds']} s): "
            + "; ".join(
                f"{m}: a = {c['a']:.3g}, b = {c['b']:.3g} from {c['num_points']} points "
                f"({c['num_censored']} censored), `{c['file']}`"
                for m, c in cals.items()
            )
            + ". The run's budget is the interval's upper end, capped at one training run; the OUT "
            "rule can end it earlier."
        )
    else:
        r.add_paragraph("The budget was fixed by `budget_steps` (no calibration fitted).")


def _budget_cell(b: dict[str, Any]) -> str:
    if b.get("low") is None:
        return f"{b.get('steps')} ({b.get('source')})"
    high = "∞" if b.get("unbounded") else f"{b['high']:.0f}"
    steps = "none" if b.get("steps") is None else b["steps"]
    return f"{steps} [{b['low']}, {high}] ({b['source']})"


def _flagged(x: dict[str, Any]) -> str:
    after = "–" if x["flagged_after"] is None else x["flagged_after"]
    return f"{x['flagged_before']} → {after} ({x['tolerance']})"


def _mean(x: dict[str, Any]) -> str:
    after = "–" if x.get("mean_score_after") is None else f"{x['mean_score_after']:.2f}"
    return f"{x['mean_score_before']:.2f} → {after} ({x['mean_tolerance']:.2f})"


def _add_requests(r: Report, summary: dict[str, Any]) -> None:
    rows = summary["rows"]
    r.add_heading("3. One deletion request per forget set and method")
    r.add_paragraph(
        "Each request is `calibrated_unlearn`: the budget with its interval and source; before "
        "any step, 'retrain' when the predicted steps exceed one training run on the "
        "retain set (no step is spent); 'already OUT' when the trained model already passes the "
        "OUT test; otherwise unlearning until at most the tolerance of forget examples is "
        "flagged and the set's mean score is within its tolerance, for "
        f"{summary['hold'] + 1} consecutive steps; a budget spent with the set still flagged is "
        "recommended for retraining after the fact. 'Steps to oracle level' is "
        "THEORY §6's steps-to-unlearn: the first step where the forget set's mean loss is "
        f"within τ={summary['tau']} of the retrained oracle's (–: never; a request that "
        "stopped, or was already OUT, with – here ended further from the oracle than τ: the "
        "OUT rule and the oracle disagree). 'Detection power' is how often the rule sees the "
        "set as trained on when it still is, by the reference models' own members: where it is "
        "low, 'already OUT' is weak evidence. Per request: "
        "`requests/<set>_<method>/request.json` and `.md`."
    )
    r.add_table(
        [
            "forget set",
            "method",
            "P(F) max",
            "budget [interval] (source)",
            "recommendation",
            "steps used",
            "stop reason",
            "flagged before → after (tolerance)",
            "mean score before → after (tolerance)",
            "detection power",
            "compute / retraining",
            "steps to oracle level",
        ],
        [
            [
                x["group"],
                x["method"],
                x["P_forget"],
                _budget_cell(x["budget"]),
                x["recommendation"],
                x["steps"],
                x["stop_reason"],
                _flagged(x),
                _mean(x),
                "–" if x.get("power") is None else f"{x['power']:.0%}",
                f"{x['compute_fraction']:.1%}",
                None if x["steps_to_oracle"] < 0 else x["steps_to_oracle"],
            ]
            for x in rows
        ],
    )
    r.add_image("plots/budget_vs_steps.png", "Budget and steps used per forget set")
    r.add_image("plots/out_flagged_trajectory.png", "Flagged forget examples along each run")


def _add_oracle_comparison(r: Report, rows: list[dict[str, Any]]) -> None:
    r.add_heading("4. Did it work? Comparison with retrained oracles")
    r.add_paragraph(
        "The oracle is a fresh model retrained without the forget set with the same recipe. "
        "A successful request brings the forget set's loss, accuracy and membership AUROC "
        "close to the oracle's while keeping retain and test accuracy; a request sent to "
        "retraining has no unlearned model (–). The MIA AUROC (forget vs test losses) of the "
        "oracles shows why the held-out-AUROC rule (`LossCalibratedStopping`) is not the "
        "demo's stop rule: it asks for 0.5, but a model that never saw a set of atypical "
        "(high-P) examples gives them higher losses than typical test data (AUROC below 0.5, "
        "so the rule fires at once) and one that never saw easy (low-P) examples lower losses "
        "(above 0.5, so it never fires)."
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
            if m is None:
                table.append([x["group"], x["method"], f"{label} (not run)", *[None] * 5])
                continue
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


def _add_barriers_and_files(r: Report, rows: list[dict[str, Any]]) -> None:
    r.add_heading("5. Loss barriers")
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
            "`reference/`: the reference models (reused by a rerun); `calibration_<method>.json`:"
            " the fitted budgets",
            "`forget_ids_*.json`: the forget sets; `requests/<set>_<method>/request.json` / "
            "`.md`: each deletion request",
            "`summary.json`: every number above; `tensorboard/`: `tensorboard --logdir` it",
        ]
    )
