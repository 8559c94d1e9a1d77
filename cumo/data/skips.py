"""Counting what is skipped: nothing is dropped silently, and too much dropped stops the run.

Every place that may drop input (mixture validation, tokenisation, image loading) counts each skip by
reason, keeps the first offenders by id, reports the counts, and raises past a share of what it saw.
"""

from collections import Counter
from dataclasses import dataclass, field


class TooManySkipped(RuntimeError):
    """More than the allowed share of entries was skipped; the message lists reasons and first offenders."""


@dataclass
class SkipCounter:
    what: str  # what is counted, for messages: "mixture cumo_vit_1649K.json", "tokenisation"
    max_share: float = 0.001  # fail when skipped / seen exceeds this
    keep: int = 20  # offenders remembered
    fix: str = "Fix or remove these entries, or raise the allowed share if the loss is known and accepted."
    seen: int = 0
    by_reason: Counter = field(default_factory=Counter)
    first: list = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(self.by_reason.values())

    def see(self, count: int = 1) -> None:
        self.seen += count

    def skip(self, reason: str, entry_id, detail: str = "") -> None:
        self.by_reason[reason] += 1
        if len(self.first) < self.keep:
            self.first.append({"id": entry_id, "reason": reason, "detail": detail})

    def merge(self, other: "SkipCounter") -> None:
        """Add another counter's counts (one per worker or rank) to this one."""
        self.seen += other.seen
        self.by_reason.update(other.by_reason)
        self.first.extend(other.first[: max(0, self.keep - len(self.first))])

    def to_dict(self) -> dict:
        return {
            "seen": self.seen,
            "skipped": self.skipped,
            "max_share": self.max_share,
            "by_reason": dict(self.by_reason.most_common()),
            "first": self.first,
        }

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.by_reason.most_common()) or "none"
        return f"{self.what}: skipped {self.skipped} of {self.seen} ({reasons})"

    def check(self) -> None:
        """Raise `TooManySkipped` when more than `max_share` of what was seen was skipped."""
        if self.seen and self.skipped / self.seen > self.max_share:
            # One line, as `cumo` prints its errors: what, the fix, then the first offenders.
            offenders = "; ".join(f"{o['id']}: {o['reason']} {o['detail']}".rstrip() for o in self.first)
            raise TooManySkipped(
                f"{self.summary()}, more than the allowed {self.max_share:.2%}. {self.fix} First offenders: "
                f"{offenders}"
            )
