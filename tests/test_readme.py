"""The README's Python examples run, and its optimizer table lists the whole registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from optimkit.registry import REGISTRY

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_blocks_run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_readme_lists_every_registered_optimizer():
    for spec in REGISTRY.values():
        assert f"| `{spec.cls.__name__}` |" in README, spec.cls.__name__


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make lab")
    assert first_block.splitlines()[1].startswith("make test")


def _row(name):
    for line in README.splitlines():
        if line.startswith(f"| `{name}` |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no README row for {name}")


def test_readme_agreement_column_says_what_the_declarations_say():
    """The optimizer table's oracle and agreement cells follow each class's declaration:
    "bit for bit" where its oracle is declared exact in every dtype, "and complex" only
    where it takes complex parameters, and the oracle's package named (SAM's oracle is
    pytorch-optimizer's, through a test adapter that computes its first gradient)."""
    for spec in REGISTRY.values():
        cells = _row(spec.cls.__name__)
        oracle, agreement = cells[2], cells[3]
        if spec.exact_everywhere:
            assert agreement.startswith("bit for bit"), (spec.name, agreement)
        else:
            assert not agreement.startswith("bit for bit"), (spec.name, agreement)
        assert ("and complex" in agreement) == (spec.complex and spec.oracle_cls is not None), (spec.name, agreement)
        if spec.oracle is not None and not spec.oracle.target.startswith("oracle_adapters:"):
            package = spec.oracle.target.split(":")[0].split(".")[0]
            assert f"`{spec.oracle_cls.__name__}" in oracle, (spec.name, oracle)
            assert package.replace("_", "-") in oracle.replace("_", "-"), (spec.name, oracle)
