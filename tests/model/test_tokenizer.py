import pytest

from model.tokenizer import train_tokenizer

HOSTILE = [
    "",
    " ",
    "  leading and trailing spaces  ",
    "\x00\x01\x02\x7f control \t\r\n characters",
    "emoji 🤖👩‍👩‍👧‍👦🏳️‍🌈 and flags 🇯🇵",
    "CJK 漢字かなカナ 한국어",
    "combining e\u0301 and zero\u200bwidth",
    "\ufeffbyte order mark",
    "RTL שלום مرحبا",
    "lone surrogate-free astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "ROMEO:\nBut soft, what light through yonder window breaks?",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20], vocab_size=300)


@pytest.mark.parametrize("text", HOSTILE)
def test_any_text_round_trips_exactly(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert all(0 <= i < tokenizer.get_vocab_size() for i in ids)
    assert tokenizer.decode(ids) == text


def test_every_byte_is_in_the_vocabulary(tokenizer):
    assert tokenizer.get_vocab_size() >= 256
    assert tokenizer.encode(bytes(range(128)).decode("ascii")).ids
