"""The accounting core imports with lightning, pytorch_lightning and opacus unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lightning_unlearn

PACKAGE_DIR = Path(lightning_unlearn.__file__).parent

# Runs in a fresh interpreter, importing the real package: the top-level __init__ imports only
# errors and accounting eagerly and the Lightning-dependent names lazily (PEP 562), so both
# `import lightning_unlearn` and `import lightning_unlearn.accounting` must work with lightning,
# opacus and torchmetrics blocked. Any attempt to import a blocked module is recorded and fails.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("lightning", "pytorch_lightning", "opacus", "lightning_utilities", "torchmetrics")
    attempts = []

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]

    sys.path.insert(0, PACKAGE_PARENT)

    import torch
    import lightning_unlearn
    import lightning_unlearn.accounting as acc

    assert lightning_unlearn.PrivacyLedger is acc.PrivacyLedger

    ledger = acc.PrivacyLedger(3, alphas=(2, 8))
    norms = torch.tensor([0.5, 2.0], dtype=torch.float64)
    rdp = acc.per_step_rdp(acc.dpsgd_ratios(norms, 1.0, 1.0), 0.5, ledger.alphas)
    ledger.update(torch.tensor([0, 2]), rdp, norms)
    eps, _ = ledger.epsilon(1e-5)
    assert eps[2] > eps[0] > 0
    assert not attempts, attempts
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    own = sorted(m for m in sys.modules if m.startswith("lightning_unlearn."))
    print("OK", own)
    """
).replace("PACKAGE_PARENT", repr(str(PACKAGE_DIR.parent)))


def test_accounting_imports_without_lightning_or_opacus() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK")
    imported = result.stdout
    assert "lightning_unlearn.accounting.ledger" in imported
    # only the accounting subpackage and the shared errors module were needed
    for other in ("callbacks", "grad_norms", "unlearning", "evaluation", "data"):
        assert f"lightning_unlearn.{other}" not in imported


def test_blocker_really_blocks() -> None:
    """Guard against a vacuous pass: the same script with `import opacus` must fail."""
    script = SCRIPT.replace("import torch\n", "import torch\nimport opacus\n", 1)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "opacus is blocked" in result.stderr


def test_lazy_top_level_exports_resolve() -> None:
    """Every name in `__all__` resolves (the lazy ones import their module on first access)."""
    for name in lightning_unlearn.__all__:
        assert getattr(lightning_unlearn, name) is not None, name
    assert "PerInstancePrivacyMonitor" in dir(lightning_unlearn)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = lightning_unlearn.nope  # type: ignore[attr-defined]


# The evaluation functions are a base layer beside accounting (STYLE "Architecture"): importing
# and running them needs torch (and torchmetrics' functional helpers), never Lightning or Opacus.
# The same blocker, minus torchmetrics and its lightning_utilities (not Lightning).
_FUNCTIONAL_HEADER = SCRIPT.split("import torch\n", 1)[0].replace(
    ', "lightning_utilities", "torchmetrics"', ""
)
FUNCTIONAL_SCRIPT = _FUNCTIONAL_HEADER + (
    textwrap.dedent(
        """
        import torch
        from torch import nn
        import lightning_unlearn.evaluation.functional as F

        model = nn.Linear(3, 2)
        x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
        losses, ids, _ = F.per_example_losses(model, loader)
        expected = nn.functional.cross_entropy(model(x), y, reduction="none").detach()
        assert torch.equal(ids, torch.arange(4)), ids
        assert torch.allclose(losses, expected, rtol=1e-5, atol=1e-6), (losses, expected)
        assert 0.0 <= F.binary_auroc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) <= 1.0
        assert not attempts, attempts
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        # a base layer: nothing of the data package either (ids come from sample_ids)
        assert "lightning_unlearn.data" not in sys.modules, "evaluation.functional loaded data"
        print("OK")
        """
    )
)


def test_evaluation_functional_imports_without_lightning_or_opacus() -> None:
    assert "opacus" in FUNCTIONAL_SCRIPT
    assert "torchmetrics" not in FUNCTIONAL_SCRIPT
    result = subprocess.run(
        [sys.executable, "-c", FUNCTIONAL_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK")


def test_functional_blocker_really_blocks() -> None:
    """The evaluation script fails when it imports Lightning."""
    script = FUNCTIONAL_SCRIPT.replace("from torch import nn\n", "import lightning\n", 1)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "lightning is blocked" in result.stderr
