"""Running a module of this application as a child process, with this very code.

The live projection's follower and the read-ahead reader are ``python -m
<module>`` children. They must import the code the parent runs, whatever the
working directory and however ``capture`` was installed: the folder holding
the top-level packages goes first on the child's ``PYTHONPATH``, and ``-P``
keeps ``-m`` from putting the working directory before it (a folder holding
another checkout's packages would otherwise win).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


__all__ = ["module_command"]

_IMPORT_ROOT = str(Path(__file__).resolve().parent.parent)


def module_command(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """Return the argv and environment that run ``python -m module *args`` on this code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-P", "-m", module, *args], env
