"""The run folder a sweep owns: its lock, what is already recorded (resume), sweep.json
and system.json. One sweep per folder; nothing here measures.

Resume: a configuration is done when its latest row is `ok` (or, without `retry_all`,
`oom`, `skipped` or `diverged`: outcomes of the configuration itself) and, for a throughput
configuration measured in passes, holds every pass it asked for. `failed` rows, and passes
that failed, are always run again: a failure is the harness's or the machine's, not a
result. Rows are
matched by `RunConfig.key()`, recomputed from each row's stored configuration, so a budget
change between the runs does not duplicate them. The rerun's row is appended; readers keep
the latest row of each configuration (bench/results.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock, Timeout

from bench.config import RunConfig
from bench.passes import is_grid
from bench.results import ResultsStore, row_key

FINAL_STATUSES = ("ok", "oom", "skipped", "diverged")


class RunFolderError(Exception):
    """The run folder cannot be used (locked, not a folder, holds another sweep)."""


def _holds_results(out: Path, n: int) -> str:
    return f"{out} already holds {n} results; add --resume to continue that sweep, or choose another --out"


def _locked(out: Path) -> RunFolderError:
    return RunFolderError(f"another sweep is writing to {out} (lock {out / '.lock'} is held); "
                          "wait for it to finish or choose another --out")


def check_run_folder(out: Path, resume: bool) -> None:
    """The checks `RunFolder.open` makes before writing, for a launcher to make before it
    starts any process: not a file, no results unless resuming, not locked by another sweep."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, expected a folder")
    if not out.is_dir():
        return
    n = len(ResultsStore(out).load(warn=lambda m: None))
    if n and not resume:
        raise RunFolderError(_holds_results(out, n))
    if (out / ".lock").exists():
        lock = FileLock(str(out / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise _locked(out) from None
        lock.release()


class RunFolder:
    def __init__(self, out: Path, log=print):
        self.out = Path(out)
        self.log = log
        self.store = ResultsStore(self.out)
        self._lock: FileLock | None = None

    def lock(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} is a file, expected a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.out / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise _locked(self.out) from None
        self._lock = lock

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def pending(self, configs: list[RunConfig], resume: bool, retry_all: bool = False) -> list[RunConfig]:
        """Write sweep.json and return the configurations still to run (all of them in a
        new folder; a folder with results is refused unless resuming)."""
        rows = self.store.repair(warn=self.log)
        if rows and not resume:
            raise RunFolderError(_holds_results(self.out, len(rows)))
        (self.out / "sweep.json").write_text(json.dumps([asdict(c) for c in configs], indent=1))
        pending = pending_of(configs, rows, retry_all)
        latest = {row_key(r) for r in rows}
        if rows:
            again = sum(1 for c in pending if c.key() in latest)
            self.log(f"resuming {self.out}: {len(configs) - len(pending)} of {len(configs)} configurations already "
                     "recorded" + (f"; {again} recorded as not ok run again" if again else ""))
        return pending

    def write_system(self, info: dict) -> None:
        tmp = self.out / "system.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, self.out / "system.json")


def pending_of(configs: list[RunConfig], rows: list[dict], retry_all: bool = False) -> list[RunConfig]:
    """The configurations still to run given a folder's rows: those without a final row (ok,
    or oom/skipped/diverged unless `retry_all`), and ok throughput rows still lacking passes."""
    final = ("ok",) if retry_all else FINAL_STATUSES
    latest_rows = {row_key(r): r for r in rows}
    done = {k for k, r in latest_rows.items() if r.get("status") in final}
    return [c for c in configs if c.key() not in done or missing_passes(c, latest_rows[c.key()])]


def has_pass(row: dict | None, pass_index: int) -> bool:
    """The row holds pass `pass_index` (ok, or an outcome of the configuration itself)."""
    return row is not None and any(e.get("pass") == pass_index and e.get("status") != "failed"
                                   for e in row.get("pass_results") or [])


def missing_passes(cfg: RunConfig, row: dict) -> list[int]:
    """The passes an ok throughput row still lacks (none for a row from before passes, which
    has no `passes`, or for an accuracy run)."""
    if not is_grid(cfg) or row.get("status") != "ok" or row.get("pass_results") is None:
        return []
    return [p for p in range(1, cfg.passes + 1) if not has_pass(row, p)]
