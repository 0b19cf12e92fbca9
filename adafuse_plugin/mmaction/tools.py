"""mmaction2's own tools (``tools/train.py``, ``tools/test.py``,
``tools/analysis_tools/get_flops.py``...), run with AdaFuse registered and the
compatibility fixes applied first.

A config inheriting ``'mmaction::...'`` cannot switch the fixes on for itself: mmengine
resolves ``_base_`` before it runs ``custom_imports``, and on a current setuptools /
mmaction2 1.1.0 that resolution fails (``pkg_resources``, the bsn metafile; see
:mod:`.compat`). ``adafuse tools NAME ARGS...`` runs the script mmaction2 installs under
``mmaction/.mim/tools`` exactly as ``python tools/NAME.py ARGS...`` would, in this
process, after those fixes.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence
from pathlib import Path


def tools_root() -> Path:
    """Where the installed mmaction2 keeps its tools (the wheel's ``.mim/tools``)."""
    import mmaction

    return Path(mmaction.__file__).resolve().parent / ".mim" / "tools"


def available_tools() -> dict[str, Path]:
    """Tool name (file stem) -> script, for the top-level tools and their subfolders."""
    scripts = sorted(tools_root().glob("*.py")) + sorted(tools_root().glob("*/*.py"))
    found: dict[str, Path] = {}
    for script in scripts:
        found.setdefault(script.stem, script)  # tools/train.py before any */train.py
    return found


def run_tool(name: str, argv: Sequence[str]) -> int:
    """Run mmaction2's tool ``name`` with command-line ``argv``; its exit status."""
    from . import apply_compat_fixes  # importing the package registers AdaFuse too

    apply_compat_fixes()
    tools = available_tools()
    if name not in tools:
        raise SystemExit(
            f"adafuse tools: mmaction2 has no tool {name!r} under {tools_root()}; "
            f"choose one of: {', '.join(sorted(tools))}"
        )
    script = tools[name]
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.parent))  # as `python tools/...py` would see it
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0
