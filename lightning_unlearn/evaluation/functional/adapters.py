"""Per-example outputs of a model on a batch: the one place every evaluation reads them.

:class:`~lightning_unlearn.UnlearningModule`,
:class:`~lightning_unlearn.unlearning.LossCalibratedStopping`,
:func:`~lightning_unlearn.unlearning.evaluate_splits`, the membership attacks, the loss barrier
and the difficulty scores all take ``batch_adapter=``: an object that turns ``(model, batch)``
into :class:`ExampleOutputs` (per-example loss ``[B]``, class logits ``[B, C]`` when they exist,
targets ``[B]``). Three kinds:

* :class:`ClassificationAdapter` for ``(x, y, ...)`` batches (tuples, lists, named tuples such as
  :class:`~lightning_unlearn.data.IndexedDataset` items) and dicts with an input key (``x``,
  ``input``, ``inputs``, ``image``, ``images``, ``features``) and a target key (``y``, ``target``,
  ``targets``, ``label``, ``labels``): ``logits = model(x)``, cross-entropy per example;
* :class:`HFAdapter` for Hugging Face-style dict batches (``input_ids``, ``attention_mask``,
  ``labels``, ...): ``model(**inputs)`` whose output has ``.logits``; sequence classification
  (cross-entropy per example), or a causal LM (mean next-token loss over the example's target
  tokens: labels ``-100`` and padded positions ignored);
* your own: a :class:`BatchAdapter` subclass, or a function ``(model, batch) -> (loss, logits,
  targets)`` (wrapped in :class:`FunctionAdapter`).

The default, :class:`AutoAdapter`, picks the first or the second per batch (a dict with
``input_ids`` is Hugging Face-style). Sample ids never come from the adapter: they come from
the batch if it carries them, else from the loader's sampler
(:mod:`lightning_unlearn.sample_ids`, a leaf module: this base layer imports nothing of
:mod:`lightning_unlearn.data`). This module imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_unlearn.errors import BatchFormatError, MissingSampleIdError
from lightning_unlearn.sample_ids import (
    SAMPLE_ID_KEY,
    get_sample_ids,
    iterate_with_sampler_ids,
    sampler_ids_unreadable_reason,
)

__all__ = [
    "AdapterLike",
    "AutoAdapter",
    "BatchAdapter",
    "ClassificationAdapter",
    "ExampleOutputs",
    "FunctionAdapter",
    "HFAdapter",
    "as_adapter",
    "batches_with_ids",
    "tensor_inputs",
    "to_device",
]

INPUT_KEYS = ("x", "input", "inputs", "image", "images", "features")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")


@dataclass(frozen=True)
class ExampleOutputs:
    """What a :class:`BatchAdapter` returns for one batch.

    Attributes:
        loss: per-example loss ``[B]``.
        logits: per-example class logits ``[B, C]``, or None (e.g. a causal LM).
        targets: per-example integer targets ``[B]``, or None.
        correct: per-example correctness ``[B]`` bool; default ``argmax(logits) == targets``.
    """

    loss: Tensor
    logits: Tensor | None = None
    targets: Tensor | None = None
    correct: Tensor | None = None

    def correctness(self) -> Tensor:
        """``correct`` if given, else ``argmax(logits) == targets`` (NaN-free bool ``[B]``)."""
        if self.correct is not None:
            return self.correct.bool()
        if self.logits is None or self.targets is None or self.logits.dim() != 2:
            raise ValueError(
                "Expected the `batch_adapter` to return class logits [B, C] and targets [B] "
                "(or `correct`) to score correctness, but it returned none."
            )
        return self.logits.argmax(dim=-1) == self.targets.to(self.logits.device)


def to_device(value: Any, device: torch.device) -> Any:
    """Move every tensor in ``value`` (nested tuples, lists, dicts) to ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class BatchAdapter:
    """Base class of the adapters: override :meth:`inputs`, :meth:`targets`, :meth:`forward`
    and :meth:`loss` (or :meth:`__call__` itself) for a batch format of your own.

    ``inputs`` / ``targets`` are also what :func:`~lightning_unlearn.evaluation.input_curvature`
    and :func:`~lightning_unlearn.evaluation.grand_scores` differentiate, and
    :meth:`with_targets` is how ``UnlearningModule(method="random_label")`` relabels a batch.
    """

    def inputs(self, batch: Any) -> Any:
        """What :meth:`forward` passes to the model."""
        raise NotImplementedError

    def targets(self, batch: Any) -> Tensor | None:
        """Per-example targets of the batch."""
        raise NotImplementedError

    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        """The model's output logits on ``inputs`` (moved to the model's device)."""
        return _logits_of(model(to_device(inputs, _device(model))))

    def loss(self, logits: Tensor, targets: Tensor | None) -> Tensor:
        """Per-example loss ``[B]``; default cross-entropy of ``[B, C]`` logits."""
        if targets is None:
            raise ValueError("Expected targets for the default cross-entropy loss, but got None.")
        return F.cross_entropy(logits.float(), targets.to(logits.device).long(), reduction="none")

    def with_targets(self, batch: Any, targets: Tensor) -> Any:
        """The batch with its targets replaced (``"random_label"`` unlearning)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot replace the targets of a batch; override "
            "`with_targets` in your `batch_adapter`."
        )

    def __call__(self, model: nn.Module, batch: Any) -> ExampleOutputs:
        """The per-example outputs of ``model`` on ``batch``."""
        targets = self.targets(batch)
        logits = self.forward(model, self.inputs(batch))
        if targets is not None:
            targets = targets.to(logits.device)
        return ExampleOutputs(self.loss(logits, targets), logits, targets)


def _logits_of(out: Any) -> Tensor:
    """The logits of a model's output: the output itself, or its ``.logits`` / ``["logits"]``
    (a Hugging Face ``ModelOutput``). Anything else (an RNN's ``(output, hidden)`` tuple, a
    loss) is refused by name: guessing which part holds the logits could score the wrong one."""
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    logits = out if logits is None else logits
    if not isinstance(logits, Tensor):
        raise BatchFormatError(
            f"Expected the model to return logits (a tensor, or an output with `.logits`), "
            f"but got {type(out).__name__}; return the logits from `forward`, or pass your own "
            "`batch_adapter=`."
        )
    return logits


def _first_key(batch: Mapping[str, Any], keys: tuple[str, ...], what: str) -> str:
    for key in keys:
        if key in batch:
            return key
    raise BatchFormatError(
        f"Expected a dict batch with a {what} key (one of {list(keys)}), but got keys "
        f"{sorted(batch)}; pass `batch_adapter=` (a `BatchAdapter`, or a function "
        "`(model, batch) -> (loss, logits, targets)`) for this batch format."
    )


def _data_fields(batch: tuple[Any, ...] | list[Any]) -> list[tuple[int, Any]]:
    fields = getattr(batch, "_fields", None)
    if fields is None:
        return list(enumerate(batch))
    return [
        (i, v) for i, (k, v) in enumerate(zip(fields, batch, strict=True)) if k != SAMPLE_ID_KEY
    ]


class ClassificationAdapter(BatchAdapter):
    """``(x, y, ...)`` batches and dicts with an input and a target key: ``model(x)`` logits,
    cross-entropy per example.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> _ = torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
        >>> out = ClassificationAdapter()(model, (torch.ones(2, 3), torch.tensor([0, 1])))
        >>> [round(v, 4) for v in out.loss.tolist()], out.logits.shape
        ([0.6931, 0.6931], torch.Size([2, 2]))
    """

    def _position(self, batch: Any, which: int) -> int | str:
        if isinstance(batch, Mapping):
            return _first_key(
                batch, INPUT_KEYS if which == 0 else TARGET_KEYS, "target" if which else "input"
            )
        if isinstance(batch, tuple | list):
            fields = _data_fields(batch)
            if len(fields) < 2:
                raise ValueError(
                    f"Expected a batch `(inputs, targets, ...)`, but got {len(fields)} data "
                    "field(s); pass `batch_adapter=` for this batch format."
                )
            return fields[which][0]
        raise BatchFormatError(
            f"Expected a tuple or dict batch, but got {type(batch).__name__}; pass "
            "`batch_adapter=` for this batch format."
        )

    def inputs(self, batch: Any) -> Any:
        return batch[self._position(batch, 0)]

    def targets(self, batch: Any) -> Tensor | None:
        return batch[self._position(batch, 1)]

    def with_targets(self, batch: Any, targets: Tensor) -> Any:
        where = self._position(batch, 1)
        if isinstance(batch, Mapping):
            return {**batch, where: targets}
        items = list(batch)
        items[int(where)] = targets
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)


HFTask = Literal["auto", "sequence_classification", "causal_lm", "token_classification"]


class HFAdapter(BatchAdapter):
    """Hugging Face-style dict batches: ``model(**inputs)`` with every key but ``labels`` (and
    ``sample_id``); the logits are ``output.logits`` (or ``output["logits"]``, or the output).

    Tasks (``task="auto"``: logits ``[B, C]`` are sequence classification, ``[B, T, V]`` a
    causal LM):

    * ``"sequence_classification"``: cross-entropy of ``[B, C]`` logits against ``labels [B]``;
    * ``"causal_lm"``: the mean next-token cross-entropy of each example,

      .. math::

          \\ell_i = \\frac{1}{|T_i|} \\sum_{t \\in T_i}
              -\\log \\operatorname{softmax}(z_{i,t-1})_{y_{i,t}},

      over its target tokens :math:`T_i` (label not ``-100`` and, with an ``attention_mask``,
      not padding); an example is correct when every target token is the argmax;
    * ``"token_classification"``: the same mean over unshifted positions.

    Args:
        task: see above.
        label_key: the key of the labels (default ``"labels"``).
    """

    def __init__(self, task: HFTask = "auto", label_key: str = "labels") -> None:
        if task not in ("auto", "sequence_classification", "causal_lm", "token_classification"):
            raise ValueError(
                "Expected `task` to be 'auto', 'sequence_classification', 'causal_lm' or "
                f"'token_classification', but got {task!r}."
            )
        self.task, self.label_key = task, label_key

    def inputs(self, batch: Any) -> Any:
        if not isinstance(batch, Mapping):
            raise BatchFormatError(
                f"Expected a dict batch for `HFAdapter`, but got {type(batch).__name__}."
            )
        return {k: v for k, v in batch.items() if k not in (self.label_key, SAMPLE_ID_KEY)}

    def targets(self, batch: Any) -> Tensor | None:
        if self.label_key not in batch:
            raise BatchFormatError(
                f"Expected the dict batch to hold {self.label_key!r}, but got keys "
                f"{sorted(batch)}; pass `batch_adapter=HFAdapter(label_key=...)`."
            )
        return batch[self.label_key]

    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        return _logits_of(model(**to_device(inputs, _device(model))))

    def with_targets(self, batch: Any, targets: Tensor) -> Any:
        return {**batch, self.label_key: targets}

    def __call__(self, model: nn.Module, batch: Any) -> ExampleOutputs:
        inputs, targets = self.inputs(batch), self.targets(batch)
        logits = self.forward(model, inputs)
        assert targets is not None
        targets = targets.to(logits.device)
        task = self.task
        if task == "auto":
            task = "sequence_classification" if logits.dim() == 2 else "causal_lm"
        if task == "sequence_classification":
            return ExampleOutputs(self.loss(logits, targets), logits, targets)
        mask = inputs.get("attention_mask")
        return _token_outputs(logits, targets, mask, shift=task == "causal_lm")


def _token_outputs(
    logits: Tensor, labels: Tensor, mask: Tensor | None, *, shift: bool
) -> ExampleOutputs:
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
        mask = None if mask is None else mask[:, 1:]
    valid = labels != -100
    if mask is not None:
        valid = valid & mask.to(labels.device).bool()
    tokens = F.cross_entropy(
        logits.float().transpose(1, 2), labels.masked_fill(~valid, 0).long(), reduction="none"
    )
    count = valid.sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError(
            "Expected every example to have at least one target token (a label other than "
            "-100 on a non-padded position), but some have none; their loss is undefined."
        )
    loss = (tokens * valid).sum(dim=1) / count
    correct = ((logits.argmax(dim=-1) == labels) | ~valid).all(dim=1)
    return ExampleOutputs(loss, None, None, correct)


class FunctionAdapter(BatchAdapter):
    """Wrap a function ``(model, batch) -> ExampleOutputs | (loss, logits, targets)``.

    ``logits`` and ``targets`` may be None when only losses are needed (the stopping rule,
    the loss attacks, the loss barrier).

    Example:
        >>> import torch
        >>> def fn(model, batch):
        ...     logits = model(batch["pixels"])
        ...     loss = torch.nn.functional.cross_entropy(logits, batch["cls"], reduction="none")
        ...     return loss, logits, batch["cls"]
        >>> batch = {"pixels": torch.zeros(2, 3), "cls": torch.tensor([0, 1])}
        >>> FunctionAdapter(fn)(torch.nn.Linear(3, 2), batch).loss.shape
        torch.Size([2])
    """

    def __init__(self, fn: Callable[[nn.Module, Any], Any]) -> None:
        self.fn = fn

    def __call__(self, model: nn.Module, batch: Any) -> ExampleOutputs:
        out = self.fn(model, batch)
        if isinstance(out, ExampleOutputs):
            return out
        if not isinstance(out, tuple) or len(out) != 3:
            raise BatchFormatError(
                "Expected the `batch_adapter` function to return `(loss, logits, targets)` or "
                f"an `ExampleOutputs`, but got {type(out).__name__}."
            )
        loss, logits, targets = out
        return ExampleOutputs(loss, logits, targets)


class AutoAdapter(BatchAdapter):
    """The default: :class:`HFAdapter` for dicts with ``input_ids``, else
    :class:`ClassificationAdapter`."""

    def __init__(self) -> None:
        self.hf, self.classification = HFAdapter(), ClassificationAdapter()

    def pick(self, batch: Any) -> BatchAdapter:
        """The adapter this batch is read with."""
        if isinstance(batch, Mapping) and "input_ids" in batch:
            return self.hf
        return self.classification

    def inputs(self, batch: Any) -> Any:
        return self.pick(batch).inputs(batch)

    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        if isinstance(inputs, Mapping) and "input_ids" in inputs:
            return self.hf.forward(model, inputs)
        return self.classification.forward(model, inputs)

    def targets(self, batch: Any) -> Tensor | None:
        return self.pick(batch).targets(batch)

    def with_targets(self, batch: Any, targets: Tensor) -> Any:
        return self.pick(batch).with_targets(batch, targets)

    def __call__(self, model: nn.Module, batch: Any) -> ExampleOutputs:
        return self.pick(batch)(model, batch)


AdapterLike = BatchAdapter | Callable[[nn.Module, Any], Any]


def as_adapter(batch_adapter: AdapterLike | None) -> BatchAdapter:
    """The :class:`BatchAdapter` for a ``batch_adapter=`` argument (None: :class:`AutoAdapter`).

    Raises:
        TypeError: ``batch_adapter`` is neither an adapter nor callable.
    """
    if batch_adapter is None:
        return AutoAdapter()
    if isinstance(batch_adapter, BatchAdapter):
        return batch_adapter
    if callable(batch_adapter):
        return FunctionAdapter(batch_adapter)
    raise TypeError(
        "Expected `batch_adapter` to be a `BatchAdapter` or a function `(model, batch) -> "
        f"(loss, logits, targets)`, but got {type(batch_adapter).__name__}."
    )


def batches_with_ids(
    dataloader: Iterable[Any], *, with_ids: bool = True
) -> Iterator[tuple[Any, Tensor | None]]:
    """Yield ``(batch, sample_ids)``: the ids the batch carries, else (for a ``DataLoader``)
    the indices its sampler drew, i.e. positions in ``dataloader.dataset``.

    Raises:
        TypeError: ``dataloader`` is not iterable.
        MissingSampleIdError: ``with_ids`` and no ids are known.
    """
    if not isinstance(dataloader, Iterable):
        raise TypeError(
            "Expected `dataloader` to be an iterable of batches, but got "
            f"{type(dataloader).__name__}."
        )
    pairs: Iterable[tuple[Any, Tensor | None]]
    if isinstance(dataloader, DataLoader) and sampler_ids_unreadable_reason(dataloader) is None:
        pairs = iterate_with_sampler_ids(dataloader)
    else:
        pairs = ((batch, None) for batch in dataloader)
    for batch, sampled in pairs:
        try:
            ids: Tensor | None = get_sample_ids(batch)
        except MissingSampleIdError:
            ids = sampled
        if ids is None and with_ids:
            raise MissingSampleIdError(
                "Expected sample ids for the examples of `dataloader`, but its batches carry "
                "none and it is not a map-style `DataLoader` whose sampler gives them; pass a "
                "`DataLoader` over a map-style dataset, or batches with ids "
                "(`lightning_unlearn.data.IndexedDataset`)."
            )
        yield batch, ids


def tensor_inputs(adapter: BatchAdapter, batch: Any) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of a batch for the scores that differentiate with respect to one
    input tensor (input curvature, GraNd).

    Raises:
        TypeError: the adapter's inputs are not one tensor, or it has no targets.
    """
    x, y = adapter.inputs(batch), adapter.targets(batch)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise BatchFormatError(
            "Expected the `batch_adapter` to give one input tensor and a target tensor for this "
            f"score, but got {type(x).__name__} and {type(y).__name__}; it needs `model(x)` "
            "class logits of a tensor input."
        )
    return x, y
