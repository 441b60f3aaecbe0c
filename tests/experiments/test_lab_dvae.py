"""The dVAE with a Gumbel codebook: its shapes, its loss, and its evaluation of hand-built models."""

from __future__ import annotations

import math

import pytest
import torch

from experiments import dvae as D
from experiments import methods as M


@pytest.mark.parametrize(("size", "grid"), [(28, 7), (8, 2)])
def test_the_model_maps_images_to_a_quarter_size_grid_and_back(size, grid):
    model = D.DVAE(M.parse("st_gumbel", "categorical"), D.DvaeConfig.make(channels=4, codes=8, embedding_dim=3))
    logits, q = model(torch.rand(2, 1, size, size))
    assert logits.shape == (2, 1, size, size) and q.codes.shape == (2, grid, grid)


def test_the_loss_is_the_summed_bernoulli_cross_entropy_and_evaluation_counts_codes():
    x = torch.tensor([[[[0.0, 1.0]]]])
    assert math.isclose(float(D.reconstruction_loss(torch.zeros(1, 1, 1, 2), x)), 2 * math.log(2), rel_tol=1e-6)
    model = D.DVAE(M.parse("st", "categorical"), D.DvaeConfig.make(channels=2, codes=8, embedding_dim=2))
    with torch.no_grad():  # a quantiser whose logits prefer code 3 everywhere: perplexity 1, 7 codes unused
        model.quantizer.proj.weight.zero_()
        model.quantizer.proj.bias.copy_(torch.arange(8.0) == 3)
    res = D.evaluate(model, torch.rand(5, 64), (8, 8))
    assert res["perplexity"] == pytest.approx(1.0) and res["codes_unused"] == 7 and math.isfinite(res["recon"])
