"""The read-outs that tell whether pretraining learned: few-shot probe, kNN, and the --aug knobs."""

import numpy as np
import pytest
import torch

from medssl.data.transforms import parse_augment_override
from medssl.training.knn import knn_accuracy
from medssl.training.probe import few_shot_accuracy, few_shot_draw


def clusters(separation: float, n_per_class: int = 40, classes: int = 4, dim: int = 16, seed: int = 0):
    """Unit-norm features around one centre per class; `separation` scales the centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * separation
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = centres[labels] + torch.randn(len(labels), dim, generator=g)
    return torch.nn.functional.normalize(feats, dim=1), labels


def test_few_shot_draw_takes_shots_per_class_and_is_seeded():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 8)
    idx = few_shot_draw(labels, 5, np.random.default_rng(0))
    assert sorted(np.bincount(labels[idx]).tolist()) == [3, 5, 5]  # a small class gives what it has
    assert np.array_equal(idx, few_shot_draw(labels, 5, np.random.default_rng(0)))


def test_probe_and_knn_rank_separable_features_above_noise():
    good_train, good_labels = clusters(3.0, seed=0)
    good_val, good_val_labels = clusters(3.0, seed=0)  # same centres: same seed; noise differs below
    good_val = torch.nn.functional.normalize(good_val + 0.1 * torch.randn_like(good_val), dim=1)
    noise_train, noise_labels = clusters(0.0, seed=1)
    noise_val, noise_val_labels = clusters(0.0, seed=2)
    good = few_shot_accuracy(good_train, good_labels, good_val, good_val_labels, shots=5)
    noise = few_shot_accuracy(noise_train, noise_labels, noise_val, noise_val_labels, shots=5)
    assert good > 0.9 and noise < 0.5
    assert knn_accuracy(good_train, good_labels, good_val, good_val_labels, 4) > 0.9
    assert knn_accuracy(noise_train, noise_labels, noise_val, noise_val_labels, 4) < 0.5


def test_probe_is_deterministic_for_a_seed():
    feats, labels = clusters(1.0)
    a = few_shot_accuracy(feats, labels, feats, labels, shots=2, seed=3)
    assert a == few_shot_accuracy(feats, labels, feats, labels, shots=2, seed=3)


@pytest.mark.parametrize("text, expected", [("min_scale=0.3", ("min_scale", 0.3)),
                                            ("sigmas=0.1,2", ("sigmas", (0.1, 2.0))),
                                            ("hf_prob=0.5", ("hf_prob", 0.5))])
def test_augment_override_parses(text, expected):
    assert parse_augment_override(text) == expected


@pytest.mark.parametrize("text, message", [("min_scale", "KEY=VALUE"), ("colour=1", "KEY=VALUE"),
                                           ("cj_prob=high", "must be a number"),
                                           ("sigmas=0.5", "takes 2")])
def test_augment_override_rejects_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        parse_augment_override(text)


def test_bad_aug_flag_is_a_clear_cli_error(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli("pretrain", "--dataset", "demo", "--aug", "colour=1")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --aug" in err and "min_scale" in err


def test_real_digits_set_is_written_as_class_folders(tmp_path):
    from medssl.data import DataConfig, open_dataset
    from medssl.data.fixtures import make_digits

    root = make_digits(tmp_path, per_class=5, size=16)
    table = open_dataset(DataConfig("folder", str(root)))
    assert table.classes == [f"digit{d}" for d in range(10)]
    assert table.samples["label"].value_counts().to_dict() == {f"digit{d}": 5 for d in range(10)}
