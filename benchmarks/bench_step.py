"""Per-step cost of per-sample gradient norms, side by side with plain Lightning training.

One command, one run, every row measured the same way (issue 7)::

    .venv/bin/python benchmarks/bench_step.py                      # CPU, all models and methods
    .venv/bin/python benchmarks/bench_step.py --device cuda        # on a GPU
    .venv/bin/python benchmarks/bench_step.py --profile cnn:monitor-ghost   # where the time goes

Each (model, method) case runs in its own fresh Python process (so peak memory and allocator
state of one case cannot leak into the next): a real ``lightning.pytorch.Trainer`` fits the model
with SGD on batches of 128 for ``--warmup`` + ``--steps`` steps; the step time is the interval
between consecutive ``on_train_batch_start`` calls (data loading, forward, backward, every
callback, optimizer step), and the reported number is the median over the ``--steps`` steps after
warm-up. Both the wall-clock time and the process CPU time (``time.process_time``) of each step
are recorded: on a machine shared with other jobs the CPU time is the steadier comparison
(``--threads 1`` makes it exact work, without OpenMP spin-waits). Methods:

* ``plain``: nothing attached (the baseline of every ratio);
* ``monitor-ghost`` / ``monitor-hooks`` / ``monitor-functorch``:
  ``lightning_unlearn.PerInstancePrivacyMonitor(grad_sample_mode=...)`` (norms, per-step RDP and
  the ledger update);
* ``ghost-samplers``: Opacus ghost hooks with this package's norm samplers, norms read each step,
  no ledger (isolates the sampler cost from the monitor's bookkeeping);
* ``ghost-sum`` (opt-in): as ``ghost-samplers`` but the hooks are told ``loss_reduction="sum"``
  and the norms are multiplied by the batch size afterwards (exact, since norms are linear in the
  backpropagated signal): saves Opacus' activation-sized ``backprops * batch_size`` copy per layer;
* ``opacus-ghost``: Opacus ghost hooks with Opacus' stock samplers only;
* ``opacus-hooks``: Opacus per-sample gradients (``p.grad_sample``), norms taken from them;
* ``vmap``: an extra ``torch.func.vmap(grad(...))`` pass over the batch after the backward.

``--self-check-cost`` instead times the monitor's one-time first-step self-check (a batch pass
with the hooks and four batch-of-one reference passes) against the median step of the same run.

Peak memory. CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before ``fit``. CPU:
the process's peak resident set size during ``fit`` (``VmHWM`` from ``/proc/self/status``, reset
through ``/proc/self/clear_refs`` just before ``fit``) minus the resident size before ``fit``:
everything torch, Lightning and the hooks touch, measured by the kernel. ``ratio_mem`` is the
method's increase divided by plain training's.

Allocator. Unless ``--no-malloc-env``, every case runs with ``MALLOC_MMAP_THRESHOLD_=4294967296``
and ``MALLOC_TRIM_THRESHOLD_=4294967296`` (glibc keeps freed buffers instead of returning them to
the OS each step; see ../shared/PLATFORM.md). This helps the materialising methods most.

Also measured: ``PrivacyLedger.update`` for N = 1,000,000 examples, K = 8 orders, 1024 ids per
step, as a fraction of the plain CNN step.

Output: a table of ratios to plain, and JSON (``--out``) with ``{"cases": [{"model", "method",
"ms", "ratio_time", "ratio_mem", ...}], "machine": str, ...}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from math import nan
from pathlib import Path
from typing import Any

MODELS = ("mlp", "cnn", "text")
METHODS = (
    "plain",
    "monitor-fused",
    "fused-norms",
    "monitor-ghost",
    "monitor-hooks",
    "monitor-functorch",
    "ghost-samplers",
    "opacus-ghost",
    "opacus-hooks",
    "vmap",
)
EXTRA_METHODS = ("ghost-sum",)  # opt-in (--methods ... ghost-sum)
EXTRA_FIELDS = (
    "cpu_ms",
    "ratio_cpu",
    "cpu_ms_mean",
    "ratio_cpu_mean",
    "ms_min",
    "peak_mb",
    "steps_timed",
    "rounds",
    "raw",
)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
BATCH = 128
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


# --------------------------------------------------------------------------------------------
# Worker side: one case in this process.
# --------------------------------------------------------------------------------------------


def build_case(model: str, num_batches: int) -> tuple[Any, Any, str]:
    """The network, an indexed dataset of ``num_batches * 128`` examples, and the data's origin."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    n = num_batches * BATCH
    if model in ("mlp", "cnn"):
        if FASHION.exists():
            import gzip

            import numpy as np

            with gzip.open(FASHION, "rb") as fh:
                raw = np.frombuffer(fh.read(), dtype=np.uint8, offset=16)
            x = torch.from_numpy(raw[: n * 784].astype("float32") / 255.0).reshape(n, 1, 28, 28)
            origin = f"Fashion-MNIST (first {n} training images)"
        else:
            x = torch.rand(n, 1, 28, 28)
            origin = "uniform noise 28x28 (Fashion-MNIST not installed)"
        y = torch.randint(0, 10, (n,))
        if model == "mlp":
            net = nn.Sequential(
                nn.Flatten(),
                nn.Linear(784, 256),
                nn.ReLU(),
                nn.Linear(256, 256),
                nn.ReLU(),
                nn.Linear(256, 10),
            )
        else:
            net = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1),
                nn.GroupNorm(4, 16),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.GroupNorm(4, 32),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(32 * 7 * 7, 10),
            )
        return net, (x, y), origin

    vocab, seq, dim, heads = 5000, 64, 64, 4

    class SelfAttention(nn.Module):
        """Multi-head self-attention with ``nn.Linear`` projections (ghost-norm covered)."""

        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            b, t, _ = h.shape
            q, k, v = self.qkv(h).view(b, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v)
            return self.out(o.transpose(1, 2).reshape(b, t, dim))

    class TextNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, dim, padding_idx=0)
            self.attn = SelfAttention()
            self.norm1 = nn.LayerNorm(dim)
            self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.norm2 = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.emb(ids)
            h = self.norm1(h + self.attn(h))
            h = self.norm2(h + self.ff(h))
            return self.head(h.mean(1))

    ids = torch.randint(1, vocab, (n, seq))
    ids[:, -8:] = 0  # trailing padding
    y = torch.randint(0, 2, (n,))
    return TextNet(), (ids, y), f"random token ids (vocab {vocab}, length {seq})"


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def worker(
    model: str,
    method: str,
    device: str,
    steps: int,
    warmup: int,
    threads: int = 0,
    interleave: list[str] | None = None,
    blocks: int = 0,
) -> dict[str, Any]:
    """Fit ``model`` with ``method`` attached; return median step time (ms) and peak memory.

    With ``interleave`` (a list of methods), fit the same module ``blocks`` times with each
    method in turn instead, all in this process (a fresh Trainer and callbacks per fit), and
    return every method's per-block median and mean step CPU times: an A/B comparison that
    process-to-process variation (memory layout, core, neighbours on the host) cannot bias.
    Peak memory is not measured then (it is per process)."""
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's package
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    import torch.nn.functional as F
    from lightning.pytorch import Callback, LightningModule, Trainer
    from opacus.grad_sample import GradSampleHooksFastGradientClipping as GhostHooks
    from opacus.grad_sample import prepare_module
    from torch.func import functional_call, grad, vmap
    from torch.utils.data import DataLoader

    stock = dict(GhostHooks.NORM_SAMPLERS)  # Opacus' own, before lightning_unlearn registers
    import lightning_unlearn.grad_norms  # noqa: F401  (registers our samplers)
    from lightning_unlearn.data import IndexedDataset
    from lightning_unlearn.data.indexed import indexed_item_type

    if method == "opacus-ghost":
        GhostHooks.NORM_SAMPLERS.clear()
        GhostHooks.NORM_SAMPLERS.update(stock)

    num_batches = warmup + steps + 2
    net, (x, y), origin = build_case(model, num_batches)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    class Batched(IndexedDataset):
        """Fetches a whole batch with one gather (the per-item loop would dominate the MLP)."""

        def __getitems__(self, indices: list[int]) -> Any:
            idx = torch.as_tensor(indices)
            return indexed_item_type(2)(x[idx], y[idx], idx)

    loader = DataLoader(
        Batched(torch.utils.data.TensorDataset(x, y)),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda b: b,
    )

    class Module(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            return self.net(inp)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inp, target, _ = batch
            return F.cross_entropy(self.net(inp), target)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.stamps: list[tuple[float, float]] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            sync()
            self.stamps.append((time.perf_counter(), time.process_time()))

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            sync()
            self.stamps.append((time.perf_counter(), time.process_time()))

    class DirectOpacus(Callback):
        """Opacus hooks attached to the module in place; norms formed every step, on device."""

        def __init__(self, mode: str, reduction: str = "mean") -> None:
            self.mode = mode
            self.reduction = reduction
            self.norms: torch.Tensor | None = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.hooks = prepare_module(
                pl_module.net, self.mode, wrap_model=False, loss_reduction=self.reduction
            )

        def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
            if self.mode == "ghost":
                self.norms = self.hooks.get_norm_sample()
                if self.reduction == "sum":  # the loss was a mean: undo the 1/B exactly
                    self.norms = self.norms * self.norms.new_tensor(float(BATCH))
                return
            sq = []
            for p in pl_module.net.parameters():
                sq.append(p.grad_sample.flatten(1).pow(2).sum(1))
                p.grad_sample = None
            self.norms = torch.stack(sq).sum(0).sqrt()

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.hooks.cleanup()

    class PackageHooks(Callback):
        """``attach_norm_hooks(mode=...)`` of this package; norms formed every step, no ledger."""

        def __init__(self, mode: str) -> None:
            self.mode = mode
            self.norms: torch.Tensor | None = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            from lightning_unlearn.grad_norms import attach_norm_hooks

            self.hooks = attach_norm_hooks(pl_module.net, self.mode)  # type: ignore[arg-type]

        def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
            self.norms = self.hooks.per_sample_norms()
            self.hooks.clear()

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.hooks.detach()

    class VmapPass(Callback):
        """An extra torch.func pass: per-example gradients by vmap(grad), then their norms."""

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            self.batch = batch

        def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
            params = {k: v.detach() for k, v in pl_module.net.named_parameters()}

            def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> Any:
                out = functional_call(pl_module.net, p, (xi.unsqueeze(0),))
                return F.cross_entropy(out, yi.unsqueeze(0))

            grads = vmap(grad(one), in_dims=(None, 0, 0))(params, self.batch[0], self.batch[1])
            self.norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()])
            self.norms = self.norms.sum(0).sqrt()

    def make_callbacks(method: str) -> list[Any]:
        callbacks: list[Any] = [StepTimer()]
        if method.startswith("monitor-"):
            from lightning_unlearn import PerInstancePrivacyMonitor

            mode = method.split("-")[1]
            callbacks.append(PerInstancePrivacyMonitor(noise_multiplier=1.0, grad_sample_mode=mode))  # type: ignore[arg-type]
        elif method == "fused-norms":
            callbacks.append(PackageHooks("fused"))
        elif method in ("ghost-samplers", "opacus-ghost"):
            callbacks.append(DirectOpacus("ghost"))
        elif method == "ghost-sum":
            callbacks.append(DirectOpacus("ghost", reduction="sum"))
        elif method == "opacus-hooks":
            callbacks.append(DirectOpacus("hooks"))
        elif method == "vmap":
            callbacks.append(VmapPass())
        elif method != "plain":
            raise ValueError(f"Expected a method in {METHODS}, but got {method!r}.")
        return callbacks

    def make_trainer(callbacks: list[Any]) -> Any:
        return Trainer(
            accelerator="cuda" if dev.type == "cuda" else "cpu",
            devices=1,
            max_steps=warmup + steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=callbacks,
        )

    module = Module().to(dev)
    if interleave:
        per_block: dict[str, list[tuple[float, float]]] = {m: [] for m in interleave}
        for _ in range(blocks):
            for m in interleave:
                cbs = make_callbacks(m)
                make_trainer(cbs).fit(module, train_dataloaders=loader)
                sync()
                cpu_b = [b[1] - a[1] for a, b in itertools.pairwise(cbs[0].stamps)][warmup:]
                per_block[m].append((statistics.median(cpu_b), statistics.fmean(cpu_b)))
        return {"model": model, "blocks": per_block, "threads": torch.get_num_threads()}

    callbacks = make_callbacks(method)
    trainer = make_trainer(callbacks)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kib("VmRSS") * 1024
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
    trainer.fit(module, train_dataloaders=loader)
    sync()
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        mem_how = "torch.cuda.max_memory_allocated increase during fit"
    else:
        peak = _rss_kib("VmHWM") * 1024 - base
        mem_how = "peak RSS increase during fit (VmHWM after clear_refs)"
    stamps = callbacks[0].stamps
    check = getattr(callbacks[-1], "self_check_result", None)  # the monitor's first-step check
    intervals = [b[0] - a[0] for a, b in itertools.pairwise(stamps)][warmup:]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)][warmup:]
    return {
        "model": model,
        "method": method,
        "ms": statistics.median(intervals) * 1e3,
        "cpu_ms": statistics.median(cpu) * 1e3,
        # The mean counts work done every few steps (the monitor's batched accounting, flushed
        # every `flush_every` steps), which a median skips.
        "cpu_ms_mean": statistics.fmean(cpu) * 1e3,
        "ms_min": min(intervals) * 1e3,
        "steps_timed": len(intervals),
        "peak_mb": peak / 2**20,
        "mem_how": mem_how,
        "data": origin,
        "threads": torch.get_num_threads(),
        "self_check_s": None if check is None else check.seconds,
    }


def ledger_worker(
    device: str, num_samples: int, ids_per_step: int, threads: int = 0
) -> dict[str, Any]:
    """Median time of ``PrivacyLedger.update`` (and of ``per_step_rdp``) for one step."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from lightning_unlearn.accounting import DEFAULT_ALPHAS, PrivacyLedger, per_step_rdp

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if threads > 0:
        torch.set_num_threads(threads)
    ledger = PrivacyLedger(num_samples, DEFAULT_ALPHAS, device=dev)
    gen = torch.Generator().manual_seed(0)
    times_update, times_rdp, cpu_update = [], [], []
    for i in range(60):
        ids = torch.randint(0, num_samples, (ids_per_step,), generator=gen).to(dev)
        norms = torch.rand(ids_per_step, generator=gen).to(dev)
        sync()
        t0 = time.perf_counter()
        rdp = per_step_rdp(norms, 0.001, DEFAULT_ALPHAS)
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        ledger.update(ids, rdp, norms)
        sync()
        t2, c2 = time.perf_counter(), time.process_time()
        if i >= 10:
            times_rdp.append(t1 - t0)
            times_update.append(t2 - t1)
            cpu_update.append(c2 - c1)
    return {
        "update_ms": statistics.median(times_update) * 1e3,
        "update_cpu_ms": statistics.median(cpu_update) * 1e3,
        "per_step_rdp_ms": statistics.median(times_rdp) * 1e3,
        "num_samples": num_samples,
        "orders": len(DEFAULT_ALPHAS),
        "ids_per_step": ids_per_step,
    }


# --------------------------------------------------------------------------------------------
# Driver side.
# --------------------------------------------------------------------------------------------


def machine_string(device: str, threads: int | None) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    desc = (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({threads or torch.get_num_threads()} threads per case), "
        f"Python {platform.python_version()}"
    )
    if device == "cuda" and torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def run_sub(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def profile_case(spec: str, device: str, steps: int) -> None:
    """Print torch.profiler's top CPU ops for ``model:method`` (a few steps, this process)."""
    from torch.profiler import ProfilerActivity, profile

    model, method = spec.split(":")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        worker(model, method, device, steps, 3)
    key = "cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18))


def markdown(path: str) -> str:
    """The table of a JSON result file as Markdown (used for docs/performance.md)."""
    data = json.loads(Path(path).read_text())
    cases = data["cases"]
    models = list(dict.fromkeys(c["model"] for c in cases))
    methods = list(dict.fromkeys(c["method"] for c in cases))
    head = "| method | " + " | ".join(models) + " |"
    lines = [head, "|---" * (len(models) + 1) + "|"]
    for method in methods:
        cells = []
        for model in models:
            c = next((c for c in cases if c["model"] == model and c["method"] == method), None)
            cells.append(
                f"{c['ratio_time']:.2f} / {c['ratio_cpu']:.2f} / "
                f"{c.get('ratio_cpu_mean', nan):.2f} / {c['ratio_mem']:.2f}"
                if c
                else "failed"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    plain = [c for c in cases if c["method"] == "plain"]
    lines.append("")
    lines.append(
        "Plain step, wall ms / CPU ms / peak MB: "
        + "; ".join(
            f"{c['model']} {c['ms']:.2f} / {c['cpu_ms']:.2f} / {c['peak_mb']:.1f}" for c in plain
        )
        + "."
    )
    return "\n".join(lines)


def interleaved(args: argparse.Namespace, common: list[str], env: dict[str, str]) -> None:
    """``--interleave``: every method of a model in one process, alternating, ``--blocks`` times.

    The ratio of each block's median step CPU time to plain's median in the same block, then the
    median over blocks (and the same for the mean step, which counts batched work)."""
    methods = ["plain", *[m for m in args.methods if m != "plain"]]
    if "opacus-ghost" in methods:
        raise SystemExit("--interleave cannot mix opacus-ghost (it swaps the sampler registry).")
    t_start, load_start = time.time(), os.getloadavg()
    cases: list[dict[str, Any]] = []
    for model in args.models:
        sub = ["--worker", model, "plain", *common, "--blocks", str(args.blocks)]
        res = run_sub([*sub, "--interleave-methods", *methods], env)
        blocks = res["blocks"]
        for m in methods:
            med = [b[0] / p[0] for b, p in zip(blocks[m], blocks["plain"], strict=True)]
            mean = [b[1] / p[1] for b, p in zip(blocks[m], blocks["plain"], strict=True)]
            cases.append(
                {
                    "model": model,
                    "method": m,
                    "ms": statistics.median(b[0] for b in blocks[m]) * 1e3,
                    "ratio_time": statistics.median(med),
                    "ratio_mem": None,
                    "ratio_time_blocks": med,
                    "ratio_cpu_mean": statistics.median(mean),
                    "cpu_ms_mean": statistics.median(b[1] for b in blocks[m]) * 1e3,
                }
            )
            line = f"{model:5s} {m:18s} x{statistics.median(med):.3f} (blocks "
            print(line + " ".join(f"{x:.2f}" for x in med) + ")", flush=True)
    print(f"\nA/B in one process per model, {args.blocks} blocks of {args.steps} steps: ratio of")
    print("the median (mean) step CPU time to plain's in the same block, median over blocks")
    print(f"{'method':18s}" + "".join(f"{m:>16s}" for m in args.models))
    for m in methods:
        cells = [
            f"{c['ratio_time']:.2f} ({c['ratio_cpu_mean']:.2f})"
            for model in args.models
            for c in cases
            if c["model"] == model and c["method"] == m
        ]
        print(f"{m:18s}" + "".join(f"{c:>16s}" for c in cells))
    out = {
        "cases": cases,
        "machine": machine_string(args.device, args.threads or None),
        "mode": "interleave: ratio_time is of step CPU time, same process, per block; no memory",
        "blocks": args.blocks,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "wall_s": time.time() - t_start,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


def self_check_cost(args: argparse.Namespace, common: list[str], env: dict[str, str]) -> None:
    """``--self-check-cost``: the monitor's one-time first-step self-check (seconds) against
    the median step of the same run, per model (``monitor-fused``, one process per model)."""
    rows = []
    for model in args.models:
        res = run_sub(["--worker", model, "monitor-fused", *common], env)
        ratio = res["self_check_s"] * 1e3 / res["ms"]
        rows.append({"model": model, "self_check_s": res["self_check_s"], "step_ms": res["ms"]})
        rows[-1]["ratio_to_step"] = ratio
        print(
            f"{model:5s} self-check {res['self_check_s'] * 1e3:8.1f} ms once = {ratio:5.1f} "
            f"median steps of {res['ms']:.2f} ms",
            flush=True,
        )
    out = {
        "cases": rows,
        "machine": machine_string(args.device, args.threads or None),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=METHODS + EXTRA_METHODS
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps after warm-up (>= 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over all cases; medians over rounds"
    )
    parser.add_argument("--out", default="benchmarks/results/bench_step.json")
    parser.add_argument("--no-malloc-env", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per case (0: torch's default)"
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="A/B mode: per model, one process fits the same module with every method in turn, "
        "--blocks times; ratios of step CPU time per block, medians over blocks (no memory)",
    )
    parser.add_argument("--blocks", type=int, default=6, help="rounds of --interleave")
    parser.add_argument(
        "--self-check-cost",
        action="store_true",
        help="time the monitor's one-time first-step self-check against its median step",
    )
    parser.add_argument("--interleave-methods", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="MODEL:METHOD", help="profile one case and exit")
    parser.add_argument("--markdown", metavar="JSON", help="print a result file as Markdown")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--ledger-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(
            *args.worker,
            args.device,
            args.steps,
            args.warmup,
            args.threads,
            interleave=args.interleave_methods,
            blocks=args.blocks,
        )
        print(json.dumps(result))
        return
    if args.ledger_worker:
        print(json.dumps(ledger_worker(args.device, 1_000_000, 1024, args.threads)))
        return
    if args.markdown:
        print(markdown(args.markdown))
        return
    if args.profile:
        profile_case(args.profile, args.device, args.steps)
        return

    env = dict(os.environ)
    if not args.no_malloc_env:
        env.update(MALLOC_ENV)
    common = ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    common += ["--threads", str(args.threads)]
    if args.interleave:
        interleaved(args, common, env)
        return
    if args.self_check_cost:
        self_check_cost(args, common, env)
        return
    load_start = os.getloadavg()
    t_start = time.time()
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rnd in range(args.repeats):  # rounds interleave the cases, so load drifts hit all alike
        for model in args.models:
            for method in args.methods:
                try:
                    res = run_sub(["--worker", model, method, *common], env)
                except RuntimeError as err:
                    msg = str(err).splitlines()[-1]
                    print(f"{model:5s} {method:18s} FAILED: {msg}", flush=True)
                    continue
                res["round"] = rnd
                runs.setdefault((model, method), []).append(res)
                line = f"{model:5s} {method:18s} {res['ms']:9.2f} ms  {res['cpu_ms']:9.2f} cpu-ms"
                print(f"{line}  {res['peak_mb']:8.1f} MB  (round {rnd + 1})", flush=True)
    results: list[dict[str, Any]] = []
    for reps in runs.values():  # median over rounds of each round's median step
        res = dict(reps[0])
        for key in ("ms", "cpu_ms", "cpu_ms_mean", "ms_min", "peak_mb"):
            res[key] = statistics.median(r[key] for r in reps)
        res["rounds"] = len(reps)
        res["raw"] = [
            {k: r[k] for k in ("round", "ms", "cpu_ms", "cpu_ms_mean", "peak_mb")} for r in reps
        ]
        results.append(res)
    ledger = run_sub(
        ["--ledger-worker", "--device", args.device, "--threads", str(args.threads)], env
    )

    base = {r["model"]: r for r in results if r["method"] == "plain"}
    for r in results:
        # Ratio to the plain case of the same round (measured close in time, so slow drifts in
        # the machine's load cancel), then the median over rounds.
        b = base.get(r["model"])
        for ratio, key in (
            ("ratio_time", "ms"),
            ("ratio_cpu", "cpu_ms"),
            ("ratio_cpu_mean", "cpu_ms_mean"),
            ("ratio_mem", "peak_mb"),
        ):
            if not b:
                r[ratio] = float("nan")
                continue
            plain_by_round = {y["round"]: y[key] for y in b["raw"]}
            vals = [
                x[key] / plain_by_round[x["round"]]
                for x in r["raw"]
                if x["round"] in plain_by_round and plain_by_round[x["round"]] > 0
            ]
            r[ratio] = statistics.median(vals) if vals else nan
    if "cnn" in base:
        ledger["fraction_of_cnn_step"] = ledger["update_ms"] / base["cnn"]["ms"]
        ledger["fraction_of_cnn_step_cpu"] = ledger["update_cpu_ms"] / base["cnn"]["cpu_ms"]
        ledger["rdp_fraction_of_cnn_step"] = ledger["per_step_rdp_ms"] / base["cnn"]["ms"]

    print(f"\nratios to plain: wall time / CPU time / peak memory (median of {args.steps} steps)")
    print(f"{'method':18s}" + "".join(f"{m:>24s}" for m in args.models))
    for method in args.methods:
        cells = []
        for model in args.models:
            r = next((r for r in results if r["model"] == model and r["method"] == method), None)
            cells.append(
                f"{r['ratio_time']:.2f} / {r['ratio_cpu']:.2f} / {r['ratio_mem']:.2f}"
                if r
                else "failed"
            )
        print(f"{method:18s}" + "".join(f"{c:>24s}" for c in cells))
    print("\nratio of the MEAN step CPU time to plain's (counts work done every few steps)")
    for method in args.methods:
        cells = []
        for model in args.models:
            r = next((r for r in results if r["model"] == model and r["method"] == method), None)
            cells.append(f"{r['ratio_cpu_mean']:.2f}" if r else "failed")
        print(f"{method:18s}" + "".join(f"{c:>24s}" for c in cells))
    print(
        "\nplain step, wall ms (CPU ms): "
        + ", ".join(
            f"{m} {base[m]['ms']:.2f} ({base[m]['cpu_ms']:.2f})" for m in args.models if m in base
        )
    )
    if "cnn" in base:
        print(
            f"ledger update (N=1e6, K=8, 1024 ids): {ledger['update_ms']:.3f} ms = "
            f"{100 * ledger['fraction_of_cnn_step']:.2f}% of the plain CNN step (CPU time: "
            f"{100 * ledger['fraction_of_cnn_step_cpu']:.2f}%); per_step_rdp for the same ids: "
            f"{100 * ledger['rdp_fraction_of_cnn_step']:.2f}%"
        )
    out = {
        "cases": [
            {k: r[k] for k in ("model", "method", "ms", "ratio_time", "ratio_mem")}
            | {k: r[k] for k in EXTRA_FIELDS}
            for r in results
        ],
        "machine": machine_string(args.device, results[0]["threads"] if results else None),
        "device": args.device,
        "memory": results[0]["mem_how"] if results else "",
        "data": {r["model"]: r["data"] for r in results},
        "malloc_env": {} if args.no_malloc_env else MALLOC_ENV,
        "ledger": ledger,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "threads": results[0]["threads"] if results else None,
        "wall_s": time.time() - t_start,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"load average {load_start} -> {out['load_avg_end']}; wrote {args.out}")


if __name__ == "__main__":
    main()
