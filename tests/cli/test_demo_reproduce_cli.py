"""`lightning-unlearn demo` / `reproduce`: the options are the typed functions' parameters.

The commands only parse; the experiments are tested in tests/experiments/. Here: the options
and their defaults are exactly the functions' (they cannot drift apart), `--print_config`
prints a YAML that `--config` accepts, the example configs reach their options, and bad values
exit with status 2 and a message naming the option, before any work starts.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from lightning_unlearn.cli import main
from lightning_unlearn.cli._typed import function_parser
from lightning_unlearn.experiments import run_demo, run_reproduce

CONFIGS = Path(__file__).parents[2] / "examples" / "configs"
COMMANDS = {"demo": run_demo, "reproduce": run_reproduce}


def _parser(command: str):  # type: ignore[no-untyped-def]
    return function_parser(COMMANDS[command], prog=f"lightning-unlearn {command}")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_options_are_the_function_parameters(command: str) -> None:
    signature = inspect.signature(COMMANDS[command])
    defaults = _parser(command).get_defaults().as_dict()
    expected = {k: p.default for k, p in signature.parameters.items() if k != "command"}
    expected["output_dir"] = None  # no Python default; the command's wrapper gives one
    assert {k: v for k, v in defaults.items() if k not in ("config", "threads")} == expected


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_print_config_round_trips_through_config(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--epochs", "3", "--methods", "[sgld]", "--print_config"]) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert values["epochs"] == 3
    assert values["methods"] == ["sgld"]
    assert values["output_dir"] == f"outputs/{command}"
    config = tmp_path / "config.yaml"
    config.write_text(printed)
    assert main([command, "--config", str(config), "--print_config"]) == 0
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_example_config_reaches_every_option(command: str) -> None:
    path = CONFIGS / f"{command}.yaml"
    parsed = _parser(command).parse_args(["--config", str(path)]).as_dict()
    for key, value in yaml.safe_load(path.read_text()).items():
        assert parsed[key] == value, key


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--epochs", "2.5"], 'Parser key "epochs"'),  # a type error: jsonargparse
        (["demo", "--methods", "[forget_harder]"], 'Parser key "methods"'),
        (["demo", "--epochs", "0"], "Expected `epochs` to be an integer >= 1, but got 0"),
        (["demo", "--hold", "-1"], "Expected `hold` to be an integer >= 0"),
        (["demo", "--reference_k", "5"], "Expected `reference_k` to be even"),
        (["demo", "--threads", "-1"], "Expected `threads` to be an integer >= 0"),
        (["reproduce", "--scale", "0"], "Expected `scale` to be a finite number > 0.0"),
        (["reproduce", "--early_epoch", "0"], "Expected `early_epoch` to be an integer >= 1"),
        (["demo", "--output-dir", "x"], "unrecognized arguments: --output-dir"),
    ],
)
def test_bad_values_exit_2_naming_the_option(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    assert main([*argv, "--output_dir", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before any work


def test_unknown_config_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: 2\nforget-size: 3\n")
    assert main(["demo", "--config", str(config)]) == 2
    assert "forget-size" in capsys.readouterr().err
