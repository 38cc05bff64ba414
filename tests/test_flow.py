"""Flow matching in the Gaussian framework (SiT's paths, the velocity and score predictions, SiT's samplers) on
Gaussian data, where everything has a closed form.

x_0 ~ N(m, s^2) per dimension, x_t = alpha x_0 + sigma eps: with r = (x - alpha m) / (alpha^2 s^2 + sigma^2),
E[eps | x_t] = sigma r and E[x_0 | x_t] = m + alpha s^2 r, so the exact velocity is
v*(x, t) = alpha' m + (alpha alpha' s^2 + sigma sigma') r; the ODE's trajectories keep z = r sqrt(alpha^2 s^2 +
sigma^2) constant, so from t = 1 on a flow path (alpha = 0, sigma = 1) x_1 lands on x_0 = m + s x_1.
"""
import math

import pytest
import torch

from libs.config import d
from libs.diffusion import build_framework
from libs.diffusion.gaussian import Denoiser, GaussianFramework
from libs.diffusion.samplers import build_sampler, dpm_solver, flow_dopri5, flow_ode, flow_sde, time_grid, unipc
from libs.diffusion.samplers.grids import time_uniform_grid
from libs.diffusion.schedules import VPSDE, GVPPath, LinearPath, build_schedule
from libs.errors import UserError
from libs.rng import generator_noise
from test_samplers import Gaussian, fitted_slope, rms, x_start

F64 = torch.float64
M, S = 0.4, 0.3

pytestmark = pytest.mark.usefixtures('one_thread')


def scales(schedule, t, x):
    shape = (-1,) + (1,) * (x.ndim - 1)
    t = torch.as_tensor(t, dtype=F64)
    return [f(t).reshape(shape) for f in (schedule.alpha, schedule.sigma, schedule.d_alpha_dt, schedule.d_sigma_dt)]


def exact_velocity(schedule, m=M, s=S):
    def velocity(x, t):
        alpha, sigma, d_alpha, d_sigma = scales(schedule, t, x)
        r = (x - alpha * m) / (alpha ** 2 * s ** 2 + sigma ** 2)
        return d_alpha * m + (alpha * d_alpha * s ** 2 + sigma * d_sigma) * r
    return velocity


class ExactNet(torch.nn.Module):
    """The optimal network for N(M, S^2) data, predicting ``prediction``; it reads t back from the (affine) model
    time of the schedule (SiT's 1 - t on the flow paths, 999 t on the VP SDE)."""

    def __init__(self, schedule, prediction):
        super().__init__()
        self.schedule, self.prediction = schedule, prediction

    def forward(self, x, model_time):
        start, end = (self.schedule.model_time(torch.tensor(u, dtype=F64)) for u in (0.0, 1.0))
        t = (model_time - start) / (end - start)
        alpha, sigma, d_alpha, d_sigma = scales(self.schedule, t, x)
        r = (x - alpha * M) / (alpha ** 2 * S ** 2 + sigma ** 2)
        eps, x0 = sigma * r, M + alpha * S ** 2 * r
        return {'noise': eps, 'x0': x0, 'velocity': d_alpha * x0 + d_sigma * eps, 'score': -r,
                'v': alpha * eps - sigma * x0}[self.prediction]


def test_the_paths_closed_forms():
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    linear, gvp = LinearPath(), GVPPath()
    torch.testing.assert_close(linear.alpha(t), 1 - t, rtol=0, atol=0)
    torch.testing.assert_close(linear.sigma(t), t, rtol=0, atol=0)
    torch.testing.assert_close(gvp.alpha(t) ** 2 + gvp.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(gvp.log_alpha(t), torch.log(torch.cos(math.pi * t / 2)))
    assert gvp.variance_preserving and not linear.variance_preserving and VPSDE().variance_preserving
    for schedule in (linear, gvp):
        delta = 1e-6
        for f, df in ((schedule.alpha, schedule.d_alpha_dt), (schedule.sigma, schedule.d_sigma_dt)):
            torch.testing.assert_close(df(t), (f(t + delta) - f(t - delta)) / (2 * delta), rtol=1e-8, atol=1e-8)
        lam = schedule.log_snr(t)
        torch.testing.assert_close(lam, torch.log(schedule.alpha(t) / schedule.sigma(t)))
        torch.testing.assert_close(schedule.t_from_log_snr(lam), t)
        torch.testing.assert_close(schedule.t_from_ve_sigma(schedule.ve_sigma(t)), t)
        # the forward SDE with these marginals: f = alpha'/alpha, g^2 = d sigma^2/dt - 2 f sigma^2
        f, g2 = schedule.sde_coefficients(t)
        variance = lambda u: schedule.sigma(u) ** 2  # noqa: E731
        torch.testing.assert_close(f, schedule.d_alpha_dt(t) / schedule.alpha(t))
        torch.testing.assert_close(g2, (variance(t + delta) - variance(t - delta)) / (2 * delta)
                                   - 2 * f * variance(t), rtol=1e-7, atol=1e-7)
        # lambda is finite where the log-SNR solvers start, -inf (or all but) at t = 1
        assert schedule.t_max == 1 - 1e-3 and math.isfinite(schedule.log_snr(schedule.t_max).item())
        assert schedule.log_snr(torch.tensor(1.0, dtype=F64)).item() < -30
    assert linear.ve_sigma(torch.tensor(0.75, dtype=F64)).item() == pytest.approx(3.0)
    torch.testing.assert_close(linear.sde_coefficients(t)[1], 2 * t / (1 - t))   # SiT's drift variance t/(1-t), x2


def test_time_sampling_and_the_network_time():
    generator = torch.Generator().manual_seed(0)
    n = 20000
    t = LinearPath(train_eps=0.1).sample_train_t(n, 'cpu', generator)
    assert t.dtype == torch.float32 and 0.1 <= t.min().item() and t.max().item() <= 0.9
    assert t.double().mean().item() == pytest.approx(0.5, abs=0.01)
    for schedule in (LinearPath(time_sampling='logit_normal', logit_location=0.5, logit_scale=0.8),
                     GVPPath(time_sampling='logit_normal', logit_location=0.5, logit_scale=0.8)):
        t = schedule.sample_train_t(n, 'cpu', generator).double()
        u = torch.log(schedule.ve_sigma(t))      # REPA's log-normal levels; SD3's logit(t) on the linear path
        assert u.mean().item() == pytest.approx(0.5, abs=0.03) and u.std().item() == pytest.approx(0.8, abs=0.03)
        if isinstance(schedule, LinearPath):
            torch.testing.assert_close(u, torch.logit(t))
    assert LinearPath().model_time(torch.tensor(0.25)).item() == 0.75          # SiT's released time 1 - t
    schedule = build_schedule({'name': 'gvp', 'time_scale': 999.0, 'time_offset': 0.0})
    assert schedule.model_time(torch.tensor(0.25)).item() == pytest.approx(249.75)
    with pytest.raises(UserError, match="known: uniform, logit_normal"):
        LinearPath(time_sampling='beta')


@pytest.mark.parametrize('schedule', [LinearPath(), GVPPath(), VPSDE()], ids=repr)
@pytest.mark.parametrize('prediction', ['noise', 'x0', 'velocity', 'score'])
def test_every_prediction_gives_the_exact_velocity_noise_and_data(schedule, prediction):
    """The Denoiser turns each exact prediction into the exact velocity, which is the time derivative of the
    exact ODE trajectory through (x, t), and into eps and x0 with alpha x0 + sigma eps = x."""
    denoiser = Denoiser(ExactNet(schedule, prediction), schedule, prediction)
    x = torch.randn(5, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.97], dtype=F64)
    velocity = denoiser.velocity(x, t)
    torch.testing.assert_close(velocity, exact_velocity(schedule)(x, t))
    delta, trajectory = 1e-5, Gaussian(schedule, M, S)
    shifted = lambda dt: torch.stack([trajectory.ode_solution(x[i:i + 1], t[i], t[i] + dt)[0]  # noqa: E731
                                      for i in range(5)])
    torch.testing.assert_close(velocity, (shifted(delta) - shifted(-delta)) / (2 * delta), rtol=1e-6, atol=1e-7)
    alpha, sigma, _, _ = scales(schedule, t, x)
    torch.testing.assert_close(alpha * denoiser.data(x, t) + sigma * denoiser.noise(x, t), x)
    torch.testing.assert_close(denoiser.noise(x, t), trajectory.eps(x, t))


def test_a_velocity_model_is_finite_at_pure_noise_and_salimans_v_needs_variance_preservation():
    schedule = LinearPath()
    x = torch.randn(3, 1, 2, 2, dtype=F64)
    one = torch.ones(3, dtype=F64)
    denoiser = Denoiser(ExactNet(schedule, 'velocity'), schedule, 'velocity')
    torch.testing.assert_close(denoiser.velocity(x, one), x - M)     # at t = 1: eps - E[x0] = x - m
    torch.testing.assert_close(denoiser.data(x, one), torch.full_like(x, M))
    gvp = GVPPath()
    v_model = Denoiser(ExactNet(gvp, 'v'), gvp, 'v')
    t = torch.tensor([0.2, 0.6, 0.9], dtype=F64)
    torch.testing.assert_close(v_model.velocity(x, t), exact_velocity(gvp)(x, t))
    with pytest.raises(UserError, match="'v_pred'.*variance-preserving.*config.pred='velocity'"):
        GaussianFramework(schedule, 'v')


def test_the_velocity_loss_of_the_exact_network_is_its_closed_form():
    """On the linear path v = eps - x0, so E|v* - v|^2 per dimension is Var[eps - x0 | x_t] = s^2 / ((1 - t)^2 s^2
    + t^2), averaged over uniform t (closed form: arctan(s) ... integrated numerically here)."""
    schedule = LinearPath(time_scale=-1.0, time_offset=1.0)
    framework = GaussianFramework(schedule, 'velocity')
    generator = torch.Generator().manual_seed(0)
    n = 8192
    x0 = M + S * torch.randn(n, 1, 2, 2, generator=generator, dtype=F64)
    loss = framework.loss(ExactNet(schedule, 'velocity'), x0, generator=generator)
    grid = torch.linspace(0, 1, 200001, dtype=F64)
    expected = torch.trapezoid(S ** 2 / ((1 - grid) ** 2 * S ** 2 + grid ** 2), grid).item()
    assert abs(loss.double().mean().item() - expected) < 4 * loss.double().std().item() / math.sqrt(n)


def test_sits_score_loss_and_loss_weights():
    schedule = LinearPath(train_eps=1e-3)
    x0 = torch.randn(4, 1, 2, 2, dtype=F64)
    eps = torch.randn(4, 1, 2, 2, dtype=F64)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=F64)
    alpha, sigma, _, _ = scales(schedule, t, x0)
    x_t = alpha * x0 + sigma * eps
    score = GaussianFramework(schedule, 'score')
    off = -eps / sigma + 0.5
    torch.testing.assert_close(score.loss_of_output(off, x0, eps, x_t, t).double(), (0.5 * sigma.flatten()) ** 2,
                               rtol=1e-5, atol=0)
    noise = GaussianFramework(schedule, 'noise', loss_weight='likelihood')
    torch.testing.assert_close(noise.loss_of_output(eps + 0.5, x0, eps, x_t, t).double(), 0.25 / (t * (1 - t)),
                               rtol=1e-5, atol=0)
    velocity_weight = GaussianFramework(schedule, 'score', loss_weight='velocity').sit_weight(t)
    torch.testing.assert_close(velocity_weight, 1 / (1 - t) ** 2)     # (D / sigma)^2, D = t / (1 - t)
    for kwargs, match in [(dict(prediction='velocity', loss_weight='likelihood'), "weighs SiT's noise and score"),
                          (dict(prediction='noise', loss_weight='elbo'), 'unknown config.loss_weight'),
                          (dict(prediction='velocity', min_snr_gamma=5.0), 'min_snr_gamma weighs eps'),
                          (dict(prediction='noise', learned_variance=True, drop_variance=True), 'discrete schedule')]:
        with pytest.raises(UserError, match=match):
            GaussianFramework(schedule, **kwargs)
    with pytest.raises(UserError, match=r"infinite at an end of the training times \(0.0, 1.0\).*train_eps"):
        GaussianFramework(LinearPath(), 'score')


def x_linear(n=16, d=4):
    return x_start(n, d)


def test_the_exact_velocity_integrated_lands_on_the_data_distribution():
    schedule = LinearPath()
    x = x_linear()
    out = flow_ode(exact_velocity(schedule), x, time_uniform_grid(None, 200, 1.0, 0.0), 'heun')
    torch.testing.assert_close(out, M + S * x, rtol=0, atol=1e-4)


def test_dopri5_meets_its_tolerances_and_steps_each_sample_on_its_own():
    """SiT's adaptive ODE solver: the endpoint error falls with the tolerances (errors 6e-5 at 1e-6 and 4e-9 at 1e-9
    measured; per-sample RK45 of scipy gives the same counts and errors), and a sample that needs more steps than
    another lands where it lands alone, in a batch with it (torchdiffeq would give the batch one step size)."""
    schedule = LinearPath()
    velocity = exact_velocity(schedule)
    x = x_linear()
    target = M + S * x
    errors, evaluations = [], []
    for tol in (1e-6, 1e-9):
        out, n = flow_dopri5(velocity, x, 1.0, 0.0, atol=tol, rtol=tol)
        errors.append((out - target).abs().max().item())
        evaluations.append(n)
        assert errors[-1] < 200 * tol, (tol, errors)
    assert errors[1] < errors[0] / 100 and evaluations[1] > evaluations[0]
    pair = torch.tensor([[0.05, -0.02, 0.01, 0.0], [4.0, -3.5, 5.0, -4.5]], dtype=F64)
    alone = [flow_dopri5(velocity, pair[i:i + 1], 1.0, 0.0, atol=1e-7, rtol=1e-7) for i in range(2)]
    assert alone[0][1] != alone[1][1]                                           # their own step sequences
    together, n = flow_dopri5(velocity, pair, 1.0, 0.0, atol=1e-7, rtol=1e-7)
    assert n == max(count for _, count in alone)
    torch.testing.assert_close(together, torch.cat([out for out, _ in alone]), rtol=0, atol=1e-14)
    sampler = build_sampler(d(algorithm='flow_dopri5', sample_steps=250), schedule)
    assert sampler.consumes == 'velocity' and sampler.adaptive
    counting = CountingVelocity(schedule)
    out = sampler(counting, x)
    # without the framework's range the end is the schedule's t_min, as for Heun; SiT's tolerances by default
    assert counting.times[0] == 1.0 and min(counting.times) == schedule.t_min and len(counting.times) < 250
    torch.testing.assert_close(out, flow_dopri5(velocity, x, 1.0, schedule.t_min, 1e-6, 1e-3)[0], rtol=0, atol=0)
    with pytest.raises(UserError, match=r'^flow_dopri5 did not reach t = 0.001 within sample.sample_steps = 20 '
                                        r'evaluations \(at sample.atol = 1e-09, sample.rtol = 1e-09\): raise'):
        build_sampler(d(algorithm='flow_dopri5', sample_steps=20, atol=1e-9, rtol=1e-9), schedule)(velocity, x)
    with pytest.raises(UserError, match='flow_dopri5 takes at least 8 evaluations'):
        build_sampler(d(algorithm='flow_dopri5', sample_steps=7), schedule)


def test_sits_sde_samples_the_data_distribution():
    schedule = LinearPath()
    generator = torch.Generator().manual_seed(0)
    for form, start, last_step in (('sigma', 1.0, 'Tweedie'), ('SBDM', schedule.t_max, ''),
                                   ('increasing-decreasing', 1.0, 'Euler')):
        x = torch.randn(20000, 1, dtype=F64, generator=generator)
        grid = time_uniform_grid(None, 99 if last_step else 100, start, 0.04 if last_step else 0.0)
        out = flow_sde(exact_velocity(schedule), schedule, x, grid, form, 1.0, last_step,
                       noise=generator_noise(generator))
        assert out.mean().item() == pytest.approx(M, abs=0.01), form
        assert out.std().item() == pytest.approx(S, abs=0.01), form


def test_sits_diffusion_forms_read_in_its_own_time():
    """SiT's w(t) written in its time s = 1 - t (SBDM: its drift variance (1 - s) / s on the linear path)."""
    from libs.diffusion.samplers.flow import DIFFUSION_FORMS
    schedule, t, n = LinearPath(), 0.3, 0.7
    s = 1 - t
    expected = {'constant': n, 'SBDM': n * (1 - s) / s, 'sigma': n * (1 - s), 'linear': n * (1 - s),
                'decreasing': 0.25 * (n * math.cos(math.pi * s) + 1) ** 2,
                'increasing-decreasing': n * math.sin(math.pi * s) ** 2}
    assert {form: fn(schedule, t, n) for form, fn in DIFFUSION_FORMS.items()} == pytest.approx(expected, rel=1e-12)


def test_without_diffusion_sits_sde_is_the_euler_ode_and_on_the_linear_path_euler_is_ddim():
    schedule = LinearPath()
    x = x_linear()
    velocity, problem = exact_velocity(schedule), Gaussian(schedule, M, S)
    grid = time_uniform_grid(None, 12, 1.0, 0.04)
    sde = flow_sde(velocity, schedule, x, grid, 'constant', 0.0, 'Euler')
    torch.testing.assert_close(sde, flow_ode(velocity, x, grid + [0.0], 'euler'), rtol=0, atol=1e-12)
    grid = time_uniform_grid(None, 10, schedule.t_max, 1e-3)
    ddim = dpm_solver(problem.eps, schedule, x, grid, order=1, algorithm_type='dpmsolver++')
    torch.testing.assert_close(flow_ode(velocity, x, grid, 'euler'), ddim, rtol=0, atol=1e-12)


# (sampler, evaluations per step, nominal order, steps): the ODE solvers' orders on the linear path, from t_max
# (lambda = -6.9) to t = 0.3, where the predictions still change at the end point; the slopes measured within 0.1.
ORDERS = [('flow_euler', 1, [16, 32, 64, 128]), ('flow_heun', 2, [16, 32, 64, 128]),
          ('dpm_solver++', 2, [24, 48, 96, 192]), ('unipc', 3, [24, 48, 96, 192])]


@pytest.mark.parametrize('algorithm,order,steps', ORDERS, ids=[o[0] for o in ORDERS])
def test_order_of_each_sampler_on_the_linear_path(algorithm, order, steps):
    schedule = LinearPath()
    problem = Gaussian(schedule, [0.5, -0.3, 0.2, 0.0], [0.05, 0.2, 0.8, 1.5])
    x = x_linear()
    exact = problem.ode_solution(x, schedule.t_max, 0.3)
    velocity = lambda x, t: exact_velocity(schedule, problem.m, problem.s)(x, t)  # noqa: E731
    errors = []
    for n in steps:
        if algorithm.startswith('flow'):
            method = algorithm[5:]
            out = flow_ode(velocity, x, time_uniform_grid(None, n, schedule.t_max, 0.3), method)
        elif algorithm == 'unipc':   # UniPC-2 with its corrector
            out = unipc(problem.eps, schedule, x, time_grid(schedule, n, schedule.t_max, 0.3, 'logSNR'), order=2)
        else:
            out = dpm_solver(problem.eps, schedule, x, time_grid(schedule, n, schedule.t_max, 0.3, 'logSNR'))
        errors.append(rms(out - exact) / rms(exact))
    assert abs(fitted_slope(steps, errors) - order) < 0.2, errors


class CountingVelocity:
    def __init__(self, schedule):
        self.velocity, self.times = exact_velocity(schedule), []

    def __call__(self, x, t):
        self.times.append(float(t[0]))
        return self.velocity(x, t)


def test_presets_count_their_evaluations_and_start_where_the_model_is_finite():
    schedule = LinearPath()
    x = x_linear()
    cases = [(d(algorithm='flow_euler', sample_steps=7), 1.0, 7, 1 / 7),
             (d(algorithm='flow_heun', sample_steps=9), 1.0, 9, 1e-3),        # Euler, then 4 Heun steps to t_min
             (d(algorithm='flow_heun', sample_steps=8, t_start=0.9, t_end=0.1), 0.9, 8, 0.1),
             (d(algorithm='flow_sde', sample_steps=6), 1.0, 6, 0.04),
             (d(algorithm='flow_sde', sample_steps=6, last_step='', diffusion_form='SBDM'), schedule.t_max, 6,
              schedule.t_max / 6)]
    for sample_cfg, start, nfe, last in cases:
        sampler = build_sampler(sample_cfg, schedule)
        assert sampler.consumes == 'velocity' and sampler.guidance_interval is None
        counting = CountingVelocity(schedule)
        sampler(counting, x, noise=generator_noise(torch.Generator().manual_seed(0)))
        assert len(counting.times) == nfe and counting.times[0] == start, sample_cfg
        assert counting.times[-1] == pytest.approx(last, abs=1e-12), sample_cfg
    # the log-SNR solvers and EDM's Heun start at t_max; a noise model's flow samplers too
    for algorithm in ('dpm_solver++', 'unipc', 'heun', 'euler_maruyama_ode'):
        counting = CountingVelocity(schedule)
        build_sampler(d(algorithm=algorithm, sample_steps=5), schedule)(lambda x, t: counting(x, t), x)
        assert counting.times[0] == schedule.t_max and math.isfinite(schedule.log_snr(min(counting.times)).item())
    for prediction, (start, end) in (('noise', (schedule.t_max, 0.0)), ('x0', (1.0, schedule.t_min)),
                                     ('velocity', (1.0, 0.0))):
        framework = GaussianFramework(schedule, prediction)
        assert framework.sampling_range() == (start, end)
        counting = CountingVelocity(schedule)
        framework.build_sampler(d(algorithm='flow_heun', sample_steps=4))(counting, x)
        assert (counting.times[0], counting.times[-1]) == (start, end)
    assert GaussianFramework(VPSDE(), 'velocity').sampling_range() == (1.0, VPSDE.t_min)   # sigma ~ sqrt(t)
    with pytest.raises(UserError, match="unknown sample.diffusion_form 'sbdm'"):
        build_sampler(d(algorithm='flow_sde', sample_steps=4, diffusion_form='sbdm'), schedule)
    with pytest.raises(UserError, match="unknown sample.last_step 'None'"):
        build_sampler(d(algorithm='flow_sde', sample_steps=4, last_step='None'), schedule)


def test_a_flow_model_samples_through_the_framework_with_every_solver():
    """A velocity-predicting network of SiT's recipe (2C head, variance half dropped), through the framework's
    sample: each solver at 10 evaluations lands close to N(M, S^2)'s exact ODE map."""
    config = d(pred='velocity', drop_variance=True, schedule=d(name='linear'))
    framework = build_framework(config)
    schedule = framework.schedule

    class TwoHalves(torch.nn.Module):
        output, condition = 'image+variance', 'none'
        exact = ExactNet(schedule, 'velocity')

        def forward(self, x, model_time):
            return torch.cat([self.exact(x, model_time), torch.full_like(x, 1e3)], dim=1)

    framework.check_backbone(TwoHalves())
    denoiser = framework.denoiser(TwoHalves())

    class Prior:
        def randn(self, shape):
            return x_start(16, 4).view(16, *shape)

    # measured: 0.009, 0.013, 0.034, 0.060 (a wrong conversion or start is off by O(1))
    for algorithm, tolerance in (('flow_heun', 0.015), ('dpm_solver++', 0.02), ('unipc', 0.05), ('flow_euler', 0.1)):
        sampler = framework.build_sampler(d(algorithm=algorithm, sample_steps=10))
        out = framework.sample(denoiser, sampler, (4,), {}, Prior())
        assert rms(out - (M + S * x_start(16, 4))) < tolerance, algorithm
    # SiT's default ODE solver at its tolerances (rtol 1e-3), to the framework's end t = 0 (measured rms 2.0e-3)
    out = framework.sample(denoiser, framework.build_sampler(d(algorithm='flow_dopri5', sample_steps=250)), (4,), {},
                           Prior())
    assert rms(out - (M + S * x_start(16, 4))) < 5e-3
