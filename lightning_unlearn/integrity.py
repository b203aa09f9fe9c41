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
- :func:`write_checksum` / :func:`verify_checksum`: a ``<file>.sha256`` sidecar (the
  ``sha256sum`` format) for files such as checkpoints. ``torch.load`` does not check the zip
  CRC, so without it flipped data bytes load as silently wrong weights.

The hashes detect accidents (flipped bytes, truncation, a file from another run); anyone who can
write the file can also rewrite its checksum, so they are no defence against a forger.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from lightning_unlearn.errors import IntegrityError

__all__ = [
    "architecture_fingerprint",
    "atomic_write",
    "file_sha256",
    "json_sha256",
    "remove_stale_temporaries",
    "tensors_sha256",
    "verify_checksum",
    "write_checksum",
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


def _sidecar(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def write_checksum(path: str | os.PathLike[str]) -> Path:
    """Write ``<path>.sha256`` (``sha256sum`` format) for an existing file; returns the sidecar."""
    p = Path(path)
    side = _sidecar(p)
    with atomic_write(side, "w") as fh:
        fh.write(f"{file_sha256(p)}  {p.name}\n")
    return side


def verify_checksum(path: str | os.PathLike[str], *, required: bool = True) -> str | None:
    """Check a file against its ``<path>.sha256`` sidecar.

    Args:
        path: the file.
        required: a missing sidecar is an error (True) or skipped (False, returns None).

    Returns:
        The verified digest (None when the sidecar is missing and not required).

    Raises:
        IntegrityError: the digest differs (the file is corrupt or was replaced), or the sidecar
            is missing although required, or malformed.
    """
    p = Path(path)
    side = _sidecar(p)
    if not side.is_file():
        if not required:
            return None
        raise IntegrityError(
            f"The checksum file {str(side)!r} of {str(p)!r} is missing, so the file cannot be "
            "verified; re-create the file with this version of lightning_unlearn (or, if you "
            f"trust it, write the sidecar with `sha256sum {p.name} > {side.name}`)."
        )
    fields = side.read_text().split()
    if not fields or not re.fullmatch(r"[0-9a-f]{64}", fields[0]):
        raise IntegrityError(f"The checksum file {str(side)!r} is malformed; expected sha256sum.")
    actual = file_sha256(p)
    if actual != fields[0]:
        raise IntegrityError(
            f"{str(p)!r} does not match its checksum {side.name} (SHA-256 {actual[:12]}... "
            f"instead of {fields[0][:12]}...): the file is corrupt or was changed after it was "
            "written. Restore it from a good copy or re-create it."
        )
    return actual
