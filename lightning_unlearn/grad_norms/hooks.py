"""Attach per-sample gradient-norm hooks (this package's or Opacus') to a module without
wrapping it.

The per-instance privacy loss of THEORY §1-§3 depends on each example's own gradient
:math:`g_x(\\theta_t)` only through its norm. Opacus (>= 1.6) can attach its hooks to a module
in place (``prepare_module(..., wrap_model=False)``), so a ``LightningModule`` keeps its identity,
its class and its ``state_dict`` keys, and ``p.grad`` stays the ordinary batch gradient. After an
ordinary ``loss.backward()``, :meth:`NormHooks.per_sample_norms` returns

.. math::

    \\lVert g_i \\rVert_2 = \\Big( \\sum_{p \\in \\text{included}}
        \\lVert \\nabla_p \\ell_i \\rVert_2^2 \\Big)^{1/2}

for every example ``i`` of the batch (THEORY §1: the gradient of the example's *own* loss, not
divided by the batch size). In ``"ghost"`` mode Opacus' hooks always run with
``loss_reduction="sum"`` and, for a mean-reduced loss, the B norms are multiplied by the batch
size B afterwards: exact, and it spares Opacus rescaling every layer's output gradient inside
the backward pass. The materialising modes let Opacus undo the mean itself.

Modes (``mode``):

* ``"fused"`` (default): this package's own light hooks (:mod:`lightning_unlearn.grad_norms.fused`).
  Convolutions and sequence ``nn.Linear`` layers form every example's weight gradient once and
  take both the norms and ``p.grad`` (their sum) from it; 2-d ``nn.Linear`` and ``nn.GroupNorm``
  norms come from what the ordinary backward pass already holds; every other layer goes through
  the norm samplers registered with Opacus, Opacus' grad samplers or a torch.func fall-back.
  The fastest mode (``docs/performance.md``); ``p.grad`` equals torch's up to float rounding.
* ``"ghost"``: Opacus' ghost hooks and norm samplers compute per-layer norms inside the
  backward pass without materialising per-sample gradients where a sampler exists (Linear,
  Embedding, and the layers registered by :mod:`lightning_unlearn.grad_norms.samplers`); other
  layers fall back to materialising their own per-sample gradients.
* ``"hooks"``: Opacus' per-layer grad samplers materialise ``p.grad_sample`` for every
  parameter; the norms are taken from them.
* ``"functorch"``: ``torch.func.vmap(grad(...))`` per layer for every layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, get_args

import torch
from opacus.grad_sample.utils import prepare_module
from torch import Tensor, nn

from lightning_unlearn.errors import NormHooksError, UnsupportedLayerError
from lightning_unlearn.grad_norms.attach_checks import (
    check_not_compiled,
    check_parametrizations,
    find_unsupported_modules,
    guard_tuple_outputs,
    resolve_exclude,
)
from lightning_unlearn.grad_norms.coverage import GradientWatch, coverage_error, warn_excluded

__all__ = [
    "GradSampleMode",
    "LossReduction",
    "NormHooks",
    "attach_norm_hooks",
    "find_unsupported_modules",
]

GradSampleMode = Literal["fused", "ghost", "hooks", "functorch"]
LossReduction = Literal["mean", "sum"]

# Attribute set on a module while hooks are attached (attaching twice is an error, STYLE §4).
_MARKER = "_lightning_unlearn_norm_hooks"
# Attributes Opacus' hooks leave on parameters and modules during a step.
_PARAM_ATTRS = ("_norm_sample", "_current_grad_sample")
_MODULE_ATTRS = ("activations", "max_batch_len")
_FULL_HOOK_WARNING = "Full backward hook is firing when gradients are computed"


class NormHooks:
    """Handle on the per-sample gradient-norm hooks attached to one module.

    Created by :func:`attach_norm_hooks`; do not instantiate directly. It can be used as a
    context manager that detaches on exit.

    Attributes:
        module: the module the hooks are attached to (unchanged, not wrapped).
        mode: ``"fused"``, ``"ghost"``, ``"hooks"`` or ``"functorch"``.
        loss_reduction: ``"mean"`` or ``"sum"``, how the loss was reduced over the batch.
        excluded_parameter_names: names of trainable parameters left out of the norm
            (``exclude_unsupported=True``).
    """

    def __init__(
        self,
        module: nn.Module,
        opacus_hooks: Any,
        parameters: list[nn.Parameter],
        mode: GradSampleMode,
        loss_reduction: LossReduction,
        excluded_parameter_names: list[str],
        *,
        watch: GradientWatch | None = None,
        guards: list[Any] | None = None,
        exclude_uncovered: bool = False,
    ) -> None:
        self.module = module
        self.mode: GradSampleMode = mode
        self.loss_reduction: LossReduction = loss_reduction
        self.excluded_parameter_names = excluded_parameter_names
        self._opacus_hooks: Any = opacus_hooks
        self._parameters = parameters
        self._watch = watch
        self._guards = guards or []
        self._exclude_uncovered = exclude_uncovered
        self._warned_uncovered: set[str] = set()

    @property
    def attached(self) -> bool:
        """Whether the hooks are still attached (``detach`` not yet called)."""
        return self._opacus_hooks is not None

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The parameters whose per-sample gradients make up the norm."""
        return list(self._parameters)

    def per_sample_norms(self) -> Tensor:
        """Per-example gradient norms of the last backward pass.

        Call after an ordinary ``loss.backward()`` (or ``torch.autograd.grad``) through the
        module in training mode. Parameters that took no part in the pass contribute zero.

        .. math::

            \\lVert g_i \\rVert_2
                = \\Big( \\sum_p \\lVert \\nabla_p \\ell_i \\rVert_2^2 \\Big)^{1/2}

        Returns:
            A 1-D tensor of length B (the batch size seen by the layers) on the device of the
            module's parameters, float32 (float64 if the per-layer norms are float64). No host
            synchronisation happens.

        Every parameter that received a gradient in the pass must have contributed: otherwise
        (a parameter used outside any hooked layer's forward, a layer in eval mode) a
        :class:`NormHooksError` names the parameters and the fix, unless the hooks were
        attached with ``exclude_unsupported=True``, which leaves them out with a warning.

        Raises:
            NormHooksError: the hooks were detached, no per-sample gradient was recorded
                (no backward pass since the last :meth:`clear`, or the module was in eval mode),
                or a parameter received a gradient that no per-sample rule saw.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Linear(3, 1, bias=False)
            >>> hooks = attach_norm_hooks(net, mode="hooks", loss_reduction="sum")
            >>> x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
            >>> net(x).sum().backward()
            >>> hooks.per_sample_norms()
            tensor([1., 5.])
            >>> hooks.detach()
        """
        self._check_attached()
        if self.mode == "fused":
            norms = self._fused_norms()
            engine = self._opacus_hooks
            if self._watch is not None or engine._eval_hit:
                self._check_coverage(engine._covered, engine)
            return norms
        self._check_coverage(self._opacus_covered(), None)
        sq_terms: list[Tensor] = []
        for p in self._parameters:
            sq = self._param_sq_norms(p)
            if sq is not None:
                sq_terms.append(sq)
        if not sq_terms:
            raise NormHooksError(
                "Expected per-sample gradients from a backward pass, but none were recorded. "
                "Call `per_sample_norms()` after `loss.backward()` on a forward pass made in "
                "training mode (`module.train()`) with gradients enabled, and before `clear()`."
            )
        sizes = {int(t.shape[0]) for t in sq_terms}
        if len(sizes) != 1:
            raise self._batch_size_error(sq_terms)
        device = sq_terms[0].device
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in sq_terms) else torch.float32
        batch_size = sq_terms[0].shape[0]
        total = torch.zeros(batch_size, device=device, dtype=dtype)
        for t in sq_terms:
            total += t.to(device=device, dtype=dtype)
        norms = total.sqrt()
        if self.mode == "ghost" and self.loss_reduction == "mean":
            # Opacus ran with loss_reduction="sum" (see `attach_norm_hooks`): the per-example
            # share of a mean loss is (1/B) * g_i, so one multiplication recovers ||g_i||.
            norms = norms * batch_size
        return norms

    def _batch_size_error(self, sq_terms: list[Tensor]) -> NormHooksError:
        names = {id(p): n for n, p in self.module.named_parameters()}
        seen = [
            (names.get(id(p), "?"), int(t.shape[0]))
            for p in self._parameters
            if (t := self._param_sq_norms(p)) is not None
        ]
        largest = max(b for _, b in seen)
        odd = [f"{n} ({b})" for n, b in seen if b != largest]
        return NormHooksError(
            "Expected every layer to see the same batch size, but got per-sample gradients of "
            f"sizes {sorted({b for _, b in seen})}; batch {largest} except {', '.join(odd)}. "
            "Layers must take batch-first inputs of the same batch: an input broadcast over the "
            "batch (HF transformers' position_ids of shape [1, T]) gives batch 1. Use "
            "`mode='fused'` (the default), which expands broadcast embedding inputs, or pass "
            "inputs expanded to the batch; call `per_sample_norms()` after every backward pass."
        )

    def _opacus_covered(self) -> set[int]:
        attr = "_norm_sample" if self.mode == "ghost" else "grad_sample"
        return {id(p) for p in self._parameters if getattr(p, attr, None) is not None}

    def _check_coverage(self, covered: set[int], engine: Any) -> None:
        missing = self._watch.received(covered) if self._watch is not None else []
        if engine is not None:
            missing += [f"{n} (eval mode)" for n in engine.uncovered_eval_layers()]
        if not missing:
            return
        if not self._exclude_uncovered:
            raise coverage_error(missing, self.mode)
        new = [n for n in missing if n not in self._warned_uncovered]
        if new:
            self._warned_uncovered.update(new)
            names = [n.removesuffix(" (eval mode)") for n in new]
            warn_excluded(self.module, names, "received a gradient no per-sample rule saw")

    def expect_batch_size(self, batch_size: int) -> None:
        """Tell the ``"fused"`` engine the batch size of the next pass (call after
        :meth:`clear`, before the forward pass): inputs broadcast over the batch (HF
        ``position_ids`` of shape ``[1, T]``) are expanded to it. Without it, the first layer
        traced in the pass sets the batch size. No effect in the other modes."""
        if self.mode == "fused":
            self._opacus_hooks.expect_batch_size(batch_size)

    def _fused_norms(self) -> Tensor:
        engine = self._opacus_hooks
        if engine.repeated:
            raise NormHooksError(
                "Expected one backward pass per forward pass, but a second backward pass "
                "(`retain_graph=True`, or `torch.autograd.grad` before `backward`) went through "
                "the same forward: the per-example gradient is then a sum over passes, whose norm "
                "the 'fused' engine cannot form from per-pass norms. Read and `clear()` the norms "
                "after each pass, or use `mode='hooks'`."
            )
        sq = engine.total_sq()
        if sq is None:
            raise NormHooksError(
                "Expected per-sample gradients from a backward pass, but none were recorded. "
                "Call `per_sample_norms()` after `loss.backward()` on a forward pass made in "
                "training mode (`module.train()`) with gradients enabled, and before `clear()`; "
                "a module run through `torch.compile` ignores the hooks (compile after "
                "attaching, or train eagerly)."
            )
        norms = sq.sqrt()  # a sum of squares: never negative
        if self.loss_reduction == "mean":
            norms.mul_(sq.shape[0])  # the hooks saw the gradients of (1/B) * loss_i
        return norms

    def _param_sq_norms(self, p: nn.Parameter) -> Tensor | None:
        """Squared per-sample norm of one parameter's gradient, or None if it took no part."""
        if self.mode == "ghost":
            ns = getattr(p, "_norm_sample", None)
            if ns is None:
                return None
            ns = ns.float() if ns.dtype in (torch.float16, torch.bfloat16) else ns
            return ns * ns
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            return None
        if isinstance(gs, list):
            # Several backward passes without a read in between: the per-sample gradient of the
            # summed losses is the sum (only meaningful for the same batch).
            gs = torch.stack(list(gs)).sum(0)
        gs = gs.float() if gs.dtype in (torch.float16, torch.bfloat16) else gs
        return gs.reshape(gs.shape[0], -1).pow(2).sum(1)

    def clear(self) -> None:
        """Forget the per-sample state of the last pass (call after every read).

        Opacus keeps ``p.grad_sample`` across Lightning's ``zero_grad`` and turns it into a list
        on the next backward; stale ghost norms would also leak into the next step when a
        parameter takes no part in it. The monitor calls this after every read.
        """
        self._check_attached()
        if self._watch is not None:
            self._watch.clear()
        if self.mode == "fused":
            self._opacus_hooks.clear()
            return
        for p in self._parameters:
            for attr in _PARAM_ATTRS:
                if hasattr(p, attr):
                    delattr(p, attr)
            p.grad_sample = None  # type: ignore[attr-defined]
            p._forward_counter = 0  # type: ignore[attr-defined]
        for layer in self.module.modules():
            for attr in _MODULE_ATTRS:
                if attr in layer.__dict__:
                    delattr(layer, attr)

    def detach(self) -> None:
        """Remove every hook and every attribute Opacus added; idempotent.

        The module is left exactly as before :func:`attach_norm_hooks`.
        """
        if self._opacus_hooks is None:
            return
        self._opacus_hooks.cleanup()
        self._opacus_hooks = None
        if self._watch is not None:
            self._watch.remove()
        for handle in self._guards:
            handle.remove()
        self._guards = []
        for layer in self.module.modules():
            for attr in _MODULE_ATTRS:
                if attr in layer.__dict__:
                    delattr(layer, attr)
        if _MARKER in self.module.__dict__:
            delattr(self.module, _MARKER)

    def _check_attached(self) -> None:
        if self._opacus_hooks is None:
            raise NormHooksError(
                "Expected attached hooks, but `detach()` was already called; attach new hooks "
                "with `attach_norm_hooks(module)`."
            )

    def __enter__(self) -> NormHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (
            f"NormHooks(module={type(self.module).__name__}, mode={self.mode!r}, "
            f"loss_reduction={self.loss_reduction!r}, {state})"
        )


def attach_norm_hooks(
    module: nn.Module,
    mode: GradSampleMode = "fused",
    *,
    loss_reduction: LossReduction = "mean",
    strict: bool = True,
    exclude_unsupported: bool = False,
    exclude: Sequence[str] = (),
) -> NormHooks:
    """Attach per-sample gradient-norm hooks to ``module`` in place (no wrapping).

    Module identity, class and ``state_dict`` keys are unchanged and ``p.grad`` is unaffected.
    torch's one-time "Full backward hook is firing ..." warning, which these hooks trigger
    harmlessly on the first layer, is filtered (that message only). Remove the hooks with
    :meth:`NormHooks.detach`. Compiled submodules are refused (a compiled graph ignores hooks
    attached afterwards): attach to the eager module, compile afterwards. In ``"fused"`` mode
    recurrent layers, attention, layers returning tuples, shared layers and tied weights are
    exact (:mod:`lightning_unlearn.grad_norms.fused`); Opacus' modes refuse recurrent layers
    and attention, and Opacus' ghost mode refuses tied weights (a named error in the
    forward pass).

    Args:
        module: the module (e.g. a ``LightningModule``) whose parameters' per-sample gradient
            norms are wanted. Layers must take batch-first inputs (recurrent layers follow
            their ``batch_first``).
        mode: ``"fused"`` (default), ``"ghost"``, ``"hooks"`` or ``"functorch"`` (see the module
            docstring).
        loss_reduction: ``"mean"`` if the loss is averaged over the batch (the default), or
            ``"sum"``. Must match the loss, or the norms come out B times too large or small.
        strict: if True, layers that mix the batch (``BatchNorm``) raise
            :class:`UnsupportedLayerError` unless ``exclude_unsupported`` is set. If False, such
            layers are excluded from the norm with a warning.
        exclude_unsupported: explicit opt-in to exclude from the norm the parameters of
            unsupported layers and, when the norms are read, any parameter that received a
            gradient no per-sample rule saw (warned once, with names and share). The norms then
            describe the remaining parameters only, and because a BatchNorm layer mixes the
            examples of a batch, the remaining per-sample gradients are approximations: privacy
            losses computed from them are not per-instance guarantees for the excluded
            parameters nor exact for the others.
        exclude: qualified names of parameters (or modules: all their parameters) to leave
            out of the norm explicitly; warned once with their share of the parameters.

    Returns:
        A :class:`NormHooks` handle.

    Raises:
        ValueError: ``mode``, ``loss_reduction`` or ``exclude`` is not valid.
        NormHooksError: hooks are already attached to this module (or a module inside or
            around it), or a submodule is compiled.
        UnsupportedLayerError: a layer has no per-sample gradient (BatchNorm) and neither
            ``exclude_unsupported=True`` nor ``strict=False`` was given, or the mode cannot
            compute per-sample gradients for a layer (the message names it and the fix).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> hooks = attach_norm_hooks(net)  # "fused" mode
        >>> x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
        >>> nn.functional.cross_entropy(net(x), y).backward()
        >>> hooks.per_sample_norms().shape
        torch.Size([5])
        >>> hooks.clear(); hooks.detach()
    """
    _check_options(mode, loss_reduction)
    _check_not_attached(module)
    check_not_compiled(module)
    excluded_ids, unsupported = _excluded_parameters(module, exclude, strict, exclude_unsupported)
    # torch warns once that a full backward hook fires on a layer whose inputs need no gradient
    # (the first layer): expected for these hooks and harmless, so it is silenced (only it).
    warnings.filterwarnings("ignore", message=_FULL_HOOK_WARNING, category=UserWarning)
    named = dict(module.named_parameters())
    excluded_names = [n for n, p in named.items() if id(p) in excluded_ids and p.requires_grad]
    if excluded_names:
        why = "layers without per-sample gradients" if unsupported else "`exclude`"
        warn_excluded(module, excluded_names, why)
    included = {n: p for n, p in named.items() if p.requires_grad and id(p) not in excluded_ids}
    if mode in ("ghost", "fused"):
        from lightning_unlearn.grad_norms.samplers import register_norm_samplers

        register_norm_samplers()
    if mode == "fused":
        from lightning_unlearn.grad_norms.fused import FusedNormEngine

        engine = FusedNormEngine(module, excluded_ids)
        # Layers with a fixed rule see every use of their parameters through their forward;
        # the others (units, module-level parameters) are watched for uncounted gradients.
        watched = {n: p for n, p in included.items() if n in engine.watched}
        module.__dict__[_MARKER] = True
        return NormHooks(
            module,
            engine,
            list(included.values()),
            mode,
            loss_reduction,
            excluded_names,
            watch=GradientWatch(watched) if watched else None,
            exclude_uncovered=exclude_unsupported,
        )

    guards = guard_tuple_outputs(module, mode)
    frozen_params = [p for p in named.values() if id(p) in excluded_ids]
    try:
        with _frozen(iter(frozen_params)):
            parameters = [p for p in module.parameters() if p.requires_grad]
            opacus_hooks = _prepare_opacus(module, mode, loss_reduction)
    except BaseException:
        for handle in guards:
            handle.remove()
        raise
    module.__dict__[_MARKER] = True
    return NormHooks(
        module,
        opacus_hooks,
        parameters,
        mode,
        loss_reduction,
        excluded_names,
        watch=GradientWatch(included),
        guards=guards,
        exclude_uncovered=exclude_unsupported,
    )


def _check_options(mode: str, loss_reduction: str) -> None:
    if mode not in get_args(GradSampleMode):
        raise ValueError(
            f"Expected `mode` to be one of {get_args(GradSampleMode)}, but got {mode!r}."
        )
    if loss_reduction not in get_args(LossReduction):
        raise ValueError(
            "Expected `loss_reduction` to be one of "
            f"{get_args(LossReduction)}, but got {loss_reduction!r}."
        )


def _check_not_attached(module: nn.Module) -> None:
    """Refuse a module that (or whose submodule) already carries norm or Opacus hooks."""
    for name, layer in module.named_modules():
        if _MARKER in layer.__dict__ or "autograd_grad_sample_hooks" in layer.__dict__:
            where = "this module" if layer is module else f"its submodule {name!r}"
            raise NormHooksError(
                f"Expected a module without per-sample hooks, but {where} already has them "
                "attached. Attach once per module, or call `detach()` on the existing "
                "`NormHooks` (the monitor detaches in `teardown`) before attaching again."
            )


def _excluded_parameters(
    module: nn.Module, exclude: Sequence[str], strict: bool, exclude_unsupported: bool
) -> tuple[set[int], list[tuple[str, nn.Module]]]:
    """Ids of the parameters left out of the norm, and the unsupported layers found.

    Raises :class:`UnsupportedLayerError` for an unsupported layer unless the caller opted
    out (``strict=False`` or ``exclude_unsupported=True``).
    """
    explicit = resolve_exclude(module, exclude)
    check_parametrizations(module, explicit)
    unsupported = find_unsupported_modules(module)
    if unsupported and strict and not exclude_unsupported:
        names = ", ".join(f"{n or '<root>'!r} ({type(m).__name__})" for n, m in unsupported)
        raise UnsupportedLayerError(
            f"Expected layers with per-sample gradients, but got {names}: BatchNorm (also "
            "without running statistics) and other layers with running statistics mix the "
            "examples of a batch, so one example's gradient is not defined. Replace them with "
            "`nn.GroupNorm` (for example with `opacus.validators.ModuleValidator.fix(model)`), "
            "or pass `exclude_unsupported=True` to leave their parameters out of the norm "
            "(the norms are then approximate; see the docs)."
        )
    excluded_ids = {id(p) for _, m in unsupported for p in m.parameters(recurse=False)}
    named = dict(module.named_parameters())
    excluded_ids.update(id(named[n]) for n in explicit)
    return excluded_ids, unsupported


def _prepare_opacus(module: nn.Module, mode: str, loss_reduction: str) -> Any:
    try:
        # Ghost mode always runs Opacus with "sum": with "mean" Opacus rescales every layer's
        # output gradient by B (an extra copy per layer in the backward pass); scaling the B
        # norms once afterwards is exact and cheaper (CNN: 1.54x -> 1.33x of plain,
        # docs/performance.md). The materialising modes keep `p.grad_sample` conventional.
        return prepare_module(
            module,
            mode,
            wrap_model=False,
            loss_reduction="sum" if mode == "ghost" else loss_reduction,
            strict=True,
        )
    except NotImplementedError as err:
        trainable = [
            f"{n or '<root>'!r} ({type(m).__name__})"
            for n, m in module.named_modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        raise UnsupportedLayerError(
            f"Opacus' mode={mode!r} cannot compute per-sample gradients for a layer of "
            f"{type(module).__name__} (trainable layers: {', '.join(trainable)}): {err}. Use "
            "`mode='fused'` (the default), replace the layer (BatchNorm -> GroupNorm, see "
            "`opacus.validators.ModuleValidator.fix`), or freeze it."
        ) from err


@contextmanager
def _frozen(params: Iterator[nn.Parameter]) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` so Opacus attaches no hooks for ``params``."""
    frozen = [p for p in params if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
