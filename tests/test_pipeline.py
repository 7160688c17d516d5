"""The fast input pipeline: the image cache, and batched SimCLR views equivalent to lightly's."""

import os
import shutil
import time

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from medssl.data import DataConfig, open_dataset
from medssl.data import fixtures as fx
from medssl.data.batch_augment import _adjust_hue, _gaussian_blur
from medssl.data.cache import ImageCache, shrink
from medssl.data.torch_dataset import ImageDataset
from medssl.data.transforms import (Normalize, lightly_transform, simclr_colour_blur, simclr_crops,
                                    simclr_settings)

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def photo(rng: np.random.Generator, size: int = 48, grain: float = 0.0) -> Image.Image:
    """A colourful test image (smooth, with optional grain): jitter and blur act on it."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), dtype=np.float32)
    img = img + rng.normal(0, grain, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_images(folder, n: int, size=(60, 40)) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        photo(rng, 48).resize(size).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    return names


def test_cache_rows_equal_decoding_and_only_changed_sources_are_decoded_again(tmp_path, caplog):
    names = write_images(tmp_path / "img", 5)
    cache = ImageCache.build(tmp_path / "img", names, side=16, progress=False)
    for name in names:
        assert np.array_equal(cache.get(name), shrink(tmp_path / "img" / name, 16))
    assert cache.get(names[0]).shape == (16, 24, 3)  # 60x40 pictures: the aspect ratio is kept
    caplog.set_level("INFO", logger="medssl")
    caplog.clear()
    ImageCache.build(tmp_path / "img", names, side=16, progress=False)
    assert "decoded" not in caplog.text  # nothing changed: the cache is opened as it is
    # One source changes (new pixels, new mtime): only that row is decoded again.
    Image.new("RGB", (60, 40), (255, 0, 0)).save(tmp_path / "img" / names[2])
    os.utime(tmp_path / "img" / names[2], ns=(time.time_ns(), time.time_ns() + 10**9))
    cache = ImageCache.build(tmp_path / "img", names, side=16, progress=False)
    assert "1 decoded, 4 reused" in caplog.text
    assert (cache.get(names[2]) == [255, 0, 0]).all()
    assert np.array_equal(cache.get(names[1]), shrink(tmp_path / "img" / names[1], 16))


def test_a_picture_replaced_keeping_its_size_and_mtime_is_decoded_again(tmp_path, caplog):
    # `cp -p` and rsync keep the mtime, and two BMPs of one shape have one byte size: the cache
    # must still serve the new picture, not the stale row.
    folder = tmp_path / "img"
    folder.mkdir()
    for name, colour in (("a.bmp", (255, 0, 0)), ("b.bmp", (0, 0, 255))):
        Image.new("RGB", (60, 40), colour).save(folder / name)
    cache = ImageCache.build(folder, ["a.bmp", "b.bmp"], side=16, progress=False)
    assert (cache.get("a.bmp") == [255, 0, 0]).all()
    kept = (folder / "a.bmp").stat()
    shutil.copyfile(folder / "b.bmp", folder / "a.bmp")  # the new picture, over the old file
    os.utime(folder / "a.bmp", ns=(kept.st_atime_ns, kept.st_mtime_ns))  # its old mtime kept
    now = (folder / "a.bmp").stat()
    assert (now.st_size, now.st_mtime_ns) == (kept.st_size, kept.st_mtime_ns)
    caplog.set_level("INFO", logger="medssl")
    cache = ImageCache.build(folder, ["a.bmp", "b.bmp"], side=16, progress=False)
    assert "1 decoded, 1 reused" in caplog.text
    assert (cache.get("a.bmp") == [0, 0, 255]).all()


def test_an_interrupted_cache_build_is_never_taken_as_finished(tmp_path, monkeypatch):
    names = write_images(tmp_path / "img", 3)
    from medssl.data import cache as cache_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_decode", crash)
    with pytest.raises(KeyboardInterrupt):
        ImageCache.build(tmp_path / "img", names, side=16, progress=False)
    folder = ImageCache.folder_for(tmp_path / "img", 16)
    assert not (folder / "index.json").exists() and not (folder / "images.u8").exists()
    monkeypatch.undo()
    cache = ImageCache.build(tmp_path / "img", names, side=16, progress=False)
    assert np.array_equal(cache.get(names[0]), shrink(tmp_path / "img" / names[0], 16))


def test_no_cache_reads_the_same_pixels_as_the_cache(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=3)
    table = open_dataset(DataConfig("covid19", str(root)))
    cache = ImageCache.build(table.root, list(table.samples["path"]), side=16, progress=False)
    cached = ImageDataset(table, None, lambda x: x, 16, cache)
    direct = ImageDataset(table, None, lambda x: x, 16, None)
    for i in range(len(cached)):
        assert cached[i][0].dtype == torch.uint8 and min(cached[i][0].shape[1:]) == 16
        assert torch.equal(cached[i][0], direct[i][0])


def test_normalize_matches_torchvision():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = TF.normalize(x.float() / 255, MEAN, STD)
    assert torch.allclose(Normalize(MEAN, STD)(x), expected, atol=1e-5)


def test_brightness_contrast_saturation_match_torchvision():
    from medssl.data.batch_augment import _blend, _grey

    x = torch.rand(4, 3, 9, 9)
    f = torch.tensor([0.3, 0.9, 1.2, 1.8]).view(-1, 1, 1, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    for ours, theirs in ((_blend(x, mean, f), TF.adjust_contrast),
                         (_blend(x, _grey(x), f), TF.adjust_saturation),
                         ((x * f).clamp(0, 1), TF.adjust_brightness)):
        expected = torch.stack([theirs(img, float(k)) for img, k in zip(x, f.flatten())])
        assert torch.allclose(ours, expected, atol=1e-5), theirs.__name__


@pytest.mark.parametrize("shift", [-0.5, -0.13, 0.2, 0.5])
def test_hue_matches_torchvision(shift):
    x = torch.rand(3, 3, 9, 9)
    expected = torch.stack([TF.adjust_hue(img, shift) for img in x])
    assert torch.allclose(_adjust_hue(x, torch.full((3,), shift)), expected, atol=1e-5)


def test_blur_matches_pillows_gaussian_blur():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    for sigma in (0.5, 1.5):
        ours = _gaussian_blur(TF.to_tensor(img).unsqueeze(0), torch.tensor([sigma]))[0]
        pil = TF.to_tensor(img.filter(ImageFilter.GaussianBlur(radius=sigma)))
        inner = (slice(None), slice(6, -6), slice(6, -6))  # borders are padded differently
        assert (ours[inner] - pil[inner]).abs().mean() < 0.01


def view_statistics(views: torch.Tensor) -> dict:
    """Summary statistics of a batch of normalised views, back in [0, 1] pixel units."""
    x = views * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    grey = (x.max(dim=1).values - x.min(dim=1).values).amax(dim=(1, 2)) < 0.02
    means = x.mean(dim=(2, 3))
    return {"mean": x.mean(dim=(0, 2, 3)), "pixel_sd": x.std(dim=(2, 3)).mean(dim=0),
            "image_mean_sd": means.std(dim=0), "grey_share": grey.float().mean(),
            "saturation": (x.max(dim=1).values - x.min(dim=1).values).mean() * 2,
            # blur: the energy between neighbouring pixels
            "sharpness": (x[..., 1:] - x[..., :-1]).abs().mean() * 5,
            # hue: how much images' colour casts vary (a hue rotation moves them around)
            "cast_sd": (means - means.mean(dim=1, keepdim=True)).std(dim=0) * 3}


@pytest.mark.parametrize("preset", ["study", "xray"])
def test_fast_views_have_the_distribution_of_lightlys(preset):
    """The same images through lightly's PIL SimCLRTransform and through our crops + batched
    colour/blur: every summary statistic of the views agrees within sampling noise."""
    size, n = 32, 300
    # 224-px blur strength at 32 px, so that blurring is visible in the statistics.
    settings = simclr_settings(size, preset, sigmas=(0.1, 2.0))
    rng = np.random.default_rng(0)
    images = [photo(rng, 37, grain=25) for _ in range(n)]
    torch.manual_seed(0)
    reference = lightly_transform(size, settings, MEAN, STD)
    ref = torch.stack([v for img in images for v in reference(img)])
    crops = simclr_crops(size, settings)
    colour = simclr_colour_blur(settings, MEAN, STD)
    uint8 = torch.stack([v for img in images for v in crops(torch.from_numpy(np.asarray(img).copy())
                                                             .permute(2, 0, 1))])
    ours = colour(uint8, generator=torch.Generator().manual_seed(0))
    a, b = view_statistics(ref), view_statistics(ours)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=0.025), (key, a[key], b[key])


def test_every_image_draws_its_own_parameters_in_torchvisions_ranges():
    colour = simclr_colour_blur(simclr_settings(224, "study"), MEAN, STD)
    p = colour.draw(20000, torch.Generator().manual_seed(0))
    assert abs(p["jitter"].float().mean() - 0.8) < 0.01 and abs(p["grey"].float().mean() - 0.2) < 0.01
    assert abs(p["blur"].float().mean() - 0.5) < 0.01
    for key, low, high in (("bright", 0.2, 1.8), ("contrast", 0.2, 1.8), ("sat", 0.2, 1.8),
                           ("hue", -0.2, 0.2), ("sigma", 0.1, 2.0)):
        assert low <= p[key].min() < low + 0.01 and high - 0.01 < p[key].max() <= high, key
        assert abs(p[key].mean() - (low + high) / 2) < 0.02, key
    # A random order of the four colour ops per image, each order about equally often.
    orders = torch.unique(p["order"], dim=0, return_counts=True)[1]
    assert len(orders) == 24 and orders.min() > 20000 / 24 * 0.8


def test_training_builds_the_cache_once_and_no_cache_skips_it(tmp_path, cli, isolated_cache):
    root = fx.make_covid19(tmp_path, per_class=6)
    args = ["pretrain", "--dataset", "covid19", "--data-root", root, "--epochs", "1", "--arch",
            "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8"]
    assert cli(*args, "--no-cache", "--out", tmp_path / "a")[0] == 0
    assert not (isolated_cache / "images").exists()
    assert cli(*args, "--out", tmp_path / "b")[0] == 0
    (folder,) = (isolated_cache / "images").iterdir()
    assert folder.name.startswith("Covid19-dataset-37px-")  # 8/7 of 32 px
    index = (folder / "index.json").read_text()
    assert cli("finetune", "--dataset", "covid19", "--data-root", root, "--model", "M1",
               "--epochs", "1", "--out", tmp_path / "c", *args[7:])[0] == 0
    assert (folder / "index.json").read_text() == index  # reused by finetuning, not rebuilt


def test_a_second_cache_build_waits_for_the_first(tmp_path):
    """Builds of one cache take turns (the ranks of a torchrun job start together); the second
    then finds the cache built and reuses it."""
    import threading

    from medssl.data.cache import _exclusive, cache_side

    root = fx.make_covid19(tmp_path, per_class=2)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    folder = ImageCache.folder_for(root, cache_side(32))
    folder.mkdir(parents=True)
    built = threading.Event()
    with _exclusive(folder / ".lock"):  # as if another process were building it
        thread = threading.Thread(target=lambda: (ImageCache.build(root, names, cache_side(32),
                                                                   workers=1, progress=False),
                                                  built.set()))
        thread.start()
        assert not built.wait(1.0)
    thread.join(60)
    assert built.is_set() and (folder / "images.u8").is_file()


def test_views_come_from_the_whole_picture_and_evaluation_is_resize_then_centre_crop(tmp_path):
    """A 2:1 picture with a red left edge and a blue right edge. The cache keeps all of it (its
    short side 8/7 of the training size), so SimCLR's crops reach both edges, as
    RandomResizedCrop on the original does; a centre-cropped square would hold neither. The
    evaluation crop is the usual resize-and-centre-crop of the original."""
    from torchvision.transforms import v2

    from medssl.data.cache import cache_side
    from medssl.data.transforms import eval_crop

    size = 16
    pixels = np.full((32, 64, 3), 128, dtype=np.uint8)
    pixels[:, :8] = (255, 0, 0)
    pixels[:, -8:] = (0, 0, 255)
    (tmp_path / "img").mkdir()
    Image.fromarray(pixels).save(tmp_path / "img" / "wide.png")
    cache = ImageCache.build(tmp_path / "img", ["wide.png"], cache_side(size), progress=False)
    stored = cache.get("wide.png")
    assert stored.shape == (cache_side(size), 2 * cache_side(size), 3)
    image = torch.from_numpy(stored.copy()).permute(2, 0, 1)
    crops = simclr_crops(size, simclr_settings(size, "study"))
    torch.manual_seed(0)
    views = torch.stack([v for _ in range(100) for v in crops(image)])
    red = ((views[:, 0] > 200) & (views[:, 2] < 60)).flatten(1).any(1)
    blue = ((views[:, 2] > 200) & (views[:, 0] < 60)).flatten(1).any(1)
    assert red.float().mean() > 0.1 and blue.float().mean() > 0.1
    original = torch.from_numpy(pixels).permute(2, 0, 1)
    expected = v2.CenterCrop(size)(v2.Resize(cache_side(size), antialias=True)(original))
    assert (eval_crop(size)(image).int() - expected.int()).abs().max() <= 2  # resize rounding
    assert eval_crop(size)(image).shape == (3, size, size)


# A loader worker forked while an earlier loader's iterator awaits the garbage collector: run as
# a script, since the collector must be off in the parent for the garbage to be inherited.
INHERITED_ITERATOR = """
import gc, sys
import torch
from torch.utils.data import DataLoader, Dataset
from medssl.training.loaders import init_worker

class Collecting(Dataset):  # each item runs the worker's collector, as its allocations would
    def __len__(self): return 4
    def __getitem__(self, i):
        gc.collect()
        return torch.zeros(1)

gc.disable()
earlier = DataLoader(Collecting(), num_workers=1, persistent_workers=True)
it = iter(earlier); next(it)
cycle = [it]; cycle.append(cycle)  # the iterator, alive only through a reference cycle
del it, cycle, earlier
later = DataLoader(Collecting(), num_workers=1,
                   worker_init_fn=init_worker if sys.argv[1] == "medssl" else None)
print(len(list(later)))
"""


def test_loader_workers_never_print_the_tracebacks_of_inherited_iterators(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "inherited.py"
    script.write_text(INHERITED_ITERATOR)
    said = {}
    for init in ("none", "medssl"):
        done = subprocess.run([sys.executable, str(script), init], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.strip() == "4", done.stderr[-2000:]
        said[init] = done.stderr
    # Without the init function the worker's collector frees the inherited iterator and its
    # __del__ prints a traceback (the quick start printed 8-16); medssl's loaders print none.
    assert "can only test a child process" in said["none"]
    assert "can only test a child process" not in said["medssl"] and "Traceback" not in said["medssl"]
    # The loaders medssl makes carry it.
    from types import SimpleNamespace

    from medssl.data import fixtures as fx
    from medssl.data import DataConfig, open_dataset
    from medssl.training.loaders import init_worker, make_loader

    root = fx.make_covid19(tmp_path, per_class=2)
    table = open_dataset(DataConfig(dataset="covid19", data_root=str(root)))
    cfg = SimpleNamespace(image_size=32, seed=0, batch_size=2, num_workers=1, in_channels=3)
    assert make_loader(table, table.samples, None, cfg).worker_init_fn is init_worker


def test_loader_workers_default_to_none_on_the_cpu_with_the_cache_only():
    from medssl.training.loaders import default_workers

    assert default_workers("cpu", True, 16) == 0
    assert default_workers("cpu", False, 16) == 8  # decoding originals: workers pay off
    assert default_workers("gpu", True, 16) == 8 and default_workers("gpu", True, 2) == 2
