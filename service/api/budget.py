"""The budget of bytes that large answers hold while they are built and until their client reads them."""

from __future__ import annotations

from typing import Any

from starlette.types import Scope

from service.core.errors import QueueFullError


class Reservation:
    """What one request holds of the response-bytes budget; the middleware gives it back at the end."""

    def __init__(self, budget: ResponseBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, n: int) -> None:
        self.budget.take(n)
        self.held += n

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


class ResponseBudget:
    """Bytes of answers being built or still in write buffers, across all requests (MAX_INFLIGHT_BYTES).

    Large answers (attention) take their estimated size before they are computed, and give it back
    once their last byte has left the write buffer, or their client is gone; beyond the budget a
    request gets 503, so that clients who do not read cannot pin unbounded memory.
    """

    def __init__(self, limit: int, observe: Any = None) -> None:
        self.limit = limit
        self.used = 0
        self._observe = observe

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise QueueFullError(
                f"answers in flight hold {self.used:,} bytes; this one needs about {n:,} more, past "
                f"MAX_INFLIGHT_BYTES={self.limit:,}"
            )
        self.used += n
        if self._observe:
            self._observe(self.used)

    def give(self, n: int) -> None:
        self.used -= n
        if self._observe:
            self._observe(self.used)


# Bytes held per returned attention weight while the answer exists: the float32 array and its JSON
# text (a full-context answer measured 8.7 bytes of JSON per weight).
ATTENTION_JSON_BYTES = 4 + 10
BUDGET_KEY = "attnserve.reservation"


def reservation(scope: Scope) -> Reservation | None:
    return scope.get(BUDGET_KEY)
