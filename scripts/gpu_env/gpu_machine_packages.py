"""The GPU machine's package set, enforced: `make gpu-check-dry-run` puts this folder on
PYTHONPATH, so every Python process of the dry run (and its children) runs its
sitecustomize.py at start-up, which calls `install()`, and can import only what the GPU
machine has.

The GPU machine has Python 3.12, torch, torchvision, pandas, matplotlib, psutil,
pytest-benchmark, scipy, tqdm and rich preinstalled, and nothing can be installed there.
Allowed: those distributions, everything they require (their requirement closure, read from
the installed metadata, so numpy, filelock ... come with them), pytest, and this project
(its code, not its declared requirements: those are what is being checked). A top-level
module that only distributions outside that set provide is absent: an import fails with a
ModuleNotFoundError that names it and says it is not on the GPU machine, and
importlib.util.find_spec finds nothing. The standard library and modules that no installed
distribution provides (the repository's own packages on PYTHONPATH) are never refused.
Version differences (torch 2.11 there) are `make test-compat`'s job, not this one.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import re
import sys

GPU_MACHINE_PACKAGES = ("torch", "torchvision", "pandas", "matplotlib", "psutil", "pytest-benchmark", "scipy",
                        "tqdm", "rich", "pytest")
# The project itself is allowed, but not what its metadata requires: that is what the dry run
# checks (an installed cifar-bench whose metadata still lists tabulate must not let it in).
PROJECT = "cifar-bench"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: importlib.metadata.Distribution) -> list[str]:
    """Names of the distributions `dist` requires on this platform, extras left out."""
    names = []
    for spec in dist.requires or ():
        name, _, marker = spec.partition(";")
        if "extra" in marker:
            continue
        if marker.strip():
            try:
                from packaging.markers import Marker

                if not Marker(marker.strip()).evaluate():
                    continue
            except ImportError:  # no packaging: keep the requirement (the blocker errs towards allowing)
                pass
        names.append(re.match(r"\s*([A-Za-z0-9._-]+)", name).group(1))
    return names


def allowed_distributions(roots=GPU_MACHINE_PACKAGES) -> set[str]:
    """The requirement closure of `roots` over the installed distributions (normalised names),
    plus the project."""
    seen: set[str] = set()
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (rich, say): nothing of it can be imported anyway
        todo.extend(_norm(r) for r in _requirements(dist))
    return seen | {PROJECT}


def module_providers() -> dict[str, list[str]]:
    """Top-level module name -> the installed distributions that provide it: from each
    distribution's top_level.txt and from the files it installed (Python 3.10's
    packages_distributions reads top_level.txt alone, which maturin-built wheels such as
    ruff's lack, so it would let them through)."""
    providers: dict[str, list[str]] = {}
    for dist in importlib.metadata.distributions():
        names = set((dist.read_text("top_level.txt") or "").split())
        for path in dist.files or ():
            first = path.parts[0] if path.parts else ""
            if len(path.parts) == 1:  # a module file: name.py, name.cpython-312-x86_64-linux-gnu.so
                if first.endswith((".py", ".so", ".pyd")):
                    names.add(first.split(".")[0])
            elif first not in ("..", "__pycache__") and not first.endswith((".dist-info", ".egg-info", ".data")):
                names.add(first)
        for name in names:
            if name.isidentifier():
                providers.setdefault(name, []).append(dist.metadata["Name"])
    return providers


def _importing() -> bool:
    """Is the import system loading a module (an import statement, import_module), rather
    than probing with importlib.util.find_spec? A probe must see a missing module as None, as
    it would on the GPU machine (torch's dynamo probes optional packages that way)."""
    frame = sys._getframe(2)
    while frame is not None and "importlib" in frame.f_code.co_filename:
        if frame.f_code.co_name == "_find_and_load_unlocked":
            return True
        frame = frame.f_back
    return False


class GpuMachineImports(importlib.abc.MetaPathFinder):
    """Takes the place of the path finder (which finds everything installed) and makes
    top-level modules that only distributions outside the GPU machine's set provide absent:
    an import fails with a message that names the distribution, a probe finds nothing."""

    def __init__(self, finder) -> None:
        self.finder = finder
        self._providers: dict[str, list[str]] | None = None
        self._allowed: set[str] | None = None
        self._busy = False

    def __getattr__(self, name):  # find_distributions, invalidate_caches, ...: the path finder's own
        return getattr(self.finder, name)

    def _load(self) -> None:
        self._busy = True  # the metadata scan imports modules of its own
        try:
            self._allowed = allowed_distributions()
            self._providers = module_providers()
        finally:
            self._busy = False

    def refused(self, fullname: str) -> list[str]:
        """The distributions that provide `fullname`, when none of them is allowed; else []."""
        if "." in fullname or self._busy or fullname in sys.stdlib_module_names:
            return []  # submodules follow their top-level package
        providers = self._providers.get(fullname, [])
        return [] if any(_norm(d) in self._allowed for d in providers) else sorted(set(providers))

    def find_spec(self, fullname, path=None, target=None):
        providers = self.refused(fullname)
        if not providers:
            return self.finder.find_spec(fullname, path, target)
        if not _importing():
            return None
        raise ModuleNotFoundError(
            f"{fullname!r} (distribution {', '.join(providers)}) is not on the GPU machine; "
            f"it has only {', '.join(GPU_MACHINE_PACKAGES)} and their requirements", name=fullname)


def install() -> GpuMachineImports:
    """Put the blocker in the path finder's place on sys.meta_path."""
    for i, finder in enumerate(sys.meta_path):
        if finder is importlib.machinery.PathFinder:
            blocker = GpuMachineImports(finder)
            # Read the metadata now, before any import of the program's: done lazily inside an
            # import, it ran while that module was half initialised (Python 3.12's `platform`
            # looks for `_wmi` before it defines `machine()`, which packaging's markers call).
            blocker._load()
            sys.meta_path[i] = blocker
            return blocker
    raise RuntimeError("no PathFinder on sys.meta_path: cannot emulate the GPU machine's package set")

