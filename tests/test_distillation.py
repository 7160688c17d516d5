"""Finetuning objectives (medssl.training.objectives): plain cross-entropy and distillation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medssl.errors import MedsslError
from medssl.training.objectives import get_objective
from medssl.training.objectives.distillation import kd_loss


class Fixed(nn.Module):
    """A teacher that always says the same logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def softmax(values, t):
    e = [math.exp(v / t) for v in values]
    return [v / sum(e) for v in e]


def test_kd_loss_equals_a_hand_computed_value():
    student, teacher, label, t, alpha = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], 1, 2.0, 0.7
    ce = -math.log(softmax(student, 1)[label])
    p_t, p_s = softmax(teacher, t), softmax(student, t)
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    expected = (1 - alpha) * ce + alpha * t * t * kl
    distill = get_objective("distillation")([Fixed(teacher)], temperature=t, alpha=alpha)
    got = distill(torch.tensor([student]), torch.tensor([label]), torch.zeros(1, 3))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_alpha_zero_is_plain_cross_entropy_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (8,), generator=g)
    weights = torch.rand(5, generator=g)
    for w in (None, weights):
        plain = get_objective("plain")()(logits, labels, None, w)
        (grad_plain,) = torch.autograd.grad(plain, logits)
        distill = get_objective("distillation")([Fixed([3.0, 0.0, 1.0, 2.0, -1.0])], alpha=0.0)
        kd = distill(logits, labels, torch.zeros(8, 1), w)
        (grad_kd,) = torch.autograd.grad(kd, logits)
        assert torch.equal(plain, kd) and torch.equal(grad_plain, grad_kd)
        # The plain objective is the study's cross-entropy, unchanged.
        assert torch.equal(plain, F.cross_entropy(logits, labels, weight=w))


def test_several_teachers_average_their_softened_probabilities():
    a, b = Fixed([2.0, 0.0]), Fixed([0.0, 1.0])
    distill = get_objective("distillation")([a, b], temperature=4.0)
    mean = (torch.tensor(softmax([2.0, 0.0], 4)) + torch.tensor(softmax([0.0, 1.0], 4))) / 2
    assert torch.allclose(distill.teacher_probs(torch.zeros(1, 1))[0], mean.float())
    student = torch.tensor([[0.5, 0.1]])
    # float32 throughout; the KL of two close distributions keeps about 4 digits
    assert float(distill(student, torch.tensor([0]), torch.zeros(1, 1))) == pytest.approx(
        float(kd_loss(student, mean.float()[None], torch.tensor([0]), 4.0, 0.9)), rel=1e-4)


def test_teachers_stay_frozen_and_out_of_the_students_checkpoint():
    from medssl.models import build_backbone, feature_dim
    from medssl.training.classifier import Classifier

    teacher = nn.Linear(3, 2)
    distill = get_objective("distillation")([teacher])
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    plain = Classifier(build_backbone("resnet18"), feature_dim("resnet18"), ["a", "b"], lr=1e-3)
    student = Classifier(build_backbone("resnet18"), feature_dim("resnet18"), ["a", "b"], lr=1e-3,
                         objective=distill)
    assert plain.state_dict().keys() == student.state_dict().keys()
    with pytest.raises(MedsslError, match="Unknown finetuning objective 'mutal'"):
        get_objective("mutal")


def _weights(run):
    return torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]


def test_alpha_zero_finetunes_bit_for_bit_as_plain_and_mismatched_teachers_are_refused(tmp_path):
    import json
    from dataclasses import replace

    from medssl.training.finetune import run_finetune
    from tests.test_finetune import csv_dataset, finetune_cfg

    root = csv_dataset(tmp_path / "data", False)
    base = replace(finetune_cfg(root, tmp_path / "teacher"), epochs=2)
    teacher = run_finetune(base)
    plain = run_finetune(replace(base, seed=1, out=str(tmp_path / "plain")))
    kd0 = run_finetune(replace(base, seed=1, out=str(tmp_path / "kd0"), teachers=[str(teacher)],
                               kd_alpha=0.0))
    kd = run_finetune(replace(base, seed=1, out=str(tmp_path / "kd"), teachers=[str(teacher)]))
    m_plain, m_kd0, m_kd = (json.loads((r / "metrics.json").read_text()) for r in (plain, kd0, kd))
    for split in ("train", "val", "test"):
        assert m_plain[split] == m_kd0[split]
    w_plain, w_kd0, w_kd = _weights(plain), _weights(kd0), _weights(kd)
    assert all(torch.equal(w_plain[k], w_kd0[k]) for k in w_plain)
    assert not all(torch.equal(w_plain[k], w_kd[k]) for k in w_plain)  # the teacher reached it
    assert m_kd["objective"]["name"] == "distillation" and m_kd["objective"]["alpha"] == 0.9
    assert m_kd["objective"]["teachers"][0]["run"] == str(teacher)
    assert m_plain["objective"] == {"name": "plain"}

    other = run_finetune(replace(base, split_seed=1, out=str(tmp_path / "other")))
    with pytest.raises(MedsslError) as err:
        run_finetune(replace(base, seed=1, out=str(tmp_path / "bad"), teachers=[str(other)]))
    assert f"Teacher {other} does not fit this run: its split differs" in str(err.value)
    assert f"--split-file {other / 'split.csv'}" in str(err.value)
    with pytest.raises(MedsslError, match="is not a finished finetuning run"):
        run_finetune(replace(base, seed=1, out=str(tmp_path / "bad2"), teachers=[str(tmp_path)]))


@pytest.mark.parametrize("flag, value, said", [("--kd-alpha", "1.5", "--kd-alpha must lie in [0, 1]"),
                                               ("--kd-temperature", "0", "--kd-temperature must be above 0")])
def test_bad_distillation_flags_are_refused_before_anything_runs(cli, tmp_path, flag, value, said):
    code, _, err = cli("finetune", "--dataset", "demo", "--model", "M1", "--teacher", tmp_path,
                       flag, value, "--out", tmp_path / "r")
    assert code == 2 and said in err and not (tmp_path / "r").exists()


def test_mutual_loss_equals_a_hand_computed_value_with_peers_detached():
    from medssl.training.objectives.mutual import dml_loss

    own, peers, label = [1.0, 2.0, 0.0], ([2.0, 0.0, 1.0], [0.0, 0.5, 3.0]), 2
    p_own = softmax(own, 1)
    kls = [sum(a * math.log(a / b) for a, b in zip(softmax(p, 1), p_own)) for p in peers]
    expected = -math.log(p_own[label]) + sum(kls) / len(kls)
    logits = torch.tensor([own], requires_grad=True)
    peer_logits = [torch.tensor([p], requires_grad=True) for p in peers]
    got = get_objective("mutual")()(logits, torch.tensor([label]), None, peer_logits=peer_logits)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-6)
    got.backward()  # each member is updated by its own loss only: no gradient reaches a peer
    assert logits.grad is not None and all(p.grad is None for p in peer_logits)
    with pytest.raises(ValueError, match="at least one peer"):
        dml_loss(logits, [], torch.tensor([label]))


def test_distilled_and_mutual_models_have_explicit_names_and_safe_folders(tmp_path):
    from medssl.runs import dml_name, finetune_dir, kd_name, model_folder

    assert kd_name(["M3"], "M1") == "KD(M3→M1)" and model_folder("KD(M3→M1)") == "KD-M3-to-M1"
    assert model_folder(kd_name(["M3", "M4"], "M1")) == "KD-M3+M4-to-M1"
    assert dml_name(["M3", "M4"]) == "DML(M3+M4)" and dml_name(["M3", "M4"], "M3") == "DML(M3+M4)/M3"
    assert model_folder("DML(M3+M4)/M3") == "DML-M3+M4/M3"
    for model in ("M1", "M2-byol"):  # the study's and the methods' folders are unchanged
        assert finetune_dir(tmp_path, model, 0) == tmp_path / model / "seed0"
    folder = finetune_dir(tmp_path, "KD(M3+M4→M1)", 1, 0.1)
    assert folder == tmp_path / "KD-M3+M4-to-M1" / "frac0.1" / "seed1"
    # Only characters every file system and shell accepts unquoted.
    assert set(str(folder.relative_to(tmp_path))) <= set("abcdefghijklmnopqrstuvwxyz"
                                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-+./")
    folder.mkdir(parents=True)
