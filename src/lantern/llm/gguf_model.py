"""A GGUF chat model run by transformers on the CPU, keeping the KV cache of its last sequence.

transformers reads the GGUF file itself (with the ``gguf`` package), de-quantising the weights to
float32: the embedded SmolLM2-135M needs no compiler and no other file. The tokenizer and its chat
template come from the same file. Loading that way parses the file three times (tokenizer, config,
weights) and rebuilds gguf's tensor-name table once per module of the model, about 400 times: half
of a 35-second load on two busy cores. :func:`_parse_once` has both done once (the same weights,
checked bit for bit), for the length of the load only.

Every request of an LLM stage starts with the same system prompt and instructions, so the model
keeps the keys and values of the last sequence it ran and a new prompt recomputes only what follows
the longest prefix it shares with it (``prefix_cache=False`` recomputes everything; answers are the
same either way up to float rounding). One sequence at a time: the caller serialises requests.

Before each sequence the thread count is set from the cores free right now
(:class:`lantern.cores.CoreBudget`), unless fixed with ``threads``.

``dtype="auto"`` runs the model in bfloat16 where the CPU multiplies bfloat16 in hardware
(AVX512-BF16 or AMX), in float32 elsewhere (emulated bfloat16 is slower than float32). On two cores
of such a Xeon bfloat16 took a Lantern request from 4.9-5.8 s to 2.4-3.0 s (logprobs answers) and
from 15-16 s to 8.5-9 s (probs answers); 10 of 12 greedy answers were the same as in float32, the
label log-probabilities within 0.13 (0.012 on average) — differences of the size llama.cpp's
quantised arithmetic makes too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from lantern.cores import CoreBudget


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte, mapped back to the byte: printable Latin-1
    bytes stand for themselves, the others for the code points from 256 up, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


@contextlib.contextmanager
def _parse_once() -> Iterator[None]:
    """While loading: one ``gguf.GGUFReader`` per file and one tensor-name table per architecture.

    transformers imports both from ``gguf`` inside the functions that use them, so replacing the
    module's attributes reaches it; a transformers that imports them otherwise loads as before.
    """
    import gguf

    make_reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[str, object] = {}

    def reader(path, mode="r"):  # gguf.GGUFReader's signature
        key = f"{Path(path).resolve()}:{mode}"
        if key not in readers:
            readers[key] = make_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = make_reader, name_map


class ChatTokenizer:
    """A transformers tokenizer as the server needs it: chat prompts, plain text, each token's bytes."""

    def __init__(self, tokenizer) -> None:  # a transformers PreTrainedTokenizer(Fast)
        self.hf = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._alphabet = _byte_level_alphabet()
        self._bytes: dict[int, bytes] = {}
        self.stop_ids = {i for i in (tokenizer.eos_token_id,) if i is not None}

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt of a conversation in the model's own chat template, ready for the answer."""
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.encode(text)

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes a token stands for (a part of a UTF-8 character, for some)."""
        if token not in self._bytes:
            piece = self.hf.convert_ids_to_tokens(token)
            if self._byte_level and all(c in self._alphabet for c in piece):
                self._bytes[token] = bytes(self._alphabet[c] for c in piece)
            else:
                self._bytes[token] = self.hf.decode([token]).encode("utf-8")
        return self._bytes[token]


DTYPES = ("auto", "float32", "bfloat16")


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (PyTorch's own checks; False where absent)."""
    checks = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(check is not None and check() for check in checks)


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype for a :data:`DTYPES` name."""
    if name == "auto":
        return torch.bfloat16 if native_bfloat16() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return getattr(torch, name)


class GGUFModel:
    """A causal language model (transformers), its tokenizer (:class:`ChatTokenizer` or alike) and
    the KV cache of the last sequence run; :meth:`load` reads one from a GGUF file."""

    def __init__(
        self,
        model,  # a transformers PreTrainedModel with a decoder and output embeddings
        tokenizer: ChatTokenizer,
        *,
        cores: CoreBudget | None = None,
        threads: int | None = None,
        prefix_cache: bool = True,
    ) -> None:
        self.cores = cores or CoreBudget()
        self.fixed_threads = threads
        self.prefix_cache = prefix_cache
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.dtype = next(model.parameters()).dtype
        self.body = model.get_decoder()
        # transformers 5 renamed the decoder's past_key_values argument to cache
        parameters = inspect.signature(self.body.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        head = model.get_output_embeddings()
        self.head_weight = head.weight.detach()
        self.head_bias = head.bias.detach() if getattr(head, "bias", None) is not None else None
        stops = getattr(model.generation_config, "eos_token_id", None)
        for stop in stops if isinstance(stops, list) else [stops]:
            if stop is not None:
                self.tokenizer.stop_ids.add(int(stop))
        self._cache = None
        self._ids: list[int] = []  # the tokens whose keys and values are in the cache
        self.threads = 1

    @classmethod
    def load(cls, path: Path, *, dtype: str = "auto", **options) -> GGUFModel:
        """The model and tokenizer of a GGUF file (``options``: those of the constructor)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with _parse_once():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        return cls(model.to(resolve_dtype(dtype)), ChatTokenizer(tokenizer), **options)

    def start(self, prompt: Sequence[int]) -> tuple[_Sequence, int]:
        """A sequence continuing ``prompt``, and how many of its tokens come from the cache."""
        self.threads = self.fixed_threads or self.cores.threads()
        torch.set_num_threads(self.threads)
        keep = 0
        if self.prefix_cache:
            limit = min(len(self._ids), len(prompt) - 1)  # the last prompt token is always run
            while keep < limit and self._ids[keep] == prompt[keep]:
                keep += 1
        if keep == 0:
            from transformers import DynamicCache

            self._cache = DynamicCache()
        elif keep < len(self._ids):
            self._cache.crop(keep - len(self._ids))  # a negative count: tokens to drop at the end
        self._ids = self._ids[:keep]
        return _Sequence(self, list(prompt[keep:])), keep

    def _run(self, ids: list[int]) -> torch.Tensor:
        """Extend the cached sequence by ``ids``; the last position's hidden state."""
        try:
            with torch.inference_mode():
                cache = {self._cache_argument: self._cache}
                out = self.body(input_ids=torch.tensor([ids]), use_cache=True, **cache)
        except BaseException:
            self._ids, self._cache = [], None  # the cache may hold part of the run
            raise
        self._ids.extend(ids)
        return out.last_hidden_state[0, -1]

    def _head(self, hidden: torch.Tensor, allowed: Sequence[int] | None) -> torch.Tensor:
        with torch.inference_mode():
            if allowed is None:
                return torch.nn.functional.linear(hidden, self.head_weight, self.head_bias)
            rows = torch.tensor(allowed)
            bias = None if self.head_bias is None else self.head_bias[rows]
            return torch.nn.functional.linear(hidden, self.head_weight[rows], bias)


class _Sequence:
    """One request's sequence (:class:`lantern.llm.decoding.Context`): tokens fed are run lazily,
    all at once, when logits are next asked for."""

    def __init__(self, model: GGUFModel, pending: list[int]) -> None:
        self._model = model
        self._pending = pending
        self._hidden: torch.Tensor | None = None

    def feed(self, ids: Sequence[int]) -> None:
        self._pending.extend(ids)

    def logits(self, allowed: Sequence[int] | None = None) -> torch.Tensor:
        if self._pending:
            self._hidden = self._model._run(self._pending)
            self._pending = []
        assert self._hidden is not None, "logits asked for before any token was fed"
        return self._model._head(self._hidden, allowed)
