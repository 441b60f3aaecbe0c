"""A generator on another device than the logits gives the library's message, at every entry point."""

import pytest
import torch

import gumbelkit as gk
from gumbelkit.estimators import conditional_gumbel
from gumbelkit.nn import GumbelSoftmax


class _MetaGenerator(torch.Generator):
    """A CPU generator that reports the meta device (torch may refuse to build a real one)."""

    @property
    def device(self):
        return torch.device("meta")


def _generators():
    gens = [pytest.param(_MetaGenerator(), id="reports_meta")]
    for dev in ("meta", "cuda"):
        try:
            gens.append(pytest.param(torch.Generator(device=dev), id=dev))
        except RuntimeError as exc:  # CPU-only builds refuse cuda; some builds refuse meta
            gens.append(pytest.param(None, id=dev, marks=pytest.mark.skip(reason=f"cannot build: {exc}"[:80])))
    return gens


X = torch.randn(3, 4, requires_grad=True)
ENTRY_POINTS = {
    "gumbel_max": lambda g: gk.gumbel_max(X, generator=g),
    "gumbel_topk": lambda g: gk.gumbel_topk(X, 2, generator=g),
    "gumbel_softmax": lambda g: gk.gumbel_softmax(X, 0.5, generator=g),
    "gumbel_softmax_hard": lambda g: gk.gumbel_softmax(X, 0.5, True, generator=g),
    "gumbel_softmax_hard_no_grad": lambda g: gk.gumbel_softmax(X.detach(), 0.5, True, generator=g),
    "conditional_gumbel": lambda g: conditional_gumbel(X, torch.zeros(3, 1, dtype=torch.long), 2, 1, generator=g),
    "module": lambda g: GumbelSoftmax("st_gumbel", generator=g)(X),
    **{f"sample_{m}": (lambda g, m=m: gk.sample(X, m, 0.5, generator=g)) for m in gk.METHODS},
    **{f"sample_{m}_no_grad": (lambda g, m=m: gk.sample(X.detach(), m, 0.5, generator=g)) for m in gk.METHODS},
}


@pytest.mark.parametrize("generator", _generators())
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_generator_on_another_device_gets_the_library_message(entry, generator):
    dev = torch.device(generator.device)
    with pytest.raises(ValueError, match=rf"expected a generator on the logits' device \(cpu\), got one on {dev}"):
        ENTRY_POINTS[entry](generator)


def test_generator_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="expected generator to be a torch.Generator, got int"):
        gk.sample(X, "st", generator=3)
