"""The old name of ``scripts/score_samples.py``: the same command and flags (``--ref_stats`` is ``--reference``).

    python scripts/compute_fid.py --samples=DIR_OR_NPZ --ref_stats=assets/fid_stats/fid_stats_cifar10_train_pytorch.npz
"""
import os
import runpy

if __name__ == '__main__':
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'score_samples.py'), run_name='__main__')
