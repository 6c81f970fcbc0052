"""What one measured run is (`RunConfig`) and the sweep presets.

A RunConfig is frozen and hashable: it is passed whole through the runner, stored with
every result, and its `key()` identifies the run for `--resume` and for grouping. The key
is what was measured, not how long: the budget fields (BUDGET_FIELDS) stay out of it, so a
sweep resumed with another `--max-seconds` does not run its configurations twice.

Every configuration has a time budget (bench/protocol.py applies it): warm-up until the
step time settles (at most `warmup_steps` or `warmup_seconds` after the first step, never
charged to the budget), then at least `min_steps` timed steps of the loop and of its
compute-only ceiling, more until the median is known within `target_ci` or `max_seconds`
(or `max_steps`) ends; `max_config_seconds` bounds the fewest steps the method needs: a
configuration predicted to exceed it is skipped (bf16 ResNet-18 on a CPU without native
bf16 runs about 20x slower than fp32, and must not stall a sweep). A throughput
configuration measured in `passes` passes across the sweep gets 1/passes of that budget in
each (bench/passes.py); warm-up is repeated in every pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from cnn.models import FAMILY, recipe_model
from cnn.train import PRECISIONS

BUDGET_FIELDS = ("warmup_steps", "warmup_seconds", "min_steps", "max_steps", "max_seconds", "target_ci",
                 "max_config_seconds", "eval_max_seconds", "passes", "energy_window", "profile_step")
DATA_PATHS = ("device", "dataloader")
PRESETS = ("quick", "standard", "full", "gpu-check", "sizes")


@dataclass(frozen=True)
class RunConfig:
    device: str  # "cpu" or "cuda" (or "cuda:N")
    model: str
    batch_size: int
    precision: str
    seed: int = 0
    epochs: int = 0  # full training epochs for accuracy after the throughput loop; 0: none
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None  # torch.compile mode; "reduce-overhead" uses CUDA graphs
    cudnn_benchmark: bool = True  # CUDA only: let cuDNN autotune convolution algorithms
    data_path: str = "device"  # "device" (resident uint8 + on-device augmentation) or "dataloader"
    threads: int | None = None  # CPU threads for this run; None: torch's default
    train_size: int | None = None  # None: the whole training set
    test_size: int | None = None
    augment: bool = False  # 4-pixel padded random crop + horizontal flip
    lr: float | None = None  # None: cnn.models.default_lr(model, batch_size)
    target_accuracy: float | None = None  # record time to reach it (fraction, 0..1)
    stop_at_target: bool = False  # time-to-accuracy runs: `epochs` is a bound, stop at the target
    # Budget (BUDGET_FIELDS): how long to measure, not what.
    warmup_steps: int = 50
    warmup_seconds: float = 2.0
    min_steps: int = 10
    max_steps: int = 1000
    max_seconds: float = 3.0
    target_ci: float = 0.03
    max_config_seconds: float = 60.0
    eval_max_seconds: float = 1.0
    # Passes across the sweep (bench/passes.py): the throughput grid visits this configuration
    # this many times, each with 1/passes of the budget above. Accuracy runs run once.
    passes: int = 1
    # What the first pass of a throughput configuration also measures, once: an energy window
    # (>= energy.MIN_WINDOW_S of training where a counter is readable) and one profiled step
    # (operators and bytes, for the GPU speedup bound). A preset may keep them to a subset
    # (Preset.energy_runs, Preset.profiled_runs) to fit a time limit.
    energy_window: bool = True
    profile_step: bool = True

    def key(self) -> str:
        """A stable identity: every field but the budget's, canonical JSON."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in BUDGET_FIELDS}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    def short_id(self) -> str:
        return hashlib.sha1(self.key().encode()).hexdigest()[:12]

    def label(self) -> str:
        parts = [self.device, self.model, f"bs={self.batch_size}", self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append(f"compile:{self.compile_mode}" if self.compile_mode else "compile")
        if self.data_path != "device":
            parts.append(self.data_path)
        if self.epochs:
            parts.append(f"seed={self.seed} epochs={self.epochs}")
        return " ".join(parts)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Layout defaults, measured with `cifar-bench perf --layout` (reports/performance/): on the
# CPU channels_last (NHWC, oneDNN's native layout) is faster for the tutorial Nets at every
# batch size measured (5-27%) and for ResNet-18 from batch 16 (3-11%), slower for ResNet-18
# at batch 4. Value: the smallest batch size from which channels_last is the default; None:
# NCHW at every batch size, measured faster. A (device, model) not listed has not been
# measured: CUDA, until a GPU's `perf --layout` and sweep show one layout faster. Its
# throughput grid runs in both layouts (`layout_choices`), its accuracy runs in NCHW.
CHANNELS_LAST_DEFAULT: dict[tuple[str, str], int | None] = {
    ("cpu", "tutorial"): 1, ("cpu", "tutorial-wide"): 1, ("cpu", "resnet18"): 16}


def layout_measured(device: str, model: str) -> bool:
    return (device.split(":")[0], recipe_model(model)) in CHANNELS_LAST_DEFAULT


def default_channels_last(device: str, model: str, batch_size: int) -> bool:
    """The width family and user models take the tutorial's layout (cnn.models.recipe_model);
    an unmeasured (device, model) takes NCHW."""
    from_batch = CHANNELS_LAST_DEFAULT.get((device.split(":")[0], recipe_model(model)))
    return from_batch is not None and batch_size >= from_batch


def layout_choices(device: str, model: str, batch_size: int) -> tuple[bool, ...]:
    """channels_last values a throughput configuration runs in: the measured default, or
    both layouts where none was measured (so the sweep shows which one is faster)."""
    if layout_measured(device, model):
        return (default_channels_last(device, model, batch_size),)
    return (False, True)


# Augmentation follows each model's usual recipe: none for the tutorial's Net (as in the
# tutorial), padded crop + flip for ResNet-18 (the standard CIFAR recipe).
AUGMENT_DEFAULT = {"tutorial": False, "tutorial-wide": False, "resnet18": True}


def default_augment(model: str) -> bool:
    return AUGMENT_DEFAULT.get(recipe_model(model), False)


@dataclass(frozen=True)
class Preset:
    """A sweep: a throughput grid per device, plus accuracy runs for the equivalence check."""

    name: str
    models: tuple[str, ...]
    batch_sizes: dict[str, tuple[int, ...]]  # per device
    precisions: dict[str, tuple[str, ...]]  # per device
    budget: dict[str, float | int]  # RunConfig budget fields
    # (model, batch_size) pairs trained for `accuracy_epochs` with each of `seeds`; the
    # equivalence check compares them across devices and precisions.
    accuracy_runs: tuple[tuple[str, int], ...] = ()
    accuracy_epochs: int = 2
    seeds: tuple[int, ...] = (0,)
    train_size: int | None = None
    test_size: int | None = None
    # Batch sizes per model where the grid is trimmed (too slow to be worth a CPU's time).
    model_batch_limit: dict[tuple[str, str], int] = field(default_factory=dict)
    # CPU reference runs added to a CUDA sweep, so one command yields CPU-vs-GPU results.
    cpu_reference: bool = True
    # (model, batch_size) pairs also measured through the classic DataLoader (fp32,
    # throughput only) on every device of the sweep, so the report shows the input cost.
    dataloader_runs: tuple[tuple[str, int], ...] = ()
    # Time to accuracy, planned after the grid from its results (bench/targets.py): these
    # models at each device's fastest batch sizes, `tta_seeds`, at most `tta_epochs` epochs.
    time_to_accuracy: tuple[str, ...] = ()
    tta_seeds: tuple[int, ...] = (0, 1, 2)
    tta_epochs: int = 4
    tta_candidates: int = 2  # batch sizes per device and model (the fastest that can reach the target)
    # Passes across the sweep of the throughput grid (bench/passes.py): a row's interval
    # comes from the spread between them, so one pass states none.
    passes: int = 3
    # Batch sizes of a model on a device kind where its grid takes others than `batch_sizes`.
    model_batch_sizes: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    # Grid precisions of a model on a device kind where they are trimmed (accuracy runs keep
    # every precision of the device: the equivalence check needs them).
    model_precisions: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # Layouts of a (device, model) without a measured default (CHANNELS_LAST_DEFAULT): "both"
    # (the grid runs NCHW and channels_last) or "default" (NCHW only; a time-limited preset).
    unmeasured_layouts: str = "both"
    # Per device kind, the (model, batch size) grid configurations whose first pass measures
    # an energy window / profiles one step; None (for all, or for a kind): every one. Kinds
    # left out measure none.
    energy_runs: dict[str, tuple[tuple[str, int], ...] | None] | None = None
    profiled_runs: dict[str, tuple[tuple[str, int], ...] | None] | None = None
    # Seconds of each machine probe (matmul peaks, host cost per operator, memory bandwidth),
    # before and after the sweep; None: their defaults (bench/system.py, bench/stepcost.py).
    probe_seconds: float | None = None
    # What `cifar-bench run --plan` estimates the sweep's time with where nothing was measured
    # (bench/plan.py: assumed step times per device kind, fixed costs, the limit to fit).
    sizing: dict | None = None


OnceRuns = dict[str, tuple[tuple[str, int], ...] | None] | None


def once_in(runs: OnceRuns, kind: str, model: str, batch_size: int) -> bool:
    """Whether a grid configuration is in a preset's energy_runs / profiled_runs."""
    if runs is None:
        return True
    chosen = runs.get(kind, ())
    return chosen is None or (model, batch_size) in chosen


# Every preset sweeps these: bf16 is the CPU's reduced precision (fp16 and tf32 are CUDA-only).
SWEPT_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": PRECISIONS}

PRESET_TABLE: dict[str, Preset] = {
    # Seconds: smoke runs and tests. Tiny data, one short timed loop per configuration.
    "quick": Preset(
        name="quick",
        models=("tutorial", "tutorial-wide", "resnet18"),
        batch_sizes={"cpu": (8, 32), "cuda": (32, 256)},
        precisions=SWEPT_PRECISIONS,
        budget=dict(warmup_steps=20, warmup_seconds=0.3, min_steps=10, max_steps=200, max_seconds=0.4,
                    target_ci=0.05, max_config_seconds=8.0, eval_max_seconds=0.2),
        accuracy_runs=(("tutorial", 32),),
        accuracy_epochs=2,
        seeds=(0,),
        train_size=8192,
        test_size=1000,
        model_batch_limit={("cpu", "resnet18"): 8},
        passes=1,
    ),
    # The default of `make bench-cpu` (under 10 minutes on a 2-core laptop) and
    # `make bench-gpu`.
    "standard": Preset(
        name="standard",
        models=("tutorial", "tutorial-wide", "resnet18"),
        batch_sizes={"cpu": (4, 16, 32, 64, 128, 256, 512),
                     "cuda": (4, 16, 32, 64, 128, 256, 512, 1024, 2048)},
        precisions=SWEPT_PRECISIONS,
        budget=dict(warmup_steps=50, warmup_seconds=1.0, min_steps=10, max_steps=1000, max_seconds=1.5,
                    target_ci=0.03, max_config_seconds=30.0, eval_max_seconds=0.25),
        accuracy_runs=(("tutorial", 32),),
        accuracy_epochs=2,
        seeds=(0, 1, 2, 3),
        dataloader_runs=(("tutorial", 32), ("tutorial", 128), ("tutorial", 512)),
        # On 2 CPU cores the wide Net at batch 512 costs a minute over three passes and is
        # never its best batch size (reports/cpu-amd-epyc-2core-20261128: best at 64); with
        # the accuracy and time-to-accuracy runs (~170 s), the sweep then fits `make bench-cpu`'s
        # 10 minutes (a trial of this preset with passes took 669 s with it, the extra passes
        # at 25% of the planned time, a 2.5 s timed budget and 0.5 s of evaluation).
        model_batch_limit={("cpu", "tutorial-wide"): 256},
        time_to_accuracy=("tutorial",),
        tta_seeds=(0, 1, 2),
        tta_epochs=4,
    ),
    # Hours on a CPU: every model at every batch size, three seeds, longer timed loops.
    "full": Preset(
        name="full",
        models=("tutorial", "tutorial-wide", "resnet18"),
        batch_sizes={"cpu": (4, 8, 16, 32, 64, 128, 256, 512, 1024),
                     "cuda": (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)},
        precisions=SWEPT_PRECISIONS,
        budget=dict(warmup_steps=100, warmup_seconds=5.0, min_steps=20, max_steps=5000, max_seconds=10.0,
                    target_ci=0.02, max_config_seconds=300.0, eval_max_seconds=2.0),
        accuracy_runs=(("tutorial", 4), ("tutorial", 32), ("tutorial", 128), ("tutorial-wide", 128)),
        accuracy_epochs=2,
        seeds=(0, 1, 2),
        dataloader_runs=(("tutorial", 4), ("tutorial", 32), ("tutorial", 128), ("tutorial", 512)),
    ),
    # `make gpu-check`: one H100/H200 run whose sweep must fit the sweep stage of
    # scripts/gpu-check.sh with a third to spare (GPU_CHECK_SIZING below holds the arithmetic;
    # `cifar-bench run --preset gpu-check --devices cuda --data synthetic --plan` prints it).
    # What it must show (issue 21): GPU/CPU speedup per model at each device's best setting and
    # the break-even batch size (CUDA and CPU grids share batch sizes 4, 32, 128), the
    # bf16/fp16/TF32 accuracy verdicts against CPU fp32 (tutorial at batch 128: 2 epochs of
    # 25,000 images, ~390 steps, reach ~60% on synthetic data), time to accuracy on both
    # devices, and the GPU bound's self-check (profiled steps). Trimmed to fit: the tutorial
    # Nets' CUDA grid in fp32 and bf16 (their steps are host-bound: the precision hardly
    # matters; TF32 and fp16 still run their accuracy runs), ResNet-18 on CUDA up to batch
    # 512 and on the CPU up to 32, one layout (NCHW: gpu-check's perf stage measures both
    # layouts on CUDA, compute-only), energy windows and CUDA profiled steps on a subset,
    # two passes. Never yet run on a GPU.
    "gpu-check": Preset(
        name="gpu-check",
        models=("tutorial", "tutorial-wide", "resnet18"),
        batch_sizes={"cpu": (4, 32, 128), "cuda": (4, 32, 128, 2048)},
        precisions=SWEPT_PRECISIONS,
        budget=dict(warmup_steps=50, warmup_seconds=0.3, min_steps=10, max_steps=2000, max_seconds=0.3,
                    target_ci=0.03, max_config_seconds=12.0, eval_max_seconds=0.1),
        accuracy_runs=(("tutorial", 128),),
        accuracy_epochs=2,
        seeds=(0, 1, 2, 3),
        train_size=25_000,
        test_size=10_000,
        model_batch_sizes={("cpu", "tutorial-wide"): (4, 128), ("cpu", "resnet18"): (4, 16),
                           ("cuda", "resnet18"): (4, 16, 512)},
        model_precisions={("cuda", "tutorial"): ("fp32", "bf16"), ("cuda", "tutorial-wide"): ("fp32", "bf16"),
                          ("cuda", "resnet18"): ("fp32", "tf32", "bf16")},
        unmeasured_layouts="default",
        dataloader_runs=(),  # the perf stage measures the DataLoader path on CUDA
        time_to_accuracy=("tutorial",),
        tta_seeds=(0, 1),
        tta_epochs=3,
        tta_candidates=1,
        passes=2,
        probe_seconds=0.2,
        energy_runs={"cuda": (("tutorial", 2048), ("resnet18", 512)), "cpu": (("tutorial", 128),)},
        profiled_runs={"cuda": (("tutorial", 32), ("resnet18", 16), ("resnet18", 512)),  # the bound's self-check
                       "cpu": None},
        sizing=None,  # GPU_CHECK_SIZING, set below
    ),
    # The model-size axis of the break-even map: the tutorial Net's width family (3.2 MFLOP
    # to 1.9 GFLOP per training image) across batch sizes, throughput only. On 2 CPU cores:
    # 48 configurations, estimated at about 3 minutes on a quiet 2-core VM and about 6 under
    # the contention seen while sizing it (budgeting ~23 steps per configuration: 3 warm-up,
    # >= 10 timed, >= 10 ceiling, plus ~1.3 s of fixed cost; step times from single-step
    # timings of each width). Wide models are trimmed to the batch sizes a CPU can afford: at
    # width 32 a step costs ~0.2-0.7 s at batch 4 (62 M parameters' gradient, momentum and
    # casts) plus ~12-16 ms per image; max_config_seconds lets width 32 at batch 16 run even
    # on a busy machine. On a GPU every width runs every batch size and precision (144
    # configurations; not yet timed on a GPU).
    "sizes": Preset(
        name="sizes",
        models=FAMILY,
        batch_sizes={"cpu": (4, 16, 64, 256, 1024), "cuda": (4, 16, 64, 256, 1024, 4096)},
        precisions=SWEPT_PRECISIONS,
        budget=dict(warmup_steps=50, warmup_seconds=1.0, min_steps=10, max_steps=300, max_seconds=0.9,
                    max_config_seconds=60.0, eval_max_seconds=0.3),
        accuracy_runs=(),
        seeds=(0,),
        # the largest batch (4096 on CUDA) must fit in the test set: evaluation steps on it too
        train_size=16_384,
        test_size=8_192,
        model_batch_limit={("cpu", "tutorial-w8"): 256, ("cpu", "tutorial-w16"): 64, ("cpu", "tutorial-w32"): 16},
        cpu_reference=False,
    ),
}


# The arithmetic the gpu-check preset is sized with (bench/plan.py turns it into an estimate
# per visit; `--plan` prints it). Assumptions, not measurements: no GPU has run it yet. Each
# step time is fixed_ms (x autocast for fp16/bf16) + batch x per_image_ms.
#  cuda (an H200 and its host): fixed_ms is eager host dispatch: the leaf operators of a
#   step (tutorial Nets 114, ResNet-18 635-854: docs/gpu-bound.md) at ~8 us each (a launch
#   through autograd and the dispatcher; the VM's least cost of an operator is 2.3 us);
#   autocast adds casts (x1.3). per_image_ms is the training FLOPs of an image (tutorial 3.2 M,
#   tutorial-wide 215 M, ResNet-18 3.33 G: FlopCounterMode) at an assumed achieved rate of about
#   30 TFLOPS fp32, 100 TF32, 200 fp16/bf16 (under half the H200's datasheet 67/495/990:
#   small 3x3 convolutions and memory-bound batch norms), rounded up; the tutorial's is bound by
#   memory and launches. startup_s: the first pass of a shape runs cuDNN's autotuning
#   (cudnn.benchmark tries each convolution's algorithms). visit_s: building the trainer,
#   releasing memory, writing the row. profile_s: torch.profiler's start, stop and tree walk.
#  cpu (the GPU machine's host, 16 cores, model unknown): the 2-core reference VM's measured
#   steps (reports/cpu-amd-epyc-2core-20261128: fixed and per-image parts fitted over batch
#   sizes), the per-image part / 4 (8x the cores, sub-linear), the fixed part as measured.
#  start_s: Python and torch imports (3 s), CUDA context (2 s), system facts (1 s), the
#   synthetic data (25,000 + 10,000 images: 4.8 s on the busy VM), margin.
# The resulting plan, against the 190 s sweep stage: start 12 s + machine checks before and
# after 19 s (probes of 0.2 s: probe_seconds) + 20 accuracy runs 17 s (4 CPU fp32 references,
# 16 CUDA: 4 precisions x 4 seeds) + 78 grid passes 73 s (39 configurations x 2 passes, warm-up
# repeated per pass; 7 energy windows and 22 profiled steps in the first pass) + 4
# time-to-accuracy runs at their 3-epoch bound 5 s = 126 s, a third of 190 s spare; with every
# extra pass the runner may add (10% of the grid's passes) 133 s. tests/test_plan.py holds both.
GPU_CHECK_SIZING = {
    "basis": "the gpu-check preset's sizing for an H200 and a 16-core host (bench/config.py GPU_CHECK_SIZING)",
    "limit_s": 190.0,
    "limit_name": "the sweep stage of scripts/gpu-check.sh",
    "start_s": 12.0,
    "probe_overhead_s": 0.3,
    "kinds": {
        "cuda": {
            "fixed_ms": {"tutorial": 0.9, "tutorial-wide": 0.9, "resnet18": 6.5},
            "autocast": 1.3,
            "per_image_ms": {
                "tutorial": {"fp32": 0.0002, "tf32": 0.0002, "fp16": 0.0002, "bf16": 0.0002},
                "tutorial-wide": {"fp32": 0.008, "tf32": 0.003, "fp16": 0.002, "bf16": 0.002},
                "resnet18": {"fp32": 0.12, "tf32": 0.04, "fp16": 0.022, "bf16": 0.022}},
            "startup_s": {"tutorial": 0.1, "tutorial-wide": 0.2, "resnet18": 1.0},
            "visit_s": 0.2, "profile_s": 0.5, "loader_s": 1.5, "loader_per_image_ms": 0.02,
        },
        "cpu": {
            "fixed_ms": {"tutorial": 1.0, "tutorial-wide": 5.4, "resnet18": 27.0},
            "autocast": 1.1,
            "per_image_ms": {
                "tutorial": {"fp32": 0.016, "bf16": 0.011},
                "tutorial-wide": {"fp32": 0.36, "bf16": 0.17},
                "resnet18": {"fp32": 4.3, "bf16": 2.2}},
            "startup_s": {"tutorial": 0.0},
            "visit_s": 0.2, "profile_s": 0.3, "loader_s": 1.5, "loader_per_image_ms": 0.02,
        },
    },
}
PRESET_TABLE["gpu-check"] = dataclasses.replace(PRESET_TABLE["gpu-check"], sizing=GPU_CHECK_SIZING)


@dataclass(frozen=True)
class SweepRequest:
    """What the user asked for; None fields fall back to the preset."""

    preset: str = "standard"
    devices: tuple[str, ...] = ("cpu",)
    models: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    precisions: tuple[str, ...] | None = None
    epochs: int | None = None
    seeds: tuple[int, ...] | None = None
    threads: int | None = None
    channels_last: bool | None = None  # None: the measured default per device and model
    augment: bool | None = None  # None: the model's usual recipe (AUGMENT_DEFAULT)
    compile: bool = False
    compile_mode: str | None = None
    data_paths: tuple[str, ...] = ("device",)
    train_size: int | None = None
    test_size: int | None = None
    target_accuracy: float | None = None
    budget: dict = field(default_factory=dict)  # overrides of budget fields
    cpu_reference: bool | None = None
    passes: int | None = None  # passes across the sweep of the throughput grid (None: the preset's)


def build_sweep(req: SweepRequest) -> list[RunConfig]:
    """Expand a request into RunConfigs, ordered so that within one device, model and
    precision the batch sizes ascend (the runner predicts slow configurations from the
    smaller ones)."""
    p = PRESET_TABLE[req.preset]
    models = req.models or p.models
    budget = {**p.budget, **req.budget}
    devices = list(req.devices)
    reference_cpu = (req.cpu_reference if req.cpu_reference is not None else p.cpu_reference) \
        and "cpu" not in [d.split(":")[0] for d in devices]
    configs: list[RunConfig] = []

    passes = req.passes if req.passes is not None else p.passes

    def layouts(device: str, model: str, bs: int, epochs: int) -> tuple[bool, ...]:
        if req.channels_last is not None:
            return (req.channels_last,)
        if epochs > 0 or p.unmeasured_layouts == "default":  # accuracy runs: one layout, the default
            return (default_channels_last(device, model, bs),)
        return layout_choices(device, model, bs)

    def add(device: str, model: str, bs: int, precision: str, seed: int, epochs: int, data_path: str,
            compile: bool = req.compile) -> None:
        kind = device.split(":")[0]
        once = {} if epochs else {"energy_window": once_in(p.energy_runs, kind, model, bs),
                                  "profile_step": once_in(p.profiled_runs, kind, model, bs)}
        for cl in layouts(device, model, bs, epochs):
            configs.append(RunConfig(
                device=device, model=model, batch_size=bs, precision=precision, seed=seed, epochs=epochs,
                channels_last=cl, compile=compile, compile_mode=req.compile_mode if compile else None,
                augment=req.augment if req.augment is not None else default_augment(model),
                data_path=data_path, threads=req.threads,
                train_size=req.train_size or p.train_size, test_size=req.test_size or p.test_size,
                target_accuracy=req.target_accuracy, **{**budget, "passes": passes if epochs == 0 else 1, **once},
            ))

    seeds = req.seeds or p.seeds
    # Every (device, model, batch size, precision, input path) is a throughput configuration
    # of the grid (epochs 0, measured in passes). Accuracy runs come on top: with --epochs N
    # every device-path configuration also trains N epochs (0: none); otherwise the preset's
    # (model, batch size) pairs train, at every precision and seed, and their batch size
    # joins the grid (at the model's grid precisions: `model_precisions` may trim them).
    preset_accuracy = [] if req.epochs is not None else [(m, bs) for m, bs in p.accuracy_runs if m in models]

    def grid_sizes(kind: str, model: str) -> set[int]:
        if req.batch_sizes:
            return set(req.batch_sizes)
        limit = p.model_batch_limit.get((kind, model))
        sizes = p.model_batch_sizes.get((kind, model), p.batch_sizes[kind])
        return {bs for bs in sizes if limit is None or bs <= limit}

    for device in devices:
        kind = device.split(":")[0]
        precisions = req.precisions or p.precisions[kind]
        for model in models:
            sizes = grid_sizes(kind, model) | {bs for m, bs in preset_accuracy if m == model}
            grid_precisions = precisions if req.precisions else p.model_precisions.get((kind, model), precisions)
            for precision in precisions:
                for bs in sorted(sizes):
                    for data_path in req.data_paths:
                        if precision in grid_precisions:
                            add(device, model, bs, precision, seeds[0], 0, data_path)
                        trains = (req.epochs or 0) > 0 if req.epochs is not None else (model, bs) in preset_accuracy
                        if trains and data_path == "device":
                            epochs = req.epochs if req.epochs is not None else p.accuracy_epochs
                            for seed in seeds:
                                add(device, model, bs, precision, seed, epochs, data_path)
    if "dataloader" not in req.data_paths and not (req.models or req.batch_sizes or req.precisions):
        for device in devices:
            for model, bs in p.dataloader_runs:
                if model in models:
                    add(device, model, bs, "fp32", seeds[0], 0, "dataloader")
    if reference_cpu:
        # A sweep on CUDA devices alone also measures the CPU side of what it reports: the
        # CPU fp32 accuracy runs, every equivalence pair's reference (eager: compiling them
        # would only cost time, they are about arithmetic), and the CPU throughput grid of the
        # preset, so the GPU/CPU speedups and the break-even rest on measured pairs.
        for model, bs in preset_accuracy:
            for seed in seeds:
                add("cpu", model, bs, "fp32", seed, p.accuracy_epochs, "device", compile=False)
        if req.epochs:
            for model in models:
                for bs in sorted(set(req.batch_sizes or ())):
                    for seed in seeds:
                        add("cpu", model, bs, "fp32", seed, req.epochs, "device", compile=False)
        cpu_precisions = [q for q in (req.precisions or ()) if q in p.precisions["cpu"]] or p.precisions["cpu"]
        for model in models:
            grid_precisions = p.model_precisions.get(("cpu", model), cpu_precisions) if not req.precisions \
                else cpu_precisions
            for precision in grid_precisions:
                for bs in sorted(grid_sizes("cpu", model)):
                    add("cpu", model, bs, precision, seeds[0], 0, "device")
    configs = list(dict.fromkeys(configs))  # drop exact duplicates, keep order
    # The CPU fp32 accuracy runs are every equivalence pair's reference: they run first, so
    # a sweep cut short (a stage limit, Ctrl-C) still has them.
    return sorted(configs, key=lambda c: not is_reference(c))


def is_reference(cfg: RunConfig) -> bool:
    """A CPU fp32 accuracy run: what the equivalence check compares everything with."""
    return cfg.epochs > 0 and cfg.device == "cpu" and cfg.precision == "fp32" and cfg.data_path == "device"
