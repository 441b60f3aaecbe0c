"""Single-process pieces of the torch.distributed plumbing (the 2-rank run lives in test_vae_ddp)."""

import pytest
import torch

from gumbelkit.experiments._distributed import DistContext, init_distributed, partition, rank_seed, shard_batch


def test_rank_seeds_distinct_and_stable():
    seeds = {rank_seed(s, r, k) for s in range(5) for r in range(4) for k in range(2)}
    assert len(seeds) == 40
    assert rank_seed(7, 1) == rank_seed(7, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_shard_batch_covers_the_global_batch_once():
    idx = torch.arange(103)
    parts = [shard_batch(idx, r, 4) for r in range(4)]
    assert torch.equal(torch.cat(parts), idx)
    assert max(p.numel() for p in parts) - min(p.numel() for p in parts) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_batch(idx, 4, 4)


def test_partition_round_robin():
    grid = [(m, s) for m in "abc" for s in range(2)]
    shares = [partition(grid, r, 4) for r in range(4)]
    assert sorted(x for sh in shares for x in sh) == sorted(grid)


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(torch.device("cpu"))
    assert ctx == DistContext() and ctx.is_main and not ctx.enabled
    assert ctx.all_gather_object(3) == [3] and ctx.broadcast_object("x") == "x"
    ctx.agree(None)
    with pytest.raises(RuntimeError, match="boom"):
        ctx.agree("boom")
