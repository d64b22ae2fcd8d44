"""The training corpus: fetch (path or URL), verify, split."""

from __future__ import annotations

import logging
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bundlespec import sha256_file

log = logging.getLogger(__name__)

DEFAULT_CORPUS_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TRAIN_FRACTION = 0.9


class CorpusError(RuntimeError):
    """The corpus is missing or is not the file we expect."""


def fetch_corpus(source: str, cache_dir: Path, expected_sha256: str | None = TINY_SHAKESPEARE_SHA256) -> Path:
    """Return a local path to the corpus, downloading http(s) sources into cache_dir.

    expected_sha256=None skips the check (used for small test corpora).
    """
    if source.startswith(("http://", "https://")):
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / Path(source).name
        if not path.exists():
            log.info("downloading corpus from %s", source)
            tmp = path.with_suffix(".part")
            try:
                with urllib.request.urlopen(source, timeout=60) as r, open(tmp, "wb") as f:
                    shutil.copyfileobj(r, f)
            except OSError as e:
                raise CorpusError(
                    f"could not download the corpus from {source} ({e}); pass --corpus PATH to a local copy"
                ) from e
            tmp.rename(path)
    else:
        path = Path(source)
        if not path.is_file():
            raise CorpusError(f"corpus file not found: {path}; pass --corpus PATH or an http(s) URL")
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise CorpusError(
                f"corpus {path} has sha256 {got}, expected {expected_sha256} (Tiny Shakespeare); "
                "pass the right file with --corpus"
            )
    return path


@dataclass(frozen=True)
class Split:
    train: str
    val: str


def split_text(text: str, train_fraction: float = TRAIN_FRACTION) -> Split:
    """First train_fraction of the characters for training, the rest for validation."""
    cut = int(len(text) * train_fraction)
    return Split(train=text[:cut], val=text[cut:])
