r"""REBAR and RELAX: the score-function estimator with a Concrete-relaxation control variate.

For a discrete sample b = H(z) of perturbed logits z = theta + noise (one-of-K: z = theta + g,
b = one_hot(argmax z); bits: z = phi + L, b = 1[z > 0]), a control c of the relaxed sample
:math:`\sigma_\lambda(z)` (softmax(z / lambda), or sigmoid(z / lambda) for bits) and a draw
:math:`\tilde z \sim p(z \mid b)` of the noise *conditioned on the sample*, the estimate

.. math::

    \hat g = \bigl(f(b) - c(\tilde z)\bigr)\,\nabla_\theta \log p(b)
             + \nabla_\theta c(z) - \nabla_\theta c(\tilde z)

is unbiased for :math:`\nabla_\theta \mathbb{E}[f(b)]` whatever c is: the first term is REINFORCE
with c(z~) subtracted, and the last two put back exactly what that subtraction removed in
expectation, :math:`\mathbb{E}_b[c(\tilde z)\nabla \log p(b) + \nabla c(\tilde z)] =
\nabla \mathbb{E}_z[c(z)] = \mathbb{E}_z[\nabla c(z)]`, with both gradients taken through the
reparameterisations of z and of z~ (the conditional noise held fixed).

* REBAR (Tucker et al., NeurIPS 2017): :math:`c = \eta\, f \circ \sigma_\lambda`, the relaxed
  loss scaled by eta;
* RELAX (Grathwohl et al., ICLR 2018): :math:`c = f \circ \sigma_\lambda + r_\phi \circ \sigma_\lambda`
  (or :math:`r_\phi` alone), a learned network added to it.

eta, lambda and the network are trained on the fly to minimise the variance of the estimate:
since its mean does not depend on them, the gradient of :math:`\mathbb{E}\|\hat g\|^2` is the
gradient of the variance, and :math:`\|\hat g\|^2` of a single estimate is an unbiased sample of
it. Both gradients of c are taken in closed form from one gradient of c with respect to its
input x (:math:`\nabla_\theta c(z) = \partial c / \partial x` since dz/dtheta = 1, and
:math:`\nabla_\theta c(\tilde z) = J^\top \partial c / \partial x` with J the Jacobian of the
conditional reparameterisation, below), so the estimate costs one evaluation of f at b, one or
two of c and one or two backward passes through c; training the control adds a double backward.

Conditional noise (one-of-K; Paulus et al., ICLR 2021, the draws of Gumbel-Rao): with
E ~ Exp(1), Z = sum exp(theta), D the sampled class,
:math:`\tilde z_D = \log Z - \log E_D`, :math:`\tilde z_i = -\log(E_i e^{-\theta_i} + E_D / Z)`,
and its Jacobian-vector product is
:math:`J^\top v = v \odot (1 - w) + \mathrm{softmax}(\theta)\,\langle v, w\rangle` with
:math:`w = \exp(\tilde z - \tilde z_D)` (w_D = 1, 0 at masked classes). With ``noise="shared"``
(the default, as in the REBAR authors' code) z~ is z itself -- a draw from p(z | b) since z is
one -- differentiated as the conditional draw: common random numbers, lower variance and one
evaluation of c fewer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._core.numerics import log_exp_noise
from .._core.policy import compute_dtype, functorch_active
from .._core.validation import check_generator, check_logits, shape_str
from ..errors import GumbelkitTypeError, GumbelkitValueError
from ._gumbel_rao import _condition
from ._registry import OptionSpec, get_spec, register

__all__ = [
    "REBAR_DECLARATION",
    "RELAX_DECLARATION",
    "ControlNet",
    "RebarControl",
    "RelaxControl",
    "conditional_gumbel_vjp",
    "control_variate_estimate",
    "rebar_objective",
    "relax_objective",
    "resolve_control",
    "surrogate",
    "variance_term",
]

Loss = Callable[[torch.Tensor], torch.Tensor]

_REBAR_REF = (
    "Tucker, Mnih, Maddison, Lawson, Sohl-Dickstein, REBAR: Low-variance, unbiased gradient estimates "
    "for discrete latent variable models, NeurIPS 2017"
)
_RELAX_REF = (
    "Grathwohl, Choi, Wu, Roeder, Duvenaud, Backpropagation through the Void: Optimizing control "
    "variates for black-box gradient estimation, ICLR 2018"
)


# --------------------------------------------------------------------------- the learnable controls


def _finite_float(value: Any, name: str, fn: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise GumbelkitValueError(f"{fn}: expected {name} to be a finite number, got {value!r}")
    if positive and not float(value) > 0:
        raise GumbelkitValueError(f"{fn}: expected {name} > 0, got {value!r}")
    return float(value)


class RebarControl(nn.Module):
    r"""REBAR's learnable control: the scale eta and the temperature lambda of :math:`c = \eta f \circ \sigma_\lambda`.

    Two 0-d parameters, ``eta`` and ``log_temperature`` (lambda = exp(log_temperature) stays > 0
    whatever the optimiser does). Passed as ``control=`` to the ``"rebar"`` method, they are
    trained by the surrogate's backward to minimise the variance of the estimate (add
    ``control.parameters()`` to an optimiser).

    Args:
        eta: initial scale (1: the relaxed loss itself).
        temperature: initial lambda > 0.

    Examples:
        >>> control = gk.estimators.RebarControl(eta=1.0, temperature=0.5)
        >>> control
        RebarControl(eta=1, temperature=0.5)
    """

    def __init__(self, eta: float = 1.0, temperature: float = 0.5):
        super().__init__()
        eta = _finite_float(eta, "eta", "RebarControl")
        temperature = _finite_float(temperature, "temperature", "RebarControl", positive=True)
        self.eta = nn.Parameter(torch.tensor(eta))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        """lambda = exp(log_temperature)."""
        return self.log_temperature.exp()

    def extra_repr(self) -> str:
        return f"eta={float(self.eta.detach()):.4g}, temperature={float(self.temperature.detach()):.4g}"


class ControlNet(nn.Module):
    r"""The default RELAX network :math:`r_\phi`: the relaxed sample of one row -> one value.

    ``Linear(prod(event_shape), hidden) -> tanh -> Linear(hidden, 1)`` on the centred input
    2y - 1 (as in the RELAX authors' toy code), the last layer initialised to 0 so that the
    network starts as the zero function (RELAX then starts as REBAR with eta = 1).

    Args:
        event_shape: the shape of one row's sample (``(D,)`` bits, ``(N, K)`` one-of-K variables).
        hidden: width of the hidden layer.

    Examples:
        >>> net = gk.estimators.ControlNet((3, 4), hidden=8)
        >>> net(torch.rand(5, 3, 4)).shape
        torch.Size([5])
    """

    def __init__(self, event_shape: Sequence[int], hidden: int = 10):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.hidden = nn.Linear(math.prod(self.event_shape), int(hidden))
        self.out = nn.Linear(int(hidden), 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        e = len(self.event_shape)
        if tuple(y.shape[y.dim() - e :]) != self.event_shape:
            raise GumbelkitValueError(
                f"ControlNet: expected a relaxed sample ending in the event shape {shape_str(self.event_shape)}, "
                f"got shape {shape_str(y.shape)}"
            )
        x = y.reshape(*y.shape[: y.dim() - e], -1)
        return self.out(torch.tanh(self.hidden(2.0 * x - 1.0))).squeeze(-1)


class RelaxControl(nn.Module):
    r"""RELAX's learnable control :math:`c = f \circ \sigma_\lambda + r_\phi \circ \sigma_\lambda`.

    Holds the network :math:`r_\phi` (``net``; the default :class:`ControlNet` when None) and
    the temperature lambda (``log_temperature``, trained too). With ``f_term=False`` the control
    is the network alone, :math:`c = r_\phi \circ \sigma_\lambda`.

    The network receives the relaxed sample :math:`\sigma_\lambda(z)`, shaped like the logits
    (cast to the dtype of its parameters), and must return one value per row: a tensor of the
    loss's shape, or of that shape with a trailing 1.

    Args:
        net: any ``nn.Module`` mapping the relaxed sample to one value per row; None: a
            :class:`ControlNet` for ``event_shape``.
        event_shape: the shape of one row's sample (needed when ``net`` is None).
        hidden: the default network's width.
        temperature: initial lambda > 0.
        f_term: add the relaxed loss :math:`f \circ \sigma_\lambda` to the network.

    Examples:
        >>> control = gk.estimators.RelaxControl(event_shape=(3,), hidden=4)
        >>> sorted(name for name, _ in control.named_parameters())[:2]
        ['log_temperature', 'net.hidden.bias']
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        *,
        event_shape: Sequence[int] | None = None,
        hidden: int = 10,
        temperature: float = 0.5,
        f_term: bool = True,
    ):
        super().__init__()
        if net is None:
            if event_shape is None:
                raise GumbelkitTypeError("RelaxControl: expected net or event_shape, got neither")
            net = ControlNet(event_shape, hidden)
        if not isinstance(net, nn.Module):
            raise GumbelkitTypeError(f"RelaxControl: expected net to be a torch.nn.Module, got {type(net).__name__}")
        temperature = _finite_float(temperature, "temperature", "RelaxControl", positive=True)
        self.net = net
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.f_term = bool(f_term)

    @property
    def temperature(self) -> torch.Tensor:
        """lambda = exp(log_temperature)."""
        return self.log_temperature.exp()

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature.detach()):.4g}, f_term={self.f_term}"


def _rebar_control(event_shape: tuple[int, ...], *, eta: float = 1.0, temperature: float = 0.5, **_: Any) -> nn.Module:
    return RebarControl(eta=eta, temperature=temperature)


def _relax_control(
    event_shape: tuple[int, ...], *, temperature: float = 0.5, hidden: int = 10, f_term: bool = True, **_: Any
) -> nn.Module:
    return RelaxControl(event_shape=event_shape, hidden=hidden, temperature=temperature, f_term=f_term)


# The options, shared by the Bernoulli and one-of-K declarations.
ETA = OptionSpec("eta", float, 1.0, minimum=0.0, help="scale of the relaxed loss in the control (fixed, or initial)")
TEMPERATURE = OptionSpec(
    "temperature", float, 0.5, minimum=0.0, open_minimum=True, help="Concrete temperature lambda (fixed, or initial)"
)
NOISE = OptionSpec(
    "noise",
    str,
    "shared",
    choices=("shared", "independent"),
    help="the conditional draw z~: z itself (shared, common random numbers) or an independent draw",
)
F_TERM = OptionSpec("f_term", bool, True, help="control = f(relaxed) + network (true) or the network alone")
HIDDEN = OptionSpec("hidden", int, 10, minimum=1, help="hidden units of the default control network")
REBAR_OPTIONS = (ETA, TEMPERATURE, NOISE)
RELAX_OPTIONS = (TEMPERATURE, F_TERM, HIDDEN, NOISE)


def _evaluations(options: Mapping[str, Any]) -> int:
    """Loss evaluations of one estimate: f(b), plus f at the relaxed sample when the control has the
    f term (once with shared noise, where z~ = z; twice with independent conditional noise)."""
    if not options.get("f_term", True):
        return 1
    return 2 if options["noise"] == "shared" else 3


REBAR_DECLARATION: dict[str, Any] = {
    "options": REBAR_OPTIONS,
    "control": _rebar_control,
    "reference": _REBAR_REF,
    "evaluations": _evaluations,
}
RELAX_DECLARATION: dict[str, Any] = {
    "options": RELAX_OPTIONS,
    "control": _relax_control,
    "reference": _RELAX_REF,
    "evaluations": _evaluations,
}


# --------------------------------------------------------------------------- the estimate, shared by the families


class Control:
    """The control variate of one call: c(relaxed sample) per row, its temperature, whether it is trained.

    Built by :func:`resolve_control` from the method, its options and the ``control`` module.
    ``value(y, evaluate)`` returns c(y) (None when c is identically 0), ``evaluate`` being the
    loss at a relaxed sample (per row, in the compute dtype).
    """

    def __init__(self, module: nn.Module | None, temperature: Any, eta: Any, net: nn.Module | None):
        # eta: the weight of the relaxed loss in c (None: no such term); net: the learned r (None: r = 0)
        self.temperature, self.eta, self.net = temperature, eta, net
        self.params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        # read once, in the caller's grad mode (the estimate itself is computed under enable_grad)
        self._trained = bool(self.params) and torch.is_grad_enabled()

    def trained(self) -> bool:
        """Whether the variance gradient is needed (a module with trainable parameters, grad enabled)."""
        return self._trained

    def is_zero(self) -> bool:
        """Whether c is identically 0 (no relaxed-loss term, no network): REINFORCE with one sample."""
        return self.eta is None and self.net is None

    def value(
        self, y: torch.Tensor, evaluate: Loss, batch: tuple[int, ...], cdt: torch.dtype, fn: str
    ) -> torch.Tensor | None:
        out = None
        if self.eta is not None:
            f = evaluate(y)
            out = f * (self.eta.to(cdt) if isinstance(self.eta, torch.Tensor) else self.eta)
        if self.net is not None:
            r = _net_value(self.net, y, batch, cdt, fn)
            out = r if out is None else out + r
        return out


def _net_value(net: nn.Module, y: torch.Tensor, batch: tuple[int, ...], cdt: torch.dtype, fn: str) -> torch.Tensor:
    """net(y) as one value per row, shape ``batch``; a clear error for any other shape."""
    param = next(iter(net.parameters()), None)
    out = net(y if param is None else y.to(param.dtype))
    if not isinstance(out, torch.Tensor):
        raise GumbelkitTypeError(
            f"{fn}: expected the control network to return a torch.Tensor, got {type(out).__name__}"
        )
    if tuple(out.shape) == batch + (1,):
        out = out.squeeze(-1)
    if tuple(out.shape) != batch:
        raise GumbelkitValueError(
            f"{fn}: expected the control network to map the relaxed sample of shape {shape_str(y.shape)} to one value "
            f"per row, of shape {shape_str(batch)} (or {shape_str(batch + (1,))}), got {shape_str(out.shape)}"
        )
    return out.to(cdt)


def resolve_control(method: str, control: Any, options: dict, fn: str) -> Control:
    """The :class:`Control` of one call of ``"rebar"`` / ``"relax"`` (``method``) with ``options``.

    A fixed control (None, or a module without trainable parameters, or any module under
    ``torch.no_grad``) works under torch.func transforms (``torch.vmap``, ``torch.func.grad``);
    a trained one is refused there with a clear error: its online training takes
    ``torch.autograd.grad`` with respect to its parameters, which the transforms do not allow.
    """
    ctl = _resolve_control(method, control, options, fn)
    if ctl.trained() and functorch_active():
        raise GumbelkitValueError(
            f"{fn}: expected a fixed control under torch.func transforms (torch.vmap, torch.func.grad): "
            f"control=None, or a control whose parameters do not require grad; got a {type(control).__name__} "
            f"with {len(ctl.params)} trainable parameter tensor(s) (its online training needs torch.autograd.grad "
            f"of its parameters, which the transforms refuse: train it outside the transform)"
        )
    return ctl


def _resolve_control(method: str, control: Any, options: dict, fn: str) -> Control:
    if method == "rebar":
        if control is None:
            return Control(None, options["temperature"], options["eta"], None)
        if not isinstance(control, RebarControl):
            raise GumbelkitTypeError(
                f"{fn}: expected control to be a gumbelkit.estimators.RebarControl (or None) for method 'rebar', "
                f"got {type(control).__name__}"
            )
        return Control(control, control.temperature, control.eta, None)
    if control is None:  # the untrained default: its network starts as the zero function
        return Control(None, options["temperature"], 1.0 if options["f_term"] else None, None)
    if isinstance(control, RelaxControl):
        return Control(control, control.temperature, 1.0 if control.f_term else None, control.net)
    if not isinstance(control, nn.Module):
        raise GumbelkitTypeError(
            f"{fn}: expected control to be a torch.nn.Module mapping the relaxed sample to one value per row "
            f"(or None) for method 'relax', got {type(control).__name__}"
        )
    return Control(control, options["temperature"], 1.0 if options["f_term"] else None, control)


def _require_grad(c: torch.Tensor, fn: str) -> None:
    if not c.requires_grad:
        raise GumbelkitValueError(
            f"{fn}: expected f (and the control) to be differentiable at relaxed samples, got a value without a "
            f"gradient (the control variate needs the gradient of f at sigma(z / temperature))"
        )


def _value_and_input_gradient(
    c_of: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, create_graph: bool, fn: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c(z), dc/dz summed over rows) -- each row's c depends on its own entries of z only."""
    if functorch_active():
        # Under torch.vmap / torch.func.grad, requires_grad_ and torch.autograd.grad are refused;
        # torch.func.vjp nests inside them. (A trained control, which would need create_graph, is
        # refused under the transforms by resolve_control.)
        def checked(x: torch.Tensor) -> torch.Tensor:
            c = c_of(x)
            _require_grad(c, fn)
            return c

        out = torch.func.vjp(checked, z.detach())  # (c, vjp_fn): no auxiliary output
        c, vjp = out[0], out[1]
        (g,) = vjp(torch.ones_like(c))
        return c, g
    x = z.detach().requires_grad_(True)
    c = c_of(x)
    _require_grad(c, fn)
    (g,) = torch.autograd.grad(c.sum(), x, create_graph=create_graph, allow_unused=True)
    return c, torch.zeros_like(x) if g is None else g


def control_variate_estimate(
    *,
    f_b: torch.Tensor,
    score: torch.Tensor,
    z: torch.Tensor,
    z_tilde: torch.Tensor | None,
    relax: Callable[[torch.Tensor], torch.Tensor],
    jvp_tilde: Callable[[torch.Tensor], torch.Tensor],
    control: Control,
    evaluate: Loss,
    batch: tuple[int, ...],
    fn: str,
) -> torch.Tensor:
    r"""The REBAR / RELAX estimate :math:`\hat g`, shaped like ``score``.

    Args:
        f_b: f(b) per row (detached, compute dtype), shape ``batch``.
        score: :math:`\nabla_\theta \log p(b)`, shaped like the logits.
        z: the perturbed logits (finite everywhere: masked or infinite entries replaced).
        z_tilde: the conditional draw, or None for z itself (shared noise).
        relax: x -> the relaxed sample :math:`\sigma_\lambda(x)` (fixes masked / infinite entries).
        jvp_tilde: v -> :math:`J^\top v` of the conditional reparameterisation at z_tilde.
        control: the control of this call.
        evaluate: the loss at a relaxed sample, per row.
        batch: the rows' shape.
        fn: the public function, for messages.

    Returns:
        The estimate; with a graph to the control's parameters when ``control.trained()``.
    """
    create_graph = control.trained()
    view = batch + (1,) * (score.dim() - len(batch))
    if control.is_zero():  # c = 0: REINFORCE with one sample
        return f_b.view(view) * score

    def c_of(x: torch.Tensor) -> torch.Tensor:
        c = control.value(relax(x), evaluate, batch, z.dtype, fn)
        assert c is not None  # c is not identically 0 (checked above)
        return c

    c_z, gx = _value_and_input_gradient(c_of, z, create_graph, fn)
    if z_tilde is None:
        c_zt, gxt = c_z, gx
    else:
        c_zt, gxt = _value_and_input_gradient(c_of, z_tilde, create_graph, fn)
    if not create_graph:
        c_zt = c_zt.detach()
    return (f_b - c_zt).view(view) * score + gx - jvp_tilde(gxt)


def variance_term(estimate: torch.Tensor, control: Control, batch: tuple[int, ...]) -> torch.Tensor | None:
    r"""A term of shape ``batch``, exactly 0 forwards, whose gradient reaches only the control's
    parameters: the gradient of :math:`\sum_r \|\hat g_r\|^2` spread evenly over the rows.

    So ``s.sum().backward()`` of the surrogate gives the control the gradient of the summed
    single-sample squared norms (``s.mean()`` their mean): the gradient of the estimate's
    variance, since its mean does not depend on the control. The gradient is computed here,
    with ``torch.autograd.grad`` restricted to the control's parameters, so the parameters of f
    (which the estimate also depends on) receive nothing from it.
    """
    if not control.trained():
        return None
    grads = torch.autograd.grad(estimate.square().sum(), control.params, allow_unused=True)
    # A relaxed sample exactly where f's curvature is infinite (|y - c|^p with 1 < p < 2 at y = c:
    # the double backward gives inf) makes this one-sample variance gradient non-finite although
    # its expectation is finite. Any control leaves the estimate unbiased, so such entries are
    # dropped for this call rather than turning the control's state into NaN (elementwise: no sync).
    grads = tuple(None if g is None else torch.where(torch.isfinite(g), g, torch.zeros_like(g)) for g in grads)
    terms = [(p * g).sum() for p, g in zip(control.params, grads) if g is not None]
    if not terms:
        return None
    t = torch.stack([term.to(estimate.dtype) for term in terms]).sum()
    t = (t - t.detach()) / max(1, math.prod(batch))
    return t.expand(batch)


# --------------------------------------------------------------------------- one-of-K


def conditional_gumbel_vjp(v: torch.Tensor, p: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`J^\top v` for the conditional Gumbel draw z~(theta) given its argmax D, noise held fixed.

    Math: with :math:`\tilde z_D = \log Z - \log E_D` and
    :math:`\tilde z_i = -\log(E_i e^{-\theta_i} + E_D / Z)`,
    :math:`\partial\tilde z_i / \partial\theta_j = [i = j \ne D](1 - w_i) + p_j w_i` with
    :math:`p = \mathrm{softmax}(\theta)` and :math:`w_i = \exp(\tilde z_i - \tilde z_D)` (so
    :math:`w_D = 1`), hence :math:`J^\top v = v \odot (1 - w) + p\,\langle v, w\rangle`. Every
    factor is in [0, 1]; masked classes (p = w = 0) get :math:`v_i`, which is 0 there.

    Args:
        v: the vector (a gradient with respect to z~), shaped like the logits.
        p: softmax(theta) along ``dim``.
        w: exp(z~ - z~_D) along ``dim``.
        dim: the category dim.
    """
    return v * (1.0 - w) + p * (v * w).sum(dim, keepdim=True)


def _check_batch(losses: Any, logits: torch.Tensor, dim: int, fn: str, what: str) -> tuple[int, ...]:
    """The rows' shape: f's output must be a leading part of ``logits.shape`` ending before ``dim``."""
    if not isinstance(losses, torch.Tensor):
        raise GumbelkitTypeError(f"{fn}: expected {what} to return a torch.Tensor, got {type(losses).__name__}")
    m = losses.dim()
    if m > dim or tuple(losses.shape) != tuple(logits.shape[:m]):
        raise GumbelkitValueError(
            f"{fn}: expected {what} to return one loss per row, a leading part of the logits' shape "
            f"{shape_str(logits.shape)} before dim={dim}, got {shape_str(losses.shape)}"
        )
    return tuple(losses.shape)


def _categorical_estimate(
    method: str,
    logits: torch.Tensor,
    loss_fn: Loss,
    *,
    dim: int,
    generator: torch.Generator | None,
    control: Any,
    options: dict,
    fn: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REBAR / RELAX for one-of-K variables: (surrogate of shape batch, losses of shape (1, *batch))."""
    dim = check_logits(logits, dim, fn=fn)
    check_generator(generator, logits.device, fn)
    ctl = resolve_control(method, control, options, fn)
    cdt = compute_dtype(logits.dtype)
    theta = logits.detach().to(cdt)
    masked = torch.isneginf(theta)
    # Shift each row to a maximum of 0 before adding the noise (the estimate is unchanged:
    # softmax, log p and the conditional draws are shift-equivariant) so that float32 keeps the
    # noise of large logits.
    theta = theta - theta.amax(dim, keepdim=True)
    z = theta - log_exp_noise(theta.shape, generator, theta.device, cdt)  # theta + Gumbel
    index = z.argmax(dim, keepdim=True)
    b = torch.zeros_like(theta).scatter(dim, index, 1.0)
    losses = loss_fn(b.to(logits.dtype).unsqueeze(0))  # f(b), in the caller's grad mode
    if not isinstance(losses, torch.Tensor) or losses.dim() < 1 or losses.shape[0] != 1:
        got = shape_str(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise GumbelkitValueError(f"{fn}: expected loss_fn to return losses of shape (1, *rows), got {got}")
    batch = _check_batch(losses[0], logits, dim, fn, "loss_fn")
    with torch.enable_grad():

        def evaluate(sample: torch.Tensor) -> torch.Tensor:
            out = loss_fn(sample.to(logits.dtype).unsqueeze(0))
            if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != 1:
                got = shape_str(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise GumbelkitValueError(f"{fn}: expected loss_fn to return losses of shape (1, *rows), got {got}")
            return out[0]

        p = torch.softmax(theta, dim)
        score = b - p
        x_safe = torch.where(masked, 0.0, z)  # masked entries: finite stand-ins, masked again in relax()
        lam = ctl.temperature.to(cdt) if isinstance(ctl.temperature, torch.Tensor) else ctl.temperature

        def relax(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax((x / lam).masked_fill(masked, float("-inf")), dim)

        if options["noise"] == "shared":
            z_tilde, zt = None, z
        else:
            log_z = torch.logsumexp(theta, dim, keepdim=True)
            log_e = log_exp_noise((1,) + tuple(theta.shape), generator, theta.device, cdt)
            zt = _condition(theta, log_z, index, log_e, dim)[0]
            z_tilde = torch.where(masked, 0.0, zt)
        w = (zt - zt.gather(dim, index)).exp()  # see conditional_gumbel_vjp

        estimate = control_variate_estimate(
            f_b=losses[0].detach().to(cdt),
            score=score,
            z=x_safe,
            z_tilde=z_tilde,
            relax=relax,
            jvp_tilde=lambda v: conditional_gumbel_vjp(v, p, w, dim),
            control=ctl,
            evaluate=lambda y: evaluate(y).to(cdt),
            batch=batch,
            fn=fn,
        )
        extra = variance_term(estimate, ctl, batch)
    g = estimate.detach()
    x = torch.where(masked, 0.0, logits.to(cdt))  # 0 * -inf would be NaN
    event = tuple(range(len(batch), logits.dim()))
    term = (g * x).sum(event) if event else g * x
    term = term - term.detach()  # exactly 0 forwards, gradient g
    out = losses[0] + term.to(losses.dtype)
    if extra is not None:
        out = out + extra.to(out.dtype)
    return out, losses


@register("rebar", kind="score_function", one_hot=True, uses_tau=False, **REBAR_DECLARATION)
def rebar_objective(
    logits: torch.Tensor,
    loss_fn: Loss,
    *,
    dim: int = -1,
    generator: torch.Generator | None = None,
    control: RebarControl | None = None,
    eta: float = 1.0,
    temperature: float = 0.5,
    noise: str = "shared",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""REBAR for one-of-K variables, as a surrogate objective (categorical ``"score_function"`` method).

    Math: z = theta + g (g standard Gumbel), b = one_hot(argmax z) ~ Categorical(softmax theta),
    the control :math:`c = \eta\, f(\mathrm{softmax}(z / \lambda))` and the estimate
    :math:`(f(b) - c(\tilde z))\nabla \log p(b) + \nabla c(z) - \nabla c(\tilde z)`
    (:mod:`gumbelkit.estimators._rebar`), with z~ ~ p(z | b) the conditional Gumbel of Gumbel-Rao
    (``noise="independent"``) or z itself differentiated as one (``"shared"``). Unbiased for
    every eta and lambda. Cost: f at b and at the relaxed sample (``"independent"``: also at z~),
    one backward through f per relaxed evaluation; a trained control adds a double backward.

    Args:
        logits: (..., K, ...) logits; every variable independent.
        loss_fn: maps samples of shape (1, *logits.shape) -- the one-hot b and the relaxed
            samples -- to losses of shape (1, *rows), ``rows`` a leading part of
            ``logits.shape`` before ``dim`` (each loss covers the variables of its row);
            differentiable at relaxed samples.
        dim: the category dimension.
        generator: optional ``torch.Generator``.
        control: a :class:`RebarControl` whose eta and lambda are trained (the surrogate's
            backward gives them the gradient of the estimate's variance), or None: eta and
            lambda fixed at ``eta`` and ``temperature``.
        eta: the fixed scale (control=None), >= 0.
        temperature: the fixed lambda > 0 (control=None).
        noise: ``"shared"`` or ``"independent"``.

    Returns:
        (surrogate of shape ``rows``, losses of shape (1, *rows)): the surrogate's value is f(b),
        its gradient with respect to ``logits`` the estimate.

    Examples:
        >>> logits = torch.zeros(5, 3, requires_grad=True)
        >>> loss_fn = lambda z: ((z - torch.tensor([0.0, 1.0, 0.0])) ** 2).sum(-1)
        >>> s, losses = gk.estimators.rebar_objective(logits, loss_fn, generator=torch.Generator().manual_seed(0))
        >>> s.shape, losses.shape
        (torch.Size([5]), torch.Size([1, 5]))

    Reference: Tucker, Mnih, Maddison, Lawson, Sohl-Dickstein, "REBAR: Low-variance, unbiased
    gradient estimates for discrete latent variable models", NeurIPS 2017.
    """
    opts = get_spec("rebar").resolve(
        {"eta": eta, "temperature": temperature, "noise": noise}, where="rebar_objective: "
    )
    return _categorical_estimate(
        "rebar", logits, loss_fn, dim=dim, generator=generator, control=control, options=opts, fn="rebar_objective"
    )


@register("relax", kind="score_function", one_hot=True, uses_tau=False, **RELAX_DECLARATION)
def relax_objective(
    logits: torch.Tensor,
    loss_fn: Loss,
    *,
    dim: int = -1,
    generator: torch.Generator | None = None,
    control: nn.Module | None = None,
    temperature: float = 0.5,
    f_term: bool = True,
    hidden: int = 10,
    noise: str = "shared",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""RELAX for one-of-K variables, as a surrogate objective (categorical ``"score_function"`` method).

    Math: as :func:`rebar_objective` with the control
    :math:`c = f(\mathrm{softmax}(z / \lambda)) + r(\mathrm{softmax}(z / \lambda))`, r a
    learned network (``f_term=False``: r alone). Unbiased for every r and lambda.

    Args:
        logits: as :func:`rebar_objective`.
        loss_fn: as :func:`rebar_objective`.
        dim: as :func:`rebar_objective`.
        generator: as :func:`rebar_objective`.
        control: a :class:`RelaxControl` (its network and lambda are trained), any ``nn.Module``
            r mapping the relaxed sample, shaped like ``logits``, to one value per row (trained;
            lambda fixed at ``temperature``), or None: r = 0, the untrained default (RELAX is then
            REBAR with eta = 1, or, with ``f_term=False``, single-sample REINFORCE).
        temperature: lambda > 0 when the control does not hold it.
        f_term: add f(softmax(z / lambda)) to r (when the control is not a RelaxControl).
        hidden: width of the default network built by ``get_spec("relax").new_control``.
        noise: ``"shared"`` or ``"independent"``.

    Returns:
        (surrogate of shape ``rows``, losses of shape (1, *rows)), as :func:`rebar_objective`; a
        trained control gets the gradient of the estimate's variance from the same backward.

    Examples:
        >>> logits = torch.zeros(5, 2, 3, requires_grad=True)                 # 5 rows of 2 variables
        >>> loss_fn = lambda z: (z[..., 0] * torch.tensor([1.0, 2.0])).sum(-1)  # (1, 5, 2, 3) -> (1, 5)
        >>> control = gk.get_spec("relax").new_control((2, 3))
        >>> s, _ = gk.estimators.relax_objective(logits, loss_fn, control=control)
        >>> s.sum().backward()
        >>> control.log_temperature.grad is not None
        True

    Reference: Grathwohl, Choi, Wu, Roeder, Duvenaud, "Backpropagation through the Void:
    Optimizing control variates for black-box gradient estimation", ICLR 2018.
    """
    opts = get_spec("relax").resolve(
        {"temperature": temperature, "f_term": f_term, "hidden": hidden, "noise": noise}, where="relax_objective: "
    )
    return _categorical_estimate(
        "relax", logits, loss_fn, dim=dim, generator=generator, control=control, options=opts, fn="relax_objective"
    )


# --------------------------------------------------------------------------- the one-of-K surrogate


def surrogate(
    logits: torch.Tensor,
    f: Loss,
    method: str,
    *,
    dim: int = -1,
    generator: torch.Generator | None = None,
    control: nn.Module | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""A surrogate whose gradient is an unbiased estimate of :math:`\nabla_\theta \mathbb{E}_{b} f(b)`
    for one-of-K samples b of Categorical(softmax(logits)): the one-of-K counterpart of
    :func:`gumbelkit.binary.surrogate`.

    ``f`` maps a sample shaped like ``logits`` (one-hot along ``dim``, or relaxed for the methods
    with a relaxation control) to one loss per row, a tensor of shape ``logits.shape[:m]`` for
    some m <= dim (for a VAE latent (B, N, K): losses (B,), each covering the N variables of its
    row). The result has that shape; its value is a Monte-Carlo estimate of E[f] (f at the
    method's samples, carrying f's graph, so parameters inside f get their pathwise gradient),
    and its gradient with respect to ``logits[r]`` is row r's estimate, so ``.sum().backward()``
    gives every row its own.

    Methods: the categorical ``"score_function"`` methods of the registry
    (``gk.estimators.methods("categorical", kind="score_function")``): ``"reinforce"`` (n
    samples, leave-one-out baseline), ``"rebar"`` and ``"relax"`` (see
    :func:`gumbelkit.estimators.rebar_objective`). A method with learnable state takes its module
    as ``control`` (``gk.get_spec(method).new_control(event_shape)``); one ``.backward()`` then
    also gives the module the gradient of the estimate's variance.

    Args:
        logits: unnormalised log-probabilities, categories along ``dim``.
        f: the loss, ``f(sample) -> Tensor`` of shape ``logits.shape[:m]``, m <= dim.
        method: a categorical score-function method.
        dim: the category dimension.
        generator: optional ``torch.Generator`` (keyword-only).
        control: the learnable control of a method with state (None: its fixed behaviour).
        **options: the method's options (e.g. ``n`` for ``"reinforce"``, ``eta`` for ``"rebar"``).

    Returns:
        Tensor of f's output shape.

    Raises:
        GumbelkitError: what the method refuses (NaN / +inf logits, all-masked rows, a bad
            ``dim``, an integer dtype), an unknown method or option, an option out of range, a
            non-callable ``f``, an ``f`` that returns a wrong shape, a control of the wrong kind.

    Examples:
        >>> logits = torch.zeros(4, 3, requires_grad=True)
        >>> f = lambda z: ((z - torch.tensor([1.0, 0.0, 0.0])) ** 2).sum(-1)
        >>> s = gk.surrogate(logits, f, "rebar", generator=torch.Generator().manual_seed(0))
        >>> s.shape
        torch.Size([4])
        >>> s.sum().backward()
        >>> logits.grad.shape
        torch.Size([4, 3])

    Reference: Williams, 1992; Tucker et al., NeurIPS 2017 (REBAR); Grathwohl et al., ICLR 2018 (RELAX).
    """
    fn = "surrogate"
    spec = get_spec(method, "categorical", kind="score_function", where=fn)
    d = check_logits(logits, dim, fn=fn)
    if not callable(f):
        raise GumbelkitTypeError(f"{fn}: expected f to be callable, got {type(f).__name__}")
    opts = spec.check_options(options, where=f"{fn}: ")

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        outs = []
        for sample in z.unbind(0):
            out = f(sample)
            _check_batch(out, logits, d, fn, "f")
            outs.append(out)
        return torch.stack(outs)

    if spec.has_control:
        if control is not None and not isinstance(control, nn.Module):
            raise GumbelkitTypeError(
                f"{fn}: expected control to be a torch.nn.Module or None, got {type(control).__name__}"
            )
    elif control is not None:
        raise GumbelkitTypeError(f"{fn}: method {method!r} has no learnable state: expected control=None")
    out, _ = spec.call(logits, loss_fn, dim=d, generator=generator, control=control, **opts)
    return out
