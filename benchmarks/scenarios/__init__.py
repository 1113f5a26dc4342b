"""The runner's scenarios and curves, one module per area.

A scenario measures one thing once for one library and returns a number in
its unit. ``run(lib, n)`` serves every library with multiprocessing's API
(multiprocessing, fastmp, multiprocess, billiard): ``lib`` is a
:class:`benchmarks.run.Lib`, which forwards attributes to the module, so
``lib.get_context("fork")`` works. Peers with another API (faster-fifo,
loky, mpire, UltraDict) get their own function in ``peers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Scenario:
    group: str
    name: str
    unit: str
    higher_is_better: bool
    n: int  # work per measurement for the stdlib at scale 1 (messages, operations, ...)
    run: Callable[[Any, int], float] | None  # for libraries with multiprocessing's API
    peers: dict[str, Callable[[Any, int], float]] = field(default_factory=dict)
    fast: float = 1.0  # work multiplier for the fast libraries, so their runs last long enough
    min_n: int = 1
    item_bytes: int = 0  # largest message, for peers that need a buffer size (faster-fifo)
    mp_peers: bool = True  # whether multiprocess/billiard run it through `run`
    doc: str = ""


@dataclass
class Curve:
    name: str
    title: str
    x_label: str
    unit: str
    xs_full: list[int]
    xs_quick: list[int]
    run: Callable[[Any, int, float], float] | None  # (lib, x, scale) -> value
    peers: dict[str, Callable[[Any, int, float], float]] = field(default_factory=dict)
    x_log: bool = True
    item_bytes: Callable[[int], int] = lambda x: 0


def all_scenarios() -> list[Scenario]:
    from . import manager, pickling, pipe, pool, queue, sharedctypes, sync

    out: list[Scenario] = []
    for mod in (queue, pipe, sync, sharedctypes, pool, manager, pickling):
        out += mod.SCENARIOS
    return out


def all_curves() -> list[Curve]:
    from . import pipe, queue

    return queue.CURVES + pipe.CURVES
