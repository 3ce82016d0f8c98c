"""Reference FID statistics of a data set split: mu and sigma of its Inception pool3 features.

    python -m jaxgen.metrics.fid_stats --data cifar10 --split train --out cifar10_train.npz \\
        [--data_dir DIR] [--max_examples N] [--batch_size 50] [--weights FILE] [--no_download]

The split is streamed in fixed-size batches through jaxgen.data's reader (every example once, no
augmentation), each batch sharded over this host's devices (`--batch_size` images per device)
and its features added to float64 running statistics, so no more than one batch is held. Writes
an .npz with keys `mu` (2048,) and `sigma` (2048, 2048), the format of the statistics files that
TTUR and pytorch-fid publish (which `jaxgen.metrics.fid.load_stats` reads too). Bad input (an
unknown data set, missing weights on an offline machine) exits with status 2 and one line.
Run it on one host: it does not start a multi-host job.
"""
from __future__ import annotations

import argparse
import math
import sys

from jaxgen.metrics.fid import FeatureStats, InceptionExtractor, save_stats


def split_stats(data_config, split: str, extractor, *, progress: bool = False) -> FeatureStats:
    """FeatureStats of `extractor`'s features over every example of `split`, streamed.

    `data_config` is a jaxgen data config (a dict with at least 'name'); its train iterator is
    read for one epoch without flips (positions 0..N-1 of epoch 0 are a permutation of the split:
    each example exactly once), in global batches of `extractor.batch_size`. Images arrive in
    [-1, 1] and are mapped to `extractor.input_range`; grayscale images go through as they are
    (the extractor repeats the channel).
    """
    from jaxgen import data

    cfg = dict(data_config)
    cfg.update(split_train=split, split_test=split, random_flip=False)
    n = data.dataset_info(cfg).num_train
    b = int(extractor.batch_size)
    lo, hi = extractor.input_range
    it = data.make_train_iterator(cfg, global_batch_size=b, seed=0, process_index=0,
                                  process_count=1)
    stats = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"{cfg['name']}/{split}", unit="img")
    for step in range(math.ceil(n / b)):
        x = next(it)["x"][:n - step * b]
        x = (x + 1.0) * ((hi - lo) / 2.0) + lo
        pool3, _ = extractor(x)
        if stats is None:
            stats = FeatureStats(pool3.shape[1])
        stats.update(pool3)
        if bar is not None:
            bar.update(x.shape[0])
    if bar is not None:
        bar.close()
    return stats


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxgen.metrics.fid_stats",
                                description="FID reference statistics (mu, sigma) of a data set split.")
    p.add_argument("--data", required=True, help="data set name (cifar10, mnist, celeb_a, ...)")
    p.add_argument("--split", default="train", help="tfds split (default: train)")
    p.add_argument("--out", required=True, help="output .npz (local path or gs:// URL)")
    p.add_argument("--data_dir", default=None, help="tfds data root (default: $TFDS_DATA_DIR)")
    p.add_argument("--max_examples", type=int, default=None, help="use only the first N examples")
    p.add_argument("--batch_size", type=int, default=50, help="images per device per batch")
    p.add_argument("--weights", default=None,
                   help="FID Inception weights file (default: cache, downloaded once)")
    p.add_argument("--no_download", action="store_true", help="never download the weights")
    return p


def main(argv: list[str] | None = None) -> int:
    from jaxgen.config import ConfigError
    from jaxgen.metrics.inception import load_fid_inception

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1 (images per device), got {args.batch_size}")
        cfg = {"name": args.data, "data_dir": args.data_dir, "max_examples": args.max_examples}
        from jaxgen import data

        data.dataset_info({**cfg, "split_train": args.split, "split_test": args.split})
        model = load_fid_inception(args.weights, download=not args.no_download,
                                   input_range=(-1.0, 1.0))
        extractor = InceptionExtractor(model, batch_size_per_device=args.batch_size)
        stats = split_stats(cfg, args.split, extractor, progress=True)
        save_stats(args.out, stats.mu, stats.sigma)
    except (ConfigError, ValueError) as e:  # bad input: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: mu {stats.mu.shape}, sigma {stats.sigma.shape} from {stats.n} "
          f"images of {args.data}/{args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
