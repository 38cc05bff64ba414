"""Plot the result of ``eval.py --eval=sweep``: one panel per metric, the score against the number of network
evaluations (NFE), one line per sampler.

    python scripts/plot_sweep.py --sweep=CKPT_DIR/eval_sweep_digits_n1000_digits_ema.json --out=docs/digits_nfe.png
"""
import argparse
import json

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def plot(record: dict, out: str) -> None:
    grid = record['grid']
    metrics = sorted({k for row in grid.values() for point in row.values() for k in point})
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = []
        for algorithm, row in grid.items():
            nfes = sorted(int(n) for n in row)
            scores = [row[str(n)][metric] for n in nfes]
            values += scores
            ax.plot(nfes, scores, marker='o', label=algorithm)
        ax.set_xscale('log')
        positive = [v for v in values if v is not None and v > 0]
        if len(positive) == len(values) and max(positive) > 10 * min(positive):
            ax.set_yscale('log')  # a diverging sampler at low NFE would flatten every other line
        ax.set_xticks(record['settings']['nfes'], [str(n) for n in record['settings']['nfes']])
        ax.minorticks_off()
        ax.set_xlabel('NFE')
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    settings = record['settings']
    fig.suptitle(f"{record['dataset']}: {settings['n_samples']} samples per point, "
                 f"{'EMA' if record['ema'] else 'raw'} weights", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sweep', required=True, help='the eval_sweep_*.json that eval.py --eval=sweep wrote')
    parser.add_argument('--out', required=True, help='PNG to write')
    args = parser.parse_args()
    try:
        with open(args.sweep) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f'error: cannot read the sweep record {args.sweep}: {exc}')
    if record.get('mode') != 'sweep':
        raise SystemExit(f'error: {args.sweep} is not written by eval.py --eval=sweep (mode {record.get("mode")!r})')
    plot(record, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
