"""The stamp that ties the compiled simulator to its sources (standard library only).

``setup.py`` loads this file by path (without importing the package) to stamp the copy it
compiles; :mod:`clickstream.simulator` computes the same digest at import and uses the
compiled copy only when the two agree.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

__all__ = ["COMPILED_SOURCES", "source_digest"]

COMPILED_SOURCES: Final = ("simulator.py", "events.py", "errors.py", "_build_stamp.py")
"""The package's files the compiled code is made from: the simulator and the modules it
imports from the package (mypyc reads their types and may copy their constants), and this one."""


def source_digest(package: Path) -> str:
    """SHA-256 over :data:`COMPILED_SOURCES` in ``package``, each file's name and bytes."""
    digest = hashlib.sha256()
    for name in COMPILED_SOURCES:
        data = (package / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
