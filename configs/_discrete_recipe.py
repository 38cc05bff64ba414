"""The discrete seed's recipe for 8-bit images (paulffm's "Image Generation with Vision Transformers and Diffusion
Models in Discrete State Spaces"; Campbell et al. 2022's tau-leaping): shared by the MNIST and CIFAR-10 discrete
configs. Its values: S 256, the Gaussian-target rate (rate_sigma 6, Q_sigma 512, time_exp 100, time_base 3),
the CT-ELBO with a 0.001 direct cross-entropy, min_time 0.01 and one forward pass, Adam at 3e-4, gradient norm
clipped at 1, EMA 0.9999, tau-leaping with 1000 steps down to min_t 0.01 from the Gaussian target. Steps, batch and
evaluation sizes are this suite's choices (the seed's configs do not fix them)."""
from libs.config import d


def discrete_recipe(nnet, dataset, mode: str, n_steps: int = 200000, batch_size: int = 128, lr: float = 3e-4):
    """The config sections of the seed's recipe around ``nnet`` and ``dataset``."""
    return d(
        seed=1234,
        framework='ctmc',
        ctmc=d(num_states=256, rate='gaussian', profile='exponential', time_base=3.0, time_exp=100.0,
               rate_sigma=6.0, Q_sigma=512.0),
        loss=d(name='ct_elbo', eps_ratio=1e-9, nll_weight=0.001, min_time=0.01, one_forward_pass=True),
        train=d(n_steps=n_steps, batch_size=batch_size, mode=mode, log_interval=10, eval_interval=5000,
                save_interval=20000, ema_rate=0.9999, grad_clip=1.0, p_uncond=0.1 if mode == 'cond' else 0.0),
        optimizer=d(name='adam', lr=lr, weight_decay=0.0, betas=(0.9, 0.999)),
        lr_scheduler=d(name='customized', warmup_steps=5000),
        nnet=nnet,
        dataset=dataset,
        sample=d(algorithm='tau_leaping', sample_steps=1000, min_t=0.01, initial_dist='gaussian', is_ordinal=True,
                 n_samples=50000, mini_batch_size=250, path='', scale=0.0),
        eval=d(metric='fid', train_n_samples=5000, train_algorithm='tau_leaping', train_sample_steps=1000),
    )
