"""The monitor's first-step self-check: engine norms against a batch-of-one reference.

Every per-instance privacy loss rests on one number per example and step, the norm of the
gradient of the example's *own* loss (THEORY §1). The norm engine forms it from hooks and from
what it is told about the loss (its reduction, per-example weights); a loss it misreads (a sum
read as a mean, a token average over a padded batch), a layer it does not see (a parameter used
directly in ``training_step``, a submodule compiled before the hooks were attached) or an input
shared by the batch gives a wrong number without any error. On the first training batch of a
``fit`` the monitor therefore recomputes, for a few examples, the same quantity the slow and
obvious way and compares:

1. **engine**: one pass over the whole batch through ``self_check_loss`` (by default the
   user's ``training_step``) with the norm hooks attached; ``torch.autograd.grad`` (``p.grad``
   untouched), then the norms as the monitor records them (the loss reduction or weights
   undone, see :mod:`lightning_unlearn.callbacks._loss_weights`);
2. **reference**: the hooks detached, each checked example alone as a batch of one through the
   same ``self_check_loss``; the norm of ``torch.autograd.grad`` over every trainable parameter
   of the module, accumulated in float64 (divided by the batch-of-one's own weight when the loss
   is weighted).

Both run with torch.nn's dropout off (:func:`~lightning_unlearn.callbacks._isolation.dropout_off`)
so that they compute the same function, inside the precision plugin's autocast context, with
the random number generators forked, logging and optimisation calls stubbed, and every buffer
and plain module attribute restored afterwards: the run continues exactly as without the check.
The division by ``accumulate_grad_batches`` and the fp16 loss scale are applied by Lightning
outside ``training_step``; the check sees neither (the monitor undoes both by construction).

Tolerance. Engine and reference add the same terms in different orders (batched against
batch-of-one kernels), so they agree to a few units of the compute precision's unit round-off
``u`` times the square root of the accumulation lengths: ``u = 2^-24`` (float32) over sums of
up to ~10^6 terms gives ~10^-5, hence ``rtol = 1e-4``; bfloat16 / float16 autocast rounds every
activation to ``u = 2^-8`` / ``2^-11``, hence ``rtol = 1e-2``; float64 ``rtol = 1e-9``. An
absolute slack of ``rtol`` times the largest checked norm covers examples whose gradient
is small through cancellation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_unlearn.callbacks._isolation import (
    captured_losses,
    dropout_off,
    module_state_restored,
    slice_example,
    stubbed,
)
from lightning_unlearn.callbacks._loss_weights import (
    LossWeights,
    loss_weights_of,
    undo_loss_weights,
)
from lightning_unlearn.errors import SelfCheckError
from lightning_unlearn.grad_norms import NormHooks

__all__ = ["SelfCheckInputs", "SelfCheckResult", "default_self_check_loss", "run_self_check"]

CheckLoss = Callable[[pl.LightningModule, Any, int], Tensor]
"""``(pl_module, batch, batch_idx) -> loss`` of one check pass (``self_check_loss``)."""


@dataclass(frozen=True)
class SelfCheckInputs:
    """What the self-check needs from the monitor, passed explicitly.

    Attributes:
        hooks: the attached norm hooks (detached for the reference, then re-attached).
        attach_hooks: ``pl_module -> NormHooks``: attaches the hooks again, as the monitor did,
            and records them where the monitor keeps its hooks.
        loss: the loss of one pass (``monitor.self_check_loss``).
        loss_reduction: how the loss weights the examples (``monitor``'s ``loss_reduction``).
        samples: how many examples of the batch to check.
    """

    hooks: NormHooks
    attach_hooks: Callable[[pl.LightningModule], NormHooks]
    loss: CheckLoss
    loss_reduction: LossWeights
    samples: int


@dataclass(frozen=True)
class SelfCheckResult:
    """Outcome of the first-step self-check (``monitor.self_check_result``).

    Attributes:
        positions: positions in the first batch of the checked examples.
        sample_ids: their sample ids.
        engine: the engine's norms of those examples (float64, CPU).
        reference: the batch-of-one reference norms (float64, CPU).
        rtol: the relative tolerance applied.
        seconds: wall-clock time of the whole check.
    """

    positions: list[int]
    sample_ids: list[int]
    engine: Tensor
    reference: Tensor
    rtol: float
    seconds: float

    @property
    def ratios(self) -> Tensor:
        """``engine / reference`` per checked example (inf where the reference is 0)."""
        return self.engine / self.reference


def default_self_check_loss(pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> Tensor:
    """The loss the training step backpropagates: the sum of the losses handed to
    ``manual_backward`` (manual optimisation, stubbed during the check), else the loss
    ``training_step`` returns.

    Raises:
        ValueError: ``training_step`` returned no loss and called no ``manual_backward``.
    """
    out = pl_module.training_step(batch, batch_idx)
    losses = captured_losses()
    if losses:
        return torch.stack([loss.reshape(()) for loss in losses]).sum()
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, Tensor):
        raise ValueError(
            "Expected `training_step` to return the loss (a tensor or a dict with 'loss') or to "
            f"call `manual_backward` for the self-check, but got {type(out).__name__}; override "
            "the monitor's `self_check_loss`, or pass `self_check=False`."
        )
    return loss


def tolerance(trainer: pl.Trainer, module: nn.Module) -> float:
    """``rtol`` of the comparison for the run's compute precision (module docstring)."""
    precision = str(getattr(trainer, "precision", ""))
    dtypes = {p.dtype for p in module.parameters()}
    if "16" in precision or dtypes & {torch.float16, torch.bfloat16}:
        return 1e-2
    if dtypes == {torch.float64}:
        return 1e-9
    return 1e-4


def _positions(batch_size: int, count: int) -> list[int]:
    if count >= batch_size:
        return list(range(batch_size))
    if count == 1:
        return [0]
    return sorted({round(j * (batch_size - 1) / (count - 1)) for j in range(count)})


def _grad_sq(loss: Tensor, named: Sequence[tuple[str, nn.Parameter]]) -> Tensor:
    """Squared norm of each parameter's gradient of ``loss`` (float64, ``[P]``)."""
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return torch.stack(
        [
            torch.zeros((), dtype=torch.float64, device=loss.device)
            if g is None
            else g.detach().to(torch.float64).square().sum()
            for g in grads
        ]
    )


def run_self_check(
    inputs: SelfCheckInputs,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    batch: Any,
    batch_idx: int,
    sample_ids: Tensor,
) -> SelfCheckResult | None:
    """Compare the engine's norms with the batch-of-one reference on the first batch.

    The reference runs without hooks: ``inputs.hooks`` are detached for it and
    ``inputs.attach_hooks`` attaches new ones afterwards (also on an exception), so the caller
    records the new hooks there.

    Returns:
        The result, or None when the check does not apply (parameters excluded from the norm
        with ``exclude_unsupported``: the norms are approximate by construction).

    Raises:
        SelfCheckError: engine and reference disagree beyond the tolerance (on any rank).
    """
    hooks = inputs.hooks
    if hooks.excluded_parameter_names:
        rank_zero_warn(
            "The first-step self-check is skipped: parameters are excluded from the norm "
            f"({hooks.excluded_parameter_names[:5]}), so the norms are approximate by design."
        )
        return None
    start = time.perf_counter()
    batch_size = int(sample_ids.shape[0])
    positions = _positions(batch_size, inputs.samples)
    named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
    device = pl_module.device
    forks = [] if device.type == "cpu" else [device.index or 0]
    engine_norms: Tensor | None = None
    per_param = []
    # Every pass starts from the module state of the batch start (a hidden state kept between
    # steps, a cache sized to the batch) and leaves none behind.
    with (
        torch.random.fork_rng(devices=forks, device_type=device.type),
        stubbed(pl_module) as losses,
        dropout_off(pl_module),
        torch.enable_grad(),
    ):
        try:
            with module_state_restored(pl_module), trainer.precision_plugin.train_step_context():
                loss = inputs.loss(pl_module, batch, batch_idx)
                torch.autograd.grad(loss, hooks.parameters, allow_unused=True)
            raw = hooks.per_sample_norms()
            weights = loss_weights_of(inputs.loss_reduction, batch)
            engine_norms = undo_loss_weights(raw, weights)
        finally:
            hooks.clear()
        if engine_norms.shape[0] != batch_size:
            return None  # the monitor's own step raises its named error on this mismatch
        hooks.detach()  # the reference: torch's own gradients, no hook anywhere
        try:
            for i in positions:
                one = slice_example(batch, i, batch_size)
                losses.clear()
                with (
                    module_state_restored(pl_module),
                    trainer.precision_plugin.train_step_context(),
                ):
                    loss = inputs.loss(pl_module, one, batch_idx)
                    sq = _grad_sq(loss, named)
                w = loss_weights_of(inputs.loss_reduction, one)
                scale = 1.0 if w is None else float(w.sum())
                per_param.append(sq / (scale * scale) if scale > 0 else sq * 0.0)
        finally:
            inputs.attach_hooks(pl_module)
    engine = engine_norms.detach()[positions].to(device="cpu", dtype=torch.float64)
    table = torch.stack(per_param).cpu()  # [k, P] squared per-parameter norms
    reference = table.sum(1).sqrt()
    rtol = tolerance(trainer, pl_module)
    slack = rtol * float(reference.max()) if reference.numel() else 0.0
    bad = (engine - reference).abs() > rtol * torch.maximum(engine, reference) + slack
    failed = bool(bad.any()) or not bool(torch.isfinite(engine).all())
    result = SelfCheckResult(
        positions,
        [int(sample_ids[i]) for i in positions],
        engine,
        reference,
        rtol,
        time.perf_counter() - start,
    )
    anywhere = bool(trainer.strategy.reduce_boolean_decision(failed, all=False))
    if failed:
        raise SelfCheckError(
            _message(result, batch_size, table, [n for n, _ in named], pl_module),
            engine=engine,
            reference=reference,
        )
    if anywhere:
        raise SelfCheckError(
            "The first-step self-check failed on another rank (see its message): the "
            "per-example gradient norms disagree with the batch-of-one reference there."
        )
    return result


def _close(values: Tensor, target: float, rel: float = 1e-2) -> bool:
    return bool(((values - target).abs() <= rel * abs(target)).all())


def _diagnosis(
    ratios: Tensor, batch_size: int, table: Tensor, names: list[str], module: nn.Module
) -> str:
    """The likely cause, read from the pattern of ``engine / reference``."""
    b = float(batch_size)
    finite = bool(torch.isfinite(ratios).all())
    if finite and batch_size > 1 and _close(ratios, b):
        return (
            f"every ratio is the batch size B = {batch_size}: the loss is summed over the batch "
            "but read as a mean. Pass `loss_reduction='sum'` to the monitor."
        )
    if finite and batch_size > 1 and _close(ratios, 1.0 / b):
        return (
            f"every ratio is 1/B = 1/{batch_size}: the loss is a batch mean but read as a sum. "
            "Pass `loss_reduction='mean'` (the default)."
        )
    if finite and bool((ratios < 1).all()):
        return _missing_share(ratios, table, names, module)
    return (
        "the ratios vary from example to example: the loss weights the examples unequally "
        "(a loss averaged over all tokens of a padded batch: pass `loss_reduction=lambda "
        "batch: token_mean_weights(n_tokens(batch))`; see 'Supported models'), an input is "
        "shared by the whole batch (a broadcast `[1, T]` tensor such as HF `position_ids`: "
        "expand it to the batch), a layer mixes the examples (BatchNorm in training mode), or "
        "`training_step` draws random numbers per example (functional dropout, augmentation, "
        "random masking: the check turns off torch.nn's dropout modules only; override "
        "`self_check_loss` or pass `self_check=False`)."
    )


def _missing_share(ratios: Tensor, table: Tensor, names: list[str], module: nn.Module) -> str:
    """Engine below the reference everywhere: name the parameters whose share of the squared
    reference norm matches what the engine lacks (``1 - ratio^2``)."""
    missing = 1.0 - ratios.square()
    share = table / table.sum(1, keepdim=True).clamp_min(1e-300)  # [k, P]
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        owner = name.rpartition(".")[0] or "<root>"
        groups.setdefault(owner, []).append(j)
    compiled = [
        n or "<root>"
        for n, m in module.named_modules()
        if type(m).__name__ == "OptimizedModule" or "_orig_mod" in (n or "")
    ]
    matches = _matching_groups(share, missing, groups)
    text = (
        "the engine's norm is below the reference for every example (missing share of the "
        f"squared norm {[round(float(m), 4) for m in missing]}): part of the gradient is not "
        "seen by the norm hooks"
    )
    if matches:
        params = [n for n in names if (n.rpartition(".")[0] or "<root>") in matches]
        text += f", matching the parameters {params[:8]} (owner {matches})"
    text += (
        ". Likely: a parameter used directly in `training_step` or outside any submodule's "
        "forward, a layer type the engine does not hook, or a submodule compiled with "
        "`torch.compile` and run before `fit` (hooks attached later are ignored by its graph)"
    )
    if compiled:
        text += f"; compiled submodules here: {compiled[:5]}"
    return text + ". Compute such parameters inside a submodule's forward, or compile after fit."


def _matching_groups(share: Tensor, missing: Tensor, groups: dict[str, list[int]]) -> list[str]:
    """Owners whose parameters' share of the squared reference norm adds up to the missing
    share for every checked example: one owner alone, else the largest shares taken greedily.
    The slack covers the float32 rounding of the ratios (~1e-4) with room to spare."""
    slack = 0.05 * missing + 5e-4
    shares = {owner: share[:, cols].sum(1) for owner, cols in groups.items()}
    single = [o for o, got in shares.items() if bool(((got - missing).abs() <= slack).all())]
    if len(single) == 1:
        return single
    chosen: list[str] = []
    total = torch.zeros_like(missing)
    for owner, got in sorted(shares.items(), key=lambda kv: -float(kv[1].mean())):
        if bool((total + got <= missing + slack).all()) and float(got.max()) > 0:
            chosen.append(owner)
            total = total + got
    return chosen if bool(((total - missing).abs() <= slack).all()) else []


def _message(
    result: SelfCheckResult,
    batch_size: int,
    table: Tensor,
    names: list[str],
    module: nn.Module,
) -> str:
    lines = [
        "Expected the per-example gradient norms of the norm engine to match a batch-of-one "
        f"reference through `training_step` to rtol {result.rtol:g} (THEORY §1: the gradient "
        "of each example's own loss), but on the first batch (batch size "
        f"{batch_size}) they disagree:"
    ]
    ratios = result.ratios
    for k, pos in enumerate(result.positions):
        e, r, q = float(result.engine[k]), float(result.reference[k]), float(ratios[k])
        ratio = f"{q:.6g}" if math.isfinite(q) else "inf"
        lines.append(
            f"  batch position {pos} (sample id {result.sample_ids[k]}): engine {e:.6e}, "
            f"reference {r:.6e}, ratio {ratio}"
        )
    lines.append("Likely cause: " + _diagnosis(ratios, batch_size, table, names, module))
    lines.append(
        "The privacy losses would be wrong, so training stops here. If the reference itself "
        "does not apply to your training_step, override the monitor's `self_check_loss` or pass "
        "`self_check=False`."
    )
    return "\n".join(lines)
