"""Build hook: compile the traffic simulator with mypyc, when asked.

Everything about the package is in ``pyproject.toml``; this file only adds the optional
compiled copy of :mod:`clickstream.simulator`. ``make install`` (``make compile``) runs::

    CLICKSTREAM_MYPYC=1 python setup.py build_ext --inplace

which writes ``clickstream/_simulator_compiled*.so`` next to the source. The copy embeds the
digest of the sources it was compiled from (``clickstream/_build_stamp.py``), and
``clickstream.simulator`` uses it only while that still matches (see ``_compiled_copy``
there). Without ``CLICKSTREAM_MYPYC=1`` (a plain ``pip install``) nothing is compiled and the
pure-Python module runs: the same events, slower.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from setuptools import setup

PACKAGE = Path("clickstream")
SOURCE = PACKAGE / "simulator.py"
COPY = PACKAGE / "_simulator_compiled.py"  # exists only while mypyc reads it (.gitignore)


def source_digest() -> str:
    """The digest of ``clickstream/_build_stamp.py``, loaded by path (not the package)."""
    spec = importlib.util.spec_from_file_location("_build_stamp", PACKAGE / "_build_stamp.py")
    assert spec is not None and spec.loader is not None  # noqa: S101 (a file we ship)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    digest: str = module.source_digest(PACKAGE)
    return digest


def compiled_modules() -> list[Any]:
    """mypyc extensions for a copy of the simulator stamped with its sources' digest."""
    from mypyc.build import mypycify  # noqa: PLC0415 (only when compiling; mypyc is in mypy)

    stamp = f'\nSOURCE_DIGEST: Final = "{source_digest()}"\nIMPLEMENTATION = "compiled (mypyc)"\n'
    COPY.write_bytes(SOURCE.read_bytes() + stamp.encode())
    try:
        return list(mypycify([str(COPY)], opt_level="3"))
    finally:
        COPY.unlink()


setup(ext_modules=compiled_modules() if os.environ.get("CLICKSTREAM_MYPYC") == "1" else [])
