"""CORECT: published parameter counts, exact graph, layers equal to their reference implementations,
padding invariance, modality subsets, speakers, checkpoint config, and that it learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lantern.corpus.dialogue import Dialogue, Utterance
from lantern.models.batch import IGNORE_LABEL, Batch, ModelOutput, collate
from lantern.models.corect import (
    CORECT,
    CORECTConfig,
    GraphTransformerConv,
    RelationalGraphConv,
    TextLayer,
    dialogue_graph,
    dropout,
    key_bias,
    n_relations,
    text_heads,
)
from lantern.models.heads import VADHead

SMALL = {"t": 24, "a": 8, "v": 12}


def small_config(widths: dict[str, int] = SMALL, **overrides) -> CORECTConfig:
    values = dict(n_classes=4, n_speakers=2, widths=widths, hidden=16, gnn_heads=3, wp=3, wf=2, text_ff=32)
    return CORECTConfig(**{**values, **overrides})


def make_dialogues(
    lengths: list[int],
    widths: dict[str, int],
    n_classes: int = 4,
    n_speakers: int = 2,
    seed: int = 0,
    signal: float = 0.0,
) -> list[Dialogue]:
    """Random dialogues; with signal > 0 every modality carries the label along a fixed direction."""
    rng = np.random.default_rng(seed)
    directions = {
        m: np.random.default_rng(100).standard_normal((n_classes, w)).astype(np.float32)
        for m, w in widths.items()
    }
    dialogues = []
    for i, n in enumerate(lengths):
        labels = rng.integers(n_classes, size=n)
        utterances = [
            Utterance(
                id=f"d{i}u{j}",
                speaker=f"s{rng.integers(n_speakers)}",
                text="",
                label=int(labels[j]),
                vad=(1.0 + j % 5, 2.0, 3.0),
            )
            for j in range(n)
        ]
        features = {
            m: (rng.standard_normal((n, w)) + signal * directions[m][labels]).astype(np.float32)
            for m, w in widths.items()
        }
        dialogues.append(Dialogue(id=f"d{i}", split="train", utterances=utterances, features=features))
    return dialogues


def speakers(n: int) -> dict[str, int]:
    return {f"s{i}": i for i in range(n)}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("n_classes", "expected"), [(6, 17_703_074), (4, 17_702_872)])
def test_published_parameter_count(n_classes: int, expected: int) -> None:
    backbone = CORECT(CORECTConfig.published(n_classes, vad_head=False))
    assert n_params(backbone) == expected
    multitask = CORECT(CORECTConfig.published(n_classes))
    assert n_params(multitask) == expected + n_params(VADHead(2700))
    assert multitask.config.representation_width == 2700


def test_text_heads_rule() -> None:
    assert text_heads(768) == 8
    assert text_heads(1024) == 8
    assert text_heads(100) == 10
    assert text_heads(700) == 7
    assert text_heads(17) == 1


def reference_edges(lengths: list[int], m: int, wp: int, wf: int) -> set[tuple[int, int, int]]:
    """The graph of MODELS.md, with plain loops: (src node, dst node, relation)."""
    t = sum(lengths)
    edges = set()
    start = 0
    for n in lengths:
        for j in range(n):
            for mod in range(m):
                for k in range(max(0, j - wp), min(n, j + wf)):
                    direction = 0 if k < j else (1 if k == j else 2)
                    edges.add((mod * t + start + j, mod * t + start + k, 3 * mod + direction))
            pair = 0
            for m1 in range(m):
                for m2 in range(m):
                    if m1 != m2:
                        edges.add((m1 * t + start + j, m2 * t + start + j, 3 * m + pair))
                        pair += 1
        start += n
    return edges


@pytest.mark.parametrize("m", [1, 2, 3])
def test_graph_matches_definition(m: int) -> None:
    lengths = [20, 1, 7]
    graph = dialogue_graph(torch.tensor(lengths), m, 11, 5)
    got = {tuple(e) for e in torch.stack([graph.src, graph.dst, graph.relation], 1).tolist()}
    assert len(got) == graph.src.numel()
    assert got == reference_edges(lengths, m, 11, 5)
    assert graph.n_relations == n_relations(m) == {1: 3, 2: 8, 3: 15}[m]


def test_graph_layers_equal_torch_geometric() -> None:
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    graph = dialogue_graph(torch.tensor([9, 2, 14]), 3, 4, 2)
    x = torch.randn(3 * 25, 12)
    edge_index = torch.stack([graph.src, graph.dst])
    ours = RelationalGraphConv(12, 12, graph.n_relations)
    reference = pyg.RGCNConv(12, 12, graph.n_relations)
    reference.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x, graph), reference(x, edge_index, graph.relation), atol=1e-5, rtol=1e-5)
    ours_t = GraphTransformerConv(12, 12, 7)
    reference_t = pyg.TransformerConv(12, 12, heads=7)
    reference_t.load_state_dict(ours_t.state_dict())
    torch.testing.assert_close(ours_t(x, graph), reference_t(x, edge_index), atol=1e-5, rtol=1e-5)


def test_text_layer_equals_standard_transformer_layer() -> None:
    torch.manual_seed(0)
    reference = nn.TransformerEncoderLayer(32, 8, 64, 0.5, batch_first=True).eval()
    ours = TextLayer(32, 8, 64, 0.5).eval()
    sd = reference.state_dict()
    ours.load_state_dict(
        {
            "attn.in_proj.weight": sd["self_attn.in_proj_weight"],
            "attn.in_proj.bias": sd["self_attn.in_proj_bias"],
            "attn.out_proj.weight": sd["self_attn.out_proj.weight"],
            "attn.out_proj.bias": sd["self_attn.out_proj.bias"],
            "ff.0.weight": sd["linear1.weight"],
            "ff.0.bias": sd["linear1.bias"],
            "ff.3.weight": sd["linear2.weight"],
            "ff.3.bias": sd["linear2.bias"],
            "attn_norm.weight": sd["norm1.weight"],
            "attn_norm.bias": sd["norm1.bias"],
            "ff_norm.weight": sd["norm2.weight"],
            "ff_norm.bias": sd["norm2.bias"],
        }
    )
    x = torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        expected = reference(x, src_key_padding_mask=~mask)[mask]
        index = mask.reshape(-1).nonzero().squeeze(1)
        packed = ours(x.reshape(-1, 32)[index], index, key_bias(mask, x.dtype))
        torch.testing.assert_close(packed, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("text_encoder", ["transformer", "mlp", "lstm"])
def test_batch_equals_dialogues_one_by_one(text_encoder: str) -> None:
    torch.manual_seed(0)
    model = CORECT(small_config(text_encoder=text_encoder))
    dialogues = make_dialogues([9, 2, 17, 1, 5], SMALL, seed=1)
    batch = collate(dialogues, speakers(2), list(SMALL))
    model.train()  # one step, so that BatchNorm's running statistics are not the identity
    model.classification_loss(model(batch), batch).backward()
    model.eval()
    with torch.no_grad():
        together = model(batch)
        for i, d in enumerate(dialogues):
            alone = model(collate([d], speakers(2), list(SMALL)))
            n = len(d)
            torch.testing.assert_close(together.log_probs[i, :n], alone.log_probs[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together.vad[i, :n], alone.vad[0], atol=1e-5, rtol=1e-5)
    padded = ~batch.mask
    assert torch.allclose(together.log_probs[padded].exp().sum(-1), torch.ones(int(padded.sum())))


@pytest.mark.parametrize(
    ("widths", "width"),
    [({"t": 24}, 3 * 16), ({"a": 8, "v": 12}, 2 * 3 * 16 + 2 * 16), (SMALL, 3 * 3 * 16 + 6 * 16)],
)
def test_modality_subsets_train(widths: dict[str, int], width: int) -> None:
    torch.manual_seed(0)
    model = CORECT(small_config(widths, vad_head=False))
    assert model.config.representation_width == width
    assert (model.pcm is None) == (len(widths) == 1)
    batch = collate(make_dialogues([6, 3], widths), speakers(2), list(widths))
    output = model(batch)
    assert output.log_probs.shape == (2, 6, 4)
    model.classification_loss(output, batch).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_any_number_of_speakers() -> None:
    torch.manual_seed(0)
    model = CORECT(small_config(n_speakers=5)).eval()
    dialogues = make_dialogues([12], SMALL, n_speakers=5, seed=3)
    batch = collate(dialogues, speakers(5), list(SMALL))
    assert int(batch.speakers.max()) == 4
    with torch.no_grad():
        base = model(batch).log_probs
        model.speaker.weight[4] += 1.0
        moved = model(batch).log_probs
    assert not torch.allclose(base, moved)


def test_config_json_rebuilds_the_module() -> None:
    config = small_config(text_encoder="mlp", vad_head=False, n_speakers=3)
    data = json.loads(json.dumps(config.to_json()))
    rebuilt = CORECTConfig.from_json(data)
    assert rebuilt == config
    model = CORECT(config)
    CORECT(rebuilt).load_state_dict(model.state_dict())
    assert CORECTConfig.published(4).to_json()["widths"] == {"t": 768, "a": 100, "v": 512}


@pytest.mark.parametrize(
    "overrides",
    [
        {"widths": {}},
        {"widths": {"x": 3}},
        {"wf": 0},
        {"text_encoder": "gru"},
        {"n_classes": 1},
        {"hidden": 15},
    ],
)
def test_invalid_config_is_rejected(overrides: dict) -> None:
    with pytest.raises(ValueError, match="CORECT"):
        small_config(**overrides)


def _model_batch_output() -> tuple[CORECT, Batch, ModelOutput, torch.Tensor]:
    """A small seeded CORECT, a two-dialogue batch, its output and the mask of labelled utterances."""
    torch.manual_seed(0)
    model = CORECT(small_config())
    batch = collate(make_dialogues([5, 3], SMALL), speakers(2), list(SMALL))
    return model, batch, model(batch), batch.labels != IGNORE_LABEL


def test_classification_loss_ignores_unlabelled_and_weights_classes() -> None:
    model, batch, output, labelled = _model_batch_output()
    picked = output.log_probs[labelled].gather(1, batch.labels[labelled][:, None])
    torch.testing.assert_close(model.classification_loss(output, batch), -picked.mean())
    weights = torch.tensor([1.0, 0.0, 0.0, 0.0])
    weighted = model.classification_loss(output, batch, weights)
    first = batch.labels[labelled] == 0
    torch.testing.assert_close(weighted, -picked[first].mean())
    batch.labels[:] = IGNORE_LABEL
    empty = model.classification_loss(output, batch)
    assert float(empty.detach()) == 0.0
    empty.backward()


def test_label_smoothing_mixes_the_label_with_uniform_and_zero_is_the_plain_loss() -> None:
    model, batch, output, labelled = _model_batch_output()
    log_probs = output.log_probs[labelled]
    nll = -log_probs.gather(1, batch.labels[labelled][:, None]).squeeze(1)
    uniform = -log_probs.mean(dim=1)
    torch.testing.assert_close(model.classification_loss(output, batch, label_smoothing=0.0), nll.mean())
    torch.testing.assert_close(
        model.classification_loss(output, batch, label_smoothing=0.2), (0.8 * nll + 0.2 * uniform).mean()
    )
    # class-weighted: each utterance's two terms weighted as PyTorch does, normalised by its label's weight
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0])
    w = weights[batch.labels[labelled]]
    smooth = -(log_probs * weights).mean(dim=1)
    torch.testing.assert_close(
        model.classification_loss(output, batch, weights, label_smoothing=0.2),
        (0.8 * w * nll + 0.2 * smooth).sum() / w.sum(),
    )


def test_dropout_keeps_expectation() -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.3, training=True)
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert dropout(x, 0.3, training=False) is x


def test_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    widths = {"t": 16, "a": 8, "v": 8}
    config = small_config(widths, dropout=0.1, pcm_dropout=0.0, vad_head=False)
    model = CORECT(config)
    train = collate(make_dialogues([10] * 16, widths, seed=5, signal=1.0), speakers(2), list(widths))
    test = collate(make_dialogues([10] * 8, widths, seed=6, signal=1.0), speakers(2), list(widths))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        model.classification_loss(model(train), train).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(test).log_probs.argmax(-1)
    accuracy = float((predicted == test.labels)[test.mask].float().mean())
    assert accuracy > 0.7  # chance is 0.25


@pytest.mark.gpu
def test_batch_equals_dialogues_one_by_one_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    model = CORECT(small_config()).cuda().eval()
    dialogues = make_dialogues([9, 2, 17, 1, 5], SMALL, seed=1)
    with torch.no_grad():
        together = model(collate(dialogues, speakers(2), list(SMALL)).to("cuda"))
        for i, d in enumerate(dialogues):
            alone = model(collate([d], speakers(2), list(SMALL)).to("cuda"))
            torch.testing.assert_close(
                together.log_probs[i, : len(d)], alone.log_probs[0], atol=1e-5, rtol=1e-5
            )
    model.train()
    batch = collate(dialogues, speakers(2), list(SMALL)).to("cuda")
    output = model(batch)
    model.classification_loss(output, batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
