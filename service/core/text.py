"""Generated tokens as text: what is safe to hand out, and where a stop string ends it."""

from __future__ import annotations

from tokenizers import Tokenizer


class TextTracker:
    """Turns tokens into text that is safe to hand out, and finds stop strings.

    Byte-level tokens can end inside a UTF-8 character, so the decoded text is held back while it
    ends in a replacement character; text that could be the start of a stop string is held back
    too, so a stop string never reaches the caller.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...], min_tokens: int = 0) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.min_tokens = min_tokens
        self.stop_from = 0  # a stop string counts only if it starts here or later (after min_tokens)
        self.ids: list[int] = []  # every token generated so far
        self.text = ""
        self.emitted = 0  # characters of text handed out

    def add(self, token_id: int) -> tuple[str, bool]:
        """Returns the newly safe text and whether a stop string was found (text ends before it)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids)
        if len(self.ids) < self.min_tokens:
            # No stop string yet: nothing is held back, and none may start inside what was handed out.
            self.stop_from = len(self.text.rstrip("\ufffd"))
            return self._take(self.stop_from), False
        start = self.stop_from
        hits = [i for s in self.stop if (i := self.text.find(s, max(start, self.emitted - len(s)))) >= 0]
        if hits:
            return self._take(min(hits)), True
        safe = len(self.text.rstrip("\ufffd"))
        for s in self.stop:
            for k in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                if self.text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        return self._take(safe), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        end = max(end, self.emitted)
        delta, self.emitted = self.text[self.emitted : end], end
        return delta
