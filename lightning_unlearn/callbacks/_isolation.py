"""Running ``training_step`` outside the training loop without touching the run.

Used by the monitor's first-step self-check (:mod:`lightning_unlearn.callbacks._self_check`):
slicing a batch of any structure to one example, turning torch.nn's dropout off, stubbing the
optimisation calls a manual-optimisation ``training_step`` makes, and snapshotting (then
restoring) the modules' buffers and plain attributes (metric states, cached hidden states).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["captured_losses", "dropout_off", "module_state_restored", "slice_example", "stubbed"]

# Losses passed to `manual_backward` while the optimisation calls are stubbed (None outside).
_CAPTURED: ContextVar[list[Tensor] | None] = ContextVar("lightning_unlearn_captured", default=None)


def captured_losses() -> list[Tensor] | None:
    """Losses handed to ``manual_backward`` inside :func:`stubbed` (None outside it)."""
    return _CAPTURED.get()


def slice_example(batch: Any, index: int, batch_size: int) -> Any:
    """Example ``index`` of ``batch`` as a batch of one, keeping the structure.

    Every tensor whose first dimension is ``batch_size`` is sliced to ``[index : index + 1]``;
    tuples (named tuples too), lists, mappings (dicts, HF ``BatchEncoding``) and dataclasses are
    rebuilt around their sliced entries; anything else (strings, numbers, tensors of another
    leading size) is kept as it is.

    Example:
        >>> batch = {"x": torch.arange(6).view(3, 2), "y": (torch.tensor([7, 8, 9]), "tag")}
        >>> one = slice_example(batch, 1, 3)
        >>> one["x"].tolist(), one["y"][0].tolist(), one["y"][1]
        ([[2, 3]], [8], 'tag')
    """

    def cut(obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return obj[index : index + 1] if obj.dim() > 0 and obj.shape[0] == batch_size else obj
        if isinstance(obj, tuple):
            items = [cut(v) for v in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        if isinstance(obj, list):
            return [cut(v) for v in obj]
        if isinstance(obj, Mapping):
            data = {k: cut(v) for k, v in obj.items()}
            try:
                return type(obj)(data)  # type: ignore[call-arg]
            except TypeError:
                return data
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = {f.name: cut(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            return dataclasses.replace(obj, **fields)
        return obj

    return cut(batch)


@contextmanager
def dropout_off(module: nn.Module) -> Iterator[None]:
    """torch.nn's dropout off inside: ``nn.Dropout*`` in eval mode with ``p = 0`` (code that
    reads ``self.dropout.p``, as HF attention does, sees 0 too), and the ``dropout`` rate of
    ``nn.MultiheadAttention`` and the recurrent layers set to 0; all restored on exit."""
    saved: list[tuple[nn.Module, bool, float]] = []
    for m in module.modules():
        if isinstance(m, _DropoutNd):
            saved.append((m, m.training, m.p))
            m.p = 0.0
            m.training = False
        elif isinstance(m, nn.MultiheadAttention | nn.RNNBase):
            saved.append((m, m.training, float(m.dropout)))
            setattr(m, "dropout", 0.0)  # noqa: B010
    try:
        yield
    finally:
        for m, training, p in saved:
            if isinstance(m, _DropoutNd):
                m.p, m.training = p, training
            else:
                setattr(m, "dropout", p)  # noqa: B010  (a float attribute of these classes)


def _no_op_copy(obj: Any, closure_step: bool) -> Any:
    """A shallow copy of an optimizer / LightningOptimizer / scheduler (same class, so
    ``isinstance`` checks in user code hold; same ``param_groups`` and state objects) whose
    ``step`` does not step (an optimizer's ``step(closure)`` still evaluates the closure) and
    whose ``zero_grad`` does nothing."""
    stub = copy.copy(obj)

    def step(closure: Any = None, *args: Any, **kwargs: Any) -> Any:
        return closure() if closure_step and callable(closure) else None

    def zero_grad(*args: Any, **kwargs: Any) -> None:
        return None

    def toggle_model(*args: Any, **kwargs: Any) -> Any:
        return nullcontext()

    stub.step = step
    if closure_step:
        stub.zero_grad = zero_grad
        stub.toggle_model = toggle_model
    return stub


def _mapped(value: Any, closure_step: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [_no_op_copy(v, closure_step) for v in value]
    return _no_op_copy(value, closure_step)


_STUBBED = (
    "log",
    "log_dict",
    "manual_backward",
    "optimizers",
    "lr_schedulers",
    "toggle_optimizer",
    "untoggle_optimizer",
    "toggled_optimizer",
    "clip_gradients",
)


@contextmanager
def stubbed(pl_module: pl.LightningModule) -> Iterator[list[Tensor]]:
    """``training_step`` without side effects on the run: ``self.log``/``log_dict`` do nothing,
    ``manual_backward(loss)`` records ``loss`` (yielded list) instead of backpropagating,
    ``optimizers()`` / ``lr_schedulers()`` return stand-ins whose ``step`` does not step (an
    optimizer ``step(closure)`` still evaluates the closure) and ``zero_grad`` does nothing;
    ``toggle_optimizer``, ``untoggle_optimizer``, ``toggled_optimizer`` and ``clip_gradients``
    do nothing. Everything is restored on exit."""
    losses: list[Tensor] = []
    real_optimizers = pl_module.optimizers
    real_schedulers = pl_module.lr_schedulers

    def _noop(*args: Any, **kwargs: Any) -> None:
        return None

    def _backward(loss: Tensor, *args: Any, **kwargs: Any) -> None:
        losses.append(loss)

    def _optimizers(use_pl_optimizer: bool = True) -> Any:
        return _mapped(real_optimizers(use_pl_optimizer=use_pl_optimizer), True)

    def _schedulers() -> Any:
        return _mapped(real_schedulers(), False)

    def _toggled(*args: Any, **kwargs: Any) -> Any:
        return nullcontext()

    replacements: dict[str, Any] = {
        "log": _noop,
        "log_dict": _noop,
        "manual_backward": _backward,
        "optimizers": _optimizers,
        "lr_schedulers": _schedulers,
        "toggle_optimizer": _noop,
        "untoggle_optimizer": _noop,
        "toggled_optimizer": _toggled,
        "clip_gradients": _noop,
    }
    for name, fn in replacements.items():
        setattr(pl_module, name, fn)
    token = _CAPTURED.set(losses)
    try:
        yield losses
    finally:
        _CAPTURED.reset(token)
        for name in _STUBBED:
            pl_module.__dict__.pop(name, None)


# nn.Module internals and hook handles are never snapshotted: the norm hooks are detached and
# attached again while the snapshot is held.
_INTERNAL = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"}


def _snapshotted(key: str) -> bool:
    return key not in _INTERNAL and "hook" not in key and key not in _STUBBED


@contextmanager
def module_state_restored(module: nn.Module) -> Iterator[None]:
    """Every buffer (BatchNorm statistics, counters) and every plain attribute of every
    submodule (torchmetrics states, hidden states kept between steps, caches) is put back on
    exit, in place where the object was changed in place; attributes created inside are removed.
    """
    buffers: list[tuple[nn.Module, str, Tensor | None, int, Tensor | None]] = []
    attrs = []
    for m in module.modules():
        for name, buf in m._buffers.items():
            if buf is None:
                buffers.append((m, name, None, 0, None))
            else:
                buffers.append((m, name, buf, buf._version, buf.detach().clone()))
        saved: dict[str, Any] = {}
        for key, value in m.__dict__.items():
            if not _snapshotted(key):
                continue
            if isinstance(value, Tensor):
                saved[key] = (value, value._version, value.detach().clone())
            elif isinstance(value, list | dict):
                saved[key] = (value, None, value.copy())
            else:
                saved[key] = (value, None, None)
        attrs.append((m, saved))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, name, buf, version, copy in buffers:
                if buf is not None and copy is not None and buf._version != version:
                    buf.copy_(copy)
                m._buffers[name] = buf
            for m, saved in attrs:
                for key in [k for k in m.__dict__ if _snapshotted(k) and k not in saved]:
                    del m.__dict__[key]
                for key, (value, version, copy) in saved.items():
                    if isinstance(value, Tensor) and value._version != version:
                        value.copy_(copy)
                    elif isinstance(value, list) and not _same_items(value, copy):
                        value[:] = copy
                    elif isinstance(value, dict) and not _same_items(
                        list(value.items()), list(copy.items())
                    ):
                        value.clear()
                        value.update(copy)
                    m.__dict__[key] = value


def _same_items(a: list[Any], b: list[Any]) -> bool:
    """Whether two lists hold the same objects (identity: tensors have no plain ``==``)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, tuple) and isinstance(y, tuple):
            if len(x) != len(y) or any(u is not v for u, v in zip(x, y, strict=True)):
                return False
        elif x is not y:
            return False
    return True
