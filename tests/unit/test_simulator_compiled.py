"""The simulator compiled with mypyc makes exactly the events of its source; an outdated
compiled copy is never used.

``make install`` compiles ``clickstream/simulator.py`` (``setup.py``), and ``make test`` sets
``CLICKSTREAM_REQUIRE_COMPILED=1``, so there the comparison runs and a missing build fails.
Elsewhere (a plain ``pip install``, no compiler) the comparison is skipped, said so.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import clickstream
from clickstream import simulator
from clickstream._build_stamp import COMPILED_SOURCES, source_digest

PACKAGE = Path(clickstream.__file__).parent
SOURCE = PACKAGE / "simulator.py"
COMPILED_NAME = "clickstream._simulator_compiled"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pure() -> Iterator[ModuleType]:
    """``simulator.py`` run by the interpreter: loaded under another name, it keeps its own code."""
    spec = importlib.util.spec_from_file_location("clickstream_simulator_source", SOURCE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is executed
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    """The simulator as the package runs it, which must be the compiled copy."""
    if simulator.IMPLEMENTATION != "compiled (mypyc)":
        why = f"the simulator runs as {simulator.IMPLEMENTATION}"
        if os.environ.get("CLICKSTREAM_REQUIRE_COMPILED") == "1":
            pytest.fail(f"{why}, but CLICKSTREAM_REQUIRE_COMPILED=1 (see build/mypyc.log)")
        pytest.skip(why)
    return simulator


def test_the_package_runs_the_compiled_copy(compiled: ModuleType, pure: ModuleType) -> None:
    assert compiled.TrafficSimulator.__module__ == COMPILED_NAME
    assert compiled.SimulatorConfig.__module__ == COMPILED_NAME
    assert pure.TrafficSimulator.__module__ == "clickstream_simulator_source"
    assert pure.IMPLEMENTATION == "pure Python"  # loaded under another name: never swapped
    assert sys.modules[COMPILED_NAME].__file__.endswith(".so")


def _ticking_clock() -> Callable[[], datetime]:
    """A clock that moves 1 ms per reading: clamping and pacing paths see time pass."""
    readings = 0

    def clock() -> datetime:
        nonlocal readings
        readings += 1
        return T0 + timedelta(milliseconds=readings)

    return clock


SCENARIOS: dict[str, dict[str, Any]] = {
    "live": {"seed": 1},
    "clamped to the clock": {"seed": 2, "clamp_to_clock": True},
    "busy shop, buyers": {
        "seed": 3,
        "config": {"events_per_second": 5000.0, "conversion_rate": 0.4},
    },
    "no session ids": {"seed": 4, "config": {"emit_session_id": False, "returning_share": 0.9}},
    "backfill": {"seed": 5, "backfill": True},
}


def _simulator(module: ModuleType, scenario: dict[str, Any]) -> Any:
    config = module.SimulatorConfig(**scenario.get("config", {}))
    if scenario.get("backfill"):
        return module.TrafficSimulator.backfill(
            config,
            seed=scenario["seed"],
            clock=_ticking_clock(),
            window=timedelta(hours=6),
            count=30_000,
        )
    return module.TrafficSimulator(
        config,
        seed=scenario["seed"],
        clock=_ticking_clock(),
        clamp_to_clock=scenario.get("clamp_to_clock", False),
    )


def _streams(
    name: str, stream: str, count: int, *, compiled: ModuleType, pure: ModuleType
) -> tuple[list[Any], list[Any]]:
    """The first ``count`` items of ``stream`` (a method name) from the compiled copy and the
    source, for the same scenario."""
    scenario = SCENARIOS[name]
    got = list(islice(getattr(_simulator(compiled, scenario), stream)(), count))
    want = list(islice(getattr(_simulator(pure, scenario), stream)(), count))
    return got, want


@pytest.mark.parametrize("name", SCENARIOS)
def test_compiled_and_source_send_the_same_messages(
    name: str, compiled: ModuleType, pure: ModuleType
) -> None:
    got, want = _streams(name, "messages", 30_000, compiled=compiled, pure=pure)
    assert len(got) == len(want) == 30_000
    assert got == want


@pytest.mark.parametrize("name", ["live", "backfill"])
def test_compiled_and_source_make_the_same_records(
    name: str, compiled: ModuleType, pure: ModuleType
) -> None:
    got, want = _streams(name, "events", 5_000, compiled=compiled, pure=pure)
    # Records hold enums and named tuples of their own module, so compare them as written.
    assert [repr(e) for e in got] == [repr(e) for e in want]
    assert [e.to_json() for e in got] == [e.to_json() for e in want]


EXTENSION = PACKAGE / f"_simulator_compiled{importlib.machinery.EXTENSION_SUFFIXES[0]}"


def _fake_copy(
    monkeypatch: pytest.MonkeyPatch, digest: str | None, path: Path = EXTENSION
) -> ModuleType:
    fake = ModuleType(COMPILED_NAME)
    fake.__file__ = str(path)
    if digest is not None:
        fake.SOURCE_DIGEST = digest  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, COMPILED_NAME, fake)
    return fake


def test_the_stamp_covers_the_simulator_and_what_it_imports_from_the_package() -> None:
    imported = {
        f"{line.split()[1].removeprefix('clickstream.')}.py"
        for line in SOURCE.read_text().splitlines()
        if line.startswith("from clickstream.")
    }
    assert imported == {"_build_stamp.py", "errors.py", "events.py"}
    assert set(COMPILED_SOURCES) == imported | {"simulator.py"}


def test_editing_any_stamped_source_changes_the_digest(tmp_path: Path) -> None:
    for name in COMPILED_SOURCES:
        (tmp_path / name).write_bytes((PACKAGE / name).read_bytes())
    digest = source_digest(tmp_path)
    assert digest == source_digest(PACKAGE)
    for name in COMPILED_SOURCES:
        original = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(original + b"\n")
        assert source_digest(tmp_path) != digest, name
        (tmp_path / name).write_bytes(original)


def test_a_copy_built_from_these_sources_is_used(
    pure: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLICKSTREAM_PURE_PYTHON", raising=False)
    fake = _fake_copy(monkeypatch, source_digest(PACKAGE))
    assert pure._compiled_copy() == (fake, "compiled (mypyc)")


@pytest.mark.parametrize("digest", ["0" * 64, None])
def test_a_copy_of_other_sources_is_not_used(
    digest: str | None, pure: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLICKSTREAM_PURE_PYTHON", raising=False)
    _fake_copy(monkeypatch, digest)
    module, why = pure._compiled_copy()
    assert module is None
    assert why == "pure Python (the compiled copy is of older sources: `make compile`)"


def test_a_copy_left_as_python_source_is_not_used(
    pure: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an interrupted build could leave: the stamped copy as a .py file, no extension.
    monkeypatch.delenv("CLICKSTREAM_PURE_PYTHON", raising=False)
    _fake_copy(monkeypatch, source_digest(PACKAGE), path=PACKAGE / "_simulator_compiled.py")
    assert pure._compiled_copy() == (
        None,
        "pure Python (the compiled copy is not an extension module: `make compile`)",
    )


def test_without_a_copy_the_source_runs(pure: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLICKSTREAM_PURE_PYTHON", raising=False)
    monkeypatch.setitem(sys.modules, COMPILED_NAME, None)  # makes the import fail
    assert pure._compiled_copy() == (
        None,
        "pure Python (no compiled copy: `make compile` builds one)",
    )


def test_the_source_can_be_asked_for(pure: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_copy(monkeypatch, source_digest(PACKAGE))
    monkeypatch.setenv("CLICKSTREAM_PURE_PYTHON", "1")
    assert pure._compiled_copy() == (None, "pure Python (CLICKSTREAM_PURE_PYTHON=1)")
