"""Every self-supervised method, measured the same way (docs/methods.md).

    python bench/methods.py speed                      # s/image and peak memory, 64 px, CPU
    python bench/methods.py readouts --data demo --epochs 30   # kNN / few-shot before -> after
    python bench/methods.py readouts --data folder --data-root /tmp/real/digits --image-size 32 \
        --batch-size 128 --warmup-epochs 2
    python bench/methods.py gains --data demo --seeds 0 1        # held-out 3-shot gain over random

`speed` runs each method in its own process (peak memory is per process): a resnet18, batch 32,
64-px views from the method's own crops, 3 warm-up steps then 10 timed ones, the per-batch colour
augmentation included. `readouts` runs `medssl pretrain --method X` for each method with the same
epochs, seed and data, and prints backbone.json's kNN and few-shot accuracy (plain and balanced)
before -> after. `gains` runs `medssl pretrain --method X` with default flags (plus what is
passed on) for each method and seed, then a protocol the pretraining never looked at: a 3-shot
linear probe (20 seeded draws of 3 labelled train images per class, logistic regression on the
frozen, L2-normalised features) scored on the TEST split, for the backbone and for a random init
of the same network and seed; it prints each method's gain in points per seed, their mean, the
run's own val read-out gain (backbone.json) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def one_speed(name: str, size: int, batch: int, steps: int) -> dict:
    import torch

    from medssl.data.transforms import method_views, simclr_settings
    from medssl.models import build_backbone, feature_dim
    from medssl.presets import IMAGENET_MEAN, IMAGENET_STD
    from medssl.training.methods import get_method

    torch.manual_seed(0)
    method = get_method(name)
    settings = simclr_settings(size, "study")
    views = method.views(size, settings, **method.defaults)
    crops, colour = method_views(views, size, settings, IMAGENET_MEAN, IMAGENET_STD)
    images = torch.randint(0, 256, (batch, 3, size * 8 // 7, size * 8 // 7), dtype=torch.uint8)
    per_image = [crops(img) for img in images]
    batch_views = [torch.stack([v[k] for v in per_image]) for k in range(len(views))]
    labels = torch.arange(batch) % 4
    module = method(build_backbone("resnet18"), feature_dim("resnet18"), batch_transform=colour,
                    **method.defaults)
    # Without a Trainer: the loss and the augmentation of each step, timed alone (momentum
    # updates, a few per cent of a step, are not included).
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        v, y = module.on_after_batch_transfer((batch_views, labels), 0)
        loss = module.loss(v, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = (time.perf_counter() - start) / steps
    return {"method": name, "views": len(views), "s_per_image": seconds / batch,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def speed(args) -> None:
    from medssl.names import method_names

    print("| method | views | ms / image (train step) | peak memory (MB) |\n|---|---|---|---|")
    for name in method_names():
        out = subprocess.run([sys.executable, __file__, "_one", name, str(args.size),
                              str(args.batch), str(args.steps)], capture_output=True, text=True)
        if out.returncode:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['views']} | {r['s_per_image'] * 1000:.1f} | {r['peak_rss_mb']:.0f} |",
              flush=True)


def readouts(args, extra: list[str]) -> None:
    from medssl.names import method_names

    out = Path(args.out)
    print("| method | kNN before → after | few-shot before → after | balanced kNN | "
          "balanced few-shot | wall time |\n|---|---|---|---|---|---|")
    for name in args.methods or method_names():
        run = out / name
        cmd = [sys.executable, "-m", "medssl", "pretrain", "--dataset", args.data, "--method", name,
               "--seed", "0", "--out", str(run), "--force", *extra]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1]} | | | | |", flush=True)
            continue
        m = json.loads((run / "backbone.json").read_text())
        print(f"| {name} | {m['initial_knn_acc']:.3f} → **{m['final_knn_acc']:.3f}** | "
              f"{m['initial_fewshot_acc']:.3f} → **{m['final_fewshot_acc']:.3f}** | "
              f"{m['initial_knn_balanced_acc']:.3f} → {m['final_knn_balanced_acc']:.3f} | "
              f"{m['initial_fewshot_balanced_acc']:.3f} → {m['final_fewshot_balanced_acc']:.3f} | "
              f"{m['wall_time_s']:.0f} s |", flush=True)


def heldout_probe(run: Path, shots: int = 3, draws: int = 20) -> dict:
    """3-shot balanced accuracy on the test split of `run`'s backbone and of a random init of
    the same network drawn from the run's seed (the monitor's bar, pretrain.random_init)."""
    from torch.utils.data import DataLoader

    from medssl.data import prepare
    from medssl.data.cache import cache_side
    from medssl.data.prepare import data_config
    from medssl.data.torch_dataset import ImageDataset
    from medssl.data.transforms import Normalize, eval_crop
    from medssl.models import load_backbone_file
    from medssl.models.backbones import empty_backbone
    from medssl.options import DataOptions
    from medssl.training.knn import embed
    from medssl.training.pretrain import PretrainConfig, random_init
    from medssl.training.probe import few_shot_scores

    meta = json.loads((run / "backbone.json").read_text())
    cfg = meta["config"]
    table, _ = prepare(data_config(DataOptions(dataset=cfg["dataset"], data_root=cfg["data_root"],
                                               split_file=str(run / "split.csv"),
                                               window=cfg.get("window", "auto"))),
                       progress=False)
    norm = Normalize(meta["normalize"]["mean"], meta["normalize"]["std"])
    size = meta["image_size"]
    channels = meta.get("in_channels", 3)
    loaders = {split: DataLoader(ImageDataset(table, split, eval_crop(size), cache_side(size),
                                              channels=channels),
                                 batch_size=64) for split in ("train", "test")}
    trained = empty_backbone(meta["arch"], channels, size)
    load_backbone_file(trained, run / "backbone.pt")
    random = random_init(PretrainConfig(dataset=cfg["dataset"], arch=meta["arch"],
                                        seed=meta["seed"], in_channels=channels))()
    scores = {}
    for name, backbone in (("random", random), ("trained", trained)):
        backbone.eval()
        (xtr, ytr), (xte, yte) = (embed(backbone, loaders[s], "cpu", norm) for s in ("train", "test"))
        scores[name] = few_shot_scores(xtr, ytr, xte, yte, shots=shots, draws=draws)["balanced_acc"]
    return scores


def gains(args, extra: list[str]) -> None:
    """Each method with default flags: the held-out 3-shot gain over a random init, per seed."""
    from medssl.names import method_names

    out = Path(args.out)
    print("| method | seed | random 3-shot | after | gain (points) | val read-out gain | wall time |"
          "\n|---|---|---|---|---|---|---|")
    for name in args.methods or method_names():
        found = []
        for seed in args.seeds:
            run = out / args.data / name / f"seed{seed}"
            cmd = [sys.executable, "-m", "medssl", "pretrain", "--dataset", args.data, "--method",
                   name, "--seed", str(seed), "--out", str(run), "--force", *extra]
            cmd += ["--data-root", args.data_root] if args.data_root else []
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"| {name} | {seed} | failed: {done.stderr.strip().splitlines()[-1]} |||||",
                      flush=True)
                continue
            meta = json.loads((run / "backbone.json").read_text())
            s = heldout_probe(run)
            found.append(100 * (s["trained"] - s["random"]))
            print(f"| {name} | {seed} | {s['random']:.3f} | {s['trained']:.3f} | "
                  f"{found[-1]:+.1f} | {meta.get('readout_gain', float('nan')):+.1f} | "
                  f"{meta['wall_time_s']:.0f} s |", flush=True)
        if len(found) > 1:
            print(f"| {name} | mean | | | **{sum(found) / len(found):+.1f}** | | |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_one"]:
        name, size, batch, steps = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(one_speed(name, size, batch, steps)))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--steps", type=int, default=10)
    r = sub.add_parser("readouts", help="other flags go to `medssl pretrain`")
    r.add_argument("--data", default="demo")
    r.add_argument("--data-root")
    r.add_argument("--methods", nargs="+")
    r.add_argument("--out", default="/tmp/medssl-methods")
    g = sub.add_parser("gains", help="other flags go to `medssl pretrain`")
    g.add_argument("--data", default="demo")
    g.add_argument("--data-root")
    g.add_argument("--methods", nargs="+")
    g.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    g.add_argument("--out", default="/tmp/medssl-gains")
    args, extra = parser.parse_known_args()
    {"speed": lambda: speed(args), "readouts": lambda: readouts(args, extra),
     "gains": lambda: gains(args, extra)}[args.what]()
