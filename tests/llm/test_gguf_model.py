"""The model runner on a tiny random Llama (no weights to load): the prefix KV cache gives what a full
run gives, threads follow the free cores, and the pieces that map GGUF files and tokens."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lantern.cores import CoreBudget
from lantern.llm import gguf_model
from lantern.llm.gguf_model import GGUFModel, _byte_level_alphabet, _parse_once, resolve_dtype
from tests.llm.fake_lm import FakeTokenizer


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(FakeTokenizer().vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=0,
    )
    return LlamaForCausalLM(config)


def runner(prefix_cache: bool = True, threads: int | None = 1) -> GGUFModel:
    return GGUFModel(tiny_llama(), FakeTokenizer(), threads=threads, prefix_cache=prefix_cache)


def run(model: GGUFModel, text: str, then: str = "") -> tuple[torch.Tensor, int]:
    """Logits after ``text`` + ``then`` (fed as generated tokens), and the prompt tokens reused."""
    sequence, cached = model.start(model.tokenizer.encode(text))
    if then:
        sequence.logits([1])
        sequence.feed(model.tokenizer.encode(then))
    return sequence.logits(), cached


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_a_prompt_reuses_the_longest_prefix_it_shares_with_the_last_sequence():
    model, fresh = runner(), runner(prefix_cache=False)
    prompt = "[system]You annotate.[user]Field 4 to 9: hello there"
    run(model, prompt, then='{"4":"ne')  # the cache holds a prompt and a generated answer
    for other in (prompt, prompt + "!", "[system]You annotate.[user]Field 7 to 9: go away", "[user]x"):
        ids = model.tokenizer.encode(other)
        shared = common_prefix(model._ids, ids)
        logits, cached = run(model, other)
        expected, none = run(fresh, other)
        assert cached == min(shared, len(ids) - 1) and none == 0  # the last prompt token always runs
        assert torch.allclose(logits, expected, atol=1e-5)


def test_logits_of_allowed_tokens_are_those_of_the_whole_vocabulary():
    model = runner()
    sequence, _ = model.start(model.tokenizer.encode("[user]hello"))
    full = sequence.logits()
    assert torch.allclose(sequence.logits([5, 2, 40]), full[[5, 2, 40]], atol=1e-6)


def test_threads_follow_the_free_cores_before_each_sequence():
    busy = CoreBudget(cores=lambda: 2, load=lambda: 1.0, runnable=lambda: 1.0)
    model = GGUFModel(tiny_llama(), FakeTokenizer(), cores=busy)
    model.start([1, 2, 3])
    assert model.threads == 1 and torch.get_num_threads() == 1
    model.cores = CoreBudget(cores=lambda: 2, load=lambda: 0.0, runnable=lambda: 0.0)
    model.start([1, 2, 3])
    assert model.threads == 2 and torch.get_num_threads() == 2


def test_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(gguf_model, "native_bfloat16", lambda: True)
    assert resolve_dtype("auto") is torch.bfloat16
    monkeypatch.setattr(gguf_model, "native_bfloat16", lambda: False)
    assert resolve_dtype("auto") is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        resolve_dtype("int4")


def test_the_byte_level_alphabet_maps_each_stand_in_back_to_its_byte():
    alphabet = _byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == ord(" ") and alphabet["Ċ"] == ord("\n") and alphabet["a"] == ord("a")


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs gguf (the 'local' extra)")
def test_while_loading_each_gguf_file_is_parsed_once(tmp_path):
    import gguf

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    before = gguf.GGUFReader
    with _parse_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(str(path))
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(
            gguf.MODEL_ARCH.LLAMA, 2
        )
    assert gguf.GGUFReader is before and gguf.GGUFReader(path) is not gguf.GGUFReader(path)
