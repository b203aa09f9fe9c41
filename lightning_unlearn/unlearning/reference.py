"""Reference models: K models trained with the user's recipe on seeded random parts of the data.

The established tool for per-example targets (LiRA, Carlini et al. 2022; U-LiRA, Hayes et al.
2024; KLoM, Georgiev et al. 2024): every training example is left OUT of exactly ``K / folds``
of the K models (half of them in LiRA's design, ``folds = 2``), so its OUT distribution (the
models that never saw it) is the per-example oracle for *any* forget set containing it, without
retraining per deletion request (THEORY §6).

Files under ``out_dir`` (plain formats, read with ``torch.load(..., weights_only=True)``):

* ``manifest.json``: ``k``, ``seed``, ``folds``, ``num_samples``, the data fingerprint, the
  module class and the recipe;
* ``model_000.pt`` ... : ``{"state_dict", "in_mask", "index", "seed", "version"}``, each
  written atomically (temporary file + ``os.replace``) by global rank 0 at the end of its fit,
  so a file that exists is complete; a rerun skips those and trains the rest.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.indexed import IndexedDataset
from lightning_unlearn.data.splits import EpochSeededSampler
from lightning_unlearn.errors import LightningUnlearnError
from lightning_unlearn.evaluation.functional.adapters import AdapterLike
from lightning_unlearn.unlearning.reference_stats import ReferenceStatistics, compute_statistics

__all__ = [
    "ReferenceModels",
    "ReferenceModelsError",
    "balanced_membership",
    "train_reference_models",
]

_VERSION = 1
_MANIFEST = "manifest.json"
ModuleFactory = Callable[[], pl.LightningModule]


class ReferenceModelsError(LightningUnlearnError, ValueError):
    """Reference models on disk do not match the request (another data set, K or seed), or are
    missing or unreadable; the message says which and how to recover."""


def balanced_membership(num_samples: int, k: int, seed: int = 0, folds: int = 2) -> torch.Tensor:
    """``[k, N]`` IN masks in which every example is OUT of exactly ``k / folds`` models.

    The ``k`` models form ``k / folds`` groups of ``folds``; each group splits a seeded random
    permutation of the ``N`` examples into ``folds`` near-equal parts, and the group's model
    ``f`` trains on all parts but part ``f``. ``folds = 2`` is the LiRA design (complementary
    pairs of halves: every example IN and OUT ``k/2`` times); a larger ``folds`` trains every
    model on ``1 - 1/folds`` of the data, closer to the full-data model being unlearned (THEORY
    §6: the OUT law then needs less of the held-out map's size correction), at the price of
    fewer OUT models per example (``k / folds``) for the same ``k``.

    Args:
        num_samples: ``N >= folds``.
        k: number of models, a multiple of ``folds``.
        seed: seed of the splits.
        folds: parts per group (>= 2).

    Returns:
        A boolean ``[k, N]`` tensor on the CPU.

    Raises:
        ReferenceModelsError: ``folds`` < 2, ``k`` not a positive multiple of ``folds``, or
            ``N < folds``.

    Example:
        >>> masks = balanced_membership(7, k=4, seed=0)
        >>> masks.sum(dim=0).tolist()  # every example IN in exactly k/2 models
        [2, 2, 2, 2, 2, 2, 2]
        >>> bool((masks[0] ^ masks[1]).all())
        True
        >>> (~balanced_membership(8, k=8, seed=0, folds=4)).sum(dim=0).tolist()  # OUT twice
        [2, 2, 2, 2, 2, 2, 2, 2]
    """
    if not isinstance(folds, int) or folds < 2:
        raise ReferenceModelsError(f"Expected `folds` to be an int >= 2, but got {folds!r}.")
    if not isinstance(k, int) or k < folds or k % folds:
        if folds == 2:
            raise ReferenceModelsError(f"Expected `k` to be an even int >= 2, but got {k!r}.")
        raise ReferenceModelsError(
            f"Expected `k` to be a positive multiple of `folds` = {folds}, but got {k!r}."
        )
    if num_samples < folds:
        raise ReferenceModelsError(
            f"Expected `num_samples` >= {folds} (`folds`), but got {num_samples!r}."
        )
    masks = torch.zeros(k, num_samples, dtype=torch.bool)
    for group in range(k // folds):
        generator = torch.Generator().manual_seed(seed * 100_003 + group)
        perm = torch.randperm(num_samples, generator=generator)
        if folds == 2:  # the original LiRA pairs, bit for bit (saved models stay valid)
            masks[2 * group, perm[: num_samples // 2]] = True
            masks[2 * group + 1] = ~masks[2 * group]
            continue
        for f, part in enumerate(perm.tensor_split(folds)):
            masks[group * folds + f] = True
            masks[group * folds + f, part] = False
    return masks


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class _SaveOnTrainEnd(Callback):
    """Writes the trained weights with their IN mask from global rank 0 (works under DDP and
    ``ddp_spawn``, where the parent process never sees the trained module)."""

    def __init__(self, path: Path, in_mask: torch.Tensor, index: int, seed: int) -> None:
        self.path, self.in_mask, self.index, self.seed = path, in_mask, index, seed

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
            payload = {
                "version": _VERSION,
                "index": self.index,
                "seed": self.seed,
                "in_mask": self.in_mask.clone(),
                "state_dict": state,
            }
            _atomic_save(payload, self.path)
        trainer.strategy.barrier("lightning_unlearn.reference_saved")


def _training_dataset(data: Dataset | pl.LightningDataModule) -> tuple[IndexedDataset, bool]:
    """The training set with ids, and whether this function attached them."""
    if isinstance(data, pl.LightningDataModule):
        data.prepare_data()
        data.setup("fit")
        data = getattr(data.train_dataloader(), "dataset", None)  # type: ignore[assignment]
        if data is None:
            raise ReferenceModelsError(
                "Expected the data module's `train_dataloader()` to be a DataLoader with a "
                "`.dataset`; pass the training dataset itself."
            )
    if isinstance(data, IndexedDataset):
        return data, False
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise ReferenceModelsError(
            f"Expected a map-style dataset or a LightningDataModule, but got {type(data).__name__}."
        )
    return IndexedDataset(data), True


def _recipe(
    probe: pl.LightningModule, batch_size: int, trainer_kwargs: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What must agree for saved models to be reused: hyper-parameters, batch size, trainer
    settings (as JSON; objects by their ``repr``, so e.g. callbacks compare by type)."""
    hparams = dict(getattr(probe, "hparams", {}) or {})
    settings = {k: v for k, v in (trainer_kwargs or {}).items() if k != "callbacks"}
    recipe = {"hparams": hparams, "batch_size": batch_size, "trainer_kwargs": settings}
    parsed: dict[str, Any] = json.loads(json.dumps(recipe, default=repr, sort_keys=True))
    return parsed


def _model_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"model_{index:03d}.pt"


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / _MANIFEST
    if not path.is_file():
        raise ReferenceModelsError(
            f"No reference models in {str(out_dir)!r} ({_MANIFEST} missing); train them with "
            "`train_reference_models(..., out_dir=...)` first."
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("version") != _VERSION:
        raise ReferenceModelsError(
            f"Expected reference models of version {_VERSION} in {str(out_dir)!r}, but got "
            f"{manifest.get('version')!r}; retrain them into a new directory."
        )
    return manifest


def _check_manifest(out_dir: Path, expected: Mapping[str, Any]) -> None:
    if not (out_dir / _MANIFEST).is_file():
        _atomic_write_text(json.dumps(dict(expected), indent=2), out_dir / _MANIFEST)
        return
    found = _read_manifest(out_dir)
    found.setdefault("folds", 2)  # manifests written before `folds` existed: halves
    for key in ("k", "seed", "folds", "num_samples", "fingerprint", "module", "recipe"):
        if found.get(key) != expected[key]:
            raise ReferenceModelsError(
                f"The reference models in {str(out_dir)!r} were trained with {key}="
                f"{found.get(key)!r}, but this call asks for {key}={expected[key]!r}; use "
                "another `out_dir`, or delete that directory to retrain."
            )


def _load_model_file(path: Path, expected_mask: torch.Tensor | None) -> dict[str, Any] | None:
    """The payload of a complete model file, or None when absent. Raises when it is foreign."""
    if not path.is_file():
        return None
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say so, never train over silently
        raise ReferenceModelsError(
            f"Cannot read the reference model {str(path)!r} ({err}); delete it to retrain it."
        ) from None
    mask = payload.get("in_mask")
    if payload.get("version") != _VERSION or not isinstance(mask, torch.Tensor):
        raise ReferenceModelsError(f"{str(path)!r} is not a reference model file of this version.")
    if expected_mask is not None and not torch.equal(mask, expected_mask):
        raise ReferenceModelsError(
            f"The membership mask stored in {str(path)!r} differs from the one derived from "
            "the manifest's seed; the directory was modified. Delete it to retrain."
        )
    return payload


def train_reference_models(
    make_module: ModuleFactory,
    data: Dataset | pl.LightningDataModule,
    *,
    out_dir: str | os.PathLike[str],
    k: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    trainer_kwargs: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    progress: bool = True,
    folds: int = 2,
) -> ReferenceModels:
    """Train ``k`` reference models on balanced random subsets of ``data`` (resumable).

    Model ``j`` is ``make_module()`` (a fresh module: the user's own recipe, its own
    ``training_step`` and ``configure_optimizers``), fitted by a real ``lightning.pytorch``
    ``Trainer(**trainer_kwargs)`` on the examples of ``balanced_membership(N, k, seed)[j]``,
    shuffled by a permutation per epoch seeded from ``(seed, j, epoch)`` after
    ``seed_everything``. Batches keep the original sample ids. Under DDP
    (``strategy="ddp"`` or ``"ddp_spawn"`` in ``trainer_kwargs``) Lightning shards the loader
    and rank 0 writes the file. Models whose file already exists (complete by construction:
    atomic writes) are skipped, so an interrupted call is resumed by calling it again with the
    same arguments.

    Args:
        make_module: a callable returning a fresh LightningModule (define it at module level
            for ``ddp_spawn``).
        data: the training set (map-style, optionally an ``IndexedDataset``) or a data module
            whose ``train_dataloader().dataset`` is used. A plain data set is wrapped in
            ``IndexedDataset``, so ``training_step`` receives ``(x, y, sample_id)`` batches
            (one that unpacks ``x, y = batch`` gets a ``ReferenceModelsError`` saying so).
        out_dir: directory of the models (created).
        k: number of models, a multiple of ``folds`` (every example is OUT of exactly
            ``k / folds``).
        seed: seed of the splits, of the initialisations and of the shuffling.
        batch_size: training batch size.
        trainer_kwargs: ``Trainer`` arguments (e.g. ``max_epochs``); defaults add no logger,
            no checkpoints, no model summary, no inner progress bar. Callbacks given here are
            shared by all ``k`` fits. The settings (without callbacks), the batch size and the
            module's ``hparams`` are the "recipe" recorded in the manifest: models saved with
            another recipe are refused, never reused.
        num_workers: ``DataLoader`` workers.
        progress: a tqdm bar over the ``k`` models.
        folds: :func:`balanced_membership`'s parts per group: each model trains on
            ``1 - 1/folds`` of the data (2: halves, LiRA's design; 4: three quarters, closer
            to the model being unlearned, with ``k / 4`` OUT models per example).

    Returns:
        The loaded :class:`ReferenceModels`.

    Raises:
        ReferenceModelsError: ``out_dir`` holds models of another data set, ``k`` or seed.
    """
    from tqdm.auto import tqdm

    dataset, wrapped = _training_dataset(data)
    n = len(dataset)
    masks = balanced_membership(n, k, seed, folds)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    probe = make_module()
    manifest = {
        "version": _VERSION,
        "k": k,
        "seed": seed,
        "folds": folds,
        "num_samples": n,
        "fingerprint": dataset_fingerprint(dataset, n),
        "module": f"{type(probe).__module__}.{type(probe).__qualname__}",
        "recipe": _recipe(probe, batch_size, trainer_kwargs),
    }
    _check_manifest(root, manifest)
    settings: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "default_root_dir": str(root),
    }
    settings.update(trainer_kwargs or {})
    for j in tqdm(range(k), desc="reference models", disable=not progress):
        path = _model_path(root, j)
        if _load_model_file(path, masks[j]) is not None:
            continue
        run_seed = seed * 100_003 + j
        pl.seed_everything(run_seed, verbose=False)
        module = make_module()
        in_ids = masks[j].nonzero().flatten().tolist()
        # A sampler seeded per epoch from (run_seed, epoch), not a torch.Generator: a
        # Generator in the loader cannot be unpickled by ddp_spawn workers (measured).
        loader = DataLoader(
            Subset(dataset, in_ids),
            batch_size=batch_size,
            sampler=EpochSeededSampler(len(in_ids), seed=run_seed),
            num_workers=num_workers,
        )
        callbacks = [*settings.get("callbacks", []), _SaveOnTrainEnd(path, masks[j], j, seed)]
        trainer = pl.Trainer(**{**settings, "callbacks": callbacks})
        _fit_with_ids(trainer, module, loader, wrapped=wrapped)
    return ReferenceModels.load(root, make_module)


def _fit_with_ids(
    trainer: pl.Trainer, module: pl.LightningModule, loader: DataLoader, *, wrapped: bool
) -> None:
    """``trainer.fit``; a ``training_step`` unpacking ``x, y = batch`` from the batches this
    function gave sample ids is told why, instead of a bare unpacking error."""
    try:
        trainer.fit(module, train_dataloaders=loader)
    except ValueError as err:
        if not wrapped or "too many values to unpack" not in str(err):
            raise
        raise ReferenceModelsError(
            f"{type(module).__name__}.training_step could not unpack a batch: "
            "train_reference_models wraps a plain data set in `IndexedDataset`, so every batch "
            "ends with its sample ids (`x, y, sample_id`); read `x, y = batch[0], batch[1]` "
            f"(or `x, y, *_ = batch`). The original error: {err}"
        ) from err


class ReferenceModels:
    """K trained reference models and their IN masks (see :func:`train_reference_models`).

    Args:
        modules: the ``K`` models (eval mode is set when they are evaluated).
        in_mask: ``[K, N]`` booleans: model ``k`` trained on example ``i``.
        manifest: the directory's manifest (``k``, ``seed``, ``num_samples``, ...).

    Example:
        >>> import torch
        >>> models = [torch.nn.Linear(2, 2) for _ in range(2)]
        >>> refs = ReferenceModels(models, torch.tensor([[True, False], [False, True]]))
        >>> refs.k, refs.num_samples
        (2, 2)
    """

    def __init__(
        self,
        modules: Sequence[torch.nn.Module],
        in_mask: torch.Tensor,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        if in_mask.dim() != 2 or in_mask.dtype != torch.bool or in_mask.shape[0] != len(modules):
            raise ReferenceModelsError(
                f"Expected a boolean `in_mask` [K={len(modules)}, N], but got "
                f"{tuple(in_mask.shape)} ({in_mask.dtype})."
            )
        self.modules = list(modules)
        self.in_mask = in_mask
        self.manifest = dict(manifest or {})

    @property
    def k(self) -> int:
        """Number of models."""
        return len(self.modules)

    @property
    def num_samples(self) -> int:
        """Size ``N`` of the training set the masks index."""
        return int(self.in_mask.shape[1])

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str], make_module: ModuleFactory) -> ReferenceModels:
        """Load every model of ``out_dir`` into fresh ``make_module()`` instances.

        Raises:
            ReferenceModelsError: no manifest, a model missing (training was interrupted:
                call :func:`train_reference_models` again) or unreadable.
        """
        root = Path(out_dir)
        manifest = _read_manifest(root)
        expected = balanced_membership(
            manifest["num_samples"], manifest["k"], manifest["seed"], manifest.get("folds", 2)
        )
        modules, missing = [], []
        for j in range(manifest["k"]):
            payload = _load_model_file(_model_path(root, j), expected[j])
            if payload is None:
                missing.append(j)
                continue
            module = make_module()
            try:
                module.load_state_dict(payload["state_dict"])
            except RuntimeError as err:
                raise ReferenceModelsError(
                    f"The reference model {j} in {str(root)!r} does not fit `make_module()`'s "
                    f"module ({err}); load it with the module it was trained with, or train "
                    "into another directory."
                ) from None
            module.eval()
            modules.append(module)
        if missing:
            raise ReferenceModelsError(
                f"Reference models {missing} of {manifest['k']} are missing in {str(root)!r}; "
                "call `train_reference_models` again with the same arguments to finish them."
            )
        return cls(modules, expected, manifest)

    def statistics(
        self, dataloader: Any, *, batch_adapter: AdapterLike | None = None
    ) -> ReferenceStatistics:
        """Per-example loss and logit-scaled confidence of every model on ``dataloader``.

        Args:
            dataloader: batches with sample ids in ``[0, N)`` (the training set, in any order;
                e.g. ``DataLoader(indexed_train_set, batch_size=512)``).
            batch_adapter: how to read a batch (default: ``(x, y, ...)`` or Hugging Face dicts;
                see :mod:`lightning_unlearn.evaluation.functional.adapters`).

        Returns:
            :class:`~lightning_unlearn.unlearning.reference_stats.ReferenceStatistics`.

        Raises:
            ReferenceModelsError: the loader's data set is not the one the models were trained
                on (its fingerprint differs from the manifest's): its ids would index other
                examples, e.g. positions in a ``Subset`` of the training set.
        """
        self._check_loader_data(dataloader)
        return compute_statistics(
            self.modules, self.in_mask, dataloader, batch_adapter=batch_adapter
        )

    def _check_loader_data(self, dataloader: Any) -> None:
        expected = self.manifest.get("fingerprint")
        dataset = getattr(dataloader, "dataset", None)
        if expected is None or dataset is None or not hasattr(dataset, "__getitem__"):
            return  # nothing to compare (an iterable data set, or a hand-made list of batches)
        try:
            got = dataset_fingerprint(dataset, int(self.manifest["num_samples"]))
        except (TypeError, IndexError, KeyError, NotImplementedError):
            return
        if got != expected:
            raise ReferenceModelsError(
                f"Expected the loader to read the reference models' training set (fingerprint "
                f"{expected}), but its data set ({type(dataset).__name__}) has fingerprint {got}; "
                "score the training set itself, in any order (e.g. `DataLoader(IndexedDataset("
                "train_set))`): the ids of another data set or of a `Subset` index other examples."
            )
