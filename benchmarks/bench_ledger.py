"""Benchmark of the accounting hot path: per_step_rdp and PrivacyLedger.update.

Times, per training step of a large data set (defaults: N = 1,000,000 examples, K = 8 orders,
1,024 ids per update):

- ``update``: ``PrivacyLedger.update`` with random ids and precomputed RDP rows;
- ``per_step_rdp``: the per-instance RDP of 1,024 ratios at the K orders (THEORY §2);
- ``rdp+update``: both, as the monitor does every step;

beside two baselines: a bare ``index_add_`` of the same rows into a plain ``[N, K]`` tensor (the
irreducible work of an update) and Opacus' scalar ``compute_rdp`` called once per example (what
per-instance accounting costs without vectorisation; 5 repeats, CPU). Ratios are printed.

Each is measured after a warm-up, one call per sample (with ``torch.cuda.synchronize`` around
every call on CUDA), and reported as median and 90th percentile in milliseconds.

Usage::

    .venv/bin/python benchmarks/bench_ledger.py                      # CPU
    .venv/bin/python benchmarks/bench_ledger.py --device cuda --out ledger_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_unlearn.accounting import DEFAULT_ALPHAS, PrivacyLedger, per_step_rdp


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(
    fn: Callable[[int], None], warmup: int, repeats: int, device: torch.device
) -> list[float]:
    for i in range(warmup):
        fn(i)
    _sync(device)
    samples = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(warmup + i)
        _sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "min_ms": ordered[0],
        "repeats": len(ordered),
    }


def _ratio(results: dict[str, object], num: str, den: str) -> float | None:
    a, b = results.get(num), results.get(den)
    if isinstance(a, dict) and isinstance(b, dict):
        return float(a["median_ms"]) / float(b["median_ms"])
    return None


def _opacus_loop(ratios: torch.Tensor, sample_rate: float, alphas: tuple[int, ...]) -> dict:
    """Baseline: Opacus' scalar RDP analysis called once per example (sigma = 1 / r)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    values = ratios.cpu().tolist()

    def run(_: int) -> None:
        for r in values:
            if r > 0:
                compute_rdp(q=sample_rate, noise_multiplier=1.0 / r, steps=1, orders=list(alphas))

    return _summary(_time(run, 1, 5, torch.device("cpu")))


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--num-samples", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--orders", type=int, default=len(DEFAULT_ALPHAS), help="first K of 2..")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--sample-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--no-opacus", action="store_true", help="skip the per-example Opacus loop baseline"
    )
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.orders <= len(DEFAULT_ALPHAS):
        alphas = DEFAULT_ALPHAS[: args.orders]
    else:
        alphas = tuple(range(2, args.orders + 2))
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    total = args.warmup + args.updates
    b = args.batch_size
    ids = torch.randint(0, args.num_samples, (total, b), generator=gen).to(device)
    norms = (torch.rand(total, b, generator=gen, dtype=torch.float64) * 2).to(device)
    ratios = norms / 1.0  # nominal convention, sigma = 1, no clipping: r = ||g||
    rdp_rows = per_step_rdp(ratios, args.sample_rate, alphas) / args.sample_rate

    ledger = PrivacyLedger(args.num_samples, alphas, device=device)

    def update(i: int) -> None:
        ledger.update(ids[i], rdp_rows[i], norms[i])

    def rdp_only(i: int) -> None:
        per_step_rdp(ratios[i], args.sample_rate, alphas)

    def rdp_and_update(i: int) -> None:
        ledger.update(ids[i], per_step_rdp(ratios[i], args.sample_rate, alphas), norms[i])

    results: dict[str, object] = {
        "config": {
            "device": str(device),
            "device_name": (
                torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor() or platform.machine()
            ),
            "num_samples": args.num_samples,
            "batch_size": b,
            "alphas": list(alphas),
            "updates": args.updates,
            "warmup": args.warmup,
            "sample_rate": args.sample_rate,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    }
    plain = torch.zeros(args.num_samples, len(alphas), dtype=torch.float64, device=device)

    def baseline_scatter(i: int) -> None:
        # the irreducible work of an update: one scatter-add of the rows, nothing else
        plain.index_add_(0, ids[i], rdp_rows[i])

    timed = {
        "index_add_baseline": baseline_scatter,
        "update": update,
        "per_step_rdp": rdp_only,
        "rdp+update": rdp_and_update,
    }
    for name, fn in timed.items():
        ledger.reset()
        results[name] = _summary(_time(fn, args.warmup, args.updates, device))
    # sanity: the last timed loop's updates all landed in the ledger
    assert int(ledger.counts.sum()) == total * b

    if not args.no_opacus:
        results["opacus_loop_baseline"] = _opacus_loop(ratios[0], args.sample_rate, alphas)

    for name in (*timed, "opacus_loop_baseline"):
        s = results.get(name)
        if isinstance(s, dict):
            print(f"{name:>20}: median {s['median_ms']:9.3f} ms   p90 {s['p90_ms']:9.3f} ms")
    ratios_out = {
        "update / index_add_baseline": _ratio(results, "update", "index_add_baseline"),
        "opacus_loop_baseline / per_step_rdp": _ratio(
            results, "opacus_loop_baseline", "per_step_rdp"
        ),
    }
    results["ratios"] = ratios_out
    for key, value in ratios_out.items():
        if value is not None:
            print(f"{key:>36}: {value:.2f}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
