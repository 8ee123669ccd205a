"""Cascades: a cheap student answers first; when it is unsure, the request is re-asked of a teacher.

A :class:`Cascade` is served under its own model name. The scheduler sends each of its requests to
the student; a result whose confidence is below ``threshold`` goes to the teacher and the teacher's
answer is returned instead. Confidence is the probability of the least likely token the student
*chose* under its constrained distribution (forced tokens carry no choice and do not count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from runtime.types import Request, Result


@dataclass(frozen=True)
class Cascade:
    """Serve ``name`` with ``student``, escalating to ``teacher`` below ``threshold`` confidence."""

    name: str
    student: str
    teacher: str
    threshold: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"cascade {self.name!r}: threshold must be in 0..1, got {self.threshold}")
        if self.student == self.teacher:
            raise ValueError(f"cascade {self.name!r}: student and teacher must differ")

    def to_student(self, req: Request) -> Request:
        return req.model_copy(update={"model": self.student})

    def to_teacher(self, req: Request) -> Request:
        return req.model_copy(update={"model": self.teacher})

    def escalate(self, result: Result) -> bool:
        """Whether the student's ``result`` should be re-asked of the teacher."""
        if not result.ok:
            return True
        return confidence(result) < self.threshold


def confidence(result: Result) -> float:
    """Probability of the least likely sampled token (1.0 when every token was forced)."""
    if result.min_logprob is None:
        return 1.0
    return math.exp(result.min_logprob)
