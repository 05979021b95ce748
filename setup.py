"""Build hook: compile the traffic simulator with mypyc, when asked.

Everything about the package is in ``pyproject.toml``; this file only adds the optional
compiled copy of :mod:`clickstream.simulator`. ``make install`` runs::

    CLICKSTREAM_MYPYC=1 python setup.py build_ext --inplace

which writes ``clickstream/_simulator_compiled*.so`` next to the source. The copy embeds the
SHA-256 of the source it was compiled from, and ``clickstream.simulator`` uses it only while
that still matches (see ``_compiled_copy`` there). Without ``CLICKSTREAM_MYPYC=1`` (a plain
``pip install``) nothing is compiled and the pure-Python module runs: same events, slower.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from setuptools import setup

SOURCE = Path("clickstream/simulator.py")
COPY = Path("clickstream/_simulator_compiled.py")


def compiled_modules() -> list[Any]:
    """mypyc extensions for a copy of the simulator stamped with its source's SHA-256."""
    from mypyc.build import mypycify  # noqa: PLC0415 (only when compiling; mypyc is in mypy)

    source = SOURCE.read_bytes()
    stamp = f'\nSOURCE_SHA256: Final = "{hashlib.sha256(source).hexdigest()}"\n'
    COPY.write_bytes(source + stamp.encode())
    try:
        return list(mypycify([str(COPY)], opt_level="3"))
    finally:
        COPY.unlink()


setup(ext_modules=compiled_modules() if os.environ.get("CLICKSTREAM_MYPYC") == "1" else [])
