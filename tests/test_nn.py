import math
import pickle

import pytest
import torch

import gumbelkit as gk
from gumbelkit import schedules
from gumbelkit.nn import GumbelQuantizer, GumbelSoftmax


def test_in_sequential_one_hot_and_trainable():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 10), GumbelSoftmax("st_gumbel", tau=0.5), torch.nn.Linear(10, 1))
    y = net(torch.randn(32, 8))
    y.sum().backward()
    assert net[0].weight.grad.abs().sum() > 0
    h = net[1](torch.randn(4, 10))
    assert torch.all(h.sum(-1) == 1)


def test_schedule_advances_in_training_only_and_is_saved():
    mod = GumbelSoftmax("gumbel_softmax", tau=schedules.exponential(1.0, 0.1, 0.2, 2))
    x = torch.randn(3, 5)
    taus = []
    for _ in range(4):
        taus.append(mod.current_tau())
        mod(x)
    assert taus[0] == taus[1] == 1.0 and taus[2] < 1.0
    mod.eval()
    mod(x)
    assert int(mod.step) == 4
    state = mod.state_dict()
    assert int(state["step"]) == 4


def test_learnable_temperature_receives_gradient_and_generator_is_used():
    temp = schedules.LearnableTemperature(1.0)
    mod = GumbelSoftmax("gumbel_softmax", tau=temp, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 4)
    y = mod(x)
    (y[:, 0]).sum().backward()
    assert temp.rho.grad is not None and temp.rho.grad != 0
    mod2 = GumbelSoftmax("gumbel_softmax", tau=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mod2(x), y.detach(), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="expected method"):
        GumbelSoftmax("nope")
    with pytest.raises(ValueError, match="tau > 0"):
        GumbelSoftmax(tau=0.0)
    with pytest.raises(TypeError, match="tau"):
        GumbelSoftmax(tau="hot")
    assert "gumbel_rao" in repr(GumbelSoftmax("gumbel_rao", k=5))


def test_learnable_temperature_with_masked_class_gets_finite_gradient_for_every_method():
    for method in gk.METHODS:
        temp = schedules.LearnableTemperature(0.8)
        mod = GumbelSoftmax(method, tau=temp, generator=torch.Generator().manual_seed(1))
        x = torch.randn(5, 4)
        x[:, 1] = float("-inf")
        x.requires_grad_()
        (mod(x) * torch.arange(4.0)).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.all(x.grad[:, 1] == 0), method
        if method != "reinmax":  # ReinMax passes no gradient to tau (documented)
            assert torch.isfinite(temp.rho.grad), method


def test_non_finite_float_tau_is_rejected():
    for tau in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="expected tau > 0 and finite"):
            GumbelSoftmax(tau=tau)


# ---------------------------------------------------------------------------------------- GumbelQuantizer


def _quantizer(**kw):
    torch.manual_seed(0)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return GumbelQuantizer(kw.pop("c", 6), kw.pop("k", 12), kw.pop("d", 5), **kw)


def _peaked(n_codes=4):
    """A quantizer whose logits are 100 * x: one-hot inputs pick their code even with Gumbel noise."""
    q = GumbelQuantizer(n_codes, n_codes, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q.proj.weight.copy_(100 * torch.eye(n_codes))
        q.proj.bias.zero_()
    return q


def _tokens(codes, n_codes=4):
    return torch.nn.functional.one_hot(torch.tensor(codes), n_codes).float().unsqueeze(0)  # 1 x T x C


@pytest.mark.parametrize("layout", ["image", "tokens"])
def test_quantizer_shapes_and_one_hot_forward_in_both_layouts(layout):
    if layout == "image":
        q, x = _quantizer(dim=1), torch.randn(2, 6, 7, 5)
        want_z, want_codes, want_logits = (2, 5, 7, 5), (2, 7, 5), (2, 12, 7, 5)
    else:
        q, x = _quantizer(dim=-1), torch.randn(3, 9, 6)
        want_z, want_codes, want_logits = (3, 9, 5), (3, 9), (3, 9, 12)
    for training in (True, False):
        q.train(training)
        out = q(x)
        assert out.z_q.shape == want_z and out.codes.shape == want_codes and out.logits.shape == want_logits
        assert out.codes.dtype == torch.long and out.kl.shape == () and out.perplexity.shape == ()
        # hard forward: every position holds exactly one codebook row, the one of its code
        rows = q.codebook.weight[out.codes]  # codes shape + (D,)
        assert torch.equal(out.z_q.movedim(q.dim, -1), rows)
        assert torch.equal(q.decode_codes(out.codes), out.z_q)
    # eval is deterministic and picks the argmax of the logits
    assert torch.equal(q(x).codes, out.logits.argmax(q.dim)) and torch.equal(q(x).z_q, out.z_q)


def test_quantizer_relaxed_method_mixes_codes_and_deterministic_eval_is_one_hot():
    q, x = _quantizer(method="gumbel_softmax", tau=2.0, dim=-1), torch.randn(4, 6)
    out = q(x)
    y = torch.softmax(out.logits, -1)  # any relaxed sample has full support: z_q is no codebook row
    assert not torch.allclose(out.z_q, q.codebook.weight[out.codes]) and y.shape == (4, 12)
    q.eval()
    out = q(x)
    assert torch.equal(out.z_q, q.codebook.weight[out.logits.argmax(-1)])
    q.deterministic_eval = False  # eval sampling with the method: relaxed again
    assert not torch.allclose(q(x).z_q, q.codebook.weight[q(x).codes])


def test_quantizer_kl_matches_closed_form_uniform_and_learned_prior():
    q = _quantizer(dim=1, kl_weight=0.25)
    out = q(torch.randn(2, 6, 3, 3))
    logq = torch.log_softmax(out.logits, 1)
    closed = (logq.exp() * (logq + math.log(12))).sum(1).mean()  # KL to uniform = log K - H(q)
    assert torch.allclose(out.kl, closed, atol=1e-6) and torch.allclose(out.loss, 0.25 * closed)
    assert torch.allclose(out.kl, gk.kl_categorical(out.logits, torch.zeros(12, 1, 1), dim=1).mean())
    ql = _quantizer(dim=-1, prior="learned")
    with torch.no_grad():
        ql.log_prior.copy_(torch.linspace(-2, 2, 12))
    out = ql(torch.randn(5, 6))
    assert torch.allclose(out.kl, gk.kl_categorical(out.logits, ql.log_prior.detach()).mean(), atol=1e-6)
    out.loss.backward()
    assert ql.log_prior.grad.abs().sum() > 0


def test_quantizer_batch_perplexity_hand_cases():
    q = _peaked().eval()
    assert torch.allclose(q(_tokens([0, 0, 1, 1])).perplexity, torch.tensor(2.0))
    assert torch.allclose(q(_tokens([0, 1, 2, 3])).perplexity, torch.tensor(4.0))
    assert torch.allclose(q(_tokens([3, 3, 3])).perplexity, torch.tensor(1.0))
    # histogram (2, 1, 1): H = 1.5 log 2, perplexity 2 ** 1.5
    assert torch.allclose(q(_tokens([0, 0, 1, 2])).perplexity, torch.tensor(2**1.5))
    assert int(q.code_counts.sum()) == 0 and int(q.step) == 0  # eval forwards leave the statistics alone


def test_quantizer_usage_counts_dead_codes_windows_and_reset():
    q = _peaked()
    q(_tokens([0, 1, 1]))  # step 1
    assert q.code_counts.tolist() == [1, 2, 0, 0] and q.dead_codes().tolist() == [2, 3]
    q(_tokens([2]))  # step 2
    q(_tokens([2, 2]))  # step 3
    assert int(q.step) == 3 and q.code_counts.tolist() == [1, 2, 3, 0]
    assert q.dead_codes().tolist() == [3]
    assert q.dead_codes(window=2).tolist() == [0, 1, 3]  # 0 and 1 were last drawn at step 1
    assert q.dead_codes(window=3).tolist() == [3]
    assert torch.allclose(q.usage_perplexity(), gk.nn._histogram_perplexity(torch.tensor([1.0, 2, 3, 0])))
    q.reset_usage()
    assert q.code_counts.tolist() == [0, 0, 0, 0] and q.dead_codes().tolist() == [0, 1, 2, 3]
    assert q.dead_codes(window=1).tolist() == []  # a window counts as dead only once it has elapsed
    q(_tokens([1]))
    assert q.dead_codes(window=1).tolist() == [0, 2, 3] and float(q.usage_perplexity()) == 1.0
    q.dead_window = 1
    assert q.dead_codes().tolist() == [0, 2, 3]
    q.track_usage = False
    q(_tokens([0]))
    assert q.code_counts.tolist() == [0, 1, 0, 0] and int(q.step) == 5


def _trained(**kw):
    q = _quantizer(dim=1, tau=schedules.exponential(1.0, 0.1, 0.2, 1), **kw)
    for _ in range(3):
        q(torch.randn(2, 6, 3, 3))
    return q.eval()


def test_quantizer_state_dict_round_trip_restores_step_schedule_counts_and_outputs():
    q = _trained(prior="learned")
    state = q.state_dict()
    assert {"step", "code_counts", "last_used", "log_prior", "proj.weight", "codebook.weight"} <= set(state)
    fresh = GumbelQuantizer(6, 12, 5, dim=1, tau=schedules.exponential(1.0, 0.1, 0.2, 1), prior="learned")
    fresh.load_state_dict(state)
    fresh.eval()
    assert int(fresh.step) == 3 and fresh.current_tau() == q.current_tau() < 1.0
    assert torch.equal(fresh.code_counts, q.code_counts) and torch.equal(fresh.last_used, q.last_used)
    x = torch.randn(2, 6, 3, 3)
    a, b = q(x), fresh(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_quantizer_pickles_with_a_tensor_tau_buffer():
    q = _quantizer(dim=1, tau=torch.full((1, 1, 3, 3), 0.7), generator=None)
    q(torch.randn(2, 6, 3, 3))
    assert "tau" in q.state_dict() and "tensor(1, 1, 3, 3)" in repr(q)
    q2 = pickle.loads(pickle.dumps(q.eval()))
    assert torch.equal(q2.tau, q.tau) and torch.equal(q2.code_counts, q.code_counts)
    x = torch.randn(1, 6, 3, 3)
    assert torch.equal(q2(x).z_q, q(x).z_q)
    assert q.double()(x.double()).z_q.dtype == torch.float64 and q.tau.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_quantizer_codes_of_a_sample_are_its_argmax(dtype):
    # one-hot methods read the code off the single 1 of each row (a product with 0..K-1), which must
    # be exact for every K (bfloat16 holds integers exactly only up to 256); relaxed ones take argmax
    k = 1000
    q = _quantizer(k=k)
    index = torch.randint(0, k, (300,), generator=torch.Generator().manual_seed(1))
    hot = torch.nn.functional.one_hot(index, k).to(dtype)
    assert q.method == "st_gumbel" and torch.equal(q._codes(hot), index)
    soft = torch.softmax(torch.randn(300, k, generator=torch.Generator().manual_seed(2)), -1).to(dtype)
    q.method = "gumbel_softmax"  # relaxed: the declaration says not one-hot
    assert torch.equal(q._codes(soft), soft.argmax(-1))


def test_quantizer_eval_codes_on_a_large_map_are_the_argmax_of_the_logits():
    q = _quantizer(c=6, k=512, dim=1).eval()  # 512 positions x 512 codes: the fast argmax path
    out = q(torch.randn(2, 6, 16, 16))
    assert torch.equal(out.codes, out.logits.argmax(1))
    assert torch.equal(out.z_q, q.codebook.weight[out.codes].movedim(-1, 1))


def test_quantizer_tensor_tau_in_the_input_layout_applies_per_position():
    # tau of shape 1 x 1 x H x W (the input's layout, categories at dim=1): one position nearly
    # hard, the others so hot that the relaxed sample is nearly uniform
    tau = torch.full((1, 1, 2, 2), 1e4)
    tau[..., 0, 0] = 1e-4
    q = _quantizer(dim=1, method="gumbel_softmax", tau=tau)
    out = q(torch.randn(3, 6, 2, 2))
    rows = q.codebook.weight[out.codes]  # B x H x W x D
    z = out.z_q.movedim(1, -1)
    assert torch.allclose(z[:, 0, 0], rows[:, 0, 0], atol=1e-3)  # cold position: its code's row
    mean_row = q.codebook.weight.mean(0)
    assert torch.allclose(z[:, 1:, :], mean_row.expand_as(z[:, 1:, :]), atol=1e-2)
    assert torch.allclose(z[:, 0, 1], mean_row.expand_as(z[:, 0, 1]), atol=1e-2)


def test_quantizer_compiles_fullgraph_and_matches_eager_in_eval():
    q = _quantizer(dim=1, generator=None).eval()
    x = torch.randn(2, 6, 4, 4)
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    got, want = compiled(x), q(x)
    for name, a, b in zip(want._fields, got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-6) and a.dtype == b.dtype, name
    assert torch.equal(got.codes, want.codes)


@pytest.mark.parametrize("method", sorted(gk.METHODS))
def test_quantizer_gradient_reaches_projection_and_codebook(method):
    q = _quantizer(dim=-1, method=method, kl_weight=0.0)
    out = q(torch.randn(8, 6))
    (out.z_q * torch.randn_like(out.z_q)).sum().backward()
    assert q.proj.weight.grad.abs().sum() > 0, method
    assert q.codebook.weight.grad.abs().sum() > 0 and torch.isfinite(q.proj.weight.grad).all(), method


def test_quantizer_rejects_bad_arguments_and_inputs():
    with pytest.raises(gk.GumbelkitValueError, match="GumbelQuantizer: expected method"):
        GumbelQuantizer(4, 8, 2, method="nope")
    with pytest.raises(gk.GumbelkitValueError, match="expected method"):
        GumbelQuantizer(4, 8, 2, method="reinforce")  # score-function: needs the loss, not a sample
    with pytest.raises(gk.GumbelkitTypeError, match="unknown option 'q'"):
        GumbelQuantizer(4, 8, 2, method="gumbel_rao", q=3)
    with pytest.raises(gk.GumbelkitValueError, match="n_codes"):
        GumbelQuantizer(4, 1, 2)
    with pytest.raises(gk.GumbelkitValueError, match="tau > 0"):
        GumbelQuantizer(4, 8, 2, tau=0.0)
    with pytest.raises(gk.GumbelkitValueError, match="tau > 0"):
        GumbelQuantizer(4, 8, 2, tau=torch.tensor([1.0, -1.0]))
    with pytest.raises(gk.GumbelkitTypeError, match="expected tau"):
        GumbelQuantizer(4, 8, 2, tau="hot")
    with pytest.raises(gk.GumbelkitValueError, match="kl_weight"):
        GumbelQuantizer(4, 8, 2, kl_weight=-1.0)
    with pytest.raises(gk.GumbelkitValueError, match="prior"):
        GumbelQuantizer(4, 8, 2, prior="zipf")
    q = GumbelQuantizer(4, 8, 2, dim=1)
    with pytest.raises(gk.GumbelkitValueError, match=r"in_features = 4 .* got x of shape \(2, 3, 5\)"):
        q(torch.randn(2, 3, 5))
    with pytest.raises(gk.GumbelkitDimError):
        q(torch.randn(4))
    with pytest.raises(gk.GumbelkitTypeError, match="x"):
        q(torch.ones(2, 4, 3, dtype=torch.long))
    bad = torch.randn(2, 4, 3)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(gk.GumbelkitValueError, match="NaN"):
        q(bad)
    with pytest.raises(gk.GumbelkitTypeError, match="integer"):
        q.decode_codes(torch.zeros(3))


def test_quantizer_compiles_fullgraph_in_training_and_updates_buffers():
    q = _peaked()
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    out = compiled(_tokens([0, 2, 2]))
    assert out.codes.tolist() == [[0, 2, 2]] and q.code_counts.tolist() == [1, 0, 2, 0] and int(q.step) == 1


DDP_SCRIPT = r"""
import json, torch, torch.distributed as dist
from gumbelkit.nn import GumbelQuantizer
dist.init_process_group("gloo")
rank, res = dist.get_rank(), {}
for mode in ("sync", "local"):
    torch.manual_seed(0)
    q = GumbelQuantizer(4, 4, 3, sync_usage=mode == "sync")
    with torch.no_grad():
        q.proj.weight.copy_(100 * torch.eye(4)); q.proj.bias.zero_()
    ddp = torch.nn.parallel.DistributedDataParallel(q)
    codes = [[0, 0], [1, 2]][rank]  # rank 0 draws code 0 twice, rank 1 codes 1 and 2
    out = ddp(torch.nn.functional.one_hot(torch.tensor(codes), 4).float())
    (out.z_q.sum() + out.loss).backward()
    res[mode] = dict(counts=q.code_counts.tolist(), perplexity=float(out.perplexity), dead=q.dead_codes().tolist())
with open(f"rank{rank}.json", "w") as f:
    json.dump(res, f)
# Release the DDP wrapper (its reducer holds the process group) before leaving the group: left to
# the interpreter's exit, rank 0 aborted ("terminate called without an active exception") after
# all of the above in about 1 run of 5.
del ddp, out
import gc; gc.collect()
dist.barrier()
dist.destroy_process_group()
"""


def test_quantizer_under_ddp_all_reduces_usage_only_when_asked(tmp_path):
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "s.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "s.py"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0["sync"], r1["sync"]):  # the global histogram (2, 1, 1, 0) on both ranks
        assert r["counts"] == [2, 1, 1, 0] and r["dead"] == [3] and abs(r["perplexity"] - 2**1.5) < 1e-5
    # unsynced: each rank's own batch
    assert r0["local"]["counts"] == [2, 0, 0, 0] and r1["local"]["counts"] == [0, 1, 1, 0]
    assert r0["local"]["perplexity"] == 1.0 and abs(r1["local"]["perplexity"] - 2.0) < 1e-5
