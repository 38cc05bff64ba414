"""Config defaults and validation.

A config file (``configs/*.py``) sets what its experiment needs, with the field names of the U-ViT release, and
returns ``resolve(d(...))``: every other field filled in from ``defaults()``, so that any known key can be
overridden on the command line (``--config.train.grad_clip=1``), while keys that do not exist are rejected, so a
typo (``config.train.n_step``) is one clear error instead of a silently ignored value. The entry points resolve
again after the command-line overrides, to validate them.
"""
import difflib
import json

import ml_collections

from libs.errors import UserError


def d(**kwargs) -> ml_collections.ConfigDict:
    """Shorthand for a nested config dict, as in the release's config files."""
    return ml_collections.ConfigDict(initial_dictionary=kwargs)


# Sections whose keys are free-form (constructor arguments, dataset-specific options).
OPEN_SECTIONS = ('nnet', 'dataset', 'schedule')


def defaults() -> ml_collections.ConfigDict:
    """Every known config field with its default."""
    return d(
        seed=1234,
        framework='gaussian',            # the diffusion framework (libs/diffusion: FRAMEWORKS)
        pred='noise_pred',               # Gaussian framework: the network predicts 'noise_pred', 'x0_pred', 'v_pred'
                                         # (Salimans' v), 'velocity' (the flow velocity dx_t/dt, SiT) or 'score'
        min_snr_gamma=0.0,               # Gaussian framework: Min-SNR-gamma loss weighting (e.g. 5); 0: plain L_simple
        loss_weight='',                  # Gaussian framework: SiT's weighting of the noise / score loss: '' (none),
                                         # 'velocity' or 'likelihood'
        learned_variance=False,          # Gaussian framework: the backbone also outputs a variance (DiT learn_sigma)
        drop_variance=False,             # Gaussian framework: the backbone's variance half is dropped (SiT's release)
        vlb_lambda=0.001,                # learned variance: L_simple + vlb_lambda N L_n, L_n in bits/dim (DiT: N=1000)
        mixed_precision='',              # '', 'no', 'fp16', 'bf16'; '' keeps what `accelerate launch` says
        log_with='tensorboard',          # 'tensorboard', 'wandb' or 'none'
        edm=d(                           # config.framework='edm' (libs/diffusion/edm.py; Karras et al. 2022)
            precond='edm',               # 'edm', 'vp' or 've': a column of EDM's Table 1
            sigma_data=0.5,
            p_mean=-1.2,                 # training noise levels: ln sigma ~ N(p_mean, p_std^2) (precond 'edm')
            p_std=1.2,
            sigma_min=0.002,             # the sampling range and rho-grid
            sigma_max=80.0,
            rho=7.0,
            augment_prob=0.0,            # EDM's non-leaking augmentation (DDAE's EDM_ddpmpp_aug: 0.12)
        ),
        ctmc=d(                          # config.framework='ctmc' (libs/diffusion/ctmc.py; Campbell et al. 2022)
            num_states=256,              # S: the values of a pixel (256 for 8-bit images, 17 for the digits)
            rate='gaussian',             # 'uniform', 'birth_death', 'gaussian' (Gaussian target) or 'absorbing'
            profile='exponential',       # beta(t) = time_base ln(time_exp) time_exp^t; 'constant': rate_const;
            time_base=3.0,               # 'log_linear': B(t) = -log(1 - (1 - final_kept) t) (masked diffusion)
            time_exp=100.0,
            rate_const=1.0,
            final_kept=1e-3,
            rate_sigma=6.0,              # gaussian: the jump sizes' scale
            Q_sigma=512.0,               # gaussian: the target's standard deviation (in states)
            nll_time_samples=8,          # eval.py --eval=nll: stratified times per image of the bound
        ),
        loss=d(                          # the discrete framework's loss (the seed's names)
            name='ct_elbo',              # 'ct_elbo', 'path_kl' (its low-variance form), 'nll' (cross-entropy), 'masked'
            eps_ratio=1e-9,              # keeps P(t)[x0, x] away from 0 in the reverse rates' ratios
            nll_weight=0.001,            # ct_elbo, path_kl: plus this times the direct cross-entropy
            min_time=0.01,               # training times t ~ U(min_time, 1)
            one_forward_pass=True,       # ct_elbo: one network call (at the jumped state) instead of two
        ),
        train=d(
            n_steps=500000,
            batch_size=128,              # global batch per optimizer step, over all processes
            mode='uncond',               # 'uncond', 'cond' (class labels) or 'text' (CLIP text contexts)
            log_interval=10,
            eval_interval=5000,          # sample grid PNG every this many steps
            save_interval=50000,         # checkpoint (+ FID when reference statistics exist)
            gradient_accumulation_steps=1,
            grad_clip=0.0,               # max grad norm; 0 disables clipping
            p_uncond=0.0,                # label dropout for classifier-free guidance (needs a 'no class' label)
            ema_rate=0.9999,
            keep_ckpts=0,                # how many checkpoints to keep; 0 keeps all
            num_workers=4,               # DataLoader workers per process, at most the CPUs it may run on
            compile='auto',              # torch.compile the trained network's blocks ('auto': on CUDA; 'full': whole)
            fused_optimizer='auto',      # fused AdamW / Adam / SGD kernel, foreach where none ('auto': on CUDA)
            foreach_ema='auto',          # the EMA update as one multi-tensor lerp ('auto': on CUDA)
            tf32=True,                   # TF32 matmuls / convolutions on Ampere and newer GPUs
            final_eval=True,             # evaluate with config.sample at the end of training
            grid_size=100,               # images in each sample grid
            repeated_aug=1,              # repeated augmentation: each image appears this many times per batch
            max_minutes=0.0,             # time budget of the training loop (a safety net); 0: none
            grad_scaler_init_scale=65536.0,  # fp16: the grad scaler's first scale (torch's default, 2^16)
            checkpoint_timeout_s=600.0,  # how long processes wait for each other when saving or reading a
                                         # checkpoint before they stop with an error (a process died or hangs)
        ),
        optimizer=d(name='adamw', lr=0.0002, weight_decay=0.03, betas=(0.99, 0.999), eps=1e-8, momentum=0.9,
                    nesterov=False),        # betas/eps for adam(w), momentum/nesterov for sgd
        objective=d(
            name='diffusion',            # 'diffusion' (L_simple) or 'hybrid' (HybViT: CE + alpha * L_simple)
            alpha=100.0,                 # hybrid: weight of L_simple
            augment='none',              # hybrid: augmentation of the classification batch
        ),
        repa=d(                          # representation alignment (libs/training/repa.py; Yu et al. 2024), ViTs only
            weight=0.0,                  # the alignment loss's weight; 0 switches REPA off (REPA: 0.5)
            depth=8,                     # the block whose image tokens are aligned, 1-based in execution order
                                         # (REPA: 8 of SiT-XL's 28)
            encoder='dinov2',            # the frozen encoder (libs/latent/vision_encoders.py: ENCODERS)
            encoder_path='',             # '' : the encoder's default place under assets/
            projector_dim=2048,          # hidden width of the projector MLP (REPA: 2048)
        ),
        lr_scheduler=d(name='customized', warmup_steps=5000),
        nnet=d(name='uvit'),
        autoencoder=d(
            pretrained_path='',          # '' : pixel space; else the autoencoder (latent space): a diffusers
                                         # folder (AutoencoderKL, AutoencoderDC) or the release's autoencoder_kl.pth
            scale_factor=0.0,            # latents = (z - shift) * scale; 0: the autoencoder's own scaling_factor
                                         # (the store's info.json when training, the folder's config.json else)
            decode_batch_size=50,        # images decoded per autoencoder call when sampling
        ),
        text_encoder=d(
            pretrained_path='',          # CLIP text encoder folder, for turning your own prompts into contexts
        ),
        schedule=d(name='vpsde'),
        dataset=d(name='cifar10'),
        sample=d(
            sample_steps=1000,
            n_samples=50000,
            mini_batch_size=500,         # per process
            algorithm='euler_maruyama_sde',
            path='',                     # keep the samples as PNG files here
            compile='auto',              # torch.compile the sampling network's blocks ('auto': on CUDA; 'full': whole)
            scale=0.0,                   # classifier-free guidance scale (0: none); DiT's cfg scale s is s - 1
            guided_channels=0,           # guide only the first this many channels of eps (DiT: 3); 0: all
            order=0,                     # 0: the algorithm's default order
            method='',                   # '' : the algorithm's default ('singlestep' / 'multistep')
            skip_type='',                # '' : the algorithm's default step grid
            t_end=0.0,                   # 0 : the algorithm's default end time
            t_start=0.0,                 # 0 : the algorithm's default start: 1, or the schedule's t_max (1 - 1e-3 on
                                         # the flow paths) for the log-SNR solvers and noise / score models
            guidance_interval='',        # 'lo,hi': guide only where lo < sigma / alpha <= hi (Kynkaanniemi et al.
                                         # 2024; hi may be inf); '' : at every noise level
            diffusion_form='sigma',      # flow_sde: SiT's w(t): 'constant', 'SBDM', 'sigma', 'linear', 'decreasing',
                                         # 'increasing-decreasing'
            diffusion_norm=1.0,          # flow_sde: its magnitude
            last_step='Mean',            # flow_sde: SiT's last step to t = 0: 'Mean', 'Tweedie', 'Euler', '' (none)
            last_step_size=0.04,         # flow_sde: where the last step starts
            atol=1e-6,                   # flow_dopri5: absolute and relative tolerances (SiT's); sample_steps is
            rtol=1e-3,                   # then the most evaluations a sample may take
            eta=0.0,                     # ddim: 0 deterministic, 1 the ancestral sampler's variance
            rho=7.0,                     # heun: EDM's rho-grid
            s_churn=0.0,                 # heun: EDM's churn (0: deterministic) between noise levels s_min..s_max
            s_min=0.0,
            s_max=1e9,
            s_noise=1.0,
            min_t=0.0,                   # discrete samplers: where the chain stops (0: config.loss.min_time)
            eps_ratio=0.0,               # discrete samplers: 0 : config.loss.eps_ratio
            initial_dist='stationary',   # discrete samplers: 'stationary' (the rate's), 'uniform', 'gaussian'
            is_ordinal=True,             # tau-leaping: add jumps as displacements and clip (False: absorbing)
            final_step='argmax',         # discrete samplers: x_0 = argmax p(x_0 | x_min_t), or 'sample'
            num_corrector_steps=1,       # tau_leaping_pc: corrector leaps after each step below the entry time
            corrector_step_size_multiplier=1.0,
            corrector_entry_time=0.1,
        ),
        eval=d(
            metric='fid',                # 'fid' (Inception) or 'digits' (the offline digit classifier)
            metrics='fid',               # with metric 'fid': fid,sfid,is,prec,recall,kid,fd_dinov2 (metric_set.py)
            ref_stats='',                # '' : the dataset's default; statistics, an ADM reference batch or a folder
            inception_path='',           # '' : assets/fid_inception/ or the torch hub cache
            dinov2_path='',              # fd_dinov2: '' : assets/dinov2-vitl14/
            is_split_size=5000,          # is: consecutive parts of this many samples (ADM); --eval=gen: is_splits
            pr_k=3,                      # prec, recall: the k of the k-NN radii (ADM: 3)
            kid_subsets=100,             # kid: subsets of kid_subset_size samples (Binkowski et al.: 100 of 1000)
            kid_subset_size=1000,
            train_n_samples=10000,       # samples for the score computed at each checkpoint (0: no score)
            train_algorithm='dpm_solver',
            train_sample_steps=50,
            sweep_algorithms='dpm_solver,dpm_solver++',  # eval.py --eval=sweep: samplers (comma-separated)
            sweep_nfes='5,10,15,25,50',  # eval.py --eval=sweep: numbers of network evaluations
        ),
        probe=d(                         # eval.py --eval=linear_probe / contrastive / noisy_clf (DDAE; features.py)
            layers='',                   # feature layer(s), comma-separated (the backbone's feature_layers())
            level=0,                     # noise-level index (DDAE: 11 of 1000 for DDPM, 4 of EDM's 18 levels)
            grid=False,                  # linear_probe: one probe per (layer, level) of grid_layers x grid_levels
            grid_layers='',              # '' : every feature layer (also contrastive's layers)
            grid_levels='',              # e.g. '1,11,21' (DDAE's DDPM grid) or '3,4,5' (its EDM grid)
            epochs=15,                   # DDAE's linear probe: Adam, lr 1e-3, cosine, 15 epochs, batch 128
            batch_size=128,
            lr=1e-3,
            augment='none',              # 'flip_crop': DDAE's flip + shift, training features recomputed each epoch
            n_train=0,                   # images of the train / test split (0: all)
            n_test=0,
        ),
        contrastive=d(n_images=10000),   # eval.py --eval=contrastive: training images (0: all)
        noisy_clf=d(                     # eval.py --eval=noisy_clf: probe.layers[0], probe.lr / batch_size / n_*
            test_levels='',              # '' : the framework's (DDPM: 1, 51, ..., 951; EDM: 1..18)
            mlp_epochs=15,
            perturbation='vp',           # the WideResNet's inputs: 'vp' alpha (x0 + sigma n) or 've' x0 + sigma n
            wrn_depth=28,                # DDAE's noise-conditional WideResNet (their 28-10; WRN-28-2 is enough)
            wrn_widen=2,
            wrn_epochs=200,
            wrn_lr=0.1,                  # SGD, momentum 0.9, linear warm-up then cosine decay
            wrn_warmup_epochs=5,
            wrn_weight_decay=5e-4,
            wrn_batch_size=128,
        ),
        clf_eval=d(                      # eval.py --eval=test_clf/gen/nll/cali/ood/attack (libs/evaluation/)
            n_test=0,                    # images of the test split and of each OOD set; 0: all
            batch_size=250,              # images per process per network call (times nll_steps_per_call)
            ece_bins=15,
            ood=('svhn', 'cifar100', 'celeba64', 'interpolated'),  # OOD sets, 'name' or 'name=path'
            ood_scores=('px', 'py'),     # px: minus bits/dim (likelihood bound); py: max softmax probability
            nll_variance='beta',         # reverse variance in the bound: 'beta' or 'beta_tilde'
            nll_steps_per_call=1,        # diffusion steps stacked into one network call for the bound
            attack_norms=('linf', 'l2'),
            linf_eps=(0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),  # PGD radii in [0, 1] pixel units
            l2_eps=(0.0, 0.125, 0.25, 0.5, 1.0),
            attack_steps=10,             # PGD steps (step size 2.5 eps / steps, random start)
            ancestral='ddpm_ancestral',  # gen: also sample with this sampler over all N steps ('' : only config.sample)
            is_splits=10,                # gen: Inception Score over this many equal parts (HybViT's convention)
        ),
    )


def _merge(base: ml_collections.ConfigDict, user: ml_collections.ConfigDict, prefix: str, known: list) -> None:
    for key in user.keys():
        name = f'{prefix}{key}'
        value = user[key]
        if key not in base:
            if prefix == '' and key in ('workdir', 'config_name', 'hparams'):
                base[key] = value
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f'; did you mean {close[0]}?' if close else ''
            raise UserError(f'unknown config key {name}{hint}')
        if isinstance(base[key], ml_collections.ConfigDict) and prefix == '' and key in OPEN_SECTIONS:
            base[key] = value if isinstance(value, ml_collections.ConfigDict) else d(**dict(value))
        elif isinstance(base[key], ml_collections.ConfigDict):
            if not isinstance(value, (ml_collections.ConfigDict, dict)):
                raise UserError(f'config key {name} must be a section, got {value!r}')
            _merge(base[key], value, f'{name}.', known)
        else:
            with base.ignore_type():
                base[key] = value


def _known_keys(cfg: ml_collections.ConfigDict, prefix: str = '') -> list:
    keys = []
    for key in cfg.keys():
        keys.append(f'{prefix}{key}')
        if isinstance(cfg[key], ml_collections.ConfigDict) and key not in OPEN_SECTIONS:
            keys.extend(_known_keys(cfg[key], f'{prefix}{key}.'))
    return keys


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The user's config on top of the defaults; unknown keys raise UserError naming the closest known key."""
    base = defaults()
    _merge(base, config, '', _known_keys(base))
    if base.train.mode not in ('uncond', 'cond', 'text'):
        raise UserError(f"config.train.mode must be 'uncond', 'cond' or 'text', got {base.train.mode!r}")
    if base.eval.metric not in ('fid', 'digits'):
        raise UserError(f"config.eval.metric must be 'fid' or 'digits', got {base.eval.metric!r}")
    return base


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file given by path (what --config does), resolved."""
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return resolve(module.get_config())


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def differences(old: dict, new: dict, sections) -> list:
    """'key: old -> new' for each value of ``sections`` (e.g. 'dataset', 'nnet') that differs between two configs
    given as JSON dicts (a config.json, ``json.loads(to_json(config))``), missing values as None, in key order."""
    def leaves(value, prefix):
        if isinstance(value, dict):
            return {k: v for key in value for k, v in leaves(value[key], f'{prefix}.{key}').items()}
        return {prefix: value}
    out = []
    for section in sections:
        a, b = leaves(old.get(section), section), leaves(new.get(section), section)
        out.extend(f'{key}: {a.get(key)!r} -> {b.get(key)!r}' for key in sorted(set(a) | set(b))
                   if a.get(key) != b.get(key))
    return out


SWITCH_WORDS = {'true': True, '1': True, 'on': True, 'yes': True, 'false': False, '0': False, 'off': False,
                'no': False}


def device_switch(value, key: str, device) -> bool:
    """A switch that is on by default on a CUDA device (``train.compile``, ``train.fused_optimizer``, ...): 'auto' is
    on for CUDA and off elsewhere; True or False (also as the strings a command-line override of an 'auto' field
    gives, 'False', 'off', '0', ...) as given. UserError naming ``key`` for anything else."""
    import torch
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word == 'auto':
        return torch.device(device).type == 'cuda'
    if word in SWITCH_WORDS:
        return SWITCH_WORDS[word]
    raise UserError(f"config.{key} must be 'auto', True or False, got {value!r}")


def compile_mode(value, key: str, device) -> str:
    """``train.compile`` / ``sample.compile``: 'regional' (each repeated block; a switch that is on, 'auto' on CUDA),
    'full' (the whole network) or '' (off)."""
    if str(value).strip().lower() == 'full':
        return 'full'
    try:
        return 'regional' if device_switch(value, key, device) else ''
    except UserError:
        raise UserError(f"config.{key} must be 'auto', True, False or 'full', got {value!r}") from None


def parse_list(value, what: str, kind=str, allow_empty: bool = False) -> list:
    """A list-valued config field: 'a,b', a tuple or a single number -> [kind(a), kind(b)]; UserError naming
    ``what`` when malformed, or empty unless ``allow_empty``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    else:
        items = [v.strip() for v in value.split(',')] if isinstance(value, str) else list(value)
    items = [v for v in items if v != '']
    try:
        items = [kind(v) for v in items]
    except ValueError:
        raise UserError(f'{what} must be a comma-separated list of {kind.__name__} values, got {value!r}') from None
    if not items and not allow_empty:
        raise UserError(f'{what} is empty')
    return items
