"""Distillation on ResNets: compact students distilled from a ResNet-56 by KD, attention transfer, hints and
stage-wise reconstruction, and a pruned ResNet-20 recovered by KD from its unpruned self vs plain fine-tuning.

Nothing here is tuned (every loss uses its paper's settings), so the test set is the only split read. A section of
its own, apart from the Hinton table (``bench_distill``), so that each trains within one session's time::

    python -m benchmarks.run --only distill_resnet
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from benchmarks._baselines import cached_model, loader_record, trained, weights_digest
from benchmarks._common import Section, markdown_table
from benchmarks.bench_distill import BATCH, train_student
from slimkit import models
from slimkit.analysis import evaluate, profile
from slimkit.data import TensorLoader, create_data
from slimkit.distill import DistillConfig, Distiller, LossSpec, ReconstructConfig, TeacherCache, reconstruct

TITLE = "Knowledge distillation on ResNets: compact students from ResNet-56, KD recovery of a pruned model"
log = logging.getLogger(__name__)

#: the compact-students and recovery tables use fixed settings from the papers (nothing tuned)
COMPACT_KD = "kd:T=4,alpha=0.9"  # Zagoruyko & Komodakis 2017 (AT + KD on CIFAR)
COMPACT_AT = "at:beta=1000"
COMPACT_LR = 0.05
RECOVERY_LR = 0.01
STAGES = (("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3"))


def compact_table(quick: bool, students: tuple[str, ...] = ("resnet20", "resnet20:width=0.5")) -> tuple[str, dict]:
    subset = 2_000 if quick else 10_000
    epochs = 1
    data = create_data("mnist")
    loader = TensorLoader(data.train.inputs[:subset], data.train.targets[:subset], BATCH, shuffle=True, seed=0)
    teacher_epochs = 4
    teacher = trained("resnet56", teacher_epochs)
    example = data.example_input()
    t_prof = profile(teacher, example).total
    raw: dict = {"subset": subset, "epochs": epochs, "teacher_epochs": teacher_epochs, "lr": COMPACT_LR,
                 "kd": COMPACT_KD, "at": COMPACT_AT, "teacher_errors": evaluate(teacher, data.test).errors,
                 "test_images": data.test.dataset_size, "runs": {}}
    rows = [[f"resnet56 (teacher, {teacher_epochs} epochs on {data.train.dataset_size:,})", "—",
             raw["teacher_errors"], t_prof.params, t_prof.macs]]
    hint = LossSpec("hint", pairs=(("layer2", "layer2"),))
    methods: dict[str, tuple[Sequence[str | LossSpec], Sequence[tuple[str, str]]] | str | None] = {
        "alone (CE)": None,
        f"KD (`{COMPACT_KD}`)": ((COMPACT_KD,), ()),
        f"AT (CE + `{COMPACT_AT}`, 3 stages)": (("ce", COMPACT_AT), STAGES),
        "AT + KD": ((COMPACT_KD, COMPACT_AT), STAGES),
        "hint (CE + FitNets hint at layer2)": (("ce", hint), ()),
        "stage-wise reconstruction, then CE": "stagewise",
    }
    for spec in students:
        prof = profile(models.from_spec(spec), example).total
        cache = TeacherCache(subset)
        for name, method in methods.items():
            began = time.perf_counter()
            if method is None:
                model = train_student(spec, loader, None, epochs, lr=COMPACT_LR)
            elif method == "stagewise":
                model = _stagewise(teacher, spec, loader, epochs)
            else:
                losses, pairs = method
                feature = any((LossSpec.parse(loss) if isinstance(loss, str) else loss).build().uses_features
                              for loss in losses)
                model = train_student(spec, loader, None, epochs, lr=COMPACT_LR, teacher=teacher, losses=losses,
                                      pairs=pairs, cache=None if feature else cache)
            errors = evaluate(model, data.test).errors
            raw["runs"][f"{spec} | {name}"] = {"errors": errors}
            log.info("compact: %s %s → %d errors (%.0f s)", spec, name, errors, time.perf_counter() - began)
            rows.append([spec, name, errors, prof.params, prof.macs])
    table = markdown_table(["student", "method", f"test errors (of {raw['test_images']:,})", "params", "MACs"], rows)
    return table, raw


def _stagewise(teacher: nn.Module, spec: str, loader: TensorLoader, epochs: int) -> nn.Module:
    """Stage-wise reconstruction (1 epoch per stage), then ``epochs`` task epochs on the cross-entropy, cached."""
    config = ReconstructConfig(stages=STAGES, stage_epochs=1, epochs=epochs, lr=COMPACT_LR)
    record = {"role": "stagewise", "spec": spec, "teacher": weights_digest(teacher),
              "train": loader_record(loader), "config": repr(config), "seed": 0}

    def build() -> nn.Module:
        torch.manual_seed(0)
        return models.from_spec(spec)

    def train(student: nn.Module) -> None:
        student.load_state_dict(reconstruct(teacher, student, loader, config).state_dict())

    return cached_model(f"student-{spec.replace(':', '-')}", record, build, train, code=(reconstruct,))


def recovery_table(quick: bool, ratio: float = 0.5) -> tuple[str, dict]:
    """A pruned ResNet-20 recovered by plain fine-tuning vs by KD from the unpruned model (its own teacher)."""
    from slimkit.prune import PruneConfig, prune_channels

    subset = 2_000 if quick else 10_000
    data = create_data("mnist")
    loader = TensorLoader(data.train.inputs[:subset], data.train.targets[:subset], BATCH, shuffle=True, seed=0)
    teacher_epochs = 4
    teacher = trained("resnet20", teacher_epochs)
    example = data.example_input()
    raw: dict[str, Any] = {"subset": subset, "ratio": ratio, "lr": RECOVERY_LR, "kd": COMPACT_KD,
                           "teacher_epochs": teacher_epochs, "test_images": data.test.dataset_size, "runs": {}}
    rows = [[f"resnet20 unpruned (the teacher, {teacher_epochs} epochs)", evaluate(teacher, data.test).errors]]
    for criterion in ("l1", "thinet"):
        pruned = prune_channels(teacher, example, PruneConfig(ratio=ratio, criterion=criterion),
                                data=data.calibration).eval()
        raw["runs"][f"{criterion} pruned"] = evaluate(pruned, data.test).errors
        rows.append([f"{criterion} {ratio:.0%} one-shot, no recovery", raw["runs"][f"{criterion} pruned"]])
        for method, losses in (("fine-tune (CE)", ("ce",)),
                               (f"KD from the unpruned model (`{COMPACT_KD}`)", (COMPACT_KD,))):
            student = _recovered(teacher, pruned, loader, losses, criterion, ratio)
            errors = evaluate(student, data.test).errors
            raw["runs"][f"{criterion} + {method}"] = errors
            rows.append([f"{criterion} {ratio:.0%} + 1 epoch {method}", errors])
        prof = profile(pruned, example).total
        raw.update(params=prof.params, macs=prof.macs)
    return markdown_table(["model", f"test errors (of {raw['test_images']:,})"], rows), raw


def _recovered(teacher: nn.Module, pruned: nn.Module, loader: TensorLoader, losses: tuple[str, ...],
               criterion: str, ratio: float) -> nn.Module:
    """The pruned model after 1 epoch of ``losses`` with the unpruned teacher, cached."""
    config = DistillConfig(losses=losses, epochs=1, lr=RECOVERY_LR, cache_teacher=True)
    record = {"role": "recovery", "pruned": weights_digest(pruned), "teacher": weights_digest(teacher),
              "criterion": criterion, "ratio": ratio, "train": loader_record(loader), "config": repr(config)}

    def train(student: nn.Module) -> None:
        torch.manual_seed(0)
        Distiller(teacher, student.train(), config).fit(loader)

    return cached_model("recovery-resnet20", record, lambda: copy.deepcopy(pruned), train, code=(Distiller.fit,))


def run(quick: bool) -> Section:
    compact, c = compact_table(quick)
    recovery, r = recovery_table(quick)
    markdown = f"""### Compact students distilled from ResNet-56

Teacher: `trained("resnet56", {c['teacher_epochs']})`. Students trained on the first {c['subset']:,} MNIST training
images for {c['epochs']} epoch(s) each (SGD Nesterov lr {c['lr']:g}, one-cycle cosine, seed 0), tested on the
{c['test_images']:,} test images. Nothing here was tuned: the losses use the settings of their papers (KD
`{c['kd']}` and AT `{c['at']}` as Zagoruyko & Komodakis 2017). The budget is chosen to fit the CPU, so errors are far
above converged values and differences between methods are indicative only. AT pairs the outputs of the three
stages (layer1–3); hint: 1×1-conv regressor from the student's layer2 to the teacher's (joint with CE); stage-wise:
1 epoch per stage reconstructing the teacher's stage output (mimic where shapes match, else a hint regressor; later
stages frozen and not run), then {c['epochs']} task epoch(s). Params and MACs per 1×28×28 sample from
`slimkit.analysis.profile`.

{compact}

### A pruned model recovered by KD vs plain fine-tuning

`trained("resnet20", {r['teacher_epochs']})` pruned one-shot by {r['ratio']:.0%} of the channels in every group
(`prune_channels`, {r['params']:,} params, {r['macs']:,} MACs left), then 1 epoch on the first {r['subset']:,}
training images (SGD lr {r['lr']:g}, same seed) with the cross-entropy alone or with KD (`{r['kd']}`, fixed a
priori) from the unpruned model as the teacher:

{recovery}
"""
    return Section(topic="distill_resnet", title=TITLE, markdown=markdown, data={"compact": c, "recovery": r})
