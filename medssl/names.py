"""Names and choices, in one torch-free place at the bottom of the package: what a model name
means (M1-M4, M2-<method>, KD(...), DML(...)) and where its runs live, the SSL methods' names
and titles, and every choice the command line offers. The modules that act on these choices
read them from here, so a list is written once, and `medssl --help` imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from medssl.errors import MedsslError

# Self-supervised methods: name -> title, in the order the docs list them. Each has its file in
# training/methods/ (registered there by this name).
METHOD_TITLES = {"simclr": "SimCLR", "moco": "MoCo v2", "byol": "BYOL", "simsiam": "SimSiam",
                 "barlowtwins": "Barlow Twins", "vicreg": "VICReg", "swav": "SwAV",
                 "dino": "DINO", "supcon": "SupCon (supervised)"}

# The choices the command line offers, each read by the module that acts on it.
ARCHS = ("resnet18", "resnet34", "resnet50")  # torchvision ResNets (models.backbones)
INITS = ("random", "imagenet")
HEADS = ("linear", "mlp")  # training.classifier
# The val metric that selects a finetuning checkpoint, and which way is better.
SELECT_METRICS = {"loss": "min", "acc": "max", "balanced_acc": "max", "macro_f1": "max",
                  "auroc": "max"}
LR_SCHEDULES = ("constant", "cosine")
# How a prior is judged: finetuned whole, or frozen with a linear head or kNN on its features
# (training.frozen). The table compares priors within a protocol.
PROTOCOLS = ("finetune", "linear", "knn")
OPTIMIZERS = ("adam", "sgd", "lars")  # pretraining (training.methods.base)
AUGMENT_PRESETS = ("study", "xray")  # data.transforms
DUPLICATE_POLICIES = ("drop", "keep")  # data.splits
# What Lightning's Trainer accepts for `precision` (tests/test_bad_inputs.py checks the list
# against Lightning's own), less transformer-engine, which needs a library medssl does not install.
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true",
              "32", "16", "bf16", "64")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp")
LR_SCALING = ("auto", "linear", "sqrt", "none")
# Lightning's loggers medssl offers (training.run_logs): name -> the pip package it needs.
LOGGERS = {"tensorboard": "tensorboard", "csv": None, "mlflow": "mlflow", "wandb": "wandb"}
# What `--primary-metric` may name (higher is better for each): report.comparisons.
PRIMARY_CHOICES = ("balanced_acc", "acc", "macro_f1", "auroc", "qwk", "sens_at_spec")


def task_metrics(ordinal: bool = False, binary: bool = False) -> tuple[str, ...]:
    """The metrics a task's comparisons pair: the four headline ones, QWK for graded labels or
    the sensitivity at the val-chosen specificity threshold for binary tasks, and ECE."""
    return ("acc", "balanced_acc", "macro_f1", "auroc", *(("qwk",) if ordinal else ()),
            *(("sens_at_spec",) if binary else ()), "ece")


def method_names() -> tuple[str, ...]:
    """Every SSL method, in the order the docs list them."""
    return tuple(METHOD_TITLES)


@dataclass(frozen=True)
class Prior:
    # the weights before any SSL: random, imagenet, or a foundation prior's label (its registry
    # name or timm:NAME: models.foundation)
    init: str
    method: str | None  # the self-supervised method on the target dataset next, or None
    title: str
    foundation: bool = False  # the init is a foundation prior (an F-<prior> row)

    @property
    def ssl(self) -> bool:
        return self.method is not None


# The study's four models. Its SSL method is SimCLR: M2 and M4 keep their names for it, and
# another method X makes M2-X and M4-X (`prior_of`).
STUDY_MODELS = {"M1": ("random", False), "M2": ("random", True), "M3": ("imagenet", False),
                "M4": ("imagenet", True)}
INIT_TITLES = {"random": "random init", "imagenet": "ImageNet init"}


# A foundation prior's rows: F-<prior> finetunes from it, F-<prior>+<method> pretrains with the
# method on the target data from it first (the study's M4, generalised to any prior).
FOUNDATION = "F-"


def foundation_prior(model: str) -> Prior:
    """F-<prior> or F-<prior>+<method>. The prior's label is checked against the registry by the
    layers that load it (models.foundation.parse_prior): this layer imports no models."""
    label, plus, method = model[len(FOUNDATION):].partition("+")
    if not label or (plus and not method):
        raise MedsslError(f"Unknown model '{model}'. A foundation prior's rows are F-<prior> and "
                          "F-<prior>+<method>, e.g. F-dinov2-vitb14, F-timm:convnext_tiny+simclr.")
    if not plus:
        return Prior(label, None, label, foundation=True)
    if method not in METHOD_TITLES:
        raise MedsslError(f"Unknown method '{method}' in model '{model}'. Choose one of: "
                          f"{', '.join(method_names())}.")
    return Prior(label, method, f"{label} + {METHOD_TITLES[method]}", foundation=True)


def foundation_model(label: str, method: str | None = None) -> str:
    """The row of a foundation prior (`--priors`), and of SSL from it (`--continue-ssl`)."""
    return FOUNDATION + label + (f"+{method}" if method else "")


def prior_of(model: str) -> Prior:
    """What a model name means: M1-M4, M2-<method> / M4-<method> for another SSL method, or a
    foundation prior's F-<prior> / F-<prior>+<method>."""
    if model.startswith(FOUNDATION):
        return foundation_prior(model)
    base, dash, method = model.partition("-")
    if base not in STUDY_MODELS or (dash and (not STUDY_MODELS[base][1] or not method)):
        raise MedsslError(f"Unknown model '{model}'. Choose M1, M2, M3, M4, or M2-<method> / "
                          f"M4-<method> with a method from: {', '.join(method_names())}; or "
                          "F-<prior> for a foundation prior (`medssl priors`).")
    if method == "simclr":
        raise MedsslError(f"'{model}' is called {base}: SimCLR is the study's method, and its "
                          "models keep the study's names.")
    init, ssl = STUDY_MODELS[base]
    if not ssl:
        return Prior(init, None, INIT_TITLES[init])
    method = method or "simclr"
    if method not in METHOD_TITLES:
        raise MedsslError(f"Unknown method '{method}' in model '{model}'. Choose one of: "
                          f"{', '.join(method_names())}.")
    return Prior(init, method, f"{INIT_TITLES[init]} + {METHOD_TITLES[method]}")


def model_name(base: str, method: str | None) -> str:
    """M2 + simclr -> M2 (the study's name); M2 + byol -> M2-byol."""
    return base if method in (None, "simclr") else f"{base}-{method}"


def kd_name(teachers: list[str], student: str) -> str:
    """The table's name of a distilled model: KD(M3→M1), KD(M3+M4→M1) for an ensemble teacher."""
    return f"KD({'+'.join(teachers)}→{student})"


def dml_name(members: list[str], member: str | None = None) -> str:
    """A mutual-learning cohort's name, DML(M3+M4) (its ensemble), or one member's, DML(M3+M4)/M3."""
    cohort = f"DML({'+'.join(members)})"
    return f"{cohort}/{member}" if member else cohort


def model_folder(model: str) -> str:
    """A model's folder name, safe on any file system and in a shell: the table's name with its
    brackets, slash and arrow spelled out (KD(M3→M1) -> KD-M3-to-M1, DML(M3+M4) -> DML-M3+M4,
    a cohort member as a teacher: KD(DML(M3+M4)/M3→M1) -> KD-DML-M3+M4-M3-to-M1); M1-M4 and
    M2-<method> are their own folders. (A cohort's members live inside the cohort's run folder:
    `member_folder`.)"""
    return (model.replace("→", "-to-").replace("(", "-").replace(")", "")
            .replace("/", "-").replace(":", "-").replace("--", "-"))


def member_folder(out, member: str):
    """A cohort member's run folder, inside the cohort's: a finished run of its own (metrics,
    predictions, its selected weights), so it can be reported, compared and used as a teacher."""
    from pathlib import Path

    return Path(out) / model_folder(member)


def split_models(spec: str) -> list[str]:
    """'M3+M4' -> ['M3', 'M4']; a method after '+' belongs to the foundation row before it:
    'F-x+simclr+M1' -> ['F-x+simclr', 'M1']."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split("+")):
        if out and out[-1].startswith(FOUNDATION) and "+" not in out[-1] and part in METHOD_TITLES:
            out[-1] += "+" + part
        else:
            out.append(part)
    return out


def parse_cohort(spec: str) -> list[str]:
    """'M3+M4' -> ['M3', 'M4']: two or more different models."""
    members = split_models(spec)
    for m in members:
        prior_of(m)
    if len(members) < 2:
        raise MedsslError(f"'{spec}' is a cohort of one; deep mutual learning trains two or more "
                          "models together. Fix: name them joined by '+', e.g. M3+M4.")
    if len(set(members)) < len(members):
        raise MedsslError(f"'{spec}' names a model more than once; each member of a cohort is a "
                          "different prior.")
    return members


def parse_distill(spec: str) -> tuple[list[str], str]:
    """'M3:M1' -> (['M3'], 'M1'); 'M3+M4:M1' -> (['M3', 'M4'], 'M1'): the teachers (their
    probabilities averaged) and the student. A foundation row's name may hold a colon
    (F-timm:NAME): the split is the first colon with models on both sides."""
    fix = (f"'{spec}' is not TEACHER:STUDENT. Fix: e.g. M3:M1, or M3+M4:M1 for an ensemble "
           "teacher.")
    for i in [i for i, c in enumerate(spec) if c == ":"]:
        teachers, student = spec[:i].strip(), spec[i + 1:].strip()
        if not teachers or not student:
            continue
        try:
            names = split_models(teachers)
            for m in (*names, student):
                prior_of(m)
        except MedsslError:
            continue
        return names, student
    teachers, _, student = spec.partition(":")
    if not teachers.strip() or not student.strip():
        raise MedsslError(fix)
    # refused naming the model that is unknown
    for m in (*split_models(teachers), student):
        prior_of(m.strip())
    raise MedsslError(fix)
