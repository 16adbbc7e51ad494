"""The repository's scripts and benchmarks, which are files and not packages, loaded as modules
for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load(relative: str) -> ModuleType:
    """The module of ROOT / `relative` (as "scripts/sm90_resources.py"), under its file's stem in
    sys.modules (where its dataclasses look their module up), loaded once: the same module
    pytest's collection of benchmarks/ imports. Its folder is on sys.path while it loads, as a
    script's is, so that it imports its siblings by name (the benchmark's `from gpu_clocks
    import ...`)."""
    path = ROOT / relative
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module
