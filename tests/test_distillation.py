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


def test_a_run_gets_the_objective_its_options_select_through_the_registry():
    # objective_for picks by each objective's `selected_by` option, never by name in the run:
    # a cohort (--mutual) gets mutual learning, no option plain cross-entropy.
    from types import SimpleNamespace

    from medssl.training.objectives import OBJECTIVES, objective_for

    cohort, record = objective_for(SimpleNamespace(mutual=["M3", "M4"], teachers=None), None)
    assert type(cohort).name == "mutual" and record == {"name": "mutual", "members": ["M3", "M4"]}
    plain, record = objective_for(SimpleNamespace(mutual=None, teachers=None), None)
    assert type(plain).name == "plain" and record == {"name": "plain"}
    # Every registered objective says what selects it and how it is built for a run.
    assert {cls.selected_by for cls in OBJECTIVES.values()} == {None, "mutual", "teachers"}
    assert all(callable(cls.for_run) for cls in OBJECTIVES.values())


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


@pytest.mark.parametrize("flag, value, said", [
    ("--kd-alpha", "1.5", "argument --kd-alpha: 1.5: must lie in [0, 1]"),
    ("--kd-temperature", "0", "argument --kd-temperature: 0: must be above 0"),
    # nan passed `temperature <= 0` before the table of ranges, and reached the loss
    ("--kd-temperature", "nan", "argument --kd-temperature: nan: not a finite number")])
def test_bad_distillation_flags_are_refused_before_anything_runs(cli, capsys, tmp_path, flag,
                                                                 value, said):
    with pytest.raises(SystemExit) as exit_:  # refused by argparse, from the table of ranges
        cli("finetune", "--dataset", "demo", "--model", "M1", "--teacher", tmp_path, flag, value,
            "--out", tmp_path / "r")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err and not (tmp_path / "r").exists()


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
    from medssl.names import dml_name, kd_name, model_folder
    from medssl.runs import finetune_dir

    assert kd_name(["M3"], "M1") == "KD(M3→M1)" and model_folder("KD(M3→M1)") == "KD-M3-to-M1"
    assert model_folder(kd_name(["M3", "M4"], "M1")) == "KD-M3+M4-to-M1"
    assert dml_name(["M3", "M4"]) == "DML(M3+M4)" and dml_name(["M3", "M4"], "M3") == "DML(M3+M4)/M3"
    assert model_folder("DML(M3+M4)") == "DML-M3+M4"
    assert model_folder(kd_name(["DML(M3+M4)/M3"], "M1")) == "KD-DML-M3+M4-M3-to-M1"
    for model in ("M1", "M2-byol"):  # the study's and the methods' folders are unchanged
        assert finetune_dir(tmp_path, model, 0) == tmp_path / model / "seed0"
    folder = finetune_dir(tmp_path, "KD(M3+M4→M1)", 1, 0.1)
    assert folder == tmp_path / "KD-M3+M4-to-M1" / "frac0.1" / "seed1"
    # Only characters every file system and shell accepts unquoted.
    assert set(str(folder.relative_to(tmp_path))) <= set("abcdefghijklmnopqrstuvwxyz"
                                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-+./")
    folder.mkdir(parents=True)


def imagenet_file(folder) -> str:
    """A stand-in for ImageNet weights (a file), so M3 and M4 run offline."""
    from medssl.models import build_backbone

    torch.manual_seed(11)
    path = folder / "imagenet_resnet18.pt"
    torch.save(build_backbone("resnet18").state_dict(), path)
    return str(path)


def _probs(run, split="test"):
    import pandas as pd

    return pd.read_csv(run / f"{split}_predictions.csv").filter(like="prob_").to_numpy()


def test_a_mutual_cohort_of_two_writes_both_members_and_their_ensemble(tmp_path):
    import json
    from dataclasses import replace

    import numpy as np

    from medssl.runs import finetune_finished
    from medssl.training.finetune import run_finetune
    from tests.test_finetune import csv_dataset, finetune_cfg

    root = csv_dataset(tmp_path / "data", False)
    base = finetune_cfg(root, tmp_path / "dml", imagenet_weights=imagenet_file(tmp_path))
    cohort = run_finetune(replace(base, model="", mutual=["M1", "M3"]))
    ensemble = json.loads((cohort / "metrics.json").read_text())
    assert ensemble["model"] == "DML(M1+M3)" and ensemble["base_models"] == ["M1", "M3"]
    assert ensemble["objective"]["name"] == "mutual"
    member_probs = []
    for member, init in (("M1", "random"), ("M3", "imagenet")):
        run = cohort / member
        assert finetune_finished(run)
        m = json.loads((run / "metrics.json").read_text())
        assert m["model"] == f"DML(M1+M3)/{member}" and m["base_models"] == [member]
        assert m["prior"]["init"] == init
        # Selected on val on its own: its weights are the cohort's checkpoint of that choice.
        assert ensemble["selection"]["members"][member] == m["selection"]["epoch"]
        own = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
        k = ["M1", "M3"].index(member)
        chosen = torch.load(cohort / "checkpoints" / f"best-{member}.ckpt",
                            weights_only=True)["state_dict"]
        assert own.keys() == {key.split(".", 2)[2] for key in chosen if key.startswith(f"members.{k}.")}
        assert all(torch.equal(v, chosen[f"members.{k}.{key}"]) for key, v in own.items())
        # Each member's curves, as a single run logs them.
        assert {"train/acc", "val/loss", "train_eval/acc"} <= set(
            __import__("pandas").read_csv(run / "logs" / "metrics.csv").columns)
        member_probs.append(_probs(run))
    # The ensemble: the mean of the members' selected probabilities.
    np.testing.assert_allclose(_probs(cohort), np.mean(member_probs, axis=0), atol=1e-6)
    # Two different priors trained together: not one network twice.
    assert not np.allclose(member_probs[0], member_probs[1])
    # The cohort's own folder holds no one network to predict with: its members do.
    from medssl.training.predict import open_source

    with pytest.raises(MedsslError, match="is a mutual-learning cohort .* Fix: name one of them"):
        open_source(cohort)
    assert open_source(cohort / "M3").model == "DML(M1+M3)/M3"

    # A member is a finished run like any other: it can teach.
    kd = run_finetune(replace(base, epochs=1, teachers=[str(cohort / "M3")],
                              out=str(tmp_path / "kd")))
    m = json.loads((kd / "metrics.json").read_text())
    assert m["model"] == "KD(DML(M1+M3)/M3→M1)" and m["base_models"] == ["M1"]
    assert m["objective"]["teachers"][0]["model"] == "DML(M1+M3)/M3"


@pytest.mark.parametrize("args, said", [
    (["--mutual", "M3"], "a cohort needs two or more models"),
    (["--mutual", "M1", "M1"], "names M1 more than once"),
    (["--mutual", "M1", "M3", "--model", "M1"], "a cohort names its members with --mutual alone"),
    (["--mutual", "M2", "M4", "--ssl-checkpoint", "x"], "each need their own"),
    ([], "Which model? Fix: pass --model"),
    (["--model", "M1", "--teacher", "no/such/run"], "Teacher no/such/run does not exist"),
])
def test_bad_cohorts_and_teachers_are_refused_by_name_with_the_fix(cli, tmp_path, args, said):
    code, _, err = cli("finetune", "--dataset", "demo", *args, "--out", tmp_path / "r")
    assert code == 2 and said in err and "Fix:" in err and not (tmp_path / "r").exists()


def test_a_teacher_of_another_arch_teaches_and_one_that_does_not_load_is_named(tmp_path):
    import json
    from dataclasses import replace

    from medssl.training.finetune import run_finetune
    from tests.test_finetune import csv_dataset, finetune_cfg

    root = csv_dataset(tmp_path / "data", False)
    base = replace(finetune_cfg(root, tmp_path / "teacher"), epochs=1)
    teacher = run_finetune(replace(base, arch="resnet34"))
    student = run_finetune(replace(base, out=str(tmp_path / "student"), teachers=[str(teacher)]))
    info = json.loads((student / "metrics.json").read_text())["objective"]["teachers"][0]
    assert info["arch"] == "resnet34"  # a ResNet-18 student learns from a ResNet-34
    # Its checkpoint replaced by another arch's: refused, naming the file, not a random teacher.
    other = run_finetune(replace(base, out=str(tmp_path / "r18")))
    (teacher / "checkpoints" / "best.ckpt").write_bytes(
        (other / "checkpoints" / "best.ckpt").read_bytes())
    with pytest.raises(MedsslError, match=r"best\.ckpt"):
        run_finetune(replace(base, out=str(tmp_path / "bad"), teachers=[str(teacher)]))


def test_compare_writes_distilled_and_mutual_rows_against_their_own_base(tmp_path, cli):
    import numpy as np
    import pandas as pd

    from medssl.data import fixtures as fx
    from medssl.report.comparisons import paired_bootstrap, test_predictions
    from medssl.report.tables import collect_runs

    root = fx.make_covid19(tmp_path, per_class=6)
    # One learning rate: this test is about the rows, not the search (tested in test_recipe).
    fast = ["--lr", "1e-3", "--arch", "resnet18", "--image-size", "32", "--num-workers", "0",
            "--batch-size", "16", "--epochs", "2", "--seeds", "0", "1", "--label-fractions", "1"]
    out = tmp_path / "grid"
    code, stdout, err = cli("compare", "--dataset", "covid19", "--data-root", root, "--models",
                            "M1", "--distill", "M3:M1", "--mutual", "M1+M3", "--imagenet-weights",
                            imagenet_file(tmp_path), "--out", out, *fast)
    assert code == 0, err
    results = pd.read_csv(out / "results.csv").set_index("model")
    # M3, the teacher and a member, was added to the grid: the rows compare with it trained alone.
    assert set(results.index) == {"M1", "M3", "KD(M3→M1)", "DML(M1+M3)", "DML(M1+M3)/M1",
                                  "DML(M1+M3)/M3"}
    assert (results["seeds"] == 2).all()
    assert results.loc["KD(M3→M1)", "base"] == "M1"
    assert results.loc["DML(M1+M3)/M3", "base"] == "M3"
    assert results.loc["DML(M1+M3)", "base"] == "M1+M3 ensemble"
    for model in ("KD(M3→M1)", "DML(M1+M3)", "DML(M1+M3)/M1", "DML(M1+M3)/M3"):
        # the primary endpoint (balanced accuracy, three classes) Holm-adjusted, the rest not
        assert not np.isnan(results.loc[model, "test_balanced_acc_vs_base_p_holm"])
        for metric in ("acc", "macro_f1", "auroc", "ece"):
            assert not np.isnan(results.loc[model, f"test_{metric}_vs_base_p"])
    assert np.isnan(results.loc["M1", "test_acc_vs_base_diff"])
    assert (out / "KD-M3-to-M1" / "seed1" / "finished.json").is_file()
    assert (out / "DML-M1+M3" / "seed0" / "M3" / "finished.json").is_file()
    # The ensemble is compared with the ensemble of M1 and M3 trained alone, seed by seed.
    runs, _ = collect_runs(out)
    alone = [runs[runs["model"] == m] for m in ("M1", "M3")]
    expected = paired_bootstrap(runs[runs["model"] == "DML(M1+M3)"], alone)
    assert results.loc["DML(M1+M3)", "test_acc_vs_base_diff"] == pytest.approx(
        expected["acc"]["diff"])
    m1, m3 = (test_predictions(a)[0].probs for a in alone)
    dml = test_predictions(runs[runs["model"] == "DML(M1+M3)"])[0]
    labels = dml.labels
    diff = (dml.probs.argmax(1) == labels).mean() - (((m1 + m3) / 2).argmax(1) == labels).mean()
    seed1 = test_predictions(runs[runs["model"] == "DML(M1+M3)"])[1]
    m1b, m3b = (test_predictions(a)[1].probs for a in alone)
    diff = (diff + (seed1.probs.argmax(1) == labels).mean()
            - (((m1b + m3b) / 2).argmax(1) == labels).mean()) / 2
    assert results.loc["DML(M1+M3)", "test_acc_vs_base_diff"] == pytest.approx(diff)
    md = (out / "results.md").read_text()
    assert "Δ balanced accuracy vs own base" in md and "M1+M3 ensemble (own base)" in md
    assert "KD(M3→M1)" in stdout

    # Offline, without ImageNet weights: the rows that need M3 are skipped with the reason.
    code, stdout, err = cli("compare", "--dataset", "covid19", "--data-root", root, "--models",
                            "M1", "--distill", "M3:M1", "--out", tmp_path / "offline", *fast[:-5],
                            "--seeds", "0")
    assert code == 0, err
    assert "KD(M3→M1) skipped: it needs M3" in stdout


def test_with_an_lr_grid_students_and_members_train_at_the_rate_chosen_for_them_alone(tmp_path,
                                                                                        cli):
    import json

    from medssl.data import fixtures as fx

    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    code, _, err = cli("compare", "--dataset", "covid19", "--data-root", root, "--models", "M1",
                       "--distill", "M3:M1", "--mutual", "M1+M3", "--imagenet-weights",
                       imagenet_file(tmp_path), "--lr-grid", "1e-2", "1e-4", "--seeds", "0",
                       "--epochs", "1", "--out", out, "--arch", "resnet18", "--image-size", "32",
                       "--num-workers", "0", "--batch-size", "16", "--label-fractions", "1")
    assert code == 0, err

    def metrics(*parts):
        return json.loads((out.joinpath(*parts) / "metrics.json").read_text())

    alone = {m: metrics(m, "seed0")["lr_selected"] for m in ("M1", "M3")}
    kd = metrics("KD-M3-to-M1", "seed0")
    assert kd["lr"] == alone["M1"] and kd["lr_selected"] == alone["M1"]
    cohort = metrics("DML-M1+M3", "seed0")
    assert cohort["objective"]["member_lrs"] == alone
    for m in ("M1", "M3"):
        assert metrics("DML-M1+M3", "seed0", m)["lr"] == alone[m]


@pytest.mark.parametrize("flag, value, said", [
    ("--distill", "M3", "is not TEACHER:STUDENT"), ("--distill", "M3:M9", "Unknown model 'M9'"),
    ("--mutual", "M3", "is a cohort of one"), ("--mutual", "M1+M1", "more than once")])
def test_bad_grid_specs_are_refused_when_parsed(cli, capsys, tmp_path, flag, value, said):
    with pytest.raises(SystemExit) as exit_:
        cli("compare", "--dataset", "demo", flag, value, "--out", tmp_path / "grid")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err and flag in err
    assert not (tmp_path / "grid").exists()


def test_figures_give_other_models_colours_the_study_models_do_not_use():
    from medssl.report.curves import COLOURS, colours

    given = colours(["M1", "M3", "KD(M3→M1)", "DML(M1+M3)", "DML(M1+M3)/M1"])
    others = [given[m] for m in ("KD(M3→M1)", "DML(M1+M3)", "DML(M1+M3)/M1")]
    assert len(set(others)) == 3 and not set(others) & set(COLOURS.values())
    assert given["M1"] == COLOURS["M1"]


def test_a_distilled_students_lr_search_is_its_own(tmp_path):
    import json
    from dataclasses import replace

    from medssl.experiments.lr_search import finetune_with_lr_grid
    from medssl.training.finetune import run_finetune
    from tests.test_finetune import csv_dataset, finetune_cfg

    root = csv_dataset(tmp_path / "data", False)
    base = replace(finetune_cfg(root, tmp_path / "teacher"), epochs=1, base=str(tmp_path / "grid"))
    teacher = run_finetune(base)
    plain = finetune_with_lr_grid(replace(base, out=None, lr=None, lr_grid=[1e-3, 1e-4]))
    kd = finetune_with_lr_grid(replace(base, out=None, lr=None, lr_grid=[1e-3, 1e-4],
                                       teachers=[str(teacher)]))
    assert kd.name == "seed0" and kd.parent.name == "KD-M1-to-M1" and plain.parent.name == "M1"
    searched = sorted(p.parent.parent.name for p in (tmp_path / "grid" / "lr-search").rglob("seed0"))
    assert searched == ["KD-M1-to-M1", "KD-M1-to-M1", "M1", "M1"]
    m = json.loads((kd / "metrics.json").read_text())
    assert m["objective"]["name"] == "distillation" and m["lr_grid"] == [1e-3, 1e-4]


def test_a_student_added_later_trains_at_the_fixed_rate_its_base_had(tmp_path, cli):
    """M1 trained at a fixed --lr, then a distillation row added: the student takes M1's rate,
    and records no search it did not have. (Asked with a search instead, the fixed-rate M1 is
    not reused as if searched: run identity, issue 32.)"""
    import json

    from medssl.data import fixtures as fx

    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    common = ["compare", "--dataset", "covid19", "--data-root", root, "--seeds", "0", "--epochs",
              "1", "--out", out, "--arch", "resnet18", "--image-size", "32", "--num-workers",
              "0", "--batch-size", "16", "--label-fractions", "1"]
    code, _, err = cli(*common, "--models", "M1", "--lr", "1e-3")
    assert code == 0, err
    code, _, err = cli(*common, "--models", "M1", "--distill", "M3:M1", "--imagenet-weights",
                       imagenet_file(tmp_path), "--lr-grid", "1e-3", "1e-4")
    assert code == 2 and "ran at the fixed rate 0.001" in err and "--lr 0.001" in err
    code, _, err = cli(*common, "--models", "M1", "--distill", "M3:M1", "--imagenet-weights",
                       imagenet_file(tmp_path), "--lr", "1e-3")
    assert code == 0, err
    kd = json.loads((out / "KD-M3-to-M1" / "seed0" / "metrics.json").read_text())
    assert kd["lr"] == 1e-3 and kd["lr_selected"] is None and kd["lr_grid"] is None
