"""Distributed evaluation (gloo, 2 CPU processes) equals a single-process evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.engine.evaluate import EvalSettings, evaluate_arrays
from bench.engine.losses import build_loss


def _model() -> torch.nn.Module:
    from models import create_model

    torch.manual_seed(0)
    model = create_model("unet", base_width=2)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _inputs():
    rng = np.random.default_rng(0)
    n = 7  # uneven over 2 ranks
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:32, :32]
    masks = np.stack([((yy - 16 + k) ** 2 + (xx - 14) ** 2 < 60 + 20 * k) for k in range(n)])
    sizes = [(40 + 3 * k, 50 - 2 * k) for k in range(n)]
    orig = [
        np.asarray(
            torch.nn.functional.interpolate(
                torch.tensor(m, dtype=torch.float32)[None, None], size=s, mode="nearest"
            )[0, 0]
            > 0
        )
        for m, s in zip(masks, sizes)
    ]
    return images, masks.astype(np.uint8), [f"img{k}" for k in range(n)], orig


def _evaluate():
    images, masks, ids, orig = _inputs()
    return evaluate_arrays(
        _model(),
        images,
        masks,
        ids,
        EvalSettings(batch_size=2),
        loss_fn=build_loss(),
        original_mask=lambda i: orig[i],
    )


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = _evaluate()
        if rank == 0:
            with open(out, "w") as fh:
                json.dump(
                    {
                        "metrics": res.metrics,
                        "original": res.original,
                        "loss": res.loss,
                        "rows": res.per_image.to_dict("records"),
                        "orig_rows": res.original_per_image.to_dict("records"),
                    },
                    fh,
                )
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_evaluation_equals_single_process(tmp_path):
    out = tmp_path / "rank0.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    torch.set_num_threads(1)
    want = _evaluate()
    assert got["metrics"]["n_images"] == 7
    assert got["metrics"] == pytest.approx(want.metrics, rel=1e-9, nan_ok=True)
    assert got["original"] == pytest.approx(want.original, rel=1e-9, nan_ok=True)
    assert got["loss"] == pytest.approx(want.loss, rel=1e-6)
    assert [r["image_id"] for r in got["rows"]] == list(want.per_image["image_id"])
    for a, b in zip(got["rows"], want.per_image.to_dict("records")):
        a.pop("image_id"), b.pop("image_id")
        assert a == pytest.approx(b, rel=1e-9, nan_ok=True)
    assert len(got["orig_rows"]) == 7


@pytest.mark.slow
def test_train_nproc_2_on_cpu(tmp_path):
    from bench.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "syn", n=20, size=(40, 48), seed=5)
    cmd = [
        sys.executable,
        "-m",
        "bench.cli",
        "train",
        "--model",
        "unet",
        "--data",
        str(root),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--set",
        "image_size=32",
        "--set",
        "model_kwargs={base_width: 2}",
        "--results",
        str(tmp_path / "results"),
        "--quiet",
        "--nproc",
        "2",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "results" / "runs" / "syn" / "unet" / "fair-e2" / "seed42"
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "finished" and m["test"]["n_images"] == 6
    man = json.loads((run / "manifest.json").read_text())
    assert man["world_size"] == 2
