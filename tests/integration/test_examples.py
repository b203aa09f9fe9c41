"""The example scripts run as a user would run them, and print numbers that an independent
computation reproduces."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Runs the example's `main()` in a fresh interpreter (as `python examples/unlearn_digits.py`
# does) and then recomputes, independently of the library's evaluators, what it printed: the
# forget set's loss-threshold MIA AUROC after unlearning (scikit-learn on per-example
# cross-entropies of a plain loop) and the THEORY §5 budget (written out with `math`).
_CHECK = r"""
import json, math, runpy, sys
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

main = runpy.run_path(sys.argv[1], run_name="example")["main"]
out = main()
model, frdm = out["unlearner"].module.eval(), out["frdm"]

def losses(ids):
    xs, ys = zip(*(frdm.dataset[int(i)][:2] for i in ids))
    with torch.no_grad():
        ys = torch.stack([torch.as_tensor(y) for y in ys]).long()
        return F.cross_entropy(model(torch.stack(xs)), ys, reduction="none")

forget = losses(frdm.forget_ids)
held = [frdm.heldout_set[i][:2] for i in range(len(frdm.heldout_set))]
with torch.no_grad():
    held = F.cross_entropy(
        model(torch.stack([x for x, _ in held])),
        torch.stack([torch.as_tensor(y) for _, y in held]).long(),
        reduction="none",
    )
labels = [1] * len(forget) + [0] * len(held)
auroc = roc_auc_score(labels, (-torch.cat([forget, held])).tolist())
p8 = out["monitor"].ledger.privacy_loss(8)
p_max = max(float(p8[int(i)]) for i in frdm.forget_ids)
c = lambda a: (a - 0.5) / (a - 1)
steps_per_nat = 2 * 0.5 / (1.0**2 * 0.05)  # alpha C_LSI / (sigma^2 eta) of the example
budget = max(0, math.ceil(steps_per_nat * math.log(c(2) * c(4) * p_max / 1.0)))
print("CHECK " + json.dumps({"auroc": auroc, "budget": budget, "got_budget": out["budget"]}))
"""


@pytest.mark.slow
def test_unlearn_digits_example_prints_what_an_independent_computation_gives() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHECK, str(EXAMPLES / "unlearn_digits.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    check = json.loads(out.split("CHECK ", 1)[1])
    budget = re.search(r"budget (\d+) steps, used (\d+) \((\w+)\)", out)
    assert budget is not None, out
    assert int(budget.group(1)) == check["budget"] == check["got_budget"]
    assert 0 <= int(budget.group(2)) <= int(budget.group(1))
    aurocs = [float(v) for v in re.findall(r"MIA AUROC ([0-9.]+)", out)]
    assert len(aurocs) == 2
    # printed with 3 decimals: within half a unit of the last digit of scikit-learn's value
    assert aurocs[1] == pytest.approx(check["auroc"], abs=5e-4 + 1e-9)
    assert aurocs[0] > aurocs[1]  # memorised before; the unlearned model hides them better
