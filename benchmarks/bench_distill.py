"""Distillation: Hinton et al.'s MNIST table (teacher / student alone / distilled), every setting chosen on the
validation split and the test set read once for the final table. (The ResNet tables are ``bench_distill_resnet``.)

The trained models are cached (``benchmarks/_baselines.cached_model``: keyed by the whole training config and the
training code). The long runs can be trained ahead in parallel processes, each taking every n-th job::

    python -m benchmarks.bench_distill teachers 0/2   # the teacher grid, half 1 of 2 (also 1/2)
    python -m benchmarks.bench_distill students 0/2   # the student grid (needs every teacher: picks the best)
    python -m benchmarks.bench_distill final 0/2      # the other seeds (and the augmented rows, if on)
    python -m benchmarks.run --only distill           # everything else, then the tables
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from benchmarks._baselines import (
    CACHE,
    cache_path,
    cached_model,
    digest,
    loader_record,
    sgd_record,
    source_hash,
    weights_digest,
)
from benchmarks._common import Section, markdown_table
from slimkit import models
from slimkit.analysis import evaluate
from slimkit.data import TensorLoader, create_augment, create_data
from slimkit.distill import DistillConfig, Distiller, LossSpec, TeacherCache
from slimkit.train import default_optimizer, fit

TITLE = "Knowledge distillation"
log = logging.getLogger(__name__)

#: Hinton et al. 2015, Sec. 3: test errors of the teacher, the student trained alone and the distilled student
PAPER = {"teacher": 67, "alone": 146, "distilled": 74}
BATCH = 128


@dataclass(frozen=True)
class Teacher:
    """One candidate teacher setting: model spec (dropout), training augmentation, weight decay, epochs."""

    spec: str
    augment: str
    weight_decay: float
    epochs: int
    note: str

    def label(self) -> str:
        return f"{self.note}; weight decay {self.weight_decay:g}; {self.epochs} epochs"


#: The teacher grid, all 784-1200-1200-10 ReLU nets trained with SGD (Nesterov, lr TEACHER_LR, batch BATCH,
#: one-cycle cosine) on the 50k training images; the one with the fewest validation errors teaches. Two candidates,
#: the paper's recipe and our substitute for its long training, so that the whole section (teachers, the student
#: grid, the final runs) trains in about two hours on two cores: a 150-epoch teacher takes ~35-40 min on one core.
TEACHERS = (
    Teacher("mlp1200", "shift", 0.0, 150, "the paper's: dropout 0.5, 0.2 on the inputs, ±2 px jitter"),
    Teacher("mlp1200:dropout=0,input_dropout=0", "elastic+shift", 5e-4, 150,
            "no dropout, elastic distortion + ±2 px jitter"),
)
TEACHER_LR = 0.05
#: The student: 784-800-800-10 ReLU, no dropout, no augmentation (the paper's), trained on the plain 50k images.
STUDENT_SPEC = "mlp800"
STUDENT_EPOCHS = 60
STUDENT_LR = 0.05
#: the student grid: weight decay for both rows; temperature and soft-loss weight alpha for the distilled one
WEIGHT_DECAYS = (0.0, 5e-4)
TEMPERATURES = (2, 5, 10, 20)
ALPHAS = (0.9,)  # the paper's weighting (the hard loss at a much lower weight); one value keeps the grid in budget
SEEDS = (0, 1)  # the final rows are repeated: one run cannot tell a margin to the paper from luck (2: in budget)
AUG_SEED = 1  # the augmented students' loader seed: other random warps than the teacher's (seed 0)
#: the two extra rows (students alone / distilled on the teacher's augmented images, ~9 min each on one core): off so
#: that the section trains within a session; the paper's rows do not need them
AUGMENTED_ROWS = False


@dataclass(frozen=True)
class StudentRun:
    """One student of the Hinton table: alone (``T`` None) or distilled, its weight decay, seed and images."""

    weight_decay: float
    T: int | None = None
    alpha: float | None = None
    seed: int = 0
    augmented: bool = False

    def loss(self) -> str:
        return f"kd:T={self.T},alpha={self.alpha}"


def _dropout_of(model: nn.Module) -> str:
    """The dropout rates a model trains with, in layer order, in words for the table."""
    rates = [f"{m.p:g}" for m in model.modules() if isinstance(m, nn.Dropout)]
    return f"dropout {'/'.join(dict.fromkeys(rates))}" if rates else "no dropout"


def train_student(spec: str, loader: TensorLoader, augment: str | None, epochs: int, *, lr: float,
                  weight_decay: float = 5e-4, seed: int = 0, teacher: nn.Module | None = None,
                  losses: Sequence[str | LossSpec] = (), pairs: Sequence[tuple[str, str]] = (),
                  cache: TeacherCache | None = None) -> nn.Module:
    """A student trained alone (no ``teacher``) or distilled with ``losses``, cached under its whole config (the
    teacher by the digest of its weights); the teacher-logit ``cache`` only saves time and is not in the key."""
    record = {"role": "student", "spec": spec, "epochs": epochs, "optimizer": sgd_record(lr, weight_decay),
              "scheduler": "cosine", "seed": seed, "train": loader_record(loader, augment),
              "teacher": weights_digest(teacher) if teacher is not None else None,
              "losses": [loss if isinstance(loss, str) else repr(loss) for loss in losses], "pairs": list(pairs)}

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return models.from_spec(spec)

    def train(student: nn.Module) -> None:
        if teacher is None:
            fit(student, loader, epochs=epochs, optimizer=lambda p: default_optimizer(p, lr, weight_decay),
                scheduler="cosine", progress=False, seed=seed)
            return
        config = DistillConfig(losses=tuple(losses), pairs=tuple(pairs), epochs=epochs, lr=lr,
                               weight_decay=weight_decay, cache_teacher=cache is not None, seed=seed)
        distiller = Distiller(teacher, student, config)
        distiller.cache = cache  # shared across runs on the same images: the teacher runs once per image overall
        distiller.fit(loader)

    return cached_model(f"student-{spec.replace(':', '-')}", record, build, train, code=(Distiller.fit,))


class Hinton:
    """Hinton et al.'s MNIST experiment: the teacher grid, the student grid, both scored on the 10k validation
    images; the chosen teacher, student alone and distilled student tested once on the 10k test images."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.data = create_data("mnist", batch_size=BATCH)  # 50k train, 10k valid, 10k test
        self.teachers = tuple(replace(t, epochs=2) for t in TEACHERS[:2]) if quick else TEACHERS
        self.epochs = 1 if quick else STUDENT_EPOCHS
        self.cache = TeacherCache(self.data.train.dataset_size)
        self._teacher: tuple[Teacher, nn.Module] | None = None

    # --- teachers ---------------------------------------------------------------------------------------------

    def train_teacher(self, setting: Teacher, *, only_if_cached: bool = False) -> nn.Module | None:
        """A candidate teacher, trained on the (augmented) 50k training images and cached; an interrupted run
        resumes from its last epoch. ``only_if_cached``: None instead of training."""
        epochs = setting.epochs
        data = create_data("mnist", batch_size=BATCH, augment=setting.augment)
        record = {"role": "hinton-teacher", "spec": setting.spec, "epochs": epochs,
                  "optimizer": sgd_record(TEACHER_LR, setting.weight_decay), "scheduler": "cosine", "seed": 0,
                  "train": loader_record(data.train, setting.augment)}
        run_dir = CACHE / f"hinton-teacher-{digest({**record, 'code': source_hash(fit)})}.run"

        def build() -> nn.Module:
            torch.manual_seed(0)
            return models.from_spec(setting.spec)

        def train(model: nn.Module) -> None:
            fit(model, data.train, epochs=epochs, seed=0, scheduler="cosine", progress=False,
                optimizer=lambda p: default_optimizer(p, TEACHER_LR, setting.weight_decay),
                checkpoint_dir=run_dir, resume=True)

        if only_if_cached and not cache_path("hinton-teacher", record, train)[0].is_file():
            return None
        return cached_model("hinton-teacher", record, build, train)

    def teacher_grid(self) -> list[dict[str, Any]]:
        rows = []
        for setting in self.teachers:
            model = self.train_teacher(setting)
            rows.append({"setting": asdict(setting), "label": setting.label(), "dropout": _dropout_of(model),
                         "valid_errors": evaluate(model, self.data.valid).errors})
        return rows

    def teacher(self) -> tuple[Teacher, nn.Module]:
        """The candidate with the fewest validation errors (the first in grid order on a tie)."""
        if self._teacher is None:
            rows = self.teacher_grid()
            best = min(range(len(rows)), key=lambda i: rows[i]["valid_errors"])
            self._teacher = (self.teachers[best], self.train_teacher(self.teachers[best]))
        return self._teacher

    # --- students ---------------------------------------------------------------------------------------------

    def loader(self, run: StudentRun) -> tuple[TensorLoader, str | None]:
        """The 50k training images in the run's shuffle order (its seed), warped like the teacher's if augmented."""
        t = self.data.train
        augment = self.teacher()[0].augment if run.augmented else None
        loader = TensorLoader(t.inputs, t.targets, t.batch_size, shuffle=True, augment=create_augment(augment),
                              seed=AUG_SEED if run.augmented else run.seed)
        return loader, augment

    def student(self, run: StudentRun) -> nn.Module:
        loader, augment = self.loader(run)
        if run.T is None:
            return train_student(STUDENT_SPEC, loader, augment, self.epochs, lr=STUDENT_LR,
                                 weight_decay=run.weight_decay, seed=run.seed)
        # on plain images the teacher's logits are cached per image; on warped ones it runs on the very image
        return train_student(STUDENT_SPEC, loader, augment, self.epochs, lr=STUDENT_LR,
                             weight_decay=run.weight_decay, seed=run.seed, teacher=self.teacher()[1],
                             losses=(run.loss(),), cache=None if run.augmented else self.cache)

    def student_grid(self) -> list[StudentRun]:
        decays = WEIGHT_DECAYS[:1] if self.quick else WEIGHT_DECAYS
        temperatures = TEMPERATURES[-2:] if self.quick else TEMPERATURES
        alphas = ALPHAS[-1:] if self.quick else ALPHAS
        return ([StudentRun(wd) for wd in decays]
                + [StudentRun(wd, T, alpha) for wd in decays for T in temperatures for alpha in alphas])

    def chosen(self) -> tuple[StudentRun, StudentRun, list[dict[str, Any]]]:
        """(alone, distilled) settings with the fewest validation errors (grid order on ties) and the grid."""
        rows = []
        for run in self.student_grid():
            rows.append({**asdict(run), "valid_errors": evaluate(self.student(run), self.data.valid).errors})
        alone = min((r for r in rows if r["T"] is None), key=lambda r: r["valid_errors"])
        distilled = min((r for r in rows if r["T"] is not None), key=lambda r: r["valid_errors"])
        keys = ("weight_decay", "T", "alpha")
        return (StudentRun(**{k: alone[k] for k in keys}), StudentRun(**{k: distilled[k] for k in keys}), rows)

    def final_runs(self) -> list[StudentRun]:
        alone, distilled, _ = self.chosen()
        seeds = SEEDS[:1] if self.quick else SEEDS
        runs = [StudentRun(alone.weight_decay, seed=s) for s in seeds]
        runs += [StudentRun(distilled.weight_decay, distilled.T, distilled.alpha, seed=s) for s in seeds]
        if AUGMENTED_ROWS:
            runs += [StudentRun(alone.weight_decay, augmented=True),
                     StudentRun(distilled.weight_decay, distilled.T, distilled.alpha, augmented=True)]
        return runs

    # --- the table: the only place the test set is read ---------------------------------------------------------

    def table(self) -> dict[str, Any]:
        teacher_rows = self.teacher_grid()
        setting, teacher = self.teacher()
        alone, distilled, student_rows = self.chosen()
        test = self.data.test
        raw: dict[str, Any] = {
            "paper": PAPER, "teacher_grid": teacher_rows, "student_grid": student_rows, "quick": self.quick,
            "teacher": {**asdict(setting), "label": setting.label(), "dropout": _dropout_of(teacher),
                        "lr": TEACHER_LR, "test_errors": evaluate(teacher, test).errors},
            "alone": asdict(alone), "distilled": asdict(distilled), "student_epochs": self.epochs,
            "student_lr": STUDENT_LR, "batch": BATCH, "train_images": self.data.train.dataset_size,
            "valid_images": self.data.valid.dataset_size, "test_images": test.dataset_size,
            "grid": {"weight_decay": list(WEIGHT_DECAYS), "T": list(TEMPERATURES), "alpha": list(ALPHAS)},
        }
        for run in self.final_runs():
            began = time.perf_counter()
            errors = evaluate(self.student(run), test).errors
            row = ("augmented_" if run.augmented else "") + ("alone" if run.T is None else "distilled")
            raw.setdefault(f"{row}_test_errors", {})[run.seed] = errors
            log.info("hinton: %s seed %d → %d test errors (%.0f s)", row, run.seed, errors,
                     time.perf_counter() - began)
        return raw


def _mean(counts: dict[Any, int]) -> float:
    return sum(counts.values()) / len(counts)


def _over_runs(counts: dict[Any, int]) -> str:
    """A row's mean test errors over the seeds, with each run's count."""
    values = list(counts.values())
    return f"{_mean(counts):.1f} (runs: {', '.join(map(str, values))})" if len(values) > 1 else str(values[0])


def hinton_markdown(h: dict[str, Any]) -> str:
    t, paper = h["teacher"], h["paper"]
    alone, distilled = h["alone"], h["distilled"]
    n_seeds = len(h["distilled_test_errors"])
    teacher_grid = markdown_table(
        ["teacher candidate", "validation errors (of " f"{h['valid_images']:,})"],
        [[("**" + r["label"] + "**") if r["setting"] == {k: t[k] for k in r["setting"]} else r["label"],
          r["valid_errors"]] for r in h["teacher_grid"]])
    temps = sorted({r["T"] for r in h["student_grid"] if r["T"] is not None})
    grid_rows = []
    for wd in sorted({r["weight_decay"] for r in h["student_grid"]}):
        alone_errors = next(r["valid_errors"] for r in h["student_grid"] if r["T"] is None and r["weight_decay"] == wd)
        for alpha in sorted({r["alpha"] for r in h["student_grid"] if r["alpha"] is not None}):
            cells = {r["T"]: r["valid_errors"] for r in h["student_grid"]
                     if r["weight_decay"] == wd and r["alpha"] == alpha}
            grid_rows.append([f"{wd:g}", alone_errors, f"{alpha:g}", *[cells.get(T, "–") for T in temps]])
    student_grid = markdown_table(["weight decay", "alone", "alpha", *[f"T={T}" for T in temps]], grid_rows)
    alone_test, distilled_test = h["alone_test_errors"], h["distilled_test_errors"]
    augmented = "augmented_alone_test_errors" in h
    rows = [
        [f"teacher 784-1200-1200-10: {t['label']}", paper["teacher"], t["test_errors"]],
        [f"student 784-800-800-10 alone (no dropout, no augmentation, weight decay {alone['weight_decay']:g})",
         paper["alone"], _over_runs(alone_test)],
        [f"student distilled: `kd:T={distilled['T']},alpha={distilled['alpha']:g}`, weight decay "
         f"{distilled['weight_decay']:g}, the plain training images as the transfer set", paper["distilled"],
         _over_runs(distilled_test)],
    ]
    aug_text = ""
    if augmented:
        aug_alone = _mean(h["augmented_alone_test_errors"])
        aug_distilled = _mean(h["augmented_distilled_test_errors"])
        rows += [
            [f"student alone on the teacher's augmented images ({t['augment']}; the augmentation without the "
             "teacher)", "—", round(aug_alone)],
            ["student distilled on the augmented images (teacher run on the same augmented image)", "—",
             round(aug_distilled)],
        ]
        noise = math.sqrt((aug_alone + aug_distilled) / 2)  # binomial s.d. of such an error count
        aug_text = (f" With the teacher's augmentation the student alone reaches {aug_alone:.0f} errors and "
                    f"distilled {aug_distilled:.0f} ({aug_distilled - aug_alone:+.0f}; the binomial standard "
                    f"deviation of such counts is about ±{noise:.0f}).")
    table = markdown_table(["model", "paper errors", f"measured test errors (of {h['test_images']:,})"], rows)
    removed = 1 - _mean(distilled_test) / _mean(alone_test)
    paper_removed = 1 - paper["distilled"] / paper["alone"]
    gap = _mean(distilled_test) - t["test_errors"]
    over = f"the mean of {n_seeds} runs" if n_seeds > 1 else "one run"
    spread = (f" Across seeds the distilled runs range from {min(distilled_test.values())} to "
              f"{max(distilled_test.values())} errors and the runs alone from {min(alone_test.values())} to "
              f"{max(alone_test.values())}: that run-to-run spread is the noise in any comparison with the paper's "
              "single runs." if n_seeds > 1 else "")
    reading = (f"Against the paper: teacher {t['test_errors']} errors (paper {paper['teacher']}), student alone "
               f"{_mean(alone_test):.1f} (paper {paper['alone']}), distilled {_mean(distilled_test):.1f} (paper "
               f"{paper['distilled']}), {over}. KD removes {removed:.0%} of the student's errors (the paper: "
               f"{paper_removed:.0%}) and the distilled student ends {gap:+.1f} errors from its teacher (the paper: "
               f"{paper['distilled'] - paper['teacher']:+d}).{spread}{aug_text}")
    rows_45 = (" Rows 4 and 5 train on the teacher's augmentation instead (other random draws than the teacher saw), "
               "the teacher run on the very image the student sees: row 4 shows how much of the gain the augmentation "
               "alone gives." if augmented else "")
    alphas = sorted({r["alpha"] for r in h["student_grid"] if r["alpha"] is not None})
    count = len(h["teacher_grid"])
    n_teachers = {1: "one candidate", 2: "two candidates"}.get(count, f"{count} candidates")
    alpha_text = (f", alpha fixed at {alphas[0]:g} in advance (the paper's weighting: the hard loss at a much lower "
                  "weight)" if len(alphas) == 1 else "")
    alpha_chosen = "" if len(alphas) == 1 else f"alpha={distilled['alpha']:g}, "
    return f"""### Hinton et al. (2015) MNIST table

Every model trains on MNIST's {h['train_images']:,} training images; every setting below that was not fixed in
advance was chosen on the {h['valid_images']:,} validation images (never trained on), and the
{h['test_images']:,} test images were read once, for this table, by the chosen models only. The paper trained on
all 60k images (training + validation), so its models saw {h['valid_images']:,} more images than ours.

**Teacher**, chosen on validation from this grid (784-1200-1200-10 ReLU, SGD Nesterov lr {t['lr']:g}, batch
{h['batch']}, one-cycle cosine; "elastic distortion" is Simard et al. 2003 at slimkit's default strength; the
paper's teacher also had max-norm weight constraints, which slimkit does not implement, and trained far longer;
{n_teachers} — the paper's recipe and our substitute for its long training — so that the section trains
within one session on two cores):

{teacher_grid}

**Students** (784-800-800-10 ReLU, no dropout, no augmentation, {h['student_epochs']} epochs, SGD Nesterov lr
{h['student_lr']:g}, batch {h['batch']}, one-cycle cosine, seed 0), trained alone or distilled from the chosen
teacher with `kd:T=T,alpha=alpha` (soft loss × T² × alpha plus (1 − alpha) × hard loss; the teacher's logits cached
per image){alpha_text}. Validation errors of the grid; the paper's student alone had "no regularization" (weight decay
0 is a candidate) and used T=20:

{student_grid}

Chosen on validation: the student alone with weight decay {alone['weight_decay']:g}; the distilled student with
T={distilled['T']}, {alpha_chosen}weight decay {distilled['weight_decay']:g}. Rows 2 and 3 are
repeated with seeds {', '.join(map(str, sorted(distilled_test)))} (a seed sets the initialisation and the shuffle
order).{rows_45}

{table}

{reading}
"""


def run(quick: bool) -> Section:
    hinton = Hinton(quick).table()
    return Section(topic="distill", title=TITLE, markdown=hinton_markdown(hinton), data={"hinton": hinton})


def _jobs(stage: str, quick: bool) -> list[Callable[[], Any]]:
    hinton = Hinton(quick)
    if stage == "teachers":
        return [lambda s=s: hinton.train_teacher(s) for s in hinton.teachers]
    missing = [t.label() for t in hinton.teachers if hinton.train_teacher(t, only_if_cached=True) is None]
    if missing:  # a student process must not train a teacher another process may be training
        raise SystemExit(f"{stage}: train the teachers first (python -m benchmarks.bench_distill teachers); "
                         f"missing: {'; '.join(missing)}")
    if stage == "students":
        return [lambda r=r: hinton.student(r) for r in hinton.student_grid()]
    if stage == "final":
        return [lambda r=r: hinton.student(r) for r in hinton.final_runs()]
    raise SystemExit(f"unknown stage '{stage}': use teachers, students or final")


def main(argv: list[str] | None = None) -> int:
    """Train one share of a stage's models into the cache (no test-set evaluation): ``STAGE i/n``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("teachers", "students", "final"))
    parser.add_argument("shard", nargs="?", default="0/1", help="i/n: train jobs i, i+n, i+2n, ...")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    index, count = (int(v) for v in args.shard.split("/"))
    jobs = _jobs(args.stage, args.quick)
    for number, job in enumerate(jobs):
        if number % count == index:
            began = time.perf_counter()
            job()
            log.info("%s job %d of %d done in %.0f s", args.stage, number + 1, len(jobs), time.perf_counter() - began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
