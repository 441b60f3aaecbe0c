"""gumbelkit.decoding.sample_tokens: the law, the filters' semantics, reproducibility, bad input.

Statistical tests use fixed seeds, so each outcome is deterministic; the stated false-failure
rate is the probability, over seeds, that a correct sampler fails the test. Chi-square tests pool
the categories expected fewer than 5 times into one and fail at p < 1e-4; the tail test is a
two-sided binomial test at level 1e-6.

The reference law is written here from the filters' definitions, in float64, and checked against
``transformers``' own warpers on untied logits.
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch
from scipy import stats

import gumbelkit as gk
from gumbelkit.decoding import _params as dparams
from gumbelkit.decoding import _torch as dtorch
from gumbelkit.decoding._counter import gumbel_at, gumbel_range
from gumbelkit.kernels._philox import counter_gumbel

sample_tokens = gk.decoding.sample_tokens
P_MIN = 1e-4  # chi-square level: a correct sampler fails a test with probability 1e-4


# --------------------------------------------------------------------------- the reference law


def reference_probs(x: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """The filtered, tempered softmax of one row, float64, from the definitions."""
    x = x.double()
    if temperature == 0:
        out = torch.zeros_like(x)
        out[int(torch.argmax(x))] = 1.0  # torch.argmax: the first maximal index
        return out
    y = (x - x.max()) / temperature
    keep = torch.isfinite(y)
    if top_k:
        keep &= y >= y.sort(descending=True).values[top_k - 1]
    if top_p < 1:
        e = torch.where(keep, y.exp(), 0.0)
        # F(v): the mass of the tokens strictly above v (ties: the first of the group); kept when F < p Z
        ys, order = torch.where(keep, y, -math.inf).sort(descending=True, stable=True)
        es = e[order]
        before = es.cumsum(0) - es
        _, inverse, counts = torch.unique_consecutive(ys, return_inverse=True, return_counts=True)
        first = counts.cumsum(0) - counts
        above = torch.empty_like(before)
        above[order] = before[first[inverse]]
        keep &= above < top_p * e.sum()
    if min_p > 0:
        keep &= y >= math.log(min_p)
    return torch.softmax(torch.where(keep, y, -math.inf), 0)


def transformers_probs(x: torch.Tensor, temperature, top_k, top_p, min_p) -> torch.Tensor:
    tr = pytest.importorskip("transformers.generation.logits_process")
    s = x.double()[None] / temperature
    if top_k:
        s = tr.TopKLogitsWarper(top_k)(None, s)
    if top_p < 1:
        s = tr.TopPLogitsWarper(top_p)(None, s)
    if min_p > 0:
        s = tr.MinPLogitsWarper(min_p)(None, s)
    return torch.softmax(s, -1)[0]


def chi_square_p(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of the counts of ``tokens`` against ``probs``; filtered tokens must never appear."""
    counts = np.bincount(tokens.numpy(), minlength=probs.numel()).astype(float)
    p = probs.numpy()
    assert counts[p == 0].sum() == 0, f"drew a filtered token: {np.nonzero(counts * (p == 0))[0][:5]}"
    exp = p * counts.sum()
    big = exp >= 5
    obs, ex = list(counts[big]), list(exp[big])
    if exp[~big].sum() > 0:
        obs.append(counts[~big].sum())
        ex.append(exp[~big].sum())
    if len(obs) < 2:
        return 1.0
    return float(stats.chisquare(obs, ex).pvalue)


def draws(row: torch.Tensor, n: int, seed0: int = 0, **kw) -> torch.Tensor:
    """n draws for one row: n copies with seeds seed0 .. seed0 + n - 1."""
    seeds = torch.arange(seed0, seed0 + n)
    return sample_tokens(row.expand(n, -1).contiguous(), seeds=seeds, **kw)


def _zipf_row(V: int, seed: int, s: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = -s * torch.arange(1, V + 1, dtype=torch.float64).log()
    return (base[torch.randperm(V, generator=g)] + 0.1 * torch.randn(V, generator=g, dtype=torch.float64)).float()


def _flat_row(V: int, seed: int) -> torch.Tensor:
    return torch.randn(V, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_law_is_transformers_warpers(seed):
    x = torch.randn(300, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    for T, k, p, mp in [(1.0, 20, 1.0, 0.0), (0.7, 0, 0.8, 0.0), (1.3, 50, 0.9, 0.05), (1.0, 0, 1.0, 0.1)]:
        ours = reference_probs(x, T, k, p, mp)
        theirs = transformers_probs(x, T, k, p, mp)
        assert torch.equal(ours > 0, theirs > 0), (T, k, p, mp)
        torch.testing.assert_close(ours, theirs)


# --------------------------------------------------------------------------- the sampled law

V_LAW = 3000  # 12 blocks, a ragged last block, 187 window groups of 16 and 8 of one
N_LAW = 6000


@pytest.fixture(autouse=True, scope="module")
def _one_thread(_triton_process):
    # the draws are many small ops: one thread is faster and steadier on a shared machine (and
    # leaves a core to the interpreted Triton run started by _triton_process)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LAW_CASES = {
    # name: (row, kwargs) -- the comments say which code path the case exercises
    "plain_peaked": ("zipf", {}),  # whole-row draw, pruned blocks
    "plain_flat_tempered": ("flat", {"temperature": 0.6}),  # whole-row draw, many close blocks
    "top_k": ("flat", {"top_k": 40, "temperature": 0.8}),  # window
    "top_k_large": ("zipf", {"top_k": 200}),  # a 256-token window
    "top_p_peaked": ("zipf", {"top_p": 0.9}),  # nucleus inside the window
    "top_p_flat": ("flat", {"top_p": 0.9, "temperature": 0.5}),  # ~700 tokens: bins, whole-row draw
    "min_p_flat": ("flat", {"min_p": 0.05}),  # ~1000 tokens: threshold known, whole-row draw
    "all_filters": ("zipf", {"top_k": 60, "top_p": 0.8, "min_p": 0.01, "temperature": 1.2}),
    "top_k_then_top_p_flat": ("flat", {"top_k": 500, "top_p": 0.5}),  # a 512-token window
}


@pytest.mark.parametrize("case", list(LAW_CASES))
def test_sampled_law_is_the_filtered_softmax(case):
    kind, kw = LAW_CASES[case]
    row = _zipf_row(V_LAW, 11) if kind == "zipf" else _flat_row(V_LAW, 12)
    tokens = draws(row, N_LAW, seed0=1000 * len(case), **kw)
    probs = reference_probs(
        row, kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0), kw.get("min_p", 0.0)
    )
    p = chi_square_p(tokens, probs)
    assert p > P_MIN, f"{case}: chi-square p = {p:.3g}"


def test_ties_are_kept_at_every_boundary():
    # bfloat16 logits on a coarse grid: many exact ties at the top-k and top-p boundaries
    g = torch.Generator().manual_seed(5)
    row = (torch.randint(-12, 1, (V_LAW,), generator=g).float() * 0.5).bfloat16()
    for kw in ({"top_k": 10}, {"top_p": 0.3}, {"min_p": 0.2}):
        tokens = draws(row, 4000, seed0=77, **kw)
        probs = reference_probs(row.float(), 1.0, kw.get("top_k", 0), kw.get("top_p", 1.0), kw.get("min_p", 0.0))
        assert (probs > 0).sum() > kw.get("top_k", 1)  # the tie really reaches past the boundary
        p = chi_square_p(tokens, probs)
        assert p > P_MIN, f"{kw}: chi-square p = {p:.3g}"


def test_per_row_parameters_mixed_in_one_batch():
    rows = torch.stack([_zipf_row(V_LAW, 21), _flat_row(V_LAW, 22), _zipf_row(V_LAW, 23), _flat_row(V_LAW, 24)])
    rows[2, :2000] = -math.inf  # masked tokens are never drawn
    params = dict(
        temperature=torch.tensor([1.0, 0.5, 2.0, 0.0]),
        top_k=torch.tensor([0, 30, 100, 5]),
        top_p=torch.tensor([0.85, 1.0, 0.95, 0.5]),
        min_p=torch.tensor([0.0, 0.0, 0.02, 0.0]),
    )
    n = 2500
    batch = rows.repeat(n, 1)
    rep = {k: v.repeat(n) for k, v in params.items()}
    tokens = sample_tokens(batch, seeds=torch.arange(4 * n), **rep).view(n, 4)
    for r in range(4):
        probs = reference_probs(rows[r], *(float(params[k][r]) for k in ("temperature",)), int(params["top_k"][r]),
                                float(params["top_p"][r]), float(params["min_p"][r]))  # fmt: skip
        p = chi_square_p(tokens[:, r], probs)
        assert p > P_MIN, f"row {r}: chi-square p = {p:.3g}"


def test_float64_logits():
    row = _zipf_row(V_LAW, 31).double()
    tokens = draws(row, N_LAW, seed0=5, top_p=0.95, temperature=0.9)
    p = chi_square_p(tokens, reference_probs(row, 0.9, 0, 0.95))
    assert p > P_MIN, f"chi-square p = {p:.3g}"


def test_a_class_19_nats_below_the_top_of_a_65536_way_softmax():
    # One class at 0 and 65,535 at -19: the low classes together have probability 3.67e-4, 14.7
    # of 40,000 draws; a sampler whose noise stops near 16.6 draws them essentially never.
    V, gap, n, rows = 65_536, 19.0, 40_000, 500
    q = (V - 1) * math.exp(-gap) / (1 + (V - 1) * math.exp(-gap))
    x = torch.full((rows, V), -gap)
    x[:, 0] = 0.0
    low = sum(int((sample_tokens(x, seeds=torch.arange(s, s + rows)) != 0).sum()) for s in range(0, n, rows))
    p = stats.binomtest(low, n, q).pvalue
    assert p > 1e-6, f"low classes won {low} of {n} draws, expected {n * q:.1f} (p = {p:.2g})"


# --------------------------------------------------------------------------- noise and reproducibility


def test_counter_noise_is_the_reference_mapping_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    keys = torch.randint(-(2**31), 2**31, (16, 4), dtype=torch.int32, generator=g)
    keys[0] = torch.tensor([-1, -(2**31), 2**31 - 1, 0], dtype=torch.int32)
    index = torch.randint(0, 2**34, (16, 50), generator=g)
    start = torch.randint(0, 2**33, (16,), generator=g) * 2
    for dt in (torch.float32, torch.float64):
        assert torch.equal(gumbel_at(keys, index, dt), counter_gumbel(keys.unsqueeze(1), index, dt))
        ref = counter_gumbel(keys.unsqueeze(1), start.unsqueeze(1) + torch.arange(64), dt)
        assert torch.equal(gumbel_range(keys, start, 64, dt), ref)


def _mixed_batch(B=12, V=5000):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(B, V, generator=g) * torch.linspace(0.5, 4.0, B).unsqueeze(1)
    kw = dict(
        temperature=torch.linspace(0.0, 1.5, B),
        top_k=torch.tensor([0, 5, 300, 0] * (B // 4)),
        top_p=torch.tensor([1.0, 0.9, 0.7, 0.95] * (B // 4)),
        min_p=torch.tensor([0.0, 0.0, 0.0, 0.05] * (B // 4)),
        seeds=torch.randint(-(2**63), 2**63 - 1, (B,), generator=g),
        offsets=torch.arange(B) * 7,
    )
    return x, kw


def test_a_request_gets_the_same_token_whatever_the_batch():
    x, kw = _mixed_batch()
    B = x.shape[0]
    ref, lp = sample_tokens(x, return_logprobs=True, **kw)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(1))
    got, lp2 = sample_tokens(x[perm], return_logprobs=True, **{k: v[perm] for k, v in kw.items()})
    assert torch.equal(got, ref[perm]) and torch.equal(lp2, lp[perm])
    for r in range(B):  # alone, and next to other rows
        one = sample_tokens(x[r : r + 1], **{k: v[r : r + 1] for k, v in kw.items()})
        assert torch.equal(one, ref[r : r + 1])
    other = torch.randn(3, x.shape[1])
    both = torch.cat([other, x[:4]])
    kw4 = {k: torch.cat([v[4:7], v[:4]]) for k, v in kw.items()}
    assert torch.equal(sample_tokens(both, **kw4)[3:], ref[:4])
    # the offset is a stream: another step gives other tokens
    kw_next = dict(kw, offsets=kw["offsets"] + 1)
    assert not torch.equal(sample_tokens(x, **kw_next), ref)


def test_logits_are_never_written():
    x = torch.stack([_flat_row(V_LAW, 51), _zipf_row(V_LAW, 52)])
    for dt in (torch.float32, torch.bfloat16):
        for kw in ({}, {"top_p": 0.9}, {"top_k": 300, "top_p": 0.6}, {"min_p": 0.01}, {"temperature": 0.0}):
            xi = x.to(dt)
            before = xi.clone()
            sample_tokens(xi, seeds=torch.arange(2), return_logprobs=True, **kw)
            sample_tokens(xi[1:], seeds=1, **kw)  # a single row: views of it are used
            assert torch.equal(xi, before), (dt, kw)


def test_thread_count_does_not_change_the_tokens():
    x, kw = _mixed_batch(B=4, V=70_000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sample_tokens(x, **kw)
        torch.set_num_threads(2)
        two = sample_tokens(x, **kw)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_generator_reproducible_and_global_rng_untouched():
    x = torch.randn(6, 1000)
    state = torch.get_rng_state()
    a = sample_tokens(x, top_p=0.9, generator=torch.Generator().manual_seed(4))
    b = sample_tokens(x, top_p=0.9, generator=torch.Generator().manual_seed(4))
    sample_tokens(x, seeds=3, offsets=torch.arange(6))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    # without either, the default generator is used
    torch.manual_seed(9)
    c = sample_tokens(x, top_p=0.9)
    torch.manual_seed(9)
    assert torch.equal(sample_tokens(x, top_p=0.9), c)


def test_greedy_rows():
    x = torch.randn(5, 700)
    x[1, 10] = x[1, 600] = 50.0  # a tie: the lowest id wins
    x[2, 699] = 60.0
    x[3, :] = -math.inf
    x[3, 333] = 1.0
    t = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    tok, lp = sample_tokens(x, temperature=t, top_k=3, return_logprobs=True, seeds=torch.arange(5))
    assert tok[:4].tolist() == [int(x[0].argmax()), 10, 699, 333]
    assert lp[:4].tolist() == [0.0] * 4
    assert torch.equal(
        sample_tokens(x, temperature=0.0), torch.tensor([int(x[0].argmax()), 10, 699, 333, int(x[4].argmax())])
    )


def test_logprobs_match_float64():
    x, kw = _mixed_batch(B=8, V=3000)
    kw["temperature"] = kw["temperature"].clamp(min=0.3)
    tok, lp = sample_tokens(x, return_logprobs=True, **kw)
    for r in range(8):
        ref = reference_probs(x[r], float(kw["temperature"][r]), int(kw["top_k"][r]), float(kw["top_p"][r]),
                              float(kw["min_p"][r]))  # fmt: skip
        assert ref[tok[r]] > 0
        assert abs(float(lp[r]) - math.log(float(ref[tok[r]]))) < 1e-4
    assert lp.dtype == torch.float32


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"temperature": -0.5}, "temperature >= 0"),
        ({"temperature": math.nan}, "temperature >= 0"),
        ({"temperature": math.inf}, "temperature >= 0"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_p": 0.0}, r"top_p in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p in \(0, 1\]"),
        ({"min_p": 1.0}, r"min_p in \[0, 1\)"),
        ({"min_p": -0.1}, r"min_p in \[0, 1\)"),
        ({"temperature": torch.tensor([1.0, -1.0])}, "temperature >= 0.*row 1"),
        ({"top_k": torch.tensor([1, -3])}, "top_k >= 0.*row 1"),
        ({"top_p": torch.tensor([0.5, 2.0])}, r"top_p in \(0, 1\].*row 1"),
        ({"top_k": torch.tensor([1.0, 2.0])}, "integer dtype"),
        ({"top_p": torch.tensor([0.5, 0.5, 0.5])}, r"shape \(2,\)"),
        ({"offsets": 3}, "seeds with offsets"),
        ({"seeds": 1, "generator": torch.Generator()}, "either seeds"),
        ({"seeds": 2.5}, "seeds"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kw, match):
    with pytest.raises(gk.GumbelkitError, match=match):
        sample_tokens(torch.zeros(2, 10), **kw)


def test_bad_logits_raise():
    with pytest.raises(gk.GumbelkitTypeError, match="floating dtype"):
        sample_tokens(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(gk.GumbelkitDimError, match=r"shape \(B, V\)"):
        sample_tokens(torch.zeros(3))
    for value, what in [(math.nan, "NaN in row 1"), (math.inf, r"\+inf in row 1")]:
        x = torch.zeros(3, 10)
        x[1, 4] = value
        with pytest.raises(gk.GumbelkitValueError, match=what):
            sample_tokens(x)
    x = torch.zeros(3, 10)
    x[2] = -math.inf
    with pytest.raises(gk.GumbelkitValueError, match="no finite entry.*row 2"):
        sample_tokens(x, temperature=0.0)


def test_device_mode_returns_minus_one_for_bad_rows():
    with gk.validation("device"):
        _device_mode_rows()


def _device_mode_rows():
    x = torch.randn(5, 600)
    x[1, 7] = math.nan
    x[3] = -math.inf
    kw = dict(seeds=torch.arange(5), top_p=torch.tensor([0.9, 0.9, 0.9, 0.9, 1.7]))
    tok, lp = sample_tokens(x, return_logprobs=True, **kw)
    assert tok[[1, 3, 4]].tolist() == [-1, -1, -1]
    assert torch.isnan(lp[[1, 3, 4]]).all()
    good = [0, 2]
    assert torch.equal(tok[good], sample_tokens(x[good], seeds=torch.tensor(good), top_p=0.9))


def test_empty_batch_and_tiny_vocabularies():
    assert sample_tokens(torch.zeros(0, 5)).shape == (0,)
    assert sample_tokens(torch.zeros(4, 1), seeds=torch.arange(4)).tolist() == [0, 0, 0, 0]
    x = torch.tensor([[0.0, math.log(3.0)]])
    tokens = draws(x[0], 8000, top_k=2)
    assert chi_square_p(tokens, torch.tensor([0.25, 0.75], dtype=torch.float64)) > P_MIN


# --------------------------------------------------------------------------- Triton, interpreted
#
# triton.jit reads TRITON_INTERPRET when it decorates, including Triton's own library functions
# (tl.zeros, tl.argmax, ...), which are built when triton.language is first imported -- possibly
# by torch, before any test runs. So the kernels run in a fresh process started with the
# interpreter on; it reads the cases from a file and writes the kernels' outputs next to it.

_TRITON_SCRIPT = """
import sys, torch
from gumbelkit.decoding._params import RowParams
from gumbelkit.decoding import _triton as td
cases = torch.load(sys.argv[1])
out = {"words": td.counter_words_and_exponential(cases["keys"], cases["index"]), "draws": []}
for c in cases["draws"]:
    rp = RowParams(**c["rp"])
    out["draws"].append(td.sample_rows_triton(c["x"], rp, c["keys"], True, window=c["window"]))
torch.save(out, sys.argv[2])
"""

_MIXED = {"top_k": torch.tensor([0, 3, 200, 1]), "top_p": torch.tensor([0.9, 1.0, 0.99, 0.3])}
TRITON_CASES = [  # (filters, window): a window of 8 leaves most thresholds to the kernel's search
    ({}, 128),
    ({"top_k": 7}, 8),
    ({"top_p": 0.8}, 8),
    ({"top_p": 0.95, "temperature": 0.5}, 128),
    ({"min_p": 0.2}, 128),
    ({"top_k": 40, "top_p": 0.9, "min_p": 0.01}, 128),
    ({"temperature": 0.0}, 128),
    (_MIXED, 8),
    (_MIXED, 128),
]


def _triton_inputs():
    B, V = 4, 700
    g = torch.Generator().manual_seed(6)
    x = torch.randn(B, V, generator=g) * torch.linspace(0.5, 3.0, B).unsqueeze(1)
    x[2, 300:] = -math.inf
    draws_ = []
    keys = dparams.row_keys(x, torch.arange(B) + 100, None, None)
    for kw, window in TRITON_CASES:
        rp = dparams.row_params(
            x, kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p"), kw.get("min_p"), "device"
        )
        draws_.append({"x": x, "rp": vars(rp), "keys": keys, "window": window})
    bad = torch.randn(4, 300, generator=g)
    bad[1, 3], bad[3, 0] = math.nan, math.inf
    bad[2] = -math.inf
    rp = dparams.row_params(
        bad, torch.tensor([1.0, 1.0, 1.0, 1.0]), None, torch.tensor([0.9, 0.9, 0.9, 2.0]), None, "device"
    )
    draws_.append({"x": bad, "rp": vars(rp), "keys": dparams.row_keys(bad, torch.arange(4), None, None), "window": 128})
    g2 = torch.Generator().manual_seed(4)
    keys = torch.randint(-(2**31), 2**31, (3, 4), dtype=torch.int32, generator=g2)
    index = torch.randint(0, 2**34, (3, 40), generator=g2)
    return {"keys": keys, "index": index, "draws": draws_}


def _start_triton_run(d):
    """Start the interpreted kernels on the cases of :func:`_triton_inputs` in a fresh process."""
    import subprocess
    import sys

    cases = _triton_inputs()
    torch.save(cases, d / "cases.pt")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, "-c", _TRITON_SCRIPT, str(d / "cases.pt"), str(d / "out.pt")]
    return cases, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def _triton_process(tmp_path_factory):
    """The interpreted run, started before the module's first test so that it overlaps the others."""
    if importlib.util.find_spec("triton") is None:
        yield None
        return
    d = tmp_path_factory.mktemp("triton")
    cases, proc = _start_triton_run(d)
    try:
        yield d, cases, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def triton_run(_triton_process):
    if _triton_process is None:
        pytest.skip("needs triton")
    d, cases, proc = _triton_process
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return cases, torch.load(d / "out.pt")


def _philox_words(keys, index):
    from gumbelkit.kernels._philox import join64, philox4x32

    i = index.to(torch.int64)
    j = i >> 1
    lo32 = j & 0xFFFFFFFF
    c0 = (lo32 - ((lo32 >> 31) << 32)).to(torch.int32)
    c1 = (j >> 32).to(torch.int32)
    k = keys.unsqueeze(1)
    w0, w1, w2, w3 = philox4x32(c0, c1, k[..., 2], k[..., 3], k[..., 0], k[..., 1])
    odd = (i & 1).bool()
    return join64(torch.where(odd, w2, w0), torch.where(odd, w3, w1))


def test_triton_counter_noise_matches_the_reference(triton_run):
    cases, out = triton_run
    words, e = out["words"]
    keys, index = cases["keys"], cases["index"]
    assert torch.equal(words, _philox_words(keys, index))  # the Philox words: bit for bit
    ref = counter_gumbel(keys.unsqueeze(1), index).neg().exp()
    # the kernel's logs are float64 rounded once, torch's float32 ones are within an ulp
    torch.testing.assert_close(e, ref, rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("case", range(len(TRITON_CASES)))
def test_triton_kernels_give_the_torch_token(triton_run, case):
    cases, out = triton_run
    c = cases["draws"][case]
    ref, ref_lp, _, _ = dtorch.sample_rows(c["x"], dparams.RowParams(**c["rp"]), c["keys"], True)
    tok, lp = out["draws"][case]
    assert torch.equal(tok, ref), TRITON_CASES[case]
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-4)


def test_triton_bad_rows_are_minus_one(triton_run):
    _, out = triton_run
    tok, lp = out["draws"][-1]
    assert tok[0] >= 0 and tok[1:].tolist() == [-1, -1, -1]
    assert not torch.isnan(lp[0]) and torch.isnan(lp[1:]).all()


# --------------------------------------------------------------------------- CUDA (skipped without a GPU)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_tokens_follow_the_law_and_the_tail():
    row = _zipf_row(V_LAW, 41).cuda()
    for kw in ({}, {"top_k": 50, "top_p": 0.9}, {"top_p": 0.9, "temperature": 0.5}, {"min_p": 0.05}):
        n = N_LAW
        tokens = sample_tokens(row.expand(n, -1).contiguous(), seeds=torch.arange(n, device="cuda"), **kw).cpu()
        probs = reference_probs(
            row.cpu(), kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0), kw.get("min_p", 0.0)
        )
        p = chi_square_p(tokens, probs)
        assert p > P_MIN, f"{kw}: chi-square p = {p:.3g}"
    V, gap, n = 65_536, 19.0, 40_000
    q = (V - 1) * math.exp(-gap) / (1 + (V - 1) * math.exp(-gap))
    x = torch.full((n, V), -gap, device="cuda")
    x[:, 0] = 0.0
    low = int((sample_tokens(x, seeds=torch.arange(n, device="cuda")) != 0).sum())
    assert stats.binomtest(low, n, q).pvalue > 1e-6, f"low classes won {low} of {n} draws, expected {n * q:.1f}"


@cuda
def test_cuda_tokens_are_the_cpu_tokens():
    x, kw = _mixed_batch(B=16, V=40_000)
    cpu = sample_tokens(x, **kw)
    gpu = sample_tokens(x.cuda(), **{k: v.cuda() for k, v in kw.items()}).cpu()
    # same noise, same thresholds: only a near-tie rounded differently could change a token
    assert int((cpu == gpu).sum()) >= 15, (cpu, gpu)


def _bench_module():
    import importlib.util

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "decoding_speed.py"
    )
    spec = importlib.util.spec_from_file_location("decoding_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_speed_benchmark_runs(tmp_path):
    out = tmp_path / "d.json"
    argv = ["--batch", "2", "--vocab", "300", "--dtype", "bfloat16", "--filters", "none,topk50_topp0.9"]
    res = _bench_module().main(argv + ["--rows", "zipf", "--rounds", "1", "--out", str(out)])
    assert [r["filter"] for r in res["records"]] == ["none", "topk50_topp0.9"]
    assert set(res["records"][0]["ms"]) == {"ours", "multinomial", "race", "transformers"}
    assert out.exists()


@cuda
def test_cuda_no_host_sync_graph_replay_and_bad_rows():
    x = torch.randn(32, 5000, device="cuda")
    checks = _bench_module().cuda_checks(x)
    assert checks == {"host_syncs": 0, "graph_replay_fresh_noise": True}
    x[3, 7] = math.nan
    tok = sample_tokens(x, top_k=torch.full((32,), 40, device="cuda"), top_p=0.9)
    assert int(tok[3]) == -1 and bool((tok[torch.arange(32, device="cuda") != 3] >= 0).all())
