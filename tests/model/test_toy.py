"""The lectures' example: the word before "like" decides what follows it."""

import torch

from model.toy import train_toy


def test_toy_model_learns_that_not_like_means_hate():
    model, tokenizer, _ = train_toy()
    for prompt, expected in [("I do not like", " hate"), ("you not like", " hate"), ("we do like", " like")]:
        ids = torch.tensor([tokenizer.encode(prompt).ids])
        with torch.no_grad():
            hidden, _ = model.hidden_states(ids)
            predicted = model.logits(hidden[0, -1]).argmax().item()
        assert tokenizer.decode([predicted]) == expected, prompt
