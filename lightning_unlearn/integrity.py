"""Files that are either complete or absent, and hashes that tell a file from a corrupted one.

Pure (torch, numpy and the standard library only), so the accounting core can use it.

- :func:`atomic_write`: write to a temporary file in the target's directory, then ``os.replace``
  it over the target; on an exception the temporary is removed and the previous file is intact.
  A process killed mid-write (``kill -9``) cannot clean up, so every temporary carries its
  writer's process id and the next write into the same directory removes temporaries of
  processes that no longer run (:func:`remove_stale_temporaries`). New files get mode
  ``0o666 & ~umask`` (0644 under the usual umask 022), like ``open(path, "w")``.
- :func:`tensors_sha256`: SHA-256 of named tensors in a canonical order (names sorted; dtype,
  shape and the little-endian bytes of each), e.g. a model's ``state_dict``: the "model hash"
  of an audit record. Independent of the device and of the file format.
- :func:`architecture_fingerprint`: a hash of the parameter and buffer names, shapes and dtypes
  only: it identifies an architecture, not a set of weights.
- :func:`nested_sha256`: SHA-256 of a nested checkpoint dict (tensors and plain values), which
  checkpoints written by the command line embed and verify on load. ``torch.load`` does not
  check the zip CRC, so without it flipped data bytes load as silently wrong weights.

The hashes detect accidents (flipped bytes, truncation, a file from another run); anyone who can
write the file can also rewrite its checksum, so they are no defence against a forger.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from lightning_unlearn.errors import CheckpointError, IntegrityError, InvalidArgumentError

__all__ = [
    "CHECKSUM_KEY",
    "architecture_fingerprint",
    "atomic_write",
    "check_output_dir",
    "file_sha256",
    "json_sha256",
    "load_verified",
    "nested_sha256",
    "remove_stale_temporaries",
    "save_verified",
    "tensors_sha256",
    "write_json",
]

_TMP_SUFFIX = ".tmp"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.pid(?P<pid>\d+)\.[^.]+\.tmp$")


def _new_file_mode() -> int:
    """``0o666`` minus the process umask (what ``open(path, "w")`` would give)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries left in ``directory`` by :func:`atomic_write` calls of dead processes.

    Only names of the form ``.<target>.pid<N>.<random>.tmp`` whose process ``N`` no longer runs
    are removed; temporaries of live writers are left alone.

    Args:
        directory: the directory to clean.

    Returns:
        The removed paths.
    """
    removed: list[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        match = _TMP_RE.match(entry.name)
        if match and not _pid_alive(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    Args:
        path: the target file (its parent directories are created).
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).
        newline: passed to ``open`` in text mode.

    Yields:
        The open temporary file.

    Raises:
        ValueError: ``mode`` is not a write mode.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_write(target, "w") as fh:
        ...     _ = fh.write("done")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('done', ['a.txt'])
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"Expected `mode` to be 'wb' or 'w', but got {mode!r}.")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.pid{os.getpid()}.", suffix=_TMP_SUFFIX
    )
    try:
        os.fchmod(fd, _new_file_mode())
        kwargs: dict[str, Any] = {} if mode == "wb" else {"encoding": "utf-8", "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_json(path: str | os.PathLike[str], data: Any, **dumps: Any) -> Path:
    """Write ``json.dumps(data, **dumps)`` to ``path`` atomically; returns the path."""
    text = json.dumps(data, **dumps)
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(data: Any) -> str:
    """SHA-256 of ``data``'s canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _update_tensor(digest: Any, name: str, tensor: Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    header = f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode()
    digest.update(len(header).to_bytes(8, "little") + header)
    # Raw bytes in the machine's (little-endian) order; bfloat16 and friends via a byte view.
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    digest.update(raw.numpy().tobytes())


def tensors_sha256(
    tensors: Mapping[str, Tensor] | nn.Module | Iterable[tuple[str, Tensor]],
) -> str:
    """SHA-256 of named tensors in canonical order: the hash of a model's weights.

    Names are sorted; each tensor contributes its name, dtype, shape and bytes, so a renamed,
    reshaped, re-typed or changed tensor changes the hash, and the device does not.

    Args:
        tensors: a ``state_dict``, a module (its ``state_dict()``), or ``(name, tensor)`` pairs.

    Returns:
        64 hexadecimal characters.

    Example:
        >>> a = {"w": torch.ones(2), "b": torch.zeros(1)}
        >>> tensors_sha256(a) == tensors_sha256({"b": torch.zeros(1), "w": torch.ones(2)})
        True
        >>> tensors_sha256(a) == tensors_sha256({"w": torch.ones(2), "b": torch.ones(1)})
        False
    """
    if isinstance(tensors, nn.Module):
        items = list(tensors.state_dict().items())
    elif isinstance(tensors, Mapping):
        items = list(tensors.items())
    else:
        items = list(tensors)
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        _update_tensor(digest, name, tensor)
    return digest.hexdigest()


def _update_nested(digest: Any, item: Any) -> None:
    if isinstance(item, Tensor):
        digest.update(b"T")
        _update_tensor(digest, "", item)
    elif isinstance(item, Mapping):
        digest.update(f"D{len(item)}\0".encode())
        for key in sorted(item, key=lambda k: (type(k).__name__, str(k))):
            digest.update(f"{type(key).__name__}:{key!s}\0".encode())
            _update_nested(digest, item[key])
    elif isinstance(item, list | tuple):
        digest.update(f"{'L' if isinstance(item, list) else 'U'}{len(item)}\0".encode())
        for x in item:
            _update_nested(digest, x)
    elif item is None or isinstance(item, bool | int | float | str | bytes):
        digest.update(f"{type(item).__name__}:{item!r}\0".encode())
    else:  # torch.dtype, torch.Size, ...: what weights_only loading admits
        digest.update(f"{type(item).__name__}:{item!r}\0".encode())


def nested_sha256(obj: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tuples, tensors and plain values.

    Keys are visited in sorted order and every value contributes its type, so the digest of
    a checkpoint loaded back equals the digest of the object that was saved.

    Example:
        >>> a = {"state_dict": {"w": torch.ones(2)}, "epoch": 3}
        >>> nested_sha256(a) == nested_sha256({"epoch": 3, "state_dict": {"w": torch.ones(2)}})
        True
        >>> nested_sha256(a) == nested_sha256({"state_dict": {"w": torch.ones(2)}, "epoch": 4})
        False
    """
    digest = hashlib.sha256()
    _update_nested(digest, obj)
    return digest.hexdigest()


def architecture_fingerprint(model: nn.Module | Mapping[str, Tensor]) -> str:
    """A hash of the names, shapes and dtypes of a model's ``state_dict`` (not its values).

    Two models of the same class and configuration agree; another layer size, another layer or
    another dtype does not.

    Args:
        model: a module or a ``state_dict``.

    Returns:
        16 hexadecimal characters.

    Example:
        >>> architecture_fingerprint(nn.Linear(3, 2)) == architecture_fingerprint(nn.Linear(3, 2))
        True
        >>> architecture_fingerprint(nn.Linear(3, 2)) == architecture_fingerprint(nn.Linear(4, 2))
        False
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    spec = [[k, str(v.dtype), list(v.shape)] for k, v in sorted(state.items())]
    return json_sha256(spec)[:16]


CHECKSUM_KEY = "lightning_unlearn_sha256"


def save_verified(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``checkpoint`` plus its embedded checksum, atomically; returns the path."""
    body = {k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}
    data = {**body, CHECKSUM_KEY: nested_sha256(body)}
    with atomic_write(path) as fh:
        torch.save(data, fh)
    return Path(path)


def load_verified(
    path: str | os.PathLike[str],
    what: str = "checkpoint",
    hint: str = "",
    *,
    expect_key: str | None = None,
) -> Any:
    """Load a checkpoint written by :func:`save_verified` and check its embedded checksum.

    Args:
        path: the file.
        what: how the file is named in messages.
        hint: what to do instead, appended to messages.
        expect_key: an entry every checkpoint of this kind has; a file lacking both it and a
            checksum is reported as a file of another kind rather than as a corrupt one.

    Returns:
        The checkpoint dict, without the checksum entry.

    Raises:
        CheckpointError: the file is missing or cannot be read safely.
        IntegrityError: the checksum is missing or differs (corrupt or altered file).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"The {what} file {str(p)!r} does not exist; {hint}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Expected {str(p)!r} to be a {what} saved with torch.save, but it could not be "
            f"read safely ({first}); it is corrupt, truncated or of another kind. {hint}"
        ) from None
    except Exception as err:  # damaged archives raise assorted errors from the unpickler
        raise CheckpointError(
            f"{str(p)!r} could not be read ({type(err).__name__}: {err}); the {what} is "
            f"corrupt or truncated. {hint}"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"Expected {str(p)!r} to hold a {what} dict; {hint}")
    saved = data.pop(CHECKSUM_KEY, None)
    if saved is None and expect_key is not None and expect_key not in data:
        raise CheckpointError(
            f"Expected {str(p)!r} to be a lightning-unlearn model {what} (with a "
            f"{expect_key!r} entry), but it is not; {hint}"
        )
    if saved is None:
        raise IntegrityError(
            f"The {what} {str(p)!r} carries no {CHECKSUM_KEY!r} entry, so it cannot be "
            f"verified: it was not written by this version of lightning-unlearn. {hint}"
        )
    actual = nested_sha256(data)
    if saved != actual:
        raise IntegrityError(
            f"The {what} {str(p)!r} does not match its embedded checksum (SHA-256 "
            f"{actual[:12]}... instead of {str(saved)[:12]}...): it is corrupt or was changed "
            f"after it was written. Restore it from a good copy or re-create it. {hint}"
        )
    return data


def check_output_dir(path: Any, name: str = "output_dir") -> Path:
    """Check that ``path`` is, or can be created as, a writable directory (nothing is created;
    a missing directory is judged by its nearest existing ancestor).

    Raises:
        InvalidArgumentError: it is a file, lies under a file, or is not writable.
    """
    out = Path(str(path))
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(
            f"Expected `{name}` to be a directory, but {str(out)!r} is a file; pass a directory."
        )
    probe = out.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidArgumentError(
            f"Expected `{name}` {str(out)!r} to be creatable as a directory, but {str(probe)!r} "
            "is a file; choose another directory."
        )
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise InvalidArgumentError(
            f"Expected `{name}` {str(out)!r} to be a writable directory, but {str(probe)!r} is "
            f"not writable ({err.strerror or err}); choose another directory or fix its "
            "permissions."
        ) from None
    return out
