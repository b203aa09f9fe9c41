"""Markdown report and PNG plots of the P-informativeness study (written by the command)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from _study_summary import collect

from lightning_unlearn.evaluation.functional import kaplan_meier

MAIN = ("P_default", "train_loss", "sq_norm_sum")


def _r(v: dict[str, float]) -> str:
    return f"{v['rho']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"


def _fmt(v: float) -> str:
    return "not reached" if math.isinf(v) else ("n/a" if v != v else f"{v:.3g}")


def _top_key(v: dict[str, float]) -> tuple[float, float]:
    med = v["km_median"]
    return (med if med == med else -1.0, v["fraction_censored"])


def _top_verdict(outcome: dict[str, Any]) -> str:
    """ "yes" if P's top group is strictly the hardest (KM median, then fraction censored)
    among P and the baselines (the other P estimators left out), "tie" if tied at the top."""
    top = outcome["top_group"]
    p = _top_key(top["P_default"])
    best = max(_top_key(v) for k, v in top.items() if not k.startswith("P_"))
    return "yes" if p > best else ("tie" if p == best else "no")


def _acceptance(results: dict[str, Any]) -> list[str]:
    ft = results["summary"]["outcomes"]["finetune"]
    s, e = ft["set"]["spearman"], ft["example_ref"]["spearman"]
    o = ft["example_oracle"]["spearman"]
    hardest = ft["example_ref"]["hardest_first"]
    set_hardest = ft["set"]["hardest_first"]
    ci = results["summary"]["check_interval"]

    def beats(d: dict[str, Any]) -> str:
        """P positive and above both baselines (a less negative rho does not count)."""
        p = d["P_default"]["rho"]
        above = p > 0 and all(p > d[k]["rho"] for k in ("train_loss", "sq_norm_sum"))
        return "yes" if above else "no"

    return [
        "## Acceptance targets of issue 14 (fine-tuning; P = library defaults)",
        "",
        "| target | measured [95% CI] | met |",
        "|---|---|---|",
        f"| per-set Spearman(P, steps) >= 0.9 | {_r(s['P_default'])} | "
        f"{'yes' if s['P_default']['rho'] >= 0.9 else 'no'} |",
        f"| per-example Spearman(P, steps) >= 0.7 | {_r(e['P_default'])} | "
        f"{'yes' if e['P_default']['rho'] >= 0.7 else 'no'} |",
        f"| per-example Spearman(P, steps) >= 0.7, against the set's own continued oracles | "
        f"{_r(o['P_default'])} | {'yes' if o['P_default']['rho'] >= 0.7 else 'no'} |",
        f"| per set above trained loss ({_r(s['train_loss'])}) and sum g^2 "
        f"({_r(s['sq_norm_sum'])}) | | {beats(s)} |",
        f"| per example above trained loss ({_r(e['train_loss'])}) and sum g^2 "
        f"({_r(e['sq_norm_sum'])}) | | {beats(e)} |",
        f"| per example (oracles) above trained loss ({_r(o['train_loss'])}) and sum g^2 "
        f"({_r(o['sq_norm_sum'])}) | | {beats(o)} |",
        f"| P's top quartile the hardest by KM median (examples, reference models) | "
        f"hardest first: {', '.join(hardest[:4])} | {_top_verdict(ft['example_ref'])} |",
        f"| P's top quartile the hardest by KM median (examples, oracles) | hardest first: "
        f"{', '.join(ft['example_oracle']['hardest_first'][:4])} | "
        f"{_top_verdict(ft['example_oracle'])} |",
        f"| P's top half the hardest by KM median (sets) | hardest first: "
        f"{', '.join(set_hardest[:4])} | {_top_verdict(ft['set'])} |",
        f"| steps independent of the check interval | checked at every step; a 10-step check "
        f"would change {ci['fraction_changed_by_10_step_checks']:.0%} of "
        f"{ci['arrived_runs']} arrived set runs | yes |",
        "",
    ]


def _outcome_table(summary: dict[str, Any], method: str) -> list[str]:
    outs = summary["outcomes"][method]
    names = list(next(iter(outs.values()))["spearman"])
    lines = [
        f"## Spearman(score, steps), `{method}`",
        "",
        "| score | " + " | ".join(f"{o} (n={outs[o]['n']})" for o in outs) + " |",
        "|---|" + "---|" * len(outs),
    ]
    for k in names:
        lines.append(f"| {k} | " + " | ".join(_r(outs[o]["spearman"][k]) for o in outs) + " |")
    cens = ", ".join(f"{o} {outs[o]['censored']:.0%}" for o in outs)
    zero = ", ".join(f"{o} {outs[o]['arrived_at_step_0']:.0%}" for o in outs)
    return [
        *lines,
        "",
        f"Censored (run, entry) pairs: {cens}. Inside the band from step 0: {zero}.",
        "",
    ]


def _top_table(summary: dict[str, Any]) -> list[str]:
    ft = summary["outcomes"]["finetune"]
    lines = [
        "## Which score finds the hardest group (fine-tuning, Kaplan-Meier)",
        "",
        "| score | examples: top quartile KM median / censored | sets: top half KM median / "
        "censored |",
        "|---|---|---|",
    ]
    for k, v in ft["example_ref"]["top_group"].items():
        w = ft["set"]["top_group"][k]
        lines.append(
            f"| {k} | {_fmt(v['km_median'])} / {v['fraction_censored']:.2f} | "
            f"{_fmt(w['km_median'])} / {w['fraction_censored']:.2f} |"
        )
    a, b = ft["example_ref"]["all_km"], ft["set"]["all_km"]
    return [
        *lines,
        "",
        f"All examples: KM median {_fmt(a['km_median'])}, censored {a['fraction_censored']:.2f}; "
        f"all sets: KM median {_fmt(b['km_median'])}, censored {b['fraction_censored']:.2f}.",
        "",
    ]


def _barrier_table(summary: dict[str, Any]) -> list[str]:
    bars = summary["barriers"]
    lines = [
        "## Loss barrier on the forget set against the scores (same initialisation)",
        "",
        "| barrier between the trained model and | mean barrier | "
        + " | ".join(f"Spearman with {k}" for k in MAIN)
        + " |",
        "|---|---|" + "---|" * len(MAIN),
    ]
    for target, v in bars.items():
        lines.append(
            f"| {target} | {v['mean']:.3g} | "
            + " | ".join(_r(v["spearman"][k]) for k in MAIN)
            + " |"
        )
    return [*lines, ""]


def _option_table(summary: dict[str, Any]) -> list[str]:
    opt = summary["option_study"]
    order = sorted(opt["example_ref"], key=lambda k: -opt["example_ref"][k]["rho"])
    lines = [
        "## Option study (fine-tuning): which P configuration predicts steps",
        "",
        "Sorted by per-example Spearman against the continued reference models. `med`: the "
        "median per-example gradient norm of the first epoch (sigma = med makes r ~ 1; C = med "
        "clips half the early norms); `holder2`: the Hölder composition option at p = 2.",
        "",
        "| configuration | per example (ref) | per example (oracles) | per set |",
        "|---|---|---|---|",
    ]
    for k in order:
        lines.append(
            f"| {k} | {_r(opt['example_ref'][k])} | {_r(opt['example_oracle'][k])} | "
            f"{_r(opt['set'][k])} |"
        )
    return [*lines, ""]


def _seed_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Per seed",
        "",
        "| seed | sigma = med | offline P vs monitor (max rel. diff) | sweep run same model "
        "| Spearman(P_default, sum g^2) | Spearman(P sigma=med, sum g^2) |",
        "|---|---|---|---|---|---|",
    ]
    for s in results["seeds"]:
        sp = s["spearman_with_sq_norm_sum"]
        lines.append(
            f"| {s['seed']} | {s['sigma_scaled']:.3g} | {s['offline_vs_monitor_max_rel_diff']:.1e} "
            f"| {s['sweep_run_same_model']} | {sp['P_default']:.3f} | "
            f"{sp['opt:sigma=med,C=none,a=8']:.3f} |"
        )
    return [*lines, ""]


def _set_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Forget sets (fine-tuning)",
        "",
        "| seed | bin | mean P_default | noisy labels | oracle band step 0 -> cap "
        "| mean phi step 0 -> cap | steps (matched) | steps (static band) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in results["seeds"]:
        noisy = set(s.get("noisy_ids", []))
        for row in s["rows"]:
            ft = row["methods"]["finetune"]
            (l0, u0), (l1, u1) = ft["set_band_first_last"]
            first, last = ft["runs"][0]["set_phi_first_last"]

            def steps(key: str, runs: list[dict[str, Any]]) -> str:
                return " ; ".join(
                    f"{r[key]['steps']}{'' if r[key]['arrived'] else '+'}" for r in runs
                )

            lines.append(
                f"| {s['seed']} | {row['bin'] + 1} | {row['scores']['P_default']:.3g} | "
                f"{len(noisy.intersection(row['ids']))} | "
                f"[{l0:.2f}, {u0:.2f}] -> [{l1:.2f}, {u1:.2f}] | {first:.2f} -> {last:.2f} | "
                f"{steps('set', ft['runs'])} | {steps('set_static', ft['runs'])} |"
            )
    return [*lines, "", "(`+`: censored at cap - hold; one entry per run.)", ""]


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"# P-informativeness study (scale `{s['scale']}`)",
        "",
        f"Command: `{results['command']}`. Digits MLP (hidden {s['hidden']}), {s['epochs']} "
        f"epochs, {s['seeds']} training seed(s); {s['k']} reference models continued for the "
        f"cap; {s['n_bins']} forget sets of {s['size']} per seed; {s['oracles']} oracles per set, "
        f"continued with each method; {s['runs']} fine-tuning and {s['other_runs']} SGLD / "
        f"l1-sparse run(s) per set; {s['cap']} steps recorded at every step; hold {s['hold']}; "
        f"bands mean ± {s['z']} sd at every step (matched compute). Intervals: two-stage "
        f"bootstrap over seeds and sets / examples ({s['boot']} resamples).",
        "",
    ]
    lines += _acceptance(results)
    for method in results["summary"]["outcomes"]:
        lines += _outcome_table(results["summary"], method)
    lines += _top_table(results["summary"])
    lines += _barrier_table(results["summary"])
    lines += _option_table(results["summary"])
    lines += _seed_table(results)
    lines += _set_table(results)
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Spearman bars, option study, Kaplan-Meier of the top groups, barrier vs P (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, written = results["summary"], []
    ft = summary["outcomes"]["finetune"]
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(ft["set"]["spearman"])
    for off, outcome in ((-0.2, "set"), (0.0, "example_ref"), (0.2, "example_oracle")):
        v = [ft[outcome]["spearman"][k] for k in names]
        ax.errorbar(
            [i + off for i in range(len(names))],
            [d["rho"] for d in v],
            yerr=[[d["rho"] - d["low"] for d in v], [d["high"] - d["rho"] for d in v]],
            fmt="o",
            capsize=3,
            label=outcome,
        )
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("Spearman(score, steps)")
    ax.legend()
    written.append(_save(fig, out / "spearman_scores.png"))
    fig, ax = plt.subplots(figsize=(7, 6))
    opt = summary["option_study"]["example_ref"]
    keys = sorted(opt, key=lambda k: opt[k]["rho"])
    ax.errorbar(
        [opt[k]["rho"] for k in keys],
        range(len(keys)),
        xerr=[
            [opt[k]["rho"] - opt[k]["low"] for k in keys],
            [opt[k]["high"] - opt[k]["rho"] for k in keys],
        ],
        fmt="o",
        capsize=2,
    )
    ax.set_yticks(range(len(keys)), keys, fontsize=6)
    ax.set_xlabel("per-example Spearman(P, steps)")
    written.append(_save(fig, out / "option_study.png"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, outcome in zip(axes, ("example_ref", "example_oracle"), strict=True):
        _km_panel(ax, collect(results["seeds"], "finetune", outcome))
        ax.set_title(f"top quartile, {outcome}")
        ax.set_xlabel("unlearning steps")
    axes[0].set_ylabel("fraction not yet unlearned")
    written.append(_save(fig, out / "km_top_quartile.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [row for s in results["seeds"] for row in s["rows"]]
    for method in results["settings"]["methods"]:
        ax.scatter(
            [math.log10(max(r["scores"]["P_default"], 1e-300)) for r in rows],
            [r["methods"][method]["runs"][0]["barrier_unlearned"] for r in rows],
            label=method,
            s=12,
        )
    ax.scatter(
        [math.log10(max(r["scores"]["P_default"], 1e-300)) for r in rows],
        [r["barrier_oracle_same_init"] for r in rows],
        label="oracle (same init)",
        marker="x",
    )
    ax.set_xlabel("log10 mean P of the forget set")
    ax.set_ylabel("loss barrier on the forget set")
    ax.legend()
    written.append(_save(fig, out / "barrier_vs_p.png"))
    return written


def _km_panel(ax: Any, data: dict[str, Any]) -> None:
    """Kaplan-Meier curves of the top quartile (within each seed) of the main scores."""
    groups = torch.tensor(data["groups"])
    for k in MAIN:
        score = torch.tensor(data["x"][k], dtype=torch.float64)
        top = torch.zeros_like(groups, dtype=torch.bool)
        for g in torch.unique(groups):
            sel = groups == g
            top[sel] = score[sel] >= torch.quantile(score[sel], 0.75)
        t = torch.tensor([tt for i, ts in enumerate(data["times"]) if top[i] for tt in ts])
        a = torch.tensor([aa for i, ars in enumerate(data["arrived"]) if top[i] for aa in ars])
        km = kaplan_meier(t, a)
        ax.step([0.0, *km.times.tolist()], [1.0, *km.survival.tolist()], where="post", label=k)
    ax.legend()


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
