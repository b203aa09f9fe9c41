"""Memory and time of ``PrivacyLedger.to_csv`` on a large ledger (streamed, atomic export).

Builds a ledger of N examples (default 2,000,000, the default orders, random plausible values),
then, in this process, measures one ``to_csv(path, delta=1e-5)``:

- wall time (``time.perf_counter``) and the peak resident set size of the process before and
  after the export (``resource.getrusage``, in MiB; the ledger itself is part of "before");
- with ``--tracemalloc``, in a second export, the peak Python-heap allocation of the export
  (its own working memory; tracemalloc slows the export down about tenfold, so its time is
  not reported);
- the size of the CSV.

The same export before streaming built one object array of all rows: about 1 GB at N = 2e6.

Usage::

    .venv/bin/python benchmarks/bench_csv.py [--num-samples 2000000] [--out csv.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

from lightning_unlearn.accounting import DEFAULT_ALPHAS, PrivacyLedger


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=2_000_000)
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    parser.add_argument("--tracemalloc", action="store_true", help="also measure the heap peak")
    args = parser.parse_args()
    n = args.num_samples
    ledger = PrivacyLedger(n, DEFAULT_ALPHAS)
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(n, 1, generator=gen, dtype=torch.float64)
    ledger.privacy.copy_(base * torch.tensor(DEFAULT_ALPHAS, dtype=torch.float64))
    ledger.counts.fill_(3)
    ledger.sq_norm_sum.copy_(torch.rand(n, generator=gen, dtype=torch.float64))
    ledger.last_norm.copy_(ledger.sq_norm_sum.sqrt())
    rss_before = _rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "privacy_ledger.csv"
        start = time.perf_counter()
        ledger.to_csv(path, delta=1e-5)
        seconds = time.perf_counter() - start
        rss_after = _rss_mib()
        size = path.stat().st_size
        peak = None
        if args.tracemalloc:
            tracemalloc.start()
            ledger.to_csv(path, delta=1e-5)
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    result = {
        "num_samples": n,
        "num_orders": len(DEFAULT_ALPHAS),
        "seconds": round(seconds, 2),
        "peak_rss_mib_before_export": round(rss_before, 1),
        "peak_rss_mib_after_export": round(rss_after, 1),
        "tracemalloc_peak_mib": None if peak is None else round(peak, 1),
        "csv_mib": round(size / 2**20, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
