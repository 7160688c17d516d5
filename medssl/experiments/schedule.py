"""Which of a grid's cells may start now: the cells' states, their waves, the progress line.

A cell waits until every cell it depends on (experiments.grid.depends_on) is done; a cell whose
dependency failed fails too, naming it, and never starts. The rest go on. Nothing here starts a
process (experiments.launch does): this is the bookkeeping, testable without torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STATES = ("waiting", "running", "done", "failed")


def waves(names: list[str], needs: dict[str, list[str]]) -> list[list[str]]:
    """The cells in waves: a cell's wave is one more than the latest of the cells it needs, so a
    wave only needs the waves before it (a SLURM job array each)."""
    level: dict[str, int] = {}
    for name in names:  # `names` is in an order that puts a cell after what it needs (grid.plan)
        level[name] = 1 + max((level[d] for d in needs.get(name, []) if d in level), default=-1)
    return [[n for n in names if level[n] == k] for k in range(max(level.values(), default=-1) + 1)]


@dataclass
class Board:
    """Every cell's state, when each started and how long the finished ones took."""

    needs: dict[str, list[str]]  # cell -> the cells it waits for (those of this board only)
    state: dict[str, str] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    took: dict[str, float] = field(default_factory=dict)  # seconds, of the cells done here
    why: dict[str, str] = field(default_factory=dict)  # a failed cell's error

    def __post_init__(self):
        self.state = {name: "waiting" for name in self.needs}

    def ready(self) -> list[str]:
        """The waiting cells whose dependencies are done, in the grid's order."""
        return [n for n, s in self.state.items() if s == "waiting"
                and all(self.state.get(d, "done") == "done" for d in self.needs[n])]

    def start(self, name: str) -> None:
        self.state[name], self.started[name] = "running", time.monotonic()

    def finish(self, name: str) -> None:
        self.state[name] = "done"
        self.took[name] = time.monotonic() - self.started.get(name, time.monotonic())

    def fail(self, name: str, why: str) -> list[str]:
        """Mark `name` failed, and every cell that waits on it (directly or not); returns those."""
        self.state[name], self.why[name] = "failed", why
        blocked = []
        changed = True
        while changed:
            changed = False
            for n, s in self.state.items():
                if s == "waiting" and any(self.state.get(d) == "failed" for d in self.needs[n]):
                    first = next(d for d in self.needs[n] if self.state.get(d) == "failed")
                    self.state[n], self.why[n] = "failed", f"it needs {first}, which failed"
                    blocked.append(n)
                    changed = True
        return blocked

    def count(self, state: str) -> int:
        return sum(1 for s in self.state.values() if s == state)

    @property
    def over(self) -> bool:
        return self.count("waiting") == self.count("running") == 0

    def eta_s(self, at_once: int) -> float | None:
        """Seconds left: the mean time of the cells done in this call times the cells left, over
        the cells that run at once; None before a cell has finished."""
        if not self.took:
            return None
        left = self.count("waiting") + self.count("running") / 2  # a running cell: half done
        return sum(self.took.values()) / len(self.took) * left / max(1, at_once)

    def line(self, at_once: int) -> str:
        """The one progress line of the whole grid."""
        eta = self.eta_s(at_once)
        shown = "" if eta is None else f"; about {duration(eta)} left (from {len(self.took)} " \
            "finished cell(s))"
        return (f"grid: {self.count('done')}/{len(self.state)} cells done, "
                f"{self.count('running')} running, {self.count('waiting')} waiting, "
                f"{self.count('failed')} failed{shown}")


def duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
