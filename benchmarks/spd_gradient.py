"""How strong is the SPD term? The gradient-norm ratio of spd_weight x SPD to the process loss for a student that
starts from its full-precision twin (the situation of a `feature_distill` stage's first step).

BiDM adds SPD with weight 0.01 to a loss summed over pixels; ours is a mean, so that weight does not carry over.
This prints, over a few batches of the quickstart's data, ||grad(w SPD)|| / ||grad(process loss)|| on the student's
parameters for several w, to choose spd_weight by measurement.

    python benchmarks/spd_gradient.py runs/bench_distillation/teacher/teacher [--batches 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from pipeline.builtin_data import export_skimage  # noqa: E402
from pipeline.data import PatchDataset, load_hr_dataset, make_pairs  # noqa: E402
from pipeline.stages.spd import spd_loss  # noqa: E402
from students.bidiffsr import BiDiffSRUNet  # noqa: E402
from teachers import load_teacher, noisy_batch  # noqa: E402


def grad_norm(loss, params) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="a twin teacher folder")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--data", default="runs/spd_gradient_data")
    args = parser.parse_args(argv)

    teacher = load_teacher(args.teacher)
    student = BiDiffSRUNet(**{**dict(teacher.unet.config), "binarizer": "bidiffsr"})
    student.init_from_teacher(teacher.unet)
    params = [p for p in student.parameters() if p.requires_grad]
    train, _ = export_skimage(Path(args.data))
    pairs = make_pairs(load_hr_dataset(str(train)), teacher.config.scale, args.patch)
    data = PatchDataset(pairs, args.patch, teacher.config.scale, seed=0)
    weights = (0.01, 0.1, 1.0)
    ratios = {w: [] for w in weights}
    for b in range(args.batches):
        batch = [data[b * 8 + i] for i in range(8)]
        hr, cond = torch.stack([x["hr"] for x in batch]), torch.stack([x["cond"] for x in batch])
        nb = noisy_batch(teacher.process, hr, cond, torch.Generator().manual_seed(b))
        out, s_feats = student(nb.x_in, nb.y_in, nb.t, return_features=True)
        _, t_feats = teacher.features(nb.x_in, nb.y_in, nb.t)
        task = grad_norm(teacher.process.loss(out, nb.target), params)
        spd = grad_norm(spd_loss(s_feats, t_feats, list(s_feats)), params)
        for w in weights:
            ratios[w].append(w * spd / task)
    table = Table(title=f"||grad(w SPD)|| / ||grad(process loss)||, student from its twin, {args.batches} batches of 8")
    table.add_column("spd_weight w")
    table.add_column("ratio (mean)", justify="right")
    for w in weights:
        table.add_row(f"{w:g}", f"{sum(ratios[w]) / len(ratios[w]):.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
