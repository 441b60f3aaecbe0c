"""``torch.nn`` modules over the functional API."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ._core.numerics import argmax_index
from ._core.policy import check_mode, in_vmap
from ._core.validation import check_dtype, check_int, check_tau, is_int, normalize_dim, shape_str
from ._kl import kl_categorical
from .distributions._hard_concrete import HardConcrete, check_limits
from .errors import GumbelkitError, GumbelkitTypeError, GumbelkitValueError
from .estimators import METHODS, get_spec, sample
from .schedules import LearnableTemperature

__all__ = ["GumbelQuantizer", "GumbelSoftmax", "L0Gate", "QuantizerOutput"]


class GumbelSoftmax(torch.nn.Module):
    r"""Draws a sample with any registered method; usable inside ``nn.Sequential``.

    The temperature is a float, a schedule (a pure ``step -> tau`` function evaluated at the
    module's ``step`` buffer, which advances by one per forward in training mode), or a
    :class:`~gumbelkit.schedules.LearnableTemperature`.

    Args:
        method: a name from :data:`gumbelkit.METHODS` (default ``"st_gumbel"``).
        tau: float, schedule or learnable temperature module.
        dim: category dimension.
        generator: optional ``torch.Generator`` used on every call.
        **options: method options (``k`` for gumbel_rao).

    Raises:
        GumbelkitValueError: an unknown ``method`` or a float ``tau`` that is not > 0 and finite.
        GumbelkitTypeError: a ``tau`` that is neither a float nor callable.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 10), GumbelSoftmax("st_gumbel", tau=0.5))
        >>> y = net(torch.randn(4, 16))
        >>> y.shape, bool((y.sum(-1) == 1).all())
        (torch.Size([4, 10]), True)

    Reference: Jang, Gu, Poole, ICLR 2017.
    """

    def __init__(
        self,
        method: str = "st_gumbel",
        tau: float | Callable[[int], float] | LearnableTemperature = 1.0,
        dim: int = -1,
        *,
        generator: torch.Generator | None = None,
        **options: Any,
    ):
        super().__init__()
        fn = type(self).__name__
        # Everything that needs no input is checked here, not at the first forward: the method is
        # a registered sampling method (a score-function one needs the loss), its options are
        # checked against the method's declaration, and dim is an int.
        self.options = _sample_options(method, options, fn)
        if not is_int(dim):
            raise GumbelkitTypeError(f"{fn}: expected dim to be an int, got {type(dim).__name__}")
        _check_generator_type(generator, fn)
        if isinstance(tau, numbers.Real) and not isinstance(tau, bool):
            check_tau(tau, fn=fn)  # > 0 and finite (also refuses NaN), as the samplers do at every call
        elif not callable(tau):
            raise GumbelkitTypeError(
                f"{fn}: expected tau to be a float, a schedule or a LearnableTemperature, got {type(tau).__name__}"
            )
        self.method = method
        self.tau = tau  # a LearnableTemperature registers as a submodule
        self.dim = int(dim)
        self.generator = generator
        self.step: torch.Tensor
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def current_tau(self):
        """The temperature the next forward will use (float or tensor)."""
        if isinstance(self.tau, torch.nn.Module):
            return self.tau()
        if callable(self.tau):
            return self.tau(int(self.step))
        return self.tau

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        try:
            out = sample(logits, self.method, self.current_tau(), self.dim, generator=self.generator, **self.options)
        except GumbelkitError as exc:  # the checks ran in sample(); the user called this module
            raise _renamed(exc, "sample", type(self).__name__) from None
        if self.training:
            self.step.add_(1)
        return out

    def extra_repr(self) -> str:
        tau = self.tau if isinstance(self.tau, numbers.Real) else getattr(self.tau, "spec", type(self.tau).__name__)
        return f"method={self.method!r}, tau={tau}, dim={self.dim}"


class L0Gate(torch.nn.Module):
    r"""Learnable Hard Concrete gates on the last dimension of its input, with an expected-L0 penalty.

    Holds one learnable log alpha per gate, ``n // group_size`` gates, each shared by
    ``group_size`` consecutive units of the last dimension (structured pruning of neurons, heads,
    channels). ``forward(x)`` returns ``x * gate`` broadcast over the last dimension:

    * training: a :class:`~gumbelkit.distributions.HardConcrete` sample, drawn independently for
      every leading index of ``x`` (shape ``x.shape[:-1] + (n_gates,)``, as in the paper's
      reference code), differentiable in log alpha;
    * eval: the deterministic test-time gate min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma)).

    :meth:`l0_penalty` is the expected number of non-zero *units*,
    ``group_size * sum_g sigmoid(log alpha_g - beta log(-gamma / zeta))``, so groups of different
    sizes are penalised by the parameters they remove. :meth:`n_active` counts units as well.

    Args:
        n: size of the last dimension of the input.
        group_size: units per gate; must divide ``n`` (default 1: one gate per unit).
        init_log_alpha: initial log alpha, a float or a tensor broadcastable to ``(n // group_size,)``.
            Default 2.0: P(gate != 0) = 0.973, eval gate 0.957 (start almost open). The paper's
            initial drop rate p corresponds to log((1 - p) / p).
        temperature: beta > 0 (default 2/3).
        limits: (gamma, zeta) with gamma < 0 < 1 < zeta (default (-0.1, 1.1)).

    Examples:
        >>> gate = L0Gate(6, group_size=2)
        >>> x = torch.ones(4, 6)
        >>> gate(x, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 6])
        >>> gate.l0_penalty().detach(), gate.n_active()
        (tensor(5.8402), 6)
        >>> _ = gate.eval()
        >>> gate(x).detach()[0]
        tensor([0.9570, 0.9570, 0.9570, 0.9570, 0.9570, 0.9570])

    Reference: Louizos, Welling, Kingma, ICLR 2018.
    """

    n: int
    group_size: int
    temperature: float
    gamma: float
    zeta: float
    log_alpha: torch.nn.Parameter

    def __init__(
        self,
        n: int,
        *,
        group_size: int = 1,
        init_log_alpha: float | torch.Tensor = 2.0,
        temperature: float = 2.0 / 3.0,
        limits: tuple[float, float] = (-0.1, 1.1),
    ):
        super().__init__()
        fn = type(self).__name__
        for name, v in (("n", n), ("group_size", group_size)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise GumbelkitTypeError(f"{fn}: expected {name} to be an int, got {type(v).__name__}")
            if v < 1:
                raise GumbelkitValueError(f"{fn}: expected {name} >= 1, got {v}")
        if n % group_size:
            raise GumbelkitValueError(f"{fn}: expected group_size to divide n = {n}, got group_size = {group_size}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise GumbelkitTypeError(f"{fn}: expected temperature to be a float, got {type(temperature).__name__}")
        check_tau(float(temperature), name="temperature", fn=fn)
        self.gamma, self.zeta = check_limits(fn, limits)
        self.n = int(n)
        self.group_size = int(group_size)
        self.temperature = float(temperature)
        n_gates = self.n // self.group_size
        init = torch.as_tensor(init_log_alpha, dtype=torch.get_default_dtype())
        try:
            init = init.expand(n_gates).clone()
        except RuntimeError:
            raise GumbelkitValueError(
                f"{fn}: expected init_log_alpha broadcastable to ({n_gates},), got shape {tuple(init.shape)}"
            ) from None
        if not bool(torch.isfinite(init).all()):
            raise GumbelkitValueError(f"{fn}: expected finite init_log_alpha")
        self.log_alpha = torch.nn.Parameter(init)

    @property
    def n_gates(self) -> int:
        """Number of gates, ``n // group_size``."""
        return self.n // self.group_size

    def distribution(self) -> HardConcrete:
        """The gates' :class:`~gumbelkit.distributions.HardConcrete`, batch shape ``(n_gates,)``."""
        return HardConcrete(self.log_alpha, self.temperature, (self.gamma, self.zeta), validate_args=False)

    def _units(self, gates: torch.Tensor) -> torch.Tensor:
        return gates if self.group_size == 1 else gates.repeat_interleave(self.group_size, dim=-1)

    def gate(self, sample_shape: torch.Size | tuple[int, ...] = (), *, generator: torch.Generator | None = None):
        """Per-unit gate, shape ``sample_shape + (n,)``: sampled in training, deterministic in eval."""
        d = self.distribution()
        if self.training:
            return self._units(d.rsample(torch.Size(sample_shape), generator=generator))
        return self._units(d.deterministic()).expand(*sample_shape, self.n)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        fn = type(self).__name__
        check_dtype(x, "x", fn)  # an integer input would silently come out as float
        _check_generator_type(generator, fn)
        if x.dim() == 0 or x.shape[-1] != self.n:
            raise GumbelkitValueError(
                f"{fn}: expected x with last dimension n = {self.n}, got x of shape {tuple(x.shape)}"
            )
        gate = self.gate(x.shape[:-1], generator=generator) if self.training else self.gate()
        # the gates live in the parameters' dtype (float32); the output keeps x's (float16 stays float16)
        return x * gate.to(x.dtype)

    def l0_penalty(self) -> torch.Tensor:
        """Expected number of non-zero units: ``group_size * sum(prob_nonzero)`` (differentiable)."""
        return self.distribution().prob_nonzero().sum() * self.group_size

    def n_active(self) -> int:
        """Number of units whose deterministic (eval) gate is > 0: ``group_size`` times the open gates."""
        with torch.no_grad():
            return int((self.distribution().deterministic() > 0).sum()) * self.group_size

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, group_size={self.group_size}, temperature={self.temperature:.4g}, "
            f"limits=({self.gamma}, {self.zeta})"
        )


class QuantizerOutput(NamedTuple):
    """What :class:`GumbelQuantizer` returns (a ``NamedTuple``: unpacks, indexes, crosses DDP and compile).

    Attributes:
        z_q: quantised output, the input's layout with ``embedding_dim`` channels at ``dim``.
        loss: ``kl_weight * kl``, the term to add to the training loss.
        kl: mean over positions of KL(q || prior), q = softmax(logits) (a scalar).
        codes: code index per position (long), the input's shape without ``dim``.
        logits: the projection's ``n_codes`` logits, the input's layout with ``n_codes`` at ``dim``.
        perplexity: exp(entropy) of this batch's code histogram, in [1, n_codes] (no gradient).
    """

    z_q: torch.Tensor
    loss: torch.Tensor
    kl: torch.Tensor
    codes: torch.Tensor
    logits: torch.Tensor
    perplexity: torch.Tensor


def _histogram_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(-sum p log p) of a count vector; 0 log 0 = 0, and an empty histogram gives 1."""
    total = counts.sum()
    p = counts / total.clamp_min(1)
    # where() before the log: log(0) = -inf and 0 * -inf = NaN for unused codes.
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0)
    return torch.exp(-plogp.sum())


class GumbelQuantizer(torch.nn.Module):
    r"""Gumbel vector quantiser: project to code logits, sample a code per position, look it up.

    The layer of the discrete VAE family (DALL-E's dVAE, taming-transformers' ``GumbelQuantize``):
    for every position of the input (each pixel of a ``B x C x H x W`` map with ``dim=1``, each
    token of a ``B x T x C`` sequence with ``dim=-1``)

    .. math::

        \ell = W x + b \in \mathbb{R}^{K}, \qquad
        y = \mathrm{sample}(\ell, \text{method}, \tau) \in \Delta^{K-1}, \qquad
        z_q = y^\top E \in \mathbb{R}^{D},

    with :math:`W` a 1x1 projection (``in_features -> n_codes``), :math:`E` the ``n_codes x
    embedding_dim`` codebook and ``sample`` :func:`gumbelkit.sample` with any registered method
    (default the straight-through Gumbel estimator, so :math:`y` is exactly one-hot). The
    regulariser is the analytic KL of :math:`q = \mathrm{softmax}(\ell)` to the prior
    :math:`p` (uniform, or ``softmax(log_prior)`` with a learned ``log_prior`` parameter):

    .. math::

        \mathrm{kl} = \operatorname{mean}_{\text{positions}} \sum_k q_k (\log q_k - \log p_k),
        \qquad \mathrm{loss} = \text{kl\_weight} \cdot \mathrm{kl}.

    In eval mode the code is deterministic by default, :math:`y = \mathrm{one\_hot}(\arg\max \ell)`
    (``deterministic_eval=False`` samples with the method instead).

    **Temperature.** ``tau`` is a float, a tensor (broadcastable to the logits in the input's
    layout; kept as a buffer), a schedule from :mod:`gumbelkit.schedules` evaluated at the
    ``step`` buffer (one step per training forward, saved in the ``state_dict``), or a
    :class:`~gumbelkit.schedules.LearnableTemperature`, exactly as :class:`GumbelSoftmax`.

    **Usage statistics** (buffers, updated by training forwards only, like BatchNorm's running
    statistics): ``code_counts`` (codes drawn since the last :meth:`reset_usage`) and
    ``last_used`` (the ``step`` at which each code was last drawn). :meth:`dead_codes` lists the
    codes unused since the reset or over the last ``window`` training steps;
    :meth:`usage_perplexity` is the perplexity of the accumulated histogram.

    **Distributed.** Everything is a parameter or a buffer, so the module pickles, saves and
    works under ``DistributedDataParallel`` and ``torch.compile``. The statistics are those of the
    local batch unless ``sync_usage=True``: then each training forward all-reduces the batch's code
    histogram (one ``all_reduce`` of ``n_codes`` numbers, on every rank, so every rank must call
    forward the same number of times) and the counts, dead codes and returned perplexity describe
    the global batch. Without it each rank counts its own batch, and DDP's default
    ``broadcast_buffers=True`` copies rank 0's buffers to every rank before each forward, so the
    accumulated counts are rank 0's history plus the local batch. With no initialised process
    group ``sync_usage`` does nothing. Under ``torch.vmap`` the perplexity is each call's own and
    the usage buffers are not updated. A schedule reads ``step`` on the host
    (one sync per training forward); float and tensor temperatures do not.

    **Bad input.** With the validation switch in ``"device"`` mode (the default for CUDA tensors,
    see :func:`gumbelkit.set_validation`) a position whose logits hold NaN or +inf gets NaN in
    ``z_q`` and code -1 (not counted in the usage statistics); the forward never reads a value
    back to the host. In ``"raise"`` mode (the default on the CPU) it raises.

    Args:
        in_features: channels of the input at ``dim``.
        n_codes: codebook size K (>= 2).
        embedding_dim: code vector size D.
        method: a name from :data:`gumbelkit.METHODS` (default ``"st_gumbel"``).
        tau: float, tensor, schedule or learnable temperature (default 1.0).
        dim: channel dimension of the input (``1`` for images, ``-1`` for sequences).
        kl_weight: weight of the KL term in ``loss`` (>= 0; default 5e-4, taming-transformers').
        prior: ``"uniform"`` or ``"learned"`` (a ``log_prior`` parameter, initialised uniform).
        deterministic_eval: eval mode picks argmax codes (default True).
        track_usage: update the usage buffers in training mode (default True).
        sync_usage: all-reduce the batch histogram across processes (default False).
        dead_window: default window (in training steps) of :meth:`dead_codes`; None: since reset.
        generator: optional ``torch.Generator`` for the noise (not picklable: leave None to pickle).
        **options: method options (``k`` for gumbel_rao).

    ``forward(x)`` returns a :class:`QuantizerOutput` ``(z_q, loss, kl, codes, logits, perplexity)``.

    Raises:
        GumbelkitValueError: unknown or score-function method, bad option, tau, sizes, prior,
            kl_weight, dead_window, or an input whose ``dim`` does not hold ``in_features``.
        GumbelkitTypeError: a tau of the wrong type, a non-floating input.
        GumbelkitDimError: a ``dim`` the input does not have.

    Examples:
        >>> q = GumbelQuantizer(16, n_codes=32, embedding_dim=8, dim=1)
        >>> out = q(torch.randn(2, 16, 7, 7))
        >>> out.z_q.shape, out.codes.shape, out.logits.shape
        (torch.Size([2, 8, 7, 7]), torch.Size([2, 7, 7]), torch.Size([2, 32, 7, 7]))
        >>> int(q.code_counts.sum()), int(q.step)
        (98, 1)
        >>> _ = q.eval()
        >>> bool(torch.equal(q(torch.ones(1, 16, 2, 2)).z_q, q(torch.ones(1, 16, 2, 2)).z_q))
        True

    References: Jang, Gu, Poole, ICLR 2017 (Gumbel-Softmax); Ramesh et al., ICML 2021 (dVAE);
    Esser, Rombach, Ommer, CVPR 2021 (taming-transformers' GumbelQuantize).
    """

    step: torch.Tensor
    code_counts: torch.Tensor
    last_used: torch.Tensor
    tau: Any  # float, tensor buffer, schedule or LearnableTemperature
    in_features: int
    n_codes: int
    embedding_dim: int
    method: str
    options: dict
    dim: int
    kl_weight: float
    prior: str
    deterministic_eval: bool
    track_usage: bool
    sync_usage: bool
    dead_window: int | None
    generator: torch.Generator | None
    proj: torch.nn.Linear
    codebook: torch.nn.Embedding
    log_prior: torch.nn.Parameter | None

    def __init__(
        self,
        in_features: int,
        n_codes: int,
        embedding_dim: int,
        *,
        method: str = "st_gumbel",
        tau: float | torch.Tensor | Callable[[int], float] | LearnableTemperature = 1.0,
        dim: int = -1,
        kl_weight: float = 5e-4,
        prior: str = "uniform",
        deterministic_eval: bool = True,
        track_usage: bool = True,
        sync_usage: bool = False,
        dead_window: int | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ):
        super().__init__()
        fn = type(self).__name__
        self.in_features = check_int(in_features, "in_features", fn=fn)
        self.n_codes = check_int(n_codes, "n_codes", min=2, fn=fn)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", fn=fn)
        self.options = _sample_options(method, options, fn)
        _check_generator_type(generator, fn)
        if isinstance(tau, torch.Tensor):
            check_tau(tau, fn=fn)
            self.register_buffer("tau", tau.detach().clone())
        elif isinstance(tau, numbers.Real) and not isinstance(tau, bool):
            self.tau = check_tau(tau, fn=fn)
        elif callable(tau):
            self.tau = tau  # a schedule, or a LearnableTemperature (registers as a submodule)
        else:
            raise GumbelkitTypeError(
                f"{fn}: expected tau to be a float, a tensor, a schedule or a LearnableTemperature, "
                f"got {type(tau).__name__}"
            )
        if not is_int(dim):
            raise GumbelkitTypeError(f"{fn}: expected dim to be an int, got {type(dim).__name__}")
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, numbers.Real) or not 0 <= kl_weight < math.inf:
            raise GumbelkitValueError(f"{fn}: expected kl_weight >= 0 and finite, got {kl_weight!r}")
        if prior not in ("uniform", "learned"):
            raise GumbelkitValueError(f"{fn}: expected prior in ('uniform', 'learned'), got {prior!r}")
        if dead_window is not None:
            dead_window = check_int(dead_window, "dead_window", fn=fn)
        self.method = method
        self.dim = int(dim)
        self.kl_weight = float(kl_weight)
        self.prior = prior
        self.deterministic_eval = bool(deterministic_eval)
        self.track_usage = bool(track_usage)
        self.sync_usage = bool(sync_usage)
        self.dead_window = dead_window
        self.generator = generator
        self.proj = torch.nn.Linear(self.in_features, self.n_codes)
        self.codebook = torch.nn.Embedding(self.n_codes, self.embedding_dim)
        self.log_prior = torch.nn.Parameter(torch.zeros(self.n_codes)) if prior == "learned" else None
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("code_counts", torch.zeros(self.n_codes, dtype=torch.long))
        self.register_buffer("last_used", torch.zeros(self.n_codes, dtype=torch.long))

    def current_tau(self) -> float | torch.Tensor:
        """The temperature the next forward will use (float or tensor)."""
        if isinstance(self.tau, (torch.Tensor, torch.nn.Module)):
            return self.tau() if isinstance(self.tau, torch.nn.Module) else self.tau
        if callable(self.tau):
            return self.tau(int(self.step))
        return self.tau

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantise ``x`` (``in_features`` channels at ``dim``); see the class docstring for the outputs."""
        fn = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise GumbelkitTypeError(f"{fn}: expected x to be a tensor, got {type(x).__name__}")
        check_dtype(x, "x", fn)
        dim = normalize_dim(x, self.dim, "x", fn)
        if x.shape[dim] != self.in_features:
            raise GumbelkitValueError(
                f"{fn}: expected x with in_features = {self.in_features} channels at dim {self.dim}, "
                f"got x of shape {shape_str(x.shape)}"
            )
        # The 1x1 projection is a Linear on the channel-last view, so its output `rows` holds each
        # position's n_codes logits contiguously. Everything code-wise runs on those rows: the
        # sampler along their last dim (no strided category dim, no transposing pass), the codebook
        # product, the codes and the KL. The logits are returned in the input's layout (a view);
        # a tensor tau, given in that layout, is moved like them.
        rows = self.proj(x.movedim(dim, -1))
        logits = rows.movedim(-1, dim)
        if self.training or not self.deterministic_eval:
            tau = _tau_to_last(self.current_tau(), x.dim(), dim)
            y = sample(rows, self.method, tau, -1, generator=self.generator, **self.options)
            codes = self._codes(y)
            z_q = (y @ self.codebook.weight).movedim(-1, dim)
        else:
            # argmax codes: a lookup gives exactly the rows a one-hot product would, without
            # building the (positions x n_codes) one-hot tensor and its matmul
            codes = argmax_index(rows, -1).squeeze(-1)
            z_q = self.codebook(codes).movedim(-1, dim)
        prior = torch.zeros((), dtype=rows.dtype, device=rows.device) if self.log_prior is None else self.log_prior
        # KL of the full posterior (not of the sample): exact, low variance, and it reaches the
        # logits of every code, unused ones included, pulling them towards the prior.
        kl = kl_categorical(rows, prior.to(rows.dtype).expand(self.n_codes)).mean()
        with torch.no_grad():
            flat = codes.reshape(-1)
            if check_mode(rows) == "device":
                # a bad row's code is -1 (see _codes): counted nowhere, and never used as an index,
                # which on a GPU would be a device-side assertion instead of an error
                index, ones = flat.clamp_min(0), (flat >= 0).long()
            else:
                index, ones = flat, torch.ones_like(flat)
            # out of place: under vmap the codes (and so the histogram) are batched
            counts = torch.zeros(self.n_codes, dtype=torch.long, device=x.device).scatter_add(0, index, ones)
            if self.training and self.sync_usage and _distributed():
                torch.distributed.all_reduce(counts)
            # the histogram in float32 or better: float16 holds counts only up to 65,504 (one large
            # batch would read as inf / inf, a perplexity of 1, i.e. a fake codebook collapse)
            wide = torch.promote_types(logits.dtype, torch.float32)
            perplexity = _histogram_perplexity(counts.to(wide)).to(logits.dtype)
            if self.training:
                self.step.add_(1)
                # under vmap each call has its own histogram: there is no one batch to add to the buffers
                if self.track_usage and not in_vmap():
                    self.code_counts.add_(counts)
                    self.last_used.copy_(torch.where(counts > 0, self.step, self.last_used))
        return QuantizerOutput(z_q, self.kl_weight * kl, kl, codes, logits, perplexity)

    def _codes(self, y: torch.Tensor) -> torch.Tensor:
        """The code of each row of the sample ``y`` (positions x n_codes): its argmax.

        A one-hot method's rows hold a single exact 1 (its declaration says so, and the estimator
        tests check it), so the code is y @ (0, 1, ..., K - 1), one matrix-vector product, in
        float32 or float64, where indices below 2**24 are exact (a half-precision y is widened
        first: bfloat16 holds integers exactly only up to 256). Relaxed samples take the argmax.
        """
        y = y.detach()
        if not get_spec(self.method).one_hot or self.n_codes >= 2**24:
            codes = argmax_index(y, -1).squeeze(-1)
        else:
            yc = y if y.dtype in (torch.float32, torch.float64) else y.float()
            ramp = torch.arange(self.n_codes, dtype=yc.dtype, device=yc.device)
            codes = (yc @ ramp).to(torch.long)
        if check_mode(y) == "device":
            # "device" validation: a bad row of logits comes out of the sampler all NaN; its code is
            # -1 (NaN's cast to an integer is undefined), read from the row's first entry alone
            codes = torch.where(torch.isnan(y[..., 0]), -1, codes)
        return codes

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The codebook vectors of integer ``codes``, laid out like ``z_q`` (``embedding_dim`` at ``dim``).

        ``codes`` has the input's shape without ``dim`` (as :attr:`QuantizerOutput.codes`), so
        ``decode_codes(out.codes)`` equals ``out.z_q`` for a one-hot method.
        """
        if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.long, torch.int32, torch.int64):
            raise GumbelkitTypeError(
                f"{type(self).__name__}.decode_codes: expected codes to be an integer tensor, "
                f"got {getattr(codes, 'dtype', type(codes).__name__)}"
            )
        z = self.codebook(codes)
        # the input had one more dimension than codes: a negative dim counts from that rank
        dim = self.dim if self.dim >= 0 else self.dim + codes.dim() + 1
        return z.movedim(-1, dim)

    def dead_codes(self, window: int | None = None) -> torch.Tensor:
        """Indices of the codes not drawn since :meth:`reset_usage`, or in the last ``window`` training steps.

        Args:
            window: number of training steps; None uses ``dead_window`` from the constructor, and
                if that is None too, every step since the reset counts. A code is only called dead
                by a window once that many steps have passed since the reset.
        """
        window = self.dead_window if window is None else check_int(window, "window", fn="GumbelQuantizer.dead_codes")
        if window is None:
            dead = self.code_counts == 0
        else:
            dead = self.last_used <= self.step - window
        return dead.nonzero().flatten()

    def usage_perplexity(self) -> torch.Tensor:
        """Perplexity of ``code_counts`` (1 when nothing was counted; ``n_codes`` when all codes are equally used)."""
        return _histogram_perplexity(self.code_counts.double()).float()

    @torch.no_grad()
    def reset_usage(self) -> None:
        """Zero ``code_counts`` and start every code's window at the current ``step``."""
        self.code_counts.zero_()
        self.last_used.fill_(0).add_(self.step)

    def extra_repr(self) -> str:
        tau: Any = self.tau
        if isinstance(tau, torch.Tensor):
            tau = f"tensor{tuple(tau.shape)}"
        elif not isinstance(tau, numbers.Real):
            tau = getattr(tau, "spec", type(tau).__name__)
        return (
            f"in_features={self.in_features}, n_codes={self.n_codes}, embedding_dim={self.embedding_dim}, "
            f"method={self.method!r}, tau={tau}, dim={self.dim}, kl_weight={self.kl_weight:g}, prior={self.prior!r}"
        )


def _check_generator_type(generator, fn: str) -> None:
    """A generator is None or a torch.Generator (its device is checked where the noise is drawn)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise GumbelkitTypeError(f"{fn}: expected generator to be a torch.Generator, got {type(generator).__name__}")


def _renamed(exc: GumbelkitError, inner: str, outer: str) -> GumbelkitError:
    """The same error, its message naming ``outer`` (the function the user called) instead of ``inner``."""
    msg = str(exc)
    return type(exc)(f"{outer}: {msg.removeprefix(inner + ': ')}")


def _sample_options(method, options: dict, fn: str) -> dict:
    """The options of a registered sampling ``method``, checked against its declaration (errors name ``fn``)."""
    try:
        spec = get_spec(method)
    except ValueError:  # the registry's message, named after the module below
        spec = None
    if spec is None or spec.kind != "sample":
        raise GumbelkitValueError(f"{fn}: expected method in {tuple(METHODS)}, got {method!r}")
    return spec.check_options(options, where=f"{fn}: ") if options else {}


def _tau_to_last(tau, ndim: int, dim: int):
    """A tensor tau broadcastable to logits of rank ``ndim`` with categories at ``dim``, moved like
    the logits to categories-last (leading size-1 dims added first); floats pass through."""
    if not isinstance(tau, torch.Tensor) or tau.dim() == 0 or tau.dim() > ndim:
        return tau  # a tau of too many dims: the sampler's own check reports it
    return tau.reshape((1,) * (ndim - tau.dim()) + tuple(tau.shape)).movedim(dim, -1)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
