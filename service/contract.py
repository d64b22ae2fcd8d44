"""What a model bundle holds, by name: the one place export and service agree on.

Every graph takes the same inputs, right padded:
    input_ids       int64 [batch, seq]
    attention_mask  int64 [batch, seq]   1 for real tokens, 0 for padding
and produces one output:
    next_token.onnx  next_token_logprobs  float32 [batch, vocab]
                     log-probabilities at each row's last real position
    attention.onnx   attention_weights    float32 [batch, layers, heads, seq, seq]
                     softmax weights, zero above the diagonal and on padded keys
    score.onnx       token_logprobs       float32 [batch, seq - 1]
                     log p(token t+1 | tokens <= t)
The graphs share one weights file, so the bundle stores each weight once.
"""

from __future__ import annotations

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
INPUT_NAMES = (INPUT_IDS, ATTENTION_MASK)

BATCH_AXIS = "batch"
SEQ_AXIS = "seq"
SCORE_SEQ_AXIS = "seq_minus_1"

NEXT_TOKEN = "next_token"
ATTENTION = "attention"
SCORE = "score"

GRAPH_FILES = {NEXT_TOKEN: "next_token.onnx", ATTENTION: "attention.onnx", SCORE: "score.onnx"}
OUTPUT_NAMES = {NEXT_TOKEN: "next_token_logprobs", ATTENTION: "attention_weights", SCORE: "token_logprobs"}
WEIGHTS_FILE = "weights.bin"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
BUNDLE_FORMAT = 1
