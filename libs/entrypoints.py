"""The entry points' shared mains.

``train.py``, ``train_ldm.py`` and ``train_t2i_discrete.py`` keep the U-ViT release's names, but all three run the
same Trainer: what differs (pixels or stored latents, class labels or text) comes from the config. Each script
accepts the kind of config its name promises, so a wrong pairing is one line that names the right script.
``eval.py`` and ``eval_ldm.py`` likewise share ``run_evaluation``.
"""
import os
import signal
import sys

SCRIPTS = {
    'pixel': 'train.py',
    'latent': 'train_ldm.py',
    'text': 'train_t2i_discrete.py',
}
EVAL_SCRIPTS = {'pixel': 'eval.py', 'latent': 'eval_ldm.py', 'text': 'eval_ldm.py'}


def config_kind(config) -> str:
    """'text' (text-to-image), 'latent' (features of the autoencoder) or 'pixel'."""
    from libs.data import DATASETS
    if config.train.mode == 'text':
        return 'text'
    dataset_class = DATASETS.get(config.dataset.get('name', None))
    return 'latent' if getattr(dataset_class, 'stores_features', False) else 'pixel'


def check_kind(config, script_kinds: tuple, scripts: dict) -> None:
    from libs.errors import UserError
    kind = config_kind(config)
    if kind not in script_kinds:
        raise UserError(f'{scripts[script_kinds[0]]} is for {" and ".join(script_kinds)} models, but this config is '
                        f'a {kind} one: run it with {scripts[kind]}')


def run_training(script_kind: str) -> None:
    """Define the flags, parse them and train; ``script_kind`` is a key of SCRIPTS."""
    from absl import app, flags

    from libs import cli

    FLAGS = flags.FLAGS
    cli.define_config_flag('Training configuration file (configs/*.py).')
    flags.mark_flags_as_required(['config'])
    flags.DEFINE_string('workdir', None, 'Output directory (default: workdir/<config>/<overrides>); '
                                         'a re-run with the same directory resumes.')
    flags.DEFINE_string('resume', '', 'A checkpoint directory (<workdir>/ckpts/<step>.ckpt) to resume from; it must '
                                      'verify. Default: the newest checkpoint of --workdir that verifies.')
    flags.DEFINE_bool('resume_anyway', False, 'Resume the work directory\'s checkpoint even though its config.json '
                      'names other data, another network or another noise process than this config (refused '
                      'otherwise).')

    def main(_):
        from libs.config import resolve
        from libs.training.loop import Trainer
        config = resolve(FLAGS.config)
        check_kind(config, (script_kind,), SCRIPTS)
        workdir = FLAGS.workdir or cli.default_workdir(sys.argv)
        cli.setup_logging(os.path.join(workdir, 'output.log'))
        try:
            result = Trainer(config, workdir, resume=FLAGS.resume, resume_anyway=FLAGS.resume_anyway).fit()
        except BaseException:
            # the run is failing with its own error line: a SIGTERM now (the launcher's, after another process
            # exited) must not cut it off
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise
        if result and cli.is_main_process():
            print(f'final score ({config.sample.algorithm}, {config.sample.sample_steps} NFE, '
                  f'{config.sample.n_samples} samples, EMA): '
                  + ' '.join(f'{k}={v:.4f}' for k, v in result.items()))

    app.run(lambda argv: cli.run(main, argv), flags_parser=cli.parse_flags)


def run_evaluation(script_kinds: tuple) -> None:
    """Define the flags, parse them and evaluate: ``--eval=sample`` (default) samples and scores
    and the other modes of libs/evaluation."""
    from absl import app, flags

    from libs import cli

    FLAGS = flags.FLAGS
    cli.define_config_flag('Configuration file (configs/*.py).')
    flags.DEFINE_string('nnet_path', None, 'Weights file (.pth / .safetensors) or a training checkpoint directory.')
    flags.DEFINE_bool('ema', True, 'The weights are EMA weights (in a checkpoint directory: use nnet_ema.pth).')
    flags.DEFINE_string('eval', 'sample', 'What to evaluate: sample, test_clf, gen, nll, cali, ood, attack, sweep, '
                        'linear_probe, contrastive or noisy_clf.')
    flags.DEFINE_bool('grid', False, '--eval=linear_probe: one probe per (layer, noise level) of '
                      'config.probe.grid_layers x grid_levels (sets config.probe.grid).')
    flags.mark_flags_as_required(['config', 'nnet_path'])

    def main(_):
        from libs.config import resolve
        from libs.evaluation import run_eval_mode
        cli.setup_logging()
        config = resolve(FLAGS.config)
        if FLAGS.grid:
            config.probe.grid = True
        check_kind(config, script_kinds, EVAL_SCRIPTS)
        run_eval_mode(config, FLAGS.eval, FLAGS.nnet_path, FLAGS.ema)

    app.run(lambda argv: cli.run(main, argv), flags_parser=cli.parse_flags)
