"""Input-pipeline benchmark: everything measured side by side in one run, ratios printed.

    python bench/pipeline.py                 # CPU, a few minutes
    python bench/pipeline.py --gpu           # on a GPU: ResNet-50 at 224 px, bf16, channels-last
    python bench/pipeline.py --json out.json # also write the numbers as one JSON object

Measures (docs/benchmarks.md explains each):
- loader: augmented SimCLR views/s on one core at 224 px - ours (a loader worker: the cached uint8
  picture, two crops with flips; colour and blur then run batched on the accelerator), the same
  from a centre-cropped square (what the cache stored before it kept the whole picture), lightly's
  SimCLRTransform on the same cached images, and lightly's on the original JPEGs decoded every
  time; plus ours with the batched colour and blur also on that one CPU core (no accelerator);
- cache build: images/s on one core for IDRiD-size (4288x2848) JPEGs, with and without draft
  mode; bytes per cached image, whole picture against a centre square;
- train step: end-to-end images/s of a SimCLR and a finetuning step, loader included, against the
  same step fed ready-made tensors;
- peak memory (RSS) of one pretraining epoch at two dataset sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medssl.data.cache import ImageCache, cache_side, shrink
from medssl.data.sampling import EpochSampler
from medssl.data.torch_dataset import ImageDataset
from medssl.data.transforms import (Normalize, finetune_crops, lightly_transform,
                                    simclr_colour_blur, simclr_crops, simclr_settings)
from medssl.presets import IMAGENET_MEAN, IMAGENET_STD

SIZE = 224
# --quick (the GPU check's CPU dry run): every measurement once, briefly; the numbers mean nothing.
QUICK = False


def texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: smooth colour fields plus fine grain (JPEG sizes like real ones)."""
    small = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
    grain = rng.normal(0, 12, (height // 4, width // 4, 1)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain[..., 0]).resize((width, height)), np.float32)[..., None]
    return Image.fromarray(np.clip(img + grain, 0, 255).astype(np.uint8))


def make_jpegs(folder: Path, n: int, width: int, height: int) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        texture(rng, width, height).save(folder / f"{i}.jpg", quality=92)
        names.append(f"{i}.jpg")
    return names


def rate(fn, items: int, min_seconds: float = 2.0) -> float:
    """items/s of `fn` (which handles `items` items per call), repeated for at least min_seconds."""
    if QUICK:
        min_seconds = 0.05
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return calls * items / (time.perf_counter() - start)


def bench_table(folder: Path, names: list[str]):
    """The benchmark's images as a dataset table (two made-up classes)."""
    from medssl.data.registry import SampleTable, make_samples

    return SampleTable("bench", folder, ["a", "b"],
                       make_samples([(n, "ab"[i % 2], n, "train") for i, n in enumerate(names)]))


def bench_loader(folder: Path, names: list[str]) -> dict:
    """Views/s on one core: ours vs lightly's on the same cached squares vs lightly's on originals."""
    torch.set_num_threads(1)
    settings = simclr_settings(SIZE, "study")
    cache = ImageCache.build(folder, names, cache_side(SIZE), workers=1, progress=False)
    crops = simclr_crops(SIZE, settings)
    colour = simclr_colour_blur(settings, IMAGENET_MEAN, IMAGENET_STD)
    lightly = lightly_transform(SIZE, settings, IMAGENET_MEAN, IMAGENET_STD)
    batch = 64
    # Exactly what a training loader's worker runs: the dataset item, with its per-image seed.
    dataset = ImageDataset(bench_table(folder, names), None, crops, cache_side(SIZE), cache,
                           augment_seed=0)

    def worker_part(data=dataset):
        return [v for k in range(batch) for v in data[k][0]]

    views = torch.stack(worker_part())
    worker = rate(worker_part, 2 * batch)
    # The cache before it kept whole pictures: the centre square of each (a smaller read, and
    # crops that never reach the sides).
    squares = ImageDataset(bench_table(folder, names), None, crops, cache_side(SIZE),
                           CentreSquare(cache), augment_seed=0)
    worker_square = rate(lambda: worker_part(squares), 2 * batch)
    batched = rate(lambda: colour(views), 2 * batch)  # on the CPU here; on the GPU in training
    cpu_only = 1 / (1 / worker + 1 / batched)  # one core doing both parts: no accelerator
    light = rate(lambda: [lightly(Image.fromarray(cache.get(names[i % len(names)])))
                          for i in range(16)], 32)
    originals = rate(lambda: [lightly(Image.open(folder / names[i % len(names)]).convert("RGB"))
                              for i in range(16)], 32)
    torch.set_num_threads(os.cpu_count() or 1)
    # The loader's figure is the worker's: with an accelerator, colour and blur run there.
    return {"loader_views_per_core": worker, "loader_views_per_core_centre_square": worker_square,
            "loader_ratio_whole_vs_square": worker / worker_square,
            "lightly_cached_views_per_core": light,
            "lightly_originals_views_per_core": originals,
            "loader_ratio_vs_lightly": worker / light, "loader_ratio_vs_originals": worker / originals,
            "batched_colour_blur_views_per_core_on_cpu": batched,
            "cpu_only_views_per_core": cpu_only, "cpu_only_ratio_vs_lightly": cpu_only / light}


class CentreSquare:
    """A cache whose rows are cut to their centre square, as the cache stored them before."""

    def __init__(self, cache: ImageCache):
        self.cache = cache

    def get(self, rel: str) -> np.ndarray:
        row = self.cache.get(rel)
        h, w = row.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return row[top:top + side, left:left + side]


def bench_cache_build(folder: Path, names: list[str]) -> dict:
    """Images/s on one core turning an IDRiD-size JPEG into its cached picture."""
    side = cache_side(SIZE)
    paths = [folder / n for n in names]
    draft = rate(lambda: [shrink(p, side, draft=True) for p in paths], len(paths), 3)
    full = rate(lambda: [shrink(p, side, draft=False) for p in paths], len(paths), 3)
    return {"cache_build_images_per_core_draft": draft, "cache_build_images_per_core_full": full,
            "cache_build_ratio_draft_vs_full": draft / full}


def bench_cache_size(shapes: dict[str, tuple[int, int]]) -> dict:
    """Bytes per cached image at 224 px (short side 256), the whole picture against its centre
    square, for pictures of the given (width, height)."""
    side = cache_side(SIZE)
    out = {}
    for name, (w, h) in shapes.items():
        long_side = round(max(w, h) * side / min(w, h))
        out[f"cache_bytes_per_image_{name}"] = side * long_side * 3
        out[f"cache_size_ratio_whole_vs_square_{name}"] = long_side / side
    return out


def bench_steps(folder: Path, names: list[str], device: str, arch: str, batch: int,
                steps: int, workers: int) -> dict:
    """End-to-end images/s of a SimCLR and a finetuning step vs the same step on ready tensors."""
    from torch.utils.data import DataLoader

    from medssl.models import build_backbone, feature_dim
    from medssl.training.classifier import Classifier
    from medssl.data.batch_augment import ViewColour
    from medssl.training.methods.simclr import SimCLR

    table = bench_table(folder, names)
    cache = ImageCache.build(folder, names, cache_side(SIZE), progress=False)
    settings = simclr_settings(SIZE, "study")
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    results = {}
    for kind in ("simclr", "finetune"):
        torch.manual_seed(0)
        if kind == "simclr":
            model = SimCLR(build_backbone(arch), feature_dim(arch),
                           batch_transform=ViewColour(
                               [simclr_colour_blur(settings, IMAGENET_MEAN, IMAGENET_STD)] * 2))
            transform = simclr_crops(SIZE, settings)
        else:
            model = Classifier(build_backbone(arch), feature_dim(arch), ["a", "b"], lr=1e-4,
                               input_transform=Normalize(IMAGENET_MEAN, IMAGENET_STD))
            transform = finetune_crops(SIZE, "hv")
        model = model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        # As in training: the epoch sampler and per-image augmentation seeds.
        dataset = ImageDataset(table, None, transform, cache_side(SIZE), cache, augment_seed=0)
        loader = DataLoader(dataset, batch_size=batch, sampler=EpochSampler(len(dataset), 0),
                            drop_last=True, num_workers=workers,
                            persistent_workers=workers > 0, pin_memory=device == "cuda")

        def step(batch_):
            with autocast:
                if kind == "simclr":
                    (v0, v1), _ = batch_
                    loss = model.criterion(model(v0), model(v1))
                else:
                    x, y = batch_
                    loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def to_device(b):
            return model.on_after_batch_transfer(
                torch.utils._pytree.tree_map(lambda t: t.to(device, non_blocking=True), b), 0)

        def sync():
            if device == "cuda":
                torch.cuda.synchronize()

        ready = to_device(next(iter(loader)))  # one augmented batch, reused: the model-only bound
        for _ in range(2):
            step(ready)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step(ready)
        sync()
        model_only = steps * batch / (time.perf_counter() - start)
        it = iter(loader)
        for _ in range(2):
            step(to_device(next(it)))
        sync()
        done, start = 0, time.perf_counter()
        while done < steps:
            try:
                b = next(it)
            except StopIteration:
                it = iter(loader)
                b = next(it)
            step(to_device(b))
            done += 1
        sync()
        end_to_end = steps * batch / (time.perf_counter() - start)
        results[f"{kind}_images_per_s_end_to_end"] = end_to_end
        results[f"{kind}_images_per_s_model_only"] = model_only
        results[f"{kind}_step_ratio_vs_model_only"] = end_to_end / model_only
    results["step_ratio_vs_model_only"] = min(results["simclr_step_ratio_vs_model_only"],
                                              results["finetune_step_ratio_vs_model_only"])
    return results


def bench_memory(tmp: Path) -> dict:
    """Peak RSS (MB) of one pretraining epoch (resnet18, 32 px, loader workers included) on a
    dataset of N and of 4N images: it should not grow with the dataset."""
    peaks = {}
    for n in (200, 800):
        folder = tmp / f"mem{n}"
        rng = np.random.default_rng(n)
        for i in range(n):
            cls = folder / f"class{i % 2}"
            cls.mkdir(parents=True, exist_ok=True)
            texture(rng, 96, 72).save(cls / f"{i}.jpg")
        code = (
            "import resource, sys; from medssl.cli import main; "
            "rc = main(['pretrain', '--dataset', 'folder', '--data-root', sys.argv[1], '--arch', "
            "'resnet18', '--image-size', '32', '--epochs', '1', '--batch-size', '32', "
            "'--num-workers', '2', '--out', sys.argv[2], '--force']); "
            "own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
            "print('PEAK', own, kids)")
        env = {**os.environ, "MEDSSL_CACHE_DIR": str(tmp / "cache"), "MEDSSL_OFFLINE": "1"}
        out = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp / f"run{n}")],
                             capture_output=True, text=True, env=env, timeout=900)
        line = [row for row in out.stdout.splitlines() if row.startswith("PEAK")]
        if not line:
            raise RuntimeError(out.stderr[-2000:])
        own, kids = map(int, line[0].split()[1:])
        peaks[n] = {"main_mb": own / 1024, "largest_worker_mb": kids / 1024}
    return {"peak_rss_mb": peaks,
            "peak_rss_growth_4x_data": peaks[800]["main_mb"] / peaks[200]["main_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="ResNet-50 train steps on the GPU")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, brief timings: checks that every path runs (bench/gpu_check.py"
                             " --dry-run); its numbers are not measurements")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device is visible")
    results = {"device": torch.cuda.get_device_name() if args.gpu else "cpu",
               "cpu_cores": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("MEDSSL_CACHE_DIR", str(tmp / "cache"))
        photos = make_jpegs(tmp / "photos", 8 if args.quick else 32, 600, 450)  # dermoscopy-size
        fundus = make_jpegs(tmp / "fundus", 1 if args.quick else 4, 4288, 2848)  # IDRiD-size
        results.update(bench_loader(tmp / "photos", photos))
        results.update(bench_cache_build(tmp / "fundus", fundus))
        results.update(bench_cache_size({"600x450": (600, 450), "4288x2848": (4288, 2848)}))
        if args.quick:
            steps = bench_steps(tmp / "photos", photos, "cpu", "resnet18", 4, 1, workers=1)
        elif args.gpu:
            steps = bench_steps(tmp / "photos", photos * 8, "cuda", "resnet50", 128, 30,
                                workers=min(16, os.cpu_count() or 1))
        else:
            steps = bench_steps(tmp / "photos", photos, "cpu", "resnet18", 16, 6, workers=1)
        results.update(steps)
        if not args.skip_memory:
            results.update(bench_memory(tmp))
    for key, value in results.items():
        print(f"{key:50s} {value:.3f}" if isinstance(value, float) else f"{key:50s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
