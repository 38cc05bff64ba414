"""Forward rates of a continuous-time Markov chain on S states, for the discrete-state framework (ctmc.py), and the
rates of a batch of states that its losses, bound and samplers share (``forward_rates``, ``reverse_rates``).

Every pixel runs the same chain independently, with rate matrix R_t = beta(t) R, where R is a fixed (K, K) base rate
(rows sum to zero, R[i, j] >= 0 the rate from i to j) and beta(t) a scalar time profile. The transition from time 0
is then P(t) = exp(B(t) R) with B(t) = int_0^t beta, in closed form through an eigendecomposition of R computed once
in float64 (never Euler steps):

- ``uniform``: a jump to any other state at rate 1 (Campbell et al. 2022's uniform rate);
- ``birth_death``: a jump to either neighbour at rate 1, reflecting at 0 and S - 1;
- ``gaussian``: Campbell et al.'s ordinal Gaussian-target rate: jumps towards the middle of the range, of a size
  whose rate falls as exp(-(size - 1)^2 / rate_sigma^2), and the reverse jumps at the rates that make the chain
  reversible with respect to a discretised Gaussian of standard deviation Q_sigma centred on the range;
- ``absorbing``: every state jumps to an extra "mask" state K - 1 = S at rate 1 and stays there (masked diffusion,
  Austin et al. 2021; Shi et al. 2024; Sahoo et al. 2024): P(t) has exp(-B) on the diagonal and 1 - exp(-B) in the
  mask column, written directly.

The first three are reversible with respect to a law pi, so D^(1/2) R D^(-1/2) (D = diag(pi)) is symmetric and its
eigendecomposition is real and stable. Profiles: ``exponential`` beta(t) = time_base log(time_exp) time_exp^t,
B(t) = time_base (time_exp^t - 1) (the seed's default; Campbell et al.), ``constant`` beta = rate_const, or
``log_linear`` B(t) = -log(1 - (1 - final_kept) t), under which the absorbing rate keeps a pixel unmasked with
probability 1 - (1 - final_kept) t, linear in t (the masked-diffusion schedule of Shi et al. and Sahoo et al.).
"""
import math

import torch

from libs.errors import UserError

TINY = 1e-30  # floor of a rate inside a logarithm
PROFILES = ('exponential', 'constant', 'log_linear')


class TimeProfile:
    """beta(t) and its integral B(t) from 0, on (B,) float64 times."""

    def __init__(self, kind: str = 'exponential', time_base: float = 3.0, time_exp: float = 100.0,
                 rate_const: float = 1.0, final_kept: float = 1e-3):
        if kind not in PROFILES:
            raise UserError(f"unknown config.ctmc.profile {kind!r}; known: {', '.join(PROFILES)}")
        if kind == 'log_linear' and not 0 < final_kept < 1:
            raise UserError(f'the log-linear profile needs 0 < final_kept < 1, got {final_kept}')
        self.final_kept = final_kept
        if kind == 'exponential' and not (time_base > 0 and time_exp > 1):
            raise UserError(f'the exponential rate profile needs time_base > 0 and time_exp > 1, got '
                            f'{time_base}, {time_exp}')
        if kind == 'constant' and not rate_const > 0:
            raise UserError(f'the constant rate profile needs rate_const > 0, got {rate_const}')
        self.kind, self.time_base, self.time_exp, self.rate_const = kind, time_base, time_exp, rate_const

    def __repr__(self):
        if self.kind == 'constant':
            return f'constant({self.rate_const:g})'
        if self.kind == 'log_linear':
            return f'log_linear(final_kept={self.final_kept:g})'
        return f'exponential(time_base={self.time_base:g}, time_exp={self.time_exp:g})'

    def beta(self, t):
        t = t.double()
        if self.kind == 'constant':
            return torch.full_like(t, self.rate_const)
        if self.kind == 'log_linear':
            return (1.0 - self.final_kept) / (1.0 - (1.0 - self.final_kept) * t)
        return self.time_base * math.log(self.time_exp) * self.time_exp ** t

    def integral(self, t):
        t = t.double()
        if self.kind == 'constant':
            return self.rate_const * t
        if self.kind == 'log_linear':
            return -torch.log1p(-(1.0 - self.final_kept) * t)
        return self.time_base * (self.time_exp ** t - 1.0)


class ForwardRate:
    """A base rate R (K, K) float64 and a profile; ``num_states`` S data states (K = S, or S + 1 with a mask).

    ``rate(t)``: (B, K, K) R_t; ``transition(t)``: (B, K, K) P(t)[i, j] = P(x_t = j | x_0 = i); ``stationary``: (K,)
    the law the chain tends to (the prior of sampling). Results are float64 on the device of t.
    """

    name = ''
    ordinal = False  # states are ordered values (jumps can be summed and clipped)

    def __init__(self, base: torch.Tensor, num_states: int, profile: TimeProfile, stationary: torch.Tensor):
        self.base = base.double()
        self.num_states = num_states
        self.profile = profile
        self.stationary = stationary.double() / stationary.double().sum()

    @property
    def num_chain_states(self) -> int:
        return self.base.shape[0]

    def __repr__(self):
        return f'{type(self).__name__}(S={self.num_states}, {self.profile!r})'

    def rate(self, t):
        return self.profile.beta(t).view(-1, 1, 1) * self.base.to(t.device)

    def transition(self, t):
        raise NotImplementedError


class ReversibleRate(ForwardRate):
    """A rate reversible with respect to its stationary law: P(t) = M diag(exp(B(t) lambda)) M^-1 from the
    eigendecomposition of the symmetrised base rate."""

    def __init__(self, base, num_states, profile, stationary):
        super().__init__(base, num_states, profile, stationary)
        root = self.stationary.sqrt()
        symmetric = root[:, None] * self.base / root[None, :]
        eigvals, eigvecs = torch.linalg.eigh((symmetric + symmetric.T) / 2)
        self.eigvals = eigvals.clamp(max=0.0)  # 0 up to rounding for the stationary direction
        self.left = eigvecs / root[:, None]    # M = D^-1/2 U
        self.right = eigvecs.T * root[None, :]  # M^-1 = U^T D^1/2

    def transition(self, t):
        decay = torch.exp(self.profile.integral(t).view(-1, 1) * self.eigvals.to(t.device))  # (B, K)
        p = torch.einsum('ik,bk,kj->bij', self.left.to(t.device), decay, self.right.to(t.device))
        p = p.clamp(min=0.0)
        return p / p.sum(-1, keepdim=True)


def uniform_rate(num_states: int, profile: TimeProfile) -> ReversibleRate:
    base = torch.ones(num_states, num_states, dtype=torch.float64)
    base -= torch.diag(base.sum(1))
    rate = ReversibleRate(base, num_states, profile, torch.ones(num_states))
    rate.name = 'uniform'
    return rate


def birth_death_rate(num_states: int, profile: TimeProfile) -> ReversibleRate:
    base = torch.zeros(num_states, num_states, dtype=torch.float64)
    idx = torch.arange(num_states - 1)
    base[idx, idx + 1] = 1.0
    base[idx + 1, idx] = 1.0
    base -= torch.diag(base.sum(1))
    rate = ReversibleRate(base, num_states, profile, torch.ones(num_states))
    rate.name, rate.ordinal = 'birth_death', True
    return rate


def gaussian_target_rate(num_states: int, profile: TimeProfile, rate_sigma: float, q_sigma: float) -> ReversibleRate:
    """Campbell et al.'s Gaussian-target rate. A state i below the middle jumps up to j (i < j < S - i) at rate
    exp(-(j - i - 1)^2 / rate_sigma^2), a state above it down to j (S - 1 - i < j < i) likewise; each reverse jump
    j -> i gets the rate of detailed balance, pi_j rate[j, i] = pi_i rate[i, j], with pi_k proportional to
    exp(-((k + 1) - S / 2)^2 / (2 Q_sigma^2))."""
    if not (rate_sigma > 0 and q_sigma > 0):
        raise UserError(f'the Gaussian-target rate needs rate_sigma > 0 and Q_sigma > 0, got {rate_sigma}, {q_sigma}')
    S = num_states
    k = torch.arange(S, dtype=torch.float64)
    log_pi = -((k + 1) - S / 2) ** 2 / (2 * q_sigma ** 2)
    i, j = torch.meshgrid(k, k, indexing='ij')
    towards_middle = ((i < S // 2) & (j > i) & (j < S - i)) | ((i > S // 2) & (j < i) & (j > S - 1 - i))
    base = torch.where(towards_middle, torch.exp(-((j - i).abs() - 1) ** 2 / rate_sigma ** 2), torch.zeros(()))
    # the reverse of each such jump, by detailed balance
    base = base + torch.where(towards_middle.T, base.T * torch.exp(log_pi[None, :] - log_pi[:, None]), torch.zeros(()))
    base -= torch.diag(base.sum(1))
    rate = ReversibleRate(base, S, profile, torch.exp(log_pi - log_pi.max()))
    rate.name, rate.ordinal = 'gaussian', True
    return rate


class AbsorbingRate(ForwardRate):
    """Masked diffusion: S data states and a mask state S; each data state jumps to the mask at rate beta(t)."""

    name = 'absorbing'

    def __init__(self, num_states: int, profile: TimeProfile):
        K = num_states + 1
        base = torch.zeros(K, K, dtype=torch.float64)
        base[:num_states, num_states] = 1.0
        base -= torch.diag(base.sum(1))
        stationary = torch.zeros(K, dtype=torch.float64)
        stationary[num_states] = 1.0
        super().__init__(base, num_states, profile, stationary)

    @property
    def mask_state(self) -> int:
        return self.num_states

    def kept(self, t):
        """(B,) exp(-B(t)): the probability that a state is not yet masked at t."""
        return torch.exp(-self.profile.integral(t))

    def transition(self, t):
        kept = self.kept(t).view(-1, 1, 1)
        K = self.num_chain_states
        eye = torch.eye(K, dtype=torch.float64, device=t.device)
        to_mask = torch.zeros(K, K, dtype=torch.float64, device=t.device)
        to_mask[:, self.mask_state] = 1.0
        return kept * eye + (1.0 - kept) * to_mask  # the mask's own row: kept + (1 - kept) = 1


def _gaussian(cfg, num_states, profile):
    return gaussian_target_rate(num_states, profile, float(cfg.get('rate_sigma', 6.0)),
                                float(cfg.get('Q_sigma', 512.0)))


RATES = {
    'uniform': lambda cfg, num_states, profile: uniform_rate(num_states, profile),
    'birth_death': lambda cfg, num_states, profile: birth_death_rate(num_states, profile),
    'gaussian': _gaussian,
    'absorbing': lambda cfg, num_states, profile: AbsorbingRate(num_states, profile),
}


def build_rate(cfg, num_states: int) -> ForwardRate:
    """``config.ctmc``: ``rate`` (a name in RATES), ``profile`` and its constants, the Gaussian's sigmas."""
    if not isinstance(num_states, int) or isinstance(num_states, bool) or num_states < 2:
        raise UserError(f'config.ctmc.num_states must be an integer >= 2, got {num_states!r}')
    name = cfg.get('rate', 'gaussian')
    if name not in RATES:
        raise UserError(f"unknown config.ctmc.rate {name!r}; known: {', '.join(RATES)}")
    profile = TimeProfile(cfg.get('profile', 'exponential'), float(cfg.get('time_base', 3.0)),
                          float(cfg.get('time_exp', 100.0)), float(cfg.get('rate_const', 1.0)),
                          float(cfg.get('final_kept', 1e-3)))
    return RATES[name](cfg, num_states, profile)


# --- rates of a batch of states, shared by the discrete framework's losses, bound and samplers ---------------------

def rows_of(rows: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """rows (B, K, M), states (B, D) -> (B, D, M): row states[b, d] of rows[b]."""
    return rows.gather(1, states.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))


def _without_current(values: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """(B, D, K) with the entry of each pixel's own state set to zero."""
    return values.scatter(-1, states.unsqueeze(-1), 0.0)


def forward_rates(rate, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, D, K) forward rates R_t(x_d, y) out of each pixel's state x_d (0 at y = x_d); x (B, D), t (B,)."""
    return _without_current(rows_of(rate.rate(t.double()), x), x)


def reverse_rates(rate, probs: torch.Tensor, x: torch.Tensor, t: torch.Tensor, eps_ratio: float = 1e-9,
                  transition: torch.Tensor = None) -> torch.Tensor:
    """(B, D, K) float64 model reverse rates R_hat(x_d, y) (see the module docstring; 0 at y = x_d).

    probs: (B, D, S) p_theta(x_0 | x) over the S data states; x: (B, D) int64 states in 0..K-1; t: (B,).
    ``eps_ratio`` keeps P(t)[x0, x] away from 0 in the ratio (the seed's ``eps_ratio``).
    """
    t = t.double()
    S = rate.num_states
    p = rate.transition(t) if transition is None else transition        # (B, K, K)
    from_data = p[:, :S, :]                                              # rows of data states x0
    denominator = rows_of(from_data.transpose(1, 2), x)                 # (B, D, S): P[x0, x_d]
    denominator = denominator + eps_ratio
    # x0 that cannot reach x_d (P = 0, e.g. the absorbing rate's other values) add nothing
    zero = torch.zeros((), dtype=torch.float64)
    weights = torch.where(denominator > 0, probs.double() / denominator.clamp_min(TINY), zero)
    inner = torch.bmm(weights, from_data)                                # (B, D, K)
    into_current = rows_of(rate.rate(t).transpose(1, 2), x)            # (B, D, K): R_t(y, x_d)
    return _without_current(into_current * inner, x)


def exact_reverse_rates(rate, x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                        transition: torch.Tensor = None) -> torch.Tensor:
    """(B, D, K) the true reverse rates given x_0 (B, D): R_t(y, x_d) P(t)[x0_d, y] / P(t)[x0_d, x_d]."""
    t = t.double()
    p = rate.transition(t) if transition is None else transition
    rows = rows_of(p, x0)                                               # (B, D, K): P[x0_d, .]
    ratio = rows / rows.gather(-1, x.unsqueeze(-1)).clamp_min(TINY)
    return _without_current(rows_of(rate.rate(t).transpose(1, 2), x) * ratio, x)


def draw_categorical(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of (..., K) ``probs`` (rows sum to 1 or to a positive total) by inverting its
    cumulative sum at ``uniform`` (...,) in [0, 1)."""
    cdf = probs.cumsum(-1)
    target = uniform.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    return torch.searchsorted(cdf, target).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def jump_once(x: torch.Tensor, rates: torch.Tensor, u_pixel: torch.Tensor, u_value: torch.Tensor) -> torch.Tensor:
    """x (B, D) after one jump drawn in proportion to ``rates`` (B, D, K): its pixel by each pixel's total rate,
    its value by that pixel's rates, from the uniforms (B,) ``u_pixel`` and ``u_value``. Rows whose rates are all
    zero stay."""
    per_pixel = rates.sum(-1)
    total = per_pixel.sum(-1)
    pixel = draw_categorical(per_pixel + (total == 0).to(per_pixel.dtype).unsqueeze(-1), u_pixel)
    rows = torch.arange(x.shape[0], device=x.device)
    value = draw_categorical(rates[rows, pixel] + TINY, u_value)
    moved = x.clone()
    moved[rows, pixel] = torch.where(total > 0, value, x[rows, pixel])
    return moved
