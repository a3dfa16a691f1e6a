"""SDT: the published parameter counts, masking, the self-distillation loss, configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lantern.models.batch import IGNORE_LABEL, collate
from lantern.models.registry import config_for_corpus, parameter_summary, speaker_vocabulary
from lantern.models.sdt import SDT, EncoderLayer, SDTConfig, sinusoidal_positions
from tests.models.synthetic import SMALL_SDT, WIDTHS


def count(config: SDTConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in SDT(config).parameters())


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (SDTConfig.published_iemocap(6), 79_687_704),
        (SDTConfig.published_iemocap(4), 79_679_504),
        (SDTConfig.published_meld(), 78_386_204),
    ],
)
def test_published_parameter_counts_without_vad_head(config, expected):
    config.vad_head = False
    assert count(config) == expected


def test_vad_head_is_counted_apart_from_the_backbone():
    with torch.device("meta"):
        model = SDT(SDTConfig.published_iemocap(6))
    summary = parameter_summary(model)
    assert summary["backbone_parameters"] == 79_687_704
    assert summary["vad_head_parameters"] == 1024 * 64 + 64 + 64 * 3 + 3
    assert summary["total_parameters"] == summary["backbone_parameters"] + summary["vad_head_parameters"]


def test_published_meld_config():
    c = SDTConfig.published_meld()
    assert (c.n_classes, c.n_speakers, c.widths["a"], c.temperature, c.gates_frozen) == (7, 9, 300, 8.0, True)


def test_config_json_round_trip():
    c = SDTConfig(n_classes=5, n_speakers=3, widths={"t": 7, "v": 4}, hidden=16, heads=2, temperature=2.0)
    assert SDTConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("bad", [{}, {"x": 3}])
def test_config_rejects_unknown_or_no_modalities(bad):
    with pytest.raises(ValueError, match="modalities"):
        SDTConfig(n_classes=4, n_speakers=2, widths=bad)


def small_model(corpus, seed: int = 0, **overrides) -> SDT:
    torch.manual_seed(seed)
    return SDT(config_for_corpus("sdt", corpus, **{**SMALL_SDT, **overrides}))


def test_padded_batch_equals_each_dialogue_alone(synthetic_corpus):
    model = small_model(synthetic_corpus).eval()
    vocab = speaker_vocabulary(synthetic_corpus)
    dialogues = sorted(synthetic_corpus.split("dev")[:4], key=len)  # different lengths → padding
    assert len({len(d) for d in dialogues}) > 1
    with torch.no_grad():
        together = model(collate(dialogues, vocab, list(WIDTHS)))
        for i, d in enumerate(dialogues):
            alone = model(collate([d], vocab, list(WIDTHS)))
            n = len(d)
            torch.testing.assert_close(together.log_probs[i, :n], alone.log_probs[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together.vad[i, :n], alone.vad[0], atol=1e-5, rtol=1e-5)
            for m in WIDTHS:
                torch.testing.assert_close(
                    together.aux_log_probs[m][i, :n], alone.aux_log_probs[m][0], atol=1e-5, rtol=1e-5
                )


def test_padding_content_does_not_leak(synthetic_corpus):
    model = small_model(synthetic_corpus).eval()
    vocab = speaker_vocabulary(synthetic_corpus)
    batch = collate(sorted(synthetic_corpus.split("dev")[:3], key=len), vocab, list(WIDTHS))
    with torch.no_grad():
        before = model(batch).log_probs[batch.mask]
        for m in WIDTHS:
            batch.features[m][~batch.mask] = 1e3
        batch.speakers[~batch.mask] = 1
        after = model(batch).log_probs[batch.mask]
    torch.testing.assert_close(before, after)


@pytest.mark.parametrize("input_norm", [True, False])
def test_input_norm_makes_the_output_independent_of_the_feature_scale(synthetic_corpus, input_norm):
    """With the norm, the output does not depend on the scale of the features (only LayerNorm's eps
    makes a difference, negligible at these scales); the published network (no norm) reads
    rescaled features differently."""
    model = small_model(synthetic_corpus, input_norm=input_norm).eval()
    batch = collate(synthetic_corpus.split("dev")[:3], speaker_vocabulary(synthetic_corpus), list(WIDTHS))
    with torch.no_grad():
        before = model(batch).log_probs[batch.mask]
        for m in WIDTHS:
            batch.features[m] = batch.features[m] * 10
        after = model(batch).log_probs[batch.mask]
    assert torch.allclose(before, after, atol=1e-4) == input_norm


def test_input_norm_is_off_in_the_published_configs():
    assert not SDTConfig.published_meld().input_norm and not SDTConfig.published_iemocap().input_norm
    with_norm = SDTConfig.published_meld()
    with_norm.input_norm = True
    assert count(with_norm) == count(SDTConfig.published_meld()) + 3 * 2 * 1024


@pytest.mark.parametrize(("modalities", "encoders"), [(["t", "a", "v"], 9), (["t", "v"], 4), (["a"], 1)])
def test_modality_subsets_use_encoders_among_present_modalities(synthetic_corpus, modalities, encoders):
    model = small_model(synthetic_corpus, modalities=modalities)
    assert len(model.encoders) == encoders == len(model.gates)
    batch = collate(synthetic_corpus.split("dev")[:2], speaker_vocabulary(synthetic_corpus), modalities)
    out = model(batch)
    assert set(out.aux_log_probs) == set(modalities)
    assert out.log_probs.shape == (*batch.mask.shape, 4)
    assert model.reductions[modalities[0]].in_features == len(modalities) * SMALL_SDT["hidden"]


def test_frozen_gates_stay_identity_through_training(synthetic_corpus):
    model = small_model(synthetic_corpus, gates_frozen=True)
    batch = collate(synthetic_corpus.split("train")[:4], speaker_vocabulary(synthetic_corpus), list(WIDTHS))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.classification_loss(model(batch), batch).backward()
    opt.step()
    eye = torch.eye(SMALL_SDT["hidden"])
    for gate in model.gates.values():
        assert not gate.weight.requires_grad
        assert torch.equal(gate.weight, eye)


def test_loss_is_nll_plus_modality_nll_plus_kl_fused_to_modality(synthetic_corpus):
    model = small_model(synthetic_corpus, temperature=2.0).eval()
    batch = collate(synthetic_corpus.split("train")[:3], speaker_vocabulary(synthetic_corpus), list(WIDTHS))
    out = model(batch)
    labelled = batch.labels != IGNORE_LABEL
    expected = F.nll_loss(out.log_probs[labelled], batch.labels[labelled])
    teacher = F.softmax(out.log_probs[batch.mask] / 2.0, dim=-1)
    for lp in out.aux_log_probs.values():
        expected = expected + F.nll_loss(lp[labelled], batch.labels[labelled])
        # kl_div(input=log Q, target=P) = KL(P ‖ Q): fused P is the reference.
        student = F.log_softmax(lp[batch.mask] / 2.0, dim=-1)
        expected = expected + F.kl_div(student, teacher, reduction="batchmean")
    torch.testing.assert_close(model.classification_loss(out, batch), expected)


def test_distillation_gradient_reaches_the_fused_classifier(synthetic_corpus):
    """With no labels only the KL term remains; the fused side is not detached, so it gets gradient."""
    model = small_model(synthetic_corpus)
    batch = collate(synthetic_corpus.split("train")[:3], speaker_vocabulary(synthetic_corpus), list(WIDTHS))
    batch.labels.fill_(IGNORE_LABEL)
    loss = model.classification_loss(model(batch), batch)
    loss.backward()
    assert loss.item() > 0
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.modality_heads["t"][-1].weight.grad.abs().sum() > 0


def test_class_weights_change_the_loss(synthetic_corpus):
    model = small_model(synthetic_corpus).eval()
    batch = collate(synthetic_corpus.split("train")[:3], speaker_vocabulary(synthetic_corpus), list(WIDTHS))
    out = model(batch)
    plain = model.classification_loss(out, batch)
    weighted = model.classification_loss(out, batch, torch.tensor([10.0, 1.0, 1.0, 1.0]))
    uniform = model.classification_loss(out, batch, torch.full((4,), 3.0))
    assert not torch.isclose(plain, weighted)
    torch.testing.assert_close(plain, uniform)  # the weighted mean only depends on relative weights


# One published encoder layer (MODELS.md § SDT, item 3), written from the description with plain tensor
# operations; it reads the module's weights so both compute with the same parameters.
def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * norm.weight + norm.bias


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def reference_encoder_layer(layer, query, context, position_speaker, mask, heads, p, train):
    """``context`` None: intra-modal, keys/values are the query stream itself (embedded and dropped once).

    Dropout draws follow the published order: keys/values input, query input, attention weights, context,
    then the two feed-forward dropouts.
    """

    def drop(x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, p, training=train)

    if context is None:
        x_b = drop(query + position_speaker)
        x_a = x_b
    else:
        x_a = drop(context + position_speaker)
        x_b = drop(query + position_speaker)
    b, n, h = x_b.shape
    d = h // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, n, heads, d).transpose(1, 2)

    attention = layer.attention
    q = split(_linear(x_b, attention.query)) / math.sqrt(d)
    k, v = split(_linear(x_a, attention.key)), split(_linear(x_a, attention.value))
    scores = (q @ k.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], -1e10)
    weights = drop(torch.softmax(scores, dim=-1))
    context_vectors = _linear((weights @ v).transpose(1, 2).reshape(b, n, h), attention.out)
    x = drop(context_vectors) + x_b
    w1, w2 = layer.feedforward[0], layer.feedforward[-1]
    return x + drop(_linear(drop(_tanh_gelu(_linear(_layer_norm(x, layer.feedforward_norm), w1))), w2))


LAYER = {"hidden": 16, "heads": 4, "feedforward": 24}


def layer_inputs(scale: float = 1.0, seed: int = 0):
    """Three dialogues of lengths 5, 3, 1 (padding after each), with positions + speaker embeddings,
    all multiplied by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    b, n, h = 3, 5, LAYER["hidden"]
    mask = torch.arange(n)[None, :] < torch.tensor([5, 3, 1])[:, None]
    speakers = torch.randint(0, 2, (b, n), generator=g).masked_fill(~mask, 2)
    speaker_table = torch.randn(3, h, generator=g)
    speaker_table[2] = 0.0  # the padding speaker
    position_speaker = sinusoidal_positions(n, h, torch.device("cpu"))[None] + speaker_table[speakers]
    query, context = torch.randn(b, n, h, generator=g), torch.randn(b, n, h, generator=g)
    return query * scale, context * scale, position_speaker * scale, mask


def random_layer(dropout: float, attention_scale: float = 1.0) -> EncoderLayer:
    """Every weight random, LayerNorm gains and biases included, so that a misused one shows; the
    attention's weights multiplied by ``attention_scale``."""
    torch.manual_seed(1)
    layer = EncoderLayer(LAYER["hidden"], LAYER["heads"], LAYER["feedforward"], dropout)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
        for param in layer.attention.parameters():
            param.mul_(attention_scale)
    return layer


@pytest.mark.parametrize("scale", [1.0, 1e-3], ids=["unit", "small"])  # small: the LayerNorm eps shows
@pytest.mark.parametrize("intra", [False, True], ids=["inter_modal", "intra_modal"])
def test_encoder_layer_matches_the_published_function(intra, scale):
    layer = random_layer(0.5, attention_scale=scale).eval()
    query, context, position_speaker, mask = layer_inputs(scale)
    context = None if intra else context
    with torch.no_grad():
        out = layer(query, context, position_speaker, mask)
        expected = reference_encoder_layer(
            layer, query, context, position_speaker, mask, LAYER["heads"], 0.5, train=False
        )
    torch.testing.assert_close(out[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))


@pytest.mark.parametrize("intra", [False, True], ids=["inter_modal", "intra_modal"])
def test_encoder_layer_drops_out_where_published(intra):
    """Same seed, same dropout masks: every dropout site is a draw from the generator in turn, so a
    missing, extra, moved or reordered dropout (or two draws where the intra-modal layer makes one)
    changes the masks or where they apply, and the outputs differ."""
    layer = random_layer(0.5).train()
    query, context, position_speaker, mask = layer_inputs()
    context = None if intra else context
    with torch.no_grad():
        torch.manual_seed(7)
        out = layer(query, context, position_speaker, mask)
        torch.manual_seed(7)
        expected = reference_encoder_layer(
            layer, query, context, position_speaker, mask, LAYER["heads"], 0.5, train=True
        )
        assert not torch.allclose(out[mask], layer.eval()(query, context, position_speaker, mask)[mask])
    torch.testing.assert_close(out[mask], expected[mask], atol=1e-5, rtol=1e-5)
