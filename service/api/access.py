"""The key check that every listener applies (HTTP's middleware, the gRPC service): the rule itself is
in docs/operations.md ("Authentication")."""

from __future__ import annotations

import hmac


def bearer_matches(given: bytes, keys: list[bytes]) -> bool:
    """Whether an Authorization value ("Bearer KEY") carries one of the keys."""
    if not given.lower().startswith(b"bearer "):
        return False
    token = given[7:].strip()
    # Every key is compared, each in constant time, so the answer's timing says nothing of them.
    return sum(hmac.compare_digest(token, k) for k in keys) > 0
