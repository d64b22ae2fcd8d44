"""The budget of bytes that large answers hold while they are built and until their client reads them."""

from __future__ import annotations

import threading
from typing import Any

from starlette.types import Scope

from service.core.errors import InputError, QueueFullError
from service.core.memory import TRIM_AFTER_BYTES, trim_heap


class AnswerTooLargeError(InputError):
    """An answer larger than the whole budget: no wait would make room (HTTP 422 or 400; gRPC
    RESOURCE_EXHAUSTED, as for a message past its size limit)."""


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
        if self.held >= TRIM_AFTER_BYTES:
            # The answer's buffers are free now, but glibc keeps freed heap pages: give them back.
            threading.Thread(target=trim_heap, name="trim-heap", daemon=True).start()
        self.held = 0


class ResponseBudget:
    """Bytes of answers being built or still in write buffers, across all requests (MAX_INFLIGHT_BYTES).

    Large answers (attention, the logit lens, v2 tensors) take their estimated size before they are
    computed, and give it back once their last byte has left the write buffer, or their client is
    gone; beyond the budget a request gets 503 (422 when it is larger than the whole budget), so that
    clients who do not read cannot pin unbounded memory.
    """

    def __init__(self, limit: int, observe: Any = None) -> None:
        self.limit = limit
        self.used = 0
        self._observe = observe

    def take(self, n: int) -> None:
        if n > self.limit:  # no wait would make room: the request itself is too large
            raise AnswerTooLargeError(
                f"the answer would take about {n:,} bytes, more than MAX_INFLIGHT_BYTES={self.limit:,} allows "
                "any one answer; ask for less (fewer inputs, positions, layers or heads)"
            )
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
# Bytes held per returned activation: the float32 array and its JSON text (a signed float32 in
# shortest form, such as -0.12345679, and its comma).
ACTIVATION_JSON_BYTES = 4 + 13
# Bytes per token entry in JSON ({"token", "token_id", "prob", "logprob"}: 75 to 90 measured), as the
# logit lens and next-token answers hold them.
LENS_JSON_BYTES = 100
# Bytes per log-prob in an OpenAI answer: the token's text and its number, in each of the lists.
LOGPROB_JSON_BYTES = 40
# Answers larger than this are written in a thread (service.core.threads.off_loop): serialising
# them on the event loop would hold up every other request and probe.
OFF_LOOP_BYTES = 1_000_000
BUDGET_KEY = "attnserve.reservation"


def reservation(scope: Scope) -> Reservation | None:
    return scope.get(BUDGET_KEY)
