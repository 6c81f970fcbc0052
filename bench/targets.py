"""Default time-to-accuracy targets, per model and data kind, with where each number comes from.

A target is a test accuracy the report's recommended configurations (each device's best
throughput, and the fastest batch size that still learns) reach within a few epochs: high
enough that reaching it means the run learned, low enough that large batches, whose
learning rate is capped (cnn.models.default_lr), still get there in a bounded run.
`cifar-bench run --target-accuracy` overrides it; the report names the target it shows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    accuracy: float  # fraction 0..1
    basis: str  # why this number: a measurement, or a stated guess still to be measured


DEFAULT_TARGETS: dict[tuple[str, str], Target] = {
    ("tutorial", "synthetic"): Target(
        0.60, "measured on the 2-core reference VM: all 20 runs at batch 32 (10 seeds, fp32 and bf16) pass it "
              "after 1 epoch (61.0-65.1%, reports/equivalence-tutorial-cpu-bf16-20261127); one seed at batch 128 "
              "fp32 after 1 epoch (61.9%) and at batch 512 bf16 after 2 (50.3%, then 60.7%)"),
    ("tutorial", "cifar10"): Target(
        0.50, "not yet measured here: the PyTorch tutorial reports about 54% after 2 epochs at batch 4"),
    ("tutorial-wide", "synthetic"): Target(
        0.60, "not yet measured here: the tutorial Net's target; the wider Net is expected to reach it no later"),
    ("tutorial-wide", "cifar10"): Target(
        0.50, "not yet measured here: the tutorial Net's target; the wider Net is expected to reach it no later"),
    ("resnet18", "synthetic"): Target(
        0.60, "not yet measured here: the tutorial Net's target on the same data"),
    ("resnet18", "cifar10"): Target(
        0.80, "not yet measured here: CIFAR ResNet-18 recipes with SGD typically pass 80% within about 10 epochs"),
}


def default_target(model: str, data: str) -> Target | None:
    """The default target of a model on a data kind (cifar10 or synthetic), or None."""
    return DEFAULT_TARGETS.get((model, data))


@dataclass(frozen=True)
class StepsToTarget:
    steps: int  # optimizer steps the default recipe took to first reach the default target
    basis: str


# The fewest optimizer steps a recipe needs to reach its default target, where measured. With
# the tutorial's learning rate capped from batch 80 up (cnn.models.LR_RULES), every larger batch
# steps at the same rate and needs about as many steps, while an epoch holds fewer of them.
STEPS_TO_TARGET: dict[tuple[str, str], StepsToTarget] = {
    ("tutorial", "synthetic"): StepsToTarget(
        196, "measured on the 2-core reference VM: batch 512 (capped learning rate) reached 60.7% after 196 steps "
             "(2 epochs of 50,000 images) and 50.3% after 98 (reports/cpu-amd-epyc-2core-20261128)"),
}
# A batch size is a time-to-accuracy candidate when its epoch bound holds this many times the
# steps the target took (one seed measured; seeds and precisions differ).
REACH_MARGIN = 1.5


def steps_to_target(model: str, data: str) -> StepsToTarget | None:
    """The measured steps of a model's recipe (the width family and user models: the tutorial's
    recipe, cnn.models.recipe_model) to its default target on a data kind, or None."""
    from cnn.models import recipe_model

    return STEPS_TO_TARGET.get((recipe_model(model), data))


def steps_within(batch_size: int, train_size: int, epochs: int) -> int:
    """Optimizer steps in `epochs` epochs of `train_size` images (full batches only: the device
    path drops the last partial batch)."""
    return epochs * (train_size // batch_size)


def reachable(model: str, data: str, batch_size: int, train_size: int, epochs: int,
              target: float | None = None) -> tuple[bool, str]:
    """Whether a batch size can reach the model's default target within `epochs`, and why:
    its steps in the bound against REACH_MARGIN x the measured steps to the target. A target
    other than the default, or a recipe without a measured figure, is not judged (True)."""
    need = steps_to_target(model, data)
    default = default_target(model, data)
    if need is None or (target is not None and (default is None or round(target, 6) != round(default.accuracy, 6))):
        return True, "no measured steps to this target: not judged"
    have = steps_within(batch_size, train_size, epochs)
    want = REACH_MARGIN * need.steps
    ok = have >= want
    return ok, (f"{have} steps in {epochs} epochs {'>=' if ok else '<'} {want:g} ({REACH_MARGIN:g} x the "
                f"{need.steps} steps the target took)")


def plan_time_to_accuracy(rows: list[dict], models: tuple[str, ...], seeds: tuple[int, ...], max_epochs: int,
                          candidates: int = 2, target: float | None = None) -> list:
    """The time-to-accuracy runs a sweep adds after its throughput grid: for each device and
    model, the `candidates` fastest batch sizes measured (each at its fastest precision and
    layout) among those that can reach the target within `max_epochs` (`reachable`: a large
    batch whose learning rate is capped has too few steps in the bound), trained from the
    seed's weights until the target or `max_epochs`, for every seed. The best throughput may
    not be the fastest to the target, so the next batch size runs too, and the report names
    the fastest to the target and which batch sizes were left out (`choice`)."""
    from dataclasses import replace

    from bench.config import RunConfig

    plans = []
    for chosen in choice(rows, models, max_epochs, candidates, target).values():
        goal = chosen["target"]
        for r in chosen["chosen"]:
            base = RunConfig.from_dict(r["config"])
            plans += [replace(base, seed=s, epochs=max_epochs, target_accuracy=goal, stop_at_target=True)
                      for s in seeds]
    return plans


def choice(rows: list[dict], models: tuple[str, ...], max_epochs: int, candidates: int = 2,
           target: float | None = None) -> dict[tuple[str, str], dict]:
    """Per (device, model) of the grid rows: the target, the grid rows chosen for time to
    accuracy (fastest first) and the faster batch sizes left out with why (`reachable`)."""
    grid = [r for r in rows if r.get("status") == "ok" and not r.get("epochs") and r.get("data_path") == "device"
            and (r.get("world_size") or 1) == 1 and r.get("model") in models and isinstance(r.get("config"), dict)
            and r.get("train_images_per_s")]
    out = {}
    for device, model in dict.fromkeys((r["device"], r["model"]) for r in grid):
        data = grid[0]["data"]
        default = default_target(model, data)
        goal = target if target is not None else (default.accuracy if default else None)
        if goal is None:
            continue
        best_by_batch: dict[int, dict] = {}
        for r in grid:
            if (r["device"], r["model"]) == (device, model):
                b = best_by_batch.get(r["batch_size"])
                if b is None or r["train_images_per_s"] > b["train_images_per_s"]:
                    best_by_batch[r["batch_size"]] = r
        chosen, left_out = [], []
        for r in sorted(best_by_batch.values(), key=lambda r: -r["train_images_per_s"]):
            if len(chosen) == candidates:
                break
            train = r.get("train_size") or (r["config"].get("train_size")) or 50_000
            ok, why = reachable(model, r.get("data") or data, r["batch_size"], train, max_epochs, goal)
            (chosen if ok else left_out).append(r if ok else (r["batch_size"], why))
        out[(device, model)] = {"target": goal, "chosen": chosen, "left_out": left_out}
    return out
