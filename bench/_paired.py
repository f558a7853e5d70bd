"""What every bench that prints a ratio shares (issue #27): a paired comparison.

Both sides run in interleaved rounds (A B A B ...) on the same data, so slow minutes of a shared
machine hit both; each round gives one ratio, and the headline is the median of those per-round
ratios with their min-max, never a ratio of two medians. Each bench prints the machine line (cores,
load) and what each side may use, so a figure is read with its conditions.

    rounds = Paired("ours / plain batches/s", target=">= 1.5x")
    for _ in range(3):
        rounds.add(ours=run_ours(), base=run_plain())   # printed as it comes
    print(rounds.headline())
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Optional


def machine() -> str:
    """Cores and load average now: the conditions a figure was measured in."""
    one, five, fifteen = os.getloadavg()
    return f"machine: {os.cpu_count()} cores, load average {one:.2f} {five:.2f} {fifteen:.2f}"


@dataclass
class Paired:
    """Per-round ratios of ``ours`` over ``base`` (higher is better for ours when ``higher_is_better``)."""

    what: str
    target: str = ""
    higher_is_better: bool = True
    rounds: list[tuple[float, float]] = field(default_factory=list)

    def add(self, ours: float, base: float, say: Optional[str] = None) -> float:
        """One round's pair; returns (and prints) its ratio."""
        self.rounds.append((ours, base))
        ratio = self.ratios[-1]
        print(f"  round {len(self.rounds)}: {self.what} {ratio:.2f}x" + (f" ({say})" if say else ""), flush=True)
        return ratio

    @property
    def ratios(self) -> list[float]:
        return [(o / b if self.higher_is_better else b / o) for o, b in self.rounds]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def headline(self) -> str:
        """The line a README or docs page quotes, with its command."""
        ratios = self.ratios
        target = f" [target {self.target}]" if self.target else ""
        return (
            f"{self.what}: {self.median:.2f}x, median of {len(ratios)} paired round(s), "
            f"range {min(ratios):.2f}-{max(ratios):.2f}x{target}"
        )
