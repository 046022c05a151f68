"""``segbench data``: argument parsing for :mod:`bench.data`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from bench.cli.common import add_input_size
from bench.core.io import write_json
from bench.data.cache import prepare_data, split_file_for
from bench.data.checks import check_dataset, dataset_stats, duplicate_report
from bench.data.derive import DERIVED_LAYOUTS, SHIFTS, derive_dataset
from bench.data.layouts import dataset_name, index_dataset
from bench.data.splits import SPLIT_MODES, resolve_split
from bench.data.synthetic import LAYOUTS as SYNTHETIC_LAYOUTS
from bench.data.synthetic import make_synthetic
from bench.data.throughput import load_average, loader_throughput


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="dataset folder (any supported layout)")
    p.add_argument(
        "--mask-suffix",
        default=None,
        help="what follows the ID in mask names (flat/prepared; default: auto)",
    )


def _add_split(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="test part (default 0.3, 7:3)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="validation part carved from train (default 0.1)",
    )
    p.add_argument(
        "--split-mode",
        choices=SPLIT_MODES,
        default="auto",
        help="official split when the layout has one (auto), always the layout's (official), "
        "or the papers' seeded 7:3 (seeded; an official ISIC test part is left out)",
    )


def _cmd_info(args: argparse.Namespace) -> int:
    index = index_dataset(args.root, mask_suffix=args.mask_suffix)
    lay = index.layout
    print(f"dataset   {args.root}")
    print(f"layout    {lay.name}: {lay.description} (in {lay.base})")
    official = index.official_split_ids()
    counts = ", ".join(f"{k} {len(v)}" for k, v in official.items()) if official else "none"
    print(f"pairs     {len(index)}   official splits: {counts}")
    stats = dataset_stats(index, binarize=args.binarize, workers=args.workers,
                          progress=not args.quiet)  # fmt: skip
    for err in stats.errors:
        print(f"  error: {err}", file=sys.stderr)
    if stats.n:
        (h0, w0), (h1, w1), (hm, wm) = stats.min_hw, stats.max_hw, stats.median_hw
        print(f"size HxW  min {h0}x{w0}, max {h1}x{w1}, median {hm}x{wm}")
        fg = stats.lesion_fraction
        print(
            f"lesion    fraction of pixels: mean {fg['mean']:.3f}, median {fg['median']:.3f}, "
            f"min {fg['min']:.3f}, max {fg['max']:.3f}; empty masks: {stats.empty_masks}"
        )
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    index = index_dataset(args.root, mask_suffix=args.mask_suffix)
    out = args.split_file or split_file_for(
        args.root, dataset_name(index.layout, args.root), index, args.split_mode
    )
    if out.exists() and not args.force:
        print(f"{out} exists (use --force to replace it)", file=sys.stderr)
        return 1
    if args.force:
        out.unlink(missing_ok=True)
    split, meta = resolve_split(
        index, out, args.seed, args.test_fraction, args.val_fraction, args.split_mode
    )
    print(
        f"{meta['source']} split -> {out}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items())
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    problems = check_dataset(
        args.root,
        mask_suffix=args.mask_suffix,
        binarize=args.binarize,
        workers=args.workers,
        progress=not args.quiet,
    )
    for p in problems:
        print(p)
    n_err = sum(p.severity == "error" for p in problems)
    print(f"{n_err} error(s), {len(problems) - n_err} warning(s) in {args.root}")
    if not args.no_duplicates and not any(p.kind == "layout" for p in problems):
        rep = duplicate_report(
            args.root,
            split_files=args.split_file,
            threshold=args.near_threshold,
            mask_suffix=args.mask_suffix,
            workers=args.workers,
            progress=not args.quiet,
        )
        print(
            f"duplicate images: {len(rep['groups'])} group(s) (exact: same decoded pixels; "
            f"near: 256-bit pHash distance <= {rep['threshold']})"
        )
        for g in rep["groups"]:
            dist = "" if g["kind"] == "exact" else f", distance {g['max_distance']}"
            print(f"  {g['kind']}{dist}: {', '.join(g['ids'])}")
        for name, leaks in rep["splits"].items():
            print(f"split {name}: {len(leaks)} group(s) on more than one side")
            for g in leaks:
                where = ", ".join(f"{i} ({p})" for i, p in sorted(g["parts"].items()))
                print(f"  LEAK {g['kind']}: {where}")
    return 1 if n_err else 0


def _cmd_cache(args: argparse.Namespace) -> int:
    data = prepare_data(
        args.root,
        args.input_size,
        args.split_file,
        args.seed,
        args.val_fraction,
        args.test_fraction,
        args.cache_dir,
        args.workers,
        not args.quiet,
        mask_suffix=args.mask_suffix,
        binarize=args.binarize,
        split_mode=args.split_mode,
    )
    print(
        f"{data!r}\ncache  {data.cache_path}\nsplit  {data.split_file}\n"
        f"fingerprint {data.fingerprint}"
    )
    return 0


def _cmd_derive(args: argparse.Namespace) -> int:
    rec = derive_dataset(
        args.root,
        args.out,
        split=args.split,
        layout=args.layout,
        shift=args.shift,
        split_file=args.split_file,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        split_mode=args.split_mode,
        force=args.force,
    )
    shift = f", shift {rec['shift']['name']}" if rec["shift"] else ""
    print(
        f"{rec['n_images']} images ({args.split} of {args.root}) -> {args.out} ({args.layout}{shift})"
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    size = tuple(args.size) if args.size else None
    out = make_synthetic(
        args.out,
        n=args.n,
        size=size,
        seed=args.seed,
        mask_suffix=args.mask_suffix,
        layout=args.layout,
        ext=args.ext,
    )
    print(f"wrote {args.n} synthetic lesions ({args.layout} layout) to {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from bench.core.env import environment

    if args.threads:
        torch.set_num_threads(args.threads)
    data = prepare_data(
        args.root,
        args.input_size,
        args.split_file,
        args.seed,
        cache_dir=args.cache_dir,
        workers=max(1, args.workers),
        progress=not args.quiet,
        mask_suffix=args.mask_suffix,
    )
    results = loader_throughput(data, args.batch, args.seconds, args.workers)
    load = load_average()
    size = args.input_size
    print(
        f"{data.name}: train split ({len(data.split_ids['train'])} images), {size}x{size}, "
        f"batch {args.batch}, flips + rotation + scaling, {torch.get_num_threads()} torch "
        f"thread(s) per process, {args.seconds:g} s each; {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f}"
    )
    print(f"  {'source':22s} {'samples/s':>10s} {'per CPU-s':>10s}")
    for k, v in results.items():
        per_cpu = (
            f"{v['samples_per_cpu_s']:10.1f}"
            if "workers" not in k or args.workers == 0
            else f"{'-':>10s}"
        )
        print(f"  {k:22s} {v['samples_per_s']:10.1f} {per_cpu}")
    if args.json:
        write_json(
            args.json,
            {
                "command": " ".join(["segbench", *sys.argv[1:]]),
                "dataset": str(args.root),
                "size": size,
                "batch": args.batch,
                "seconds": args.seconds,
                "workers": args.workers,
                "torch_threads": torch.get_num_threads(),
                "samples_per_s": {k: v["samples_per_s"] for k, v in results.items()},
                "samples_per_cpu_s": {
                    k: v["samples_per_cpu_s"]
                    for k, v in results.items()
                    if "workers" not in k or args.workers == 0
                },
                "load_average": load,
                "environment": environment("cpu"),
            },
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segbench data`` and its subcommands."""
    p = subparsers.add_parser(
        "data",
        help="datasets: layouts, splits, cache, checks, synthetic data",
        description="Inspect, split, check and cache segmentation datasets "
        "(official ISIC 2017/2018, PH2, the authors' prepared layout, flat "
        "images/ + masks/).",
    )
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        q.add_argument(
            "--binarize",
            action="store_true",
            help="threshold masks that are not 0/255 at 128 instead of failing",
        )

    q = sub.add_parser(
        "info",
        help="layout, counts per split, image sizes, lesion statistics",
        description="Print the layout, pair counts, image-size range and mask "
        "foreground statistics of a dataset.",
    )
    _add_root(q)
    common(q)
    q.set_defaults(func=_cmd_info)

    q = sub.add_parser(
        "split",
        help="write a split.json (official or seeded train/val/test)",
        description="Write the split every model will use: the layout's official "
        "split, or a seeded test part plus a validation part carved from train.",
    )
    _add_root(q)
    _add_split(q)
    q.add_argument(
        "--split-file",
        type=Path,
        default=None,
        help="split file to write (default: in $SEGBENCH_CACHE, ~/.cache/segbench, keyed by "
        "the dataset's path and content; ROOT/split.json only when given here)",
    )
    q.add_argument("--force", action="store_true", help="replace an existing split file")
    q.set_defaults(func=_cmd_split)

    q = sub.add_parser(
        "check",
        help="list every problem in a dataset in one pass",
        description="Decode every image and mask and list all problems (corrupt "
        "files, size mismatches, missing masks, non-0/255 masks, duplicate IDs, "
        "grayscale/RGBA images), then every group of duplicate images (exact: same "
        "pixels; near: perceptual hash) and every group that a split (official, "
        "segbench's, or --split-file) puts on more than one side. Exit code 1 when "
        "there are errors.",
    )
    _add_root(q)
    common(q)
    q.add_argument(
        "--split-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="also report duplicate groups that this split file puts on more than one "
        "side (repeatable; the official split and segbench's own split files of ROOT are "
        "always checked)",
    )
    q.add_argument(
        "--near-threshold",
        type=int,
        default=None,
        metavar="BITS",
        help="largest 256-bit perceptual-hash distance counted as a near copy (default "
        "40; see bench/data/duplicates.py for how it was chosen)",
    )
    q.add_argument("--no-duplicates", action="store_true", help="skip the duplicate-image search")
    q.set_defaults(func=_cmd_check)

    q = sub.add_parser(
        "cache",
        help="build (or reuse) the preprocessing cache",
        description="Resize every image and mask once into memory-mapped uint8 "
        "arrays, keyed by the files, the split and the size.",
    )
    _add_root(q)
    _add_split(q)
    common(q)
    add_input_size(q, help="the cache's image size")
    q.add_argument(
        "--split-file",
        type=Path,
        default=None,
        help="split file (default: ROOT/split.json if the dataset ships one, else one in "
        "$SEGBENCH_CACHE keyed by the dataset's path and content)",
    )
    q.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache folder (default: $SEGBENCH_CACHE, else ~/.cache/segbench; the dataset "
        "folder is never written unless given here)",
    )
    q.set_defaults(func=_cmd_cache)

    q = sub.add_parser(
        "synth",
        help="write seeded synthetic lesion images with masks",
        description="Write lesion-like images (irregular blobs, skin texture, hairs) "
        "with 0/255 masks, for tests and demos.",
    )
    q.add_argument("out", type=Path, help="output folder")
    q.add_argument("--n", type=int, default=32, help="number of images (default 32)")
    q.add_argument("--seed", type=int, default=0, help="random seed of the images (default 0)")
    q.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="fixed size (default: varied)",
    )
    q.add_argument(
        "--layout",
        choices=SYNTHETIC_LAYOUTS,
        default="flat",
        help="folder layout to write (default: flat)",
    )
    q.add_argument("--ext", default="jpg", help="image format (jpg or png)")
    q.add_argument("--mask-suffix", default="", help="appended to the ID in mask names (flat)")
    q.set_defaults(func=_cmd_synth)

    q = sub.add_parser(
        "derive",
        help="write one split of a dataset in another official layout (external test sets)",
        description="Write the images and masks of one split of ROOT (as training splits "
        "it) into the --to folder in another official layout, optionally with a named photometric "
        "shift, for cross-dataset checks (segbench evaluate --split all). ROOT is never "
        "written to; TO/derived.json records how the folder was built. Shifts: "
        + "; ".join(f"{s.name}: {s.description}" for s in SHIFTS.values()),
    )
    q.add_argument("--from", dest="root", type=Path, required=True, help="source dataset folder")
    q.add_argument("--to", dest="out", type=Path, required=True, help="dataset folder to create")
    q.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="which images (default test)",
    )
    q.add_argument("--layout", choices=DERIVED_LAYOUTS, required=True, help="layout to write")
    q.add_argument("--shift", choices=list(SHIFTS), default=None, help="photometric shift")
    _add_split(q)
    q.add_argument("--split-file", type=Path, default=None, help="default: the source's")
    q.add_argument("--force", action="store_true", help="replace the --to folder if it exists")
    q.set_defaults(func=_cmd_derive)

    q = sub.add_parser(
        "bench",
        help="loader throughput: samples/s from the cache vs the files",
        description="Measure samples/s delivered with augmentation at SIZE, from the "
        "preprocessing cache and from decoding the image files.",
    )
    _add_root(q)
    add_input_size(q, help="the cache's image size")
    q.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    q.add_argument("--seconds", type=float, default=10.0, help="time per source (default 10)")
    q.add_argument("--seed", type=int, default=42, help="split seed")
    q.add_argument("--split-file", type=Path, default=None, help="split file (as for data cache)")
    q.add_argument("--cache-dir", type=Path, default=None, help="cache folder (as for data cache)")
    q.add_argument("--workers", type=int, default=2, help="loader / decoding processes (default 2)")
    q.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (default 1; 0 keeps torch's default)",
    )
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON"
    )
    q.set_defaults(func=_cmd_bench)
