"""Several processes (gloo on the CPU): the same loss and metrics as one process on all the
data, one set of outputs, and checkpoints that move between process counts."""

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medssl.data import fixtures as fx
from medssl.data import sampling

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "4"]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(fn, *args):
    """fn(rank, *args) in 2 gloo processes; {rank: what it returned}."""
    port = free_port()
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank_main, args=(port, fn, results, args), nprocs=2, join=True,
                           start_method="spawn")
        return dict(results)


def _rank_main(rank, port, fn, results, args):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        results[rank] = fn(rank, *args)
    finally:
        dist.destroy_process_group()


def _embeddings(b: int = 6, dim: int = 16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 * b, dim, generator=g), torch.randn(2 * b, dim, generator=g)


def _ntxent_on_my_half(rank):
    from lightly.loss import NTXentLoss

    z0, z1 = _embeddings()
    half = slice(rank * 6, rank * 6 + 6)
    return float(NTXentLoss(temperature=0.1, gather_distributed=True)(z0[half], z1[half]))


def test_ntxent_gathered_over_two_ranks_equals_one_process_on_the_whole_batch():
    from lightly.loss import NTXentLoss

    losses = run_two_ranks(_ntxent_on_my_half)
    z0, z1 = _embeddings()
    whole = float(NTXentLoss(temperature=0.1)(z0, z1))
    # DDP averages the ranks' gradients, so the loss it optimises is the mean of theirs.
    assert sum(losses.values()) / 2 == pytest.approx(whole, rel=1e-5)
    # Without gathering, each rank would see 6 images, not 12, as its negatives.
    alone = float(NTXentLoss(temperature=0.1)(z0[:6], z1[:6]))
    assert alone != pytest.approx(losses[0], rel=1e-3)


def _metrics_on_my_share(rank, probs, labels):
    from medssl.training.classifier import epoch_metrics, epoch_values

    mine = list(sampling.ShardSampler(len(labels)))  # this rank's share of the val set
    metrics = epoch_metrics(3)
    metrics.update(probs[mine], labels[mine])
    computed = metrics.compute()  # torchmetrics syncs here
    return _flat(computed) | {f"logged_{k}": float(v) for k, v in epoch_values(computed).items()}


def _flat(computed):
    return {k: v.flatten().tolist() for k, v in computed.items()}


def test_validation_metrics_over_two_ranks_equal_one_process_on_all_images():
    from medssl.training.classifier import epoch_metrics, epoch_values

    g = torch.Generator().manual_seed(1)
    probs = torch.rand(11, 3, generator=g).softmax(dim=1)  # 11: the shares are uneven
    labels = torch.randint(0, 3, (11,), generator=g)
    per_rank = run_two_ranks(_metrics_on_my_share, probs, labels)
    metrics = epoch_metrics(3)
    metrics.update(probs, labels)
    computed = metrics.compute()
    whole = _flat(computed) | {f"logged_{k}": float(v) for k, v in epoch_values(computed).items()}
    for rank in (0, 1):
        assert per_rank[rank].keys() == whole.keys()
        for k in whole:
            assert per_rank[rank][k] == pytest.approx(whole[k], abs=1e-6), k


def _knn_features(rank, images, labels):
    from torch.utils.data import DataLoader, TensorDataset

    from medssl.training.knn import embed

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    data = TensorDataset(images, labels)
    loader = DataLoader(data, batch_size=4, sampler=sampling.ShardSampler(len(data)))
    feats, labs = embed(backbone, loader, "cpu")
    return feats.tolist(), labs.tolist()


def test_knn_features_gathered_over_two_ranks_equal_one_process():
    from torch.utils.data import DataLoader, TensorDataset

    from medssl.training.knn import embed

    g = torch.Generator().manual_seed(2)
    images, labels = torch.rand(9, 3, 2, 2, generator=g), torch.arange(9) % 3
    per_rank = run_two_ranks(_knn_features, images, labels)
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    feats, labs = embed(backbone, DataLoader(TensorDataset(images, labels), batch_size=4), "cpu")
    for rank in (0, 1):  # every process holds every image's features, in the original order
        assert torch.tensor(per_rank[rank][1]).equal(labs)
        assert torch.allclose(torch.tensor(per_rank[rank][0]), feats, atol=1e-6)


def test_epoch_sampler_shares_partition_each_epoch_order(monkeypatch):
    full = list(sampling.EpochSampler(10, seed=3, epoch=2))
    shares = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(sampling, "shard", lambda rank=rank: (rank, 3))
        s = sampling.EpochSampler(10, seed=3, epoch=2)
        assert len(s) == 4
        shares.append(list(s))
    # Every index of the epoch's order once, plus 2 wrapped around to even the shares.
    assert sorted(sum(shares, [])) == sorted(full + full[:2])
    assert [x for pair in zip(*shares) for x in pair][:10] == full


def medssl(*args, timeout=600):
    result = subprocess.run([sys.executable, "-m", "medssl", *map(str, args)],
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_process_pretraining_and_finetuning_write_one_set_of_outputs(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=8)
    ssl = tmp_path / "ssl"
    out = medssl("pretrain", "--dataset", "covid19", "--data-root", root, "--epochs", "2",
                 "--out", ssl, *DDP, *FAST)
    assert out.stdout.count("backbone written") == 1
    meta = json.loads((ssl / "backbone.json").read_text())
    assert meta["world_size"] == 2 and meta["global_batch_size"] == 8
    # Adam (the default optimiser) follows the global batch by its square root by default.
    assert meta["lr_scaling"] == "sqrt" and meta["lr_used"] == pytest.approx(2 ** 0.5 * meta["lr"])
    # A torchvision ResNet loads it strictly, and one process wrote each row of the log.
    from medssl.models import build_backbone, load_backbone_file

    load_backbone_file(build_backbone("resnet18"), ssl / "backbone.pt")
    log = pd.read_csv(ssl / "logs" / "metrics.csv")
    assert log.dropna(subset=["val_knn_acc"])["epoch"].tolist() == [0, 1]

    run = tmp_path / "ft"
    out = medssl("finetune", "--dataset", "covid19", "--data-root", root, "--model", "M2",
                 "--ssl-checkpoint", ssl, "--epochs", "2", "--out", run, *DDP, *FAST)
    assert out.stdout.count("metrics written") == 1
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["lr_scaling"] == "sqrt"
    split = pd.read_csv(run / "split.csv")
    # Predictions of every image, once: not a share of one process.
    for name in ("val", "test"):
        preds = pd.read_csv(run / f"{name}_predictions.csv")
        assert len(preds) == m[name]["n"] == (split["split"] == name).sum()
        assert preds["path"].is_unique
    assert sorted(p.name for p in run.glob("*.json")) == ["finished.json", "identity.json",
                                                           "metrics.json"]

    # A checkpoint two processes wrote resumes in one: the devices may change on resume, the
    # epochs may not (run identity, issue 32), so it resumes after its last epoch and exports.
    (ssl / "finished.json").unlink()
    (ssl / "backbone.pt").unlink()
    medssl("pretrain", "--dataset", "covid19", "--data-root", root, "--epochs", "2",
           "--out", ssl, "--resume", "--accelerator", "cpu", "--devices", "1", *FAST)
    meta = json.loads((ssl / "backbone.json").read_text())
    assert meta["epochs"] == 2 and meta["world_size"] == 1


def test_torchrun_and_lightnings_launcher_train_the_same_backbone(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=8)
    args = ["pretrain", "--dataset", "covid19", "--data-root", root, "--epochs", "2", *DDP, *FAST]
    medssl(*args, "--out", tmp_path / "lightning")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(free_port()), "-m", "medssl", *map(str, args),
                "--out", str(tmp_path / "torchrun")]
    result = subprocess.run(torchrun, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = (torch.load(tmp_path / name / "backbone.pt", weights_only=True)
            for name in ("lightning", "torchrun"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_compare_runs_the_grid_once(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=8)
    grid = tmp_path / "grid"
    out = medssl("compare", "--dataset", "covid19", "--data-root", root, "--models", "M1", "M2",
                 "--seeds", "0", "--epochs", "1", "--ssl-epochs", "1", "--lr", "1e-3", "--out",
                 grid, *DDP, *FAST)
    assert out.stdout.count("results:") == 1
    assert len(list(grid.rglob("finished.json"))) == 3  # SimCLR, M1, M2
    assert sorted(pd.read_csv(grid / "results.csv")["model"]) == ["M1", "M2"]


def test_two_process_distillation_and_mutual_learning_write_one_set_of_outputs(tmp_path):
    from medssl.models import build_backbone

    root = fx.make_covid19(tmp_path, per_class=8)
    torch.manual_seed(11)
    torch.save(build_backbone("resnet18").state_dict(), tmp_path / "imagenet.pt")
    grid = tmp_path / "grid"
    out = medssl("compare", "--dataset", "covid19", "--data-root", root, "--models", "M1",
                 "--distill", "M3:M1", "--mutual", "M1+M3", "--imagenet-weights",
                 tmp_path / "imagenet.pt", "--seeds", "0", "--epochs", "1", "--lr", "1e-3",
                 "--out", grid, *DDP, *FAST)
    assert out.stdout.count("results:") == 1
    # M1, M3, the student, the cohort and its two members: each once.
    assert len(list(grid.rglob("finished.json"))) == 6
    assert set(pd.read_csv(grid / "results.csv")["model"]) == {
        "M1", "M3", "KD(M3→M1)", "DML(M1+M3)", "DML(M1+M3)/M1", "DML(M1+M3)/M3"}
    cohort = grid / "DML-M1+M3" / "seed0"
    for run in (cohort, cohort / "M1", cohort / "M3", grid / "KD-M3-to-M1" / "seed0"):
        m = json.loads((run / "metrics.json").read_text())
        assert m["world_size"] == 2
        preds = pd.read_csv(run / "test_predictions.csv")  # every test image, once
        assert len(preds) == m["test"]["n"] and preds["path"].is_unique


def _colour_of_my_batch(rank):
    from medssl.data.transforms import method_views, simclr_settings
    from medssl.models import build_backbone, feature_dim
    from medssl.presets import IMAGENET_MEAN, IMAGENET_STD
    from medssl.training.methods import get_method

    method = get_method("simclr")
    settings = simclr_settings(16, "study")
    _, colour = method_views(method.views(16, settings), 16, settings, IMAGENET_MEAN, IMAGENET_STD)
    module = method(build_backbone("resnet18"), feature_dim("resnet18"), batch_transform=colour)
    # Both ranks hold the very same images at the same step: only the draws can differ.
    views = [torch.full((2, 3, 16, 16), 128, dtype=torch.uint8) for _ in range(2)]
    out, _ = module.on_after_batch_transfer((views, torch.zeros(2)), 0)
    return [v.tolist() for v in out]


def test_ddp_ranks_draw_their_own_colour_augmentation():
    per_rank = run_two_ranks(_colour_of_my_batch)
    assert per_rank[0] != per_rank[1]
    # and a single process still draws its own (seed, step) stream, the same each time
    alone = _colour_of_my_batch(0)
    assert alone == _colour_of_my_batch(0) and alone != per_rank[1]


def test_lr_follows_the_global_batch_by_the_optimisers_rule():
    from medssl.training.distributed import scaled_lr

    assert scaled_lr(1e-3, 4, "auto", "adam") == pytest.approx(2e-3)  # sqrt for Adam
    assert scaled_lr(1e-3, 4, "auto", "lars") == pytest.approx(4e-3)  # linear for LARS
    assert scaled_lr(1e-3, 4, "linear", "adam") == pytest.approx(4e-3)  # as asked
    assert scaled_lr(1e-3, 4, "none", "lars") == pytest.approx(1e-3)
