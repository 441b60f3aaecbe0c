"""Repository hygiene: CI runs the README's test command, the README's main job is the lab's VAE, and the
public API is exported."""

import re
from pathlib import Path

import gumbelkit

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^(python -m pip install .*)$", text, flags=re.M)


def test_ci_runs_readme_test_command():
    cmds = _readme_commands()
    test_cmds = [c for c in cmds if "pytest" in c]
    assert len(test_cmds) == 1
    assert test_cmds[0] in (ROOT / ".ci" / "run").read_text()
    for c in cmds:  # never an unpinned torch: that would pull GBs of CUDA wheels
        assert '"torch==2.13.0"' in c
    assert 'python -m pip install "torch==2.13.0" -e ".[all]" && python -m experiments vae --out runs/vae' in cmds
    for tool in ("ruff check", "ruff format --check"):  # the lab is linted like the library
        line = next(x for x in (ROOT / ".ci" / "run").read_text().splitlines() if f"python -m {tool}" in x)
        assert "experiments" in line and "benchmarks" in line


def test_public_api_matches_design():
    for name in [
        "gumbel_noise",
        "gumbel_max",
        "gumbel_topk",
        "gumbel_softmax",
        "tempered_softmax",
        "sample",
        "METHODS",
        "kl_categorical",
        "distributions",
        "schedules",
        "nn",
        "reinforce_surrogate",
    ]:
        assert name in gumbelkit.__all__ and hasattr(gumbelkit, name)
    for name in ["Concrete", "ExpConcrete", "BinaryConcrete"]:
        assert hasattr(gumbelkit.distributions, name)


def test_readme_usage_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    z = scope["z"]
    assert z.shape == (100, 20, 10) and bool(((z == 0) | (z == 1)).all())
    assert scope["idx"].shape == (100, 20, 3)
