"""The OpenAI-compatible API: /v1/completions, /v1/models and the tokenizer routes."""
