"""`cifar-bench run --plan`: the visits a sweep would make, in order, the fewest steps each
needs, and a time estimate where one is known. Runs nothing (and needs no GPU for a CUDA
sweep).

The order is the sweep's own (bench/passes.py `visit_order`): accuracy runs first (the CPU fp32
references first of all), then the throughput grid pass by pass, each pass shuffled; then the
time-to-accuracy runs, which the sweep plans from the grid's results (here: from the
estimated throughputs, with the same planner, bench/targets.py).

Fewest steps, by construction: a grid pass warms up for at least `warmup_min` steps, then times
at least its share of `min_steps` (bench/passes.py `pass_budget`) of the loop and as many of
its ceiling; an accuracy run trains `epochs` epochs of full batches; a time-to-accuracy run at
most its epoch bound.

A time estimate needs the step time of each configuration. It is known from (1) the run
folder's own results (a `--resume`: each configuration's measured median step, or the grid
row of the same model, batch size and precision for an accuracy run), else (2) the preset's
sizing assumptions (`Preset.sizing`, gpu-check's: for an H200 and its host), which are
assumptions, said as such. The arithmetic per visit (`visit_seconds`):

  grid pass     visit overhead + warm-up (first step, plus the steps until two agree, bounded
                by warmup_seconds; cuDNN's autotuning on a new shape in the first pass) + timed
                (the pass's max_seconds, or its fewest steps if longer) + evaluation (3 warm-up
                steps + the pass's eval_max_seconds or its fewest steps) + in the first pass the
                energy window (energy.WINDOW_AIM x MIN_WINDOW_S, where asked for) and one
                profiled step (where asked for); the DataLoader path adds its workers' start
  accuracy run  visit overhead + epochs x (training steps + evaluation steps)
  sweep         start (imports, CUDA context, data) + the machine checks before and after
                (peaks, drift reference, host and memory probes, the idle energy window) +
                every visit; extra passes (bench/passes.py) at most EXTRA_TIME_SHARE of the
                grid's passes on top
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bench import energy, passes
from bench.config import RunConfig, is_reference
from bench.protocol import COMPILED_WARMUP_MIN, Policy

EVAL_SHARE = 1 / 3  # an evaluation step (forward only) against a training step
WARM_STEPS = 3  # steps after the first until two agree, typically
EVAL_WARMUP = 3  # evaluation's warm-up steps (bench/measure.py time_eval)
DEFAULT_SIZES = (50_000, 10_000)


def kind(device: str) -> str:
    return device.split(":")[0]


def grid_key(cfg: RunConfig) -> tuple:
    """What a step time belongs to: the same step whatever the seed, epochs or pass."""
    return (cfg.device, cfg.model, cfg.batch_size, cfg.precision, cfg.channels_last, cfg.compile, cfg.compile_mode,
            cfg.threads)


@dataclass
class StepTimes:
    """Seconds per training step of a configuration: measured (rows of the run folder) where
    known, else from a preset's sizing assumptions, else unknown (None)."""

    measured: dict[tuple, float] = field(default_factory=dict)
    sizing: dict | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[dict], sizing: dict | None = None) -> StepTimes:
        measured = {}
        for r in rows:
            if r.get("status") == "ok" and r.get("step_ms_median") and isinstance(r.get("config"), dict) \
                    and not r.get("epochs"):
                measured[grid_key(RunConfig.from_dict(r["config"]))] = r["step_ms_median"] / 1e3
        return cls(measured, sizing)

    def source(self, cfg: RunConfig) -> str | None:
        if grid_key(cfg) in self.measured:
            return "measured"
        return "assumed" if self._assumed(cfg) is not None else None

    def step(self, cfg: RunConfig) -> float | None:
        return self.measured.get(grid_key(cfg)) or self._assumed(cfg)

    def kind_sizing(self, device: str) -> dict | None:
        return ((self.sizing or {}).get("kinds") or {}).get(kind(device))

    def _assumed(self, cfg: RunConfig) -> float | None:
        k = self.kind_sizing(cfg.device)
        if k is None:
            return None
        model = cfg.model if cfg.model in k["fixed_ms"] else "tutorial"
        per_image = k["per_image_ms"].get(model, {}).get(cfg.precision)
        if per_image is None:
            return None
        fixed = k["fixed_ms"][model] * (k.get("autocast", 1.0) if cfg.precision in ("fp16", "bf16") else 1.0)
        if cfg.data_path == "dataloader":
            per_image += k.get("loader_per_image_ms", 0.0)
        return (fixed + cfg.batch_size * per_image) / 1e3


@dataclass(frozen=True)
class Visit:
    cfg: RunConfig
    pass_index: int | None  # None: an accuracy or time-to-accuracy run (once)
    steps: int  # the fewest training steps the visit runs by construction (at most, for time to accuracy)
    seconds: float | None  # estimate; None: no step time known
    source: str | None  # measured | assumed | None
    followup: bool = False  # a time-to-accuracy run, planned from the grid's results


def _sizes(cfg: RunConfig) -> tuple[int, int]:
    return cfg.train_size or DEFAULT_SIZES[0], cfg.test_size or DEFAULT_SIZES[1]


def fewest_steps(cfg: RunConfig, pass_index: int | None) -> int:
    """Training steps a visit runs at least (accuracy runs: exactly; time to accuracy: at most)."""
    if pass_index is None:
        train, _ = _sizes(cfg)
        return cfg.epochs * (train // cfg.batch_size)
    b = passes.pass_budget(cfg)
    warm = max(Policy.warmup_min, COMPILED_WARMUP_MIN if cfg.compile else 0)
    first = pass_index == 1
    return warm + 2 * b.min_steps + (1 if first and cfg.profile_step else 0)


def visit_seconds(cfg: RunConfig, pass_index: int | None, step: float | None, k: dict | None) -> float | None:
    """The estimate of one visit (module docstring); None without a step time."""
    if step is None:
        return None
    k = k or {}
    overhead = k.get("visit_s", 0.0)
    train, test = _sizes(cfg)
    evaluation = step * EVAL_SHARE
    if pass_index is None:  # accuracy (or time-to-accuracy) run: whole epochs, evaluated after each
        epoch = (train // cfg.batch_size) * step + math.ceil(test / cfg.batch_size) * evaluation
        return overhead + cfg.epochs * epoch
    b = passes.pass_budget(cfg)
    first = pass_index == 1
    startup = k.get("startup_s", {}).get(cfg.model, k.get("startup_s", {}).get("tutorial", 0.0)) if first else 0.0
    warm = step + min(b.warmup_seconds, WARM_STEPS * step)
    timed = max(b.max_seconds, 2 * b.min_steps * step)
    evals = EVAL_WARMUP * evaluation + max(b.eval_max_seconds, b.min_steps * evaluation)
    once = 0.0
    if first and cfg.energy_window:
        once += energy.WINDOW_AIM * energy.MIN_WINDOW_S + step
    if first and cfg.profile_step:
        once += k.get("profile_s", 0.0) + 2 * step
    loader = k.get("loader_s", 0.0) if cfg.data_path == "dataloader" else 0.0
    return overhead + startup + warm + timed + evals + once + loader


def machine_check_seconds(configs: Sequence[RunConfig], sizing: dict | None,
                          probe_seconds: float | None = None) -> float:
    """The machine checks before the first configuration and after the last (bench/runner.py):
    each (device, precision)'s matmul peak, each device's drift reference, memory bandwidth,
    the host cost per operator (each `probe_seconds`, else its default); and before only, each
    device's idle energy window."""
    overhead = (sizing or {}).get("probe_overhead_s", 0.3)  # sizing the matmul, allocating, first calls

    def probe(default: float) -> float:
        return (default if probe_seconds is None else probe_seconds) + overhead

    devices = list(dict.fromkeys(c.device for c in configs))
    pairs = set((c.device, c.precision) for c in configs)
    seconds = sum(2 * probe(0.5 if kind(device) == "cuda" else 1.0) for device, _ in pairs)
    for device in devices:
        drift = 0.3 if kind(device) == "cuda" else 1.0
        seconds += 2 * (drift + 0.5 + overhead)  # + its warm-up (0.5 s bound)
        seconds += 2 * probe(0.5)  # memory bandwidth
        seconds += energy.IDLE_SECONDS
    return seconds + 2 * probe(0.3)  # the host cost of one operator


@dataclass
class Plan:
    visits: list[Visit]
    start_s: float | None
    checks_s: float
    limit_s: float | None = None
    limit_name: str = ""
    assumed_basis: str | None = None

    def total(self, part: str | None = None) -> float | None:
        """Seconds of the visits of `part` (accuracy, grid, tta) or the whole sweep; None when a
        visit has no estimate."""
        chosen = [v for v in self.visits if part is None or self._part(v) == part]
        if any(v.seconds is None for v in chosen):
            return None
        s = sum(v.seconds for v in chosen)
        return s if part is not None else s + (self.start_s or 0.0) + self.checks_s

    @staticmethod
    def _part(v: Visit) -> str:
        return "tta" if v.followup else ("grid" if v.pass_index is not None else "accuracy")

    def extra_s(self) -> float | None:
        grid = self.total("grid")
        return None if grid is None else passes.EXTRA_TIME_SHARE * grid

    def fits(self, spare: float = 1 / 3) -> bool | None:
        """The estimate leaves `spare` of the limit free, and with every extra pass it still fits."""
        total, extra = self.total(), self.extra_s()
        if self.limit_s is None or total is None or extra is None:
            return None
        return total <= (1 - spare) * self.limit_s and total + extra <= self.limit_s


def build(configs: Sequence[RunConfig], times: StepTimes, followup=None, data: str = "synthetic",
          probe_seconds: float | None = None, rows: Sequence[dict] = (), retry_all: bool = False) -> Plan:
    """The plan of `configs` in the sweep's order, with `followup` (a planner of more
    configurations from grid rows: time to accuracy) fed the estimated throughputs. `rows`:
    the run folder's results when resuming: only what is still missing is planned, as the
    runner would run it."""
    from bench.results import row_key
    from bench.runfolder import pending_of

    latest = {row_key(r): r for r in rows}
    visits = []
    for cfg, p in passes.visit_order(pending_of(list(configs), list(rows), retry_all), latest, retry_all):
        step = times.step(cfg)
        visits.append(Visit(cfg, p, fewest_steps(cfg, p), visit_seconds(cfg, p, step, times.kind_sizing(cfg.device)),
                            times.source(cfg)))
    if followup is not None:
        rows = [estimated_row(c, times, data) for c in configs if passes.is_grid(c) and times.step(c)]
        for cfg in followup(rows):
            step = times.step(cfg)
            visits.append(Visit(cfg, None, fewest_steps(cfg, None),
                                visit_seconds(cfg, None, step, times.kind_sizing(cfg.device)), times.source(cfg),
                                followup=True))
    sizing = times.sizing or {}
    start = sizing.get("start_s")
    checks = machine_check_seconds([v.cfg for v in visits], sizing, probe_seconds)
    return Plan(visits, start, checks, sizing.get("limit_s"), sizing.get("limit_name", ""), sizing.get("basis"))


def estimated_row(cfg: RunConfig, times: StepTimes, data: str) -> dict:
    """A grid row as the time-to-accuracy planner reads it, with the estimated throughput."""
    from dataclasses import asdict

    return {"status": "ok", "epochs": 0, "data_path": cfg.data_path, "world_size": 1, "model": cfg.model,
            "device": cfg.device, "batch_size": cfg.batch_size, "config": asdict(cfg), "data": data,
            "train_size": _sizes(cfg)[0], "train_images_per_s": cfg.batch_size / times.step(cfg)}


def _fmt(s: float | None) -> str:
    return "?" if s is None else (f"{s:.1f} s" if s < 100 else f"{s:,.0f} s")


def render(plan: Plan) -> str:
    """The plan as text: one line per visit, then the arithmetic of the total."""
    import pandas as pd

    from bench.markdown import to_markdown

    rows = []
    for i, v in enumerate(plan.visits, 1):
        if v.pass_index is not None:
            where = f"pass {v.pass_index}/{v.cfg.passes}" if v.cfg.passes > 1 else "grid"
            steps = f">= {v.steps}"
        elif v.followup:
            where, steps = "time to accuracy", f"<= {v.steps} ({v.cfg.epochs} epochs, stops at the target)"
        else:
            where = "reference" if is_reference(v.cfg) else "accuracy"
            steps = f"{v.steps} ({v.cfg.epochs} epochs)"
        once = []
        if v.pass_index == 1 and v.cfg.energy_window:
            once.append("energy")
        if v.pass_index == 1 and v.cfg.profile_step:
            once.append("profiled step")
        rows.append({"#": i, "configuration": v.cfg.label(), "visit": where, "training steps": steps,
                     "also": ", ".join(once), "estimate": _fmt(v.seconds) + ("" if v.source != "assumed" else "*")})
    lines = [to_markdown(pd.DataFrame(rows)), ""]
    n_cfg = len({v.cfg.key() for v in plan.visits})
    lines.append(f"{len(plan.visits)} visits of {n_cfg} configurations "
                 f"({sum(v.pass_index is not None for v in plan.visits)} grid passes, "
                 f"{sum(v.pass_index is None and not v.followup for v in plan.visits)} accuracy runs, "
                 f"{sum(v.followup for v in plan.visits)} time-to-accuracy runs planned from the estimates).")
    if plan.assumed_basis and any(v.source == "assumed" for v in plan.visits):
        lines.append(f"* assumed step times, not measured: {plan.assumed_basis}")
    unknown = sum(v.seconds is None for v in plan.visits)
    if unknown:
        lines.append(f"No time estimate for {unknown} visits: no step time known (no results in the run folder and no "
                     "sizing assumptions in the preset); their fewest steps are above.")
        return "\n".join(lines) + "\n"
    parts = [("start (imports, CUDA context, data)", plan.start_s or 0.0), ("machine checks before and after",
                                                                          plan.checks_s),
             ("accuracy runs", plan.total("accuracy")), ("grid passes", plan.total("grid")),
             ("time to accuracy (at its epoch bound)", plan.total("tta"))]
    total, extra = plan.total(), plan.extra_s()
    lines.append("Estimate: " + " + ".join(f"{name} {_fmt(s)}" for name, s in parts) + f" = {_fmt(total)}; "
                 f"extra passes at most {_fmt(extra)} more ({passes.EXTRA_TIME_SHARE:.0%} of the grid's passes).")
    if plan.limit_s is not None:
        spare = 1 - total / plan.limit_s
        verdict = "fits" if plan.fits() else "does NOT fit"
        lines.append(f"Limit: {plan.limit_s:g} s ({plan.limit_name}): the estimate leaves {spare:.0%} of it spare, "
                     f"{_fmt(total + extra)} with every extra pass: {verdict} (a third spare, and every extra pass "
                     "within the limit).")
    return "\n".join(lines) + "\n"
