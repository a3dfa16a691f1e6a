"""SDT: a multimodal transformer with self-distillation (Ma et al., IEEE TMM 2023), per docs/models.md.

Each modality is projected to ``hidden``; nine one-layer transformer encoders give, for every
target modality, one intra-modal stream (its own context) and one inter-modal stream per other
modality (queries from the target, keys/values from the source). Each stream is gated by
σ(Wx) ⊙ x, the streams of a target are reduced by one linear layer, and the three modality
vectors are fused by a softmax over modalities. The fused vector feeds the final classifier (and
Lantern's VAD head); each modality vector feeds its own classifier, which learns both from the
labels and from the fused classifier (self-distillation).

With a subset of the modalities, the inter-modal encoders are those among the present ones
(two modalities: four encoders; one: the intra-modal encoder alone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lantern.corpus.dialogue import MODALITIES
from lantern.errors import LanternError
from lantern.models.batch import Batch, ModelOutput, labelled_nll
from lantern.models.heads import VADHead


@dataclass
class SDTConfig:
    """Everything that rebuilds an SDT network. ``widths``: modality → input feature width.

    ``gates_frozen`` fixes every unimodal gate's W to the identity and stops its training (the
    published MELD setting: the gate becomes σ(x) ⊙ x); the weights stay in the state dict, as in
    the published parameter count.

    ``input_norm`` **[ours]** LayerNorms each modality's projected features before the positions
    and speaker embeddings are added. Those two are of unit scale per feature, while a sentence
    encoder's unit-length vectors (MiniLM: 384-d, about 0.05 per feature) project to about 0.03:
    without the norm, the content is some forty times smaller than what is added to it (and than
    the dropout noise on it), and text-only SDT on MiniLM features learns speakers and positions
    instead. Off by default: the published network.
    """

    n_classes: int
    n_speakers: int
    widths: dict[str, int] = field(default_factory=dict)
    hidden: int = 1024
    heads: int = 8
    feedforward: int = 1024
    dropout: float = 0.5
    temperature: float = 1.0
    gates_frozen: bool = False
    input_norm: bool = False
    vad_head: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.widths) - set(MODALITIES))
        if not self.widths or unknown:
            raise LanternError(
                f"SDT needs a non-empty subset of modalities t, a, v; got {sorted(self.widths)}"
            )
        if self.n_classes < 1 or self.n_speakers < 1:
            raise LanternError(
                f"SDT needs n_classes >= 1 and n_speakers >= 1, got {self.n_classes}, {self.n_speakers}"
            )
        if self.hidden % self.heads:
            raise LanternError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        if self.temperature <= 0:
            raise LanternError(f"distillation temperature must be > 0, got {self.temperature}")

    @property
    def modalities(self) -> list[str]:
        """Present modalities in canonical order t, a, v."""
        return [m for m in MODALITIES if m in self.widths]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SDTConfig:
        return cls(**{**data, "widths": dict(data["widths"])})

    @classmethod
    def published_iemocap(cls, n_classes: int = 6) -> SDTConfig:
        """IEMOCAP: RoBERTa text 1024, openSMILE audio 1582, DenseFace visual 342, two speakers."""
        return cls(n_classes=n_classes, n_speakers=2, widths={"t": 1024, "a": 1582, "v": 342})

    @classmethod
    def published_meld(cls) -> SDTConfig:
        """MELD: nine speaker slots, audio 300, seven classes, T = 8, gates frozen."""
        return cls(
            n_classes=7,
            n_speakers=9,
            widths={"t": 1024, "a": 300, "v": 342},
            temperature=8.0,
            gates_frozen=True,
        )


def sinusoidal_positions(n: int, dim: int, device: torch.device) -> torch.Tensor:
    """``(n, dim)`` fixed sine/cosine position encoding (sin on even, cos on odd features)."""
    position = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return pe


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over a dialogue (per-head scale 1/√d_head, dropout on the
    attention weights, output Linear), padding keys masked. The boolean mask gives the published
    −1e10 fill's result: every dialogue has a real key, so masked weights are zero either way.

    query: ``(B, N, H)``, context: ``(B, N, H)``, mask: ``(B, N)`` bool → ``(B, N, H)``.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        return x.view(b, n, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self._split(self.query(query)),
            self._split(self.key(context)),
            self._split(self.value(context)),
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        b, _, n, _ = attended.shape
        return self.out(attended.transpose(1, 2).reshape(b, n, -1))


class EncoderLayer(nn.Module):
    """The published one-layer encoder (docs/models.md § SDT, item 3): queries from the target modality,
    keys/values from the source. Positions and speaker embeddings are added to both inputs here
    ("inside every encoder"), then dropout; attention without a LayerNorm before it, residual onto
    the dropped query input; then a pre-LayerNorm tanh-GELU feed-forward. The speaker table is
    shared by the nine encoders and passed in already looked up.

    query, position_speaker: ``(B, N, H)``; context: ``(B, N, H)``, or None for the intra-modal
    encoder, whose keys/values are the query input itself (embedded and dropped once, as published);
    mask: ``(B, N)`` → ``(B, N, H)``, zero on padding (the public layer leaves padding rows as
    computed; everything after the encoders works per utterance, so zeroing them changes no real
    utterance and keeps padded features out of the padded outputs).
    """

    def __init__(self, hidden: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        # Never applied: the public layer norms its input only from its second layer on and has one
        # layer, yet defines the norm — its weights are part of the published parameter count. Frozen,
        # so the optimiser does not carry state for weights that get no gradient.
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-6).requires_grad_(False)
        self.attention = MultiHeadAttention(hidden, heads, dropout)
        self.feedforward_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.feedforward = nn.Sequential(
            nn.Linear(hidden, feedforward),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(feedforward, hidden),
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor | None,
        position_speaker: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        if context is None:
            q = kv = self.drop(query + position_speaker)
        else:
            # Keys/values first: the published order of the two dropout draws.
            kv = self.drop(context + position_speaker)
            q = self.drop(query + position_speaker)
        h = q + self.drop(self.attention(q, kv, mask))
        h = h + self.drop(self.feedforward(self.feedforward_norm(h)))
        return h * mask[..., None]


class SDT(nn.Module):
    """The SDT network. forward(Batch) → ModelOutput with fused log-probs ``(B, N, C)``, VAD
    ``(B, N, 3)`` from the fused vector, and per-modality log-probs in ``aux_log_probs``."""

    def __init__(self, config: SDTConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        mods = config.modalities
        self.projections = nn.ModuleDict(
            {m: nn.Conv1d(config.widths[m], h, kernel_size=1, bias=False) for m in mods}
        )
        self.input_norms = nn.ModuleDict({m: nn.LayerNorm(h) for m in mods}) if config.input_norm else None
        # Last row: the padding speaker (never trained, zero).
        self.speaker_embedding = nn.Embedding(config.n_speakers + 1, h, padding_idx=config.n_speakers)
        streams = [_stream(source, target) for target in mods for source in mods]
        self.encoders = nn.ModuleDict(
            {k: EncoderLayer(h, config.heads, config.feedforward, config.dropout) for k in streams}
        )
        self.gates = nn.ModuleDict({k: nn.Linear(h, h, bias=False) for k in streams})
        if config.gates_frozen:
            for gate in self.gates.values():
                with torch.no_grad():
                    gate.weight.copy_(torch.eye(h))
                gate.weight.requires_grad_(False)
        self.reductions = nn.ModuleDict({m: nn.Linear(len(mods) * h, h) for m in mods})
        self.fusion = nn.Linear(h, h, bias=False)
        self.modality_heads = nn.ModuleDict(
            {
                m: nn.Sequential(nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(h, config.n_classes))
                for m in mods
            }
        )
        self.classifier = nn.Linear(h, config.n_classes)
        self.vad_head = VADHead(h) if config.vad_head else None

    def forward(self, batch: Batch) -> ModelOutput:
        mods = self.config.modalities
        mask = batch.mask
        speakers = batch.speakers.masked_fill(~mask, self.config.n_speakers)
        n = mask.shape[1]
        position_speaker = sinusoidal_positions(n, self.config.hidden, mask.device)[
            None
        ] + self.speaker_embedding(speakers)
        # (B, N, width) → Conv1d over utterances → (B, N, H)
        x = {m: self.projections[m](batch.features[m].transpose(1, 2)).transpose(1, 2) for m in mods}
        if self.input_norms is not None:
            x = {m: self.input_norms[m](x[m]) for m in mods}
        reduced = {}
        for target in mods:
            streams = []
            for source in mods:
                key = _stream(source, target)
                context = None if source == target else x[source]
                s = self.encoders[key](x[target], context, position_speaker, mask)
                streams.append(torch.sigmoid(self.gates[key](s)) * s)
            reduced[target] = self.reductions[target](torch.cat(streams, dim=-1))
        stacked = torch.stack([reduced[m] for m in mods], dim=-2)  # (B, N, M, H)
        weights = torch.softmax(self.fusion(stacked), dim=-2)
        fused = (weights * stacked).sum(dim=-2)  # (B, N, H)
        return ModelOutput(
            log_probs=F.log_softmax(self.classifier(fused), dim=-1),
            vad=self.vad_head(fused) if self.vad_head is not None else None,
            aux_log_probs={m: F.log_softmax(self.modality_heads[m](reduced[m]), dim=-1) for m in mods},
        )

    def classification_loss(
        self,
        output: ModelOutput,
        batch: Batch,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """NLL(fused) + Σ_m NLL(m) + Σ_m KL(softmax(fused/T) ‖ softmax(m/T)), weights 1/1/1.

        The KL keeps docs/models.md's direction: the fused distribution P is the reference, each
        modality's Q_m is pulled towards it, KL = Σ_c P (log P − log Q_m). Neither side is
        detached — the published loss is written without a stop-gradient, so the fused classifier
        also receives the distillation gradient. NLL terms average over labelled utterances
        (class-weighted when ``class_weights`` ``(C,)`` is given, against smoothed labels when
        ``label_smoothing`` > 0: ``labelled_nll``); the KL averages over all real utterances,
        labelled or not, since it needs no label.
        """
        loss = labelled_nll(output.log_probs, batch.labels, class_weights, label_smoothing)
        temperature = self.config.temperature
        # log_softmax(log_softmax(z) / T) == log_softmax(z / T): shifts per row do not matter.
        teacher = F.log_softmax(output.log_probs / temperature, dim=-1)
        real = batch.mask
        for log_probs in output.aux_log_probs.values():
            loss = loss + labelled_nll(log_probs, batch.labels, class_weights, label_smoothing)
            student = F.log_softmax(log_probs / temperature, dim=-1)
            kl = (teacher.exp() * (teacher - student)).sum(dim=-1)  # (B, N)
            loss = loss + kl[real].mean()
        return loss


def _stream(source: str, target: str) -> str:
    """Name of the encoder whose queries come from ``target`` and keys/values from ``source``."""
    return f"{source}_to_{target}"
