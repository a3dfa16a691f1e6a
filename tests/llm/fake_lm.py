"""A stand-in tokenizer and language model with no weights, for the decoding and server tests.

The tokenizer matches the longest piece of a small vocabulary shaped like a BPE's (``{"``, ``":"``,
``ha``, single characters); the model wants to write a given text: a token's logit is how many of
its characters match that text at the current position, less 10 if it then departs from it, plus
an optional bonus per token, so tests know every logit the decoder sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

EOS = "<eos>"
PIECES = [
    EOS,
    '{"',
    '":',
    '":"',
    '","',
    '"}',
    '},"',
    "}}",
    ',"',
    '":{"',
    "ha",
    "sad",
    "ne",
    "ang",
    "ex",
    "hello",
]


class FakeTokenizer:
    def __init__(self) -> None:
        self.vocab = PIECES + [chr(c) for c in range(32, 127)]
        self.ids = {piece: i for i, piece in enumerate(self.vocab)}
        self.stop_ids = {self.ids[EOS]}

    def encode(self, text: str) -> list[int]:
        out, position = [], 0
        while position < len(text):
            piece = max((p for p in self.vocab if text.startswith(p, position)), key=len)
            out.append(self.ids[piece])
            position += len(piece)
        return out

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode("".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]")

    def token_bytes(self, token: int) -> bytes:
        return self.vocab[token].encode()

    def text(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


class WantsText:
    """A :class:`lantern.llm.decoding.Context` whose model wants to write ``want`` (see the module)."""

    def __init__(self, tokenizer: FakeTokenizer, want: str, bonus: dict[str, float] | None = None) -> None:
        self.tokenizer = tokenizer
        self.want = want
        self.bonus = bonus or {}
        self.written = ""
        self.calls: list[list[int] | None] = []  # the ``allowed`` of every logits() call
        self.returned: list[torch.Tensor] = []  # and the logits it returned

    def feed(self, ids: Sequence[int]) -> None:
        self.written += self.tokenizer.text(ids)

    def score(self, token: int) -> float:
        piece = self.tokenizer.vocab[token]
        rest = self.want[len(self.written) :] if self.want.startswith(self.written) else ""
        if piece == EOS:
            return 1.0 if not rest else -10.0
        n = 0
        while n < min(len(piece), len(rest)) and piece[n] == rest[n]:
            n += 1
        return (n if n == len(piece) else n - 10.0) + self.bonus.get(piece, 0.0)

    def logits(self, allowed: Sequence[int] | None = None) -> torch.Tensor:
        self.calls.append(list(allowed) if allowed is not None else None)
        ids = allowed if allowed is not None else range(len(self.tokenizer.vocab))
        self.returned.append(torch.tensor([self.score(i) for i in ids], dtype=torch.float32))
        return self.returned[-1]


class FakeModel:
    """What :class:`lantern.llm.transformers_server.ChatEngine` needs of a
    :class:`lantern.llm.gguf_model.GGUFModel`, answering with :class:`WantsText`."""

    def __init__(self, want: str, bonus: dict[str, float] | None = None) -> None:
        self.tokenizer = FakeTokenizer()
        self.want = want
        self.bonus = bonus
        self.threads = 1
        self.prompts: list[list[int]] = []

    def start(self, prompt: Sequence[int]) -> tuple[WantsText, int]:
        self.prompts.append(list(prompt))
        return WantsText(self.tokenizer, self.want, self.bonus), 0
