import pytest
import torch


def gen(seed: int = 0, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.fixture
def make_gen():
    return gen
