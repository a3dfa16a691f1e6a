"""CORECT: relational temporal graph network plus pairwise cross-modal attention (EMNLP 2023).

The network of docs/models.md, written from that description: unimodal encoders, a speaker
embedding, the RT-GCN over one node per (utterance, modality), the P-CM cross-modal transformers,
and a classifier on their concatenation; the multi-task VAD head (docs/method.md §1) reads the same
concatenation. Unlike the public code it masks padding everywhere (a batch gives the outputs of
its dialogues run one by one), takes any number of speakers and any subset of modalities, and
builds its graph with tensor operations.

The two graph layers are written here rather than taken from torch_geometric: they hold the same
parameters as ``RGCNConv`` (mean aggregation per relation, root weight, bias) and
``TransformerConv`` (concatenated heads, skip connection) and compute the same function (a test
checks it against torch_geometric), but run the attention of each dialogue's nodes as one dense
masked ``scaled_dot_product_attention`` instead of gather/scatter over edges, and need none of
torch_geometric's optional compiled extensions. The text transformer is likewise written out
(same function and parameters as ``nn.TransformerEncoderLayer``, also checked by a test) so that
its position-wise products skip padded utterances. Dropout samples its mask with ``torch.rand``
on CPU, about twice as fast there as the Bernoulli sampler behind ``F.dropout``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lantern.corpus.dialogue import MODALITIES
from lantern.errors import LanternError
from lantern.models.batch import Batch, ModelOutput, labelled_nll
from lantern.models.heads import VADHead

TEXT_ENCODERS = ("transformer", "mlp", "lstm")


@dataclass
class CORECTConfig:
    """Everything that rebuilds a CORECT module.

    widths: input feature width per modality, any non-empty subset of "t", "a", "v". wp/wf: an
    utterance's temporal graph edges reach utterances [j-wp, j+wf). text_encoder: "transformer"
    (published), or the public code's variants "mlp" and "lstm". pcm_dropout: dropout inside the
    P-CM transformers (residual branches, feed-forward and attention weights); the public code
    builds them with none, hence 0.
    """

    n_classes: int
    n_speakers: int
    widths: dict[str, int] = field(default_factory=dict)
    hidden: int = 100
    wp: int = 11
    wf: int = 5
    text_encoder: str = "transformer"
    text_layers: int = 2
    text_ff: int = 2048
    dropout: float = 0.5
    gnn_heads: int = 7
    pcm_layers: int = 2
    pcm_self_layers: int = 3
    pcm_heads: int = 2
    pcm_dropout: float = 0.0
    vad_head: bool = True
    vad_hidden: int = 64

    def __post_init__(self) -> None:
        unknown = set(self.widths) - set(MODALITIES)
        if not self.widths or unknown:
            raise LanternError(f"CORECT widths must name some of {MODALITIES}, got {sorted(self.widths)}")
        if any(w < 1 for w in self.widths.values()):
            raise LanternError(f"CORECT widths must be positive, got {self.widths}")
        if self.n_classes < 2 or self.n_speakers < 1:
            raise LanternError(
                f"CORECT needs n_classes >= 2 and n_speakers >= 1, got {self.n_classes}, {self.n_speakers}"
            )
        if self.wp < 0 or self.wf < 1:
            raise LanternError(
                f"CORECT window [j-wp, j+wf) must contain j: wp >= 0, wf >= 1, got {self.wp}, {self.wf}"
            )
        if self.text_encoder not in TEXT_ENCODERS:
            raise LanternError(
                f"CORECT text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}"
            )
        for name, width, heads in self._attention_widths():
            if width % heads:
                raise LanternError(f"CORECT {name} width {width} is not divisible by its {heads} heads")

    def _attention_widths(self) -> list[tuple[str, int, int]]:
        checks = [("graph", self.hidden * self.gnn_heads, self.gnn_heads)]
        if len(self.modalities) > 1:
            checks += [
                ("cross-modal", self.hidden, self.pcm_heads),
                ("P-CM self-attention", self.hidden * (len(self.modalities) - 1), self.pcm_heads),
            ]
        return checks

    @property
    def modalities(self) -> tuple[str, ...]:
        """The configured modalities in canonical order (t, a, v)."""
        return tuple(m for m in MODALITIES if m in self.widths)

    @property
    def representation_width(self) -> int:
        """Width of the final utterance representation the classifier and VAD head read."""
        m = len(self.modalities)
        return m * self.hidden * self.gnn_heads + m * (m - 1) * self.hidden

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CORECTConfig:
        return cls(**{**data, "widths": dict(data["widths"])})

    @classmethod
    def published(cls, n_classes: int = 6, **overrides: Any) -> CORECTConfig:
        """The published IEMOCAP configuration (text 768, audio 100, visual 512, two speakers).

        With ``vad_head=False`` this is exactly the public live network (17,703,074 parameters
        for 6 classes).
        """
        values: dict[str, Any] = {
            "n_classes": n_classes,
            "n_speakers": 2,
            "widths": {"t": 768, "a": 100, "v": 512},
        }
        return cls(**{**values, **overrides})


def text_heads(width: int) -> int:
    """Heads of the text transformer: the first divisor of the width among 7..14 (8 for 768), else
    the largest divisor below 7."""
    for heads in range(7, 15):
        if width % heads == 0:
            return heads
    return max(h for h in range(1, 7) if width % h == 0)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout. On CPU, keeping where ``rand >= p`` costs about half of the Bernoulli
    sampler behind ``F.dropout`` (a large share of a CPU training step); on GPU F.dropout is fused."""
    if not training or p == 0.0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, training=True)
    return x * ((torch.rand_like(x) >= p).to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(nn.Module):
    """``nn.Dropout`` with the faster CPU sampling of ``dropout``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias that hides padded keys: mask ``(B, N)`` bool → ``(B, 1, 1, N)``,
    built once per forward rather than converted from a boolean mask by every attention call."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return bias[:, None, None]


class Attention(nn.Module):
    """Multi-head attention (the parameters and initialisation of ``nn.MultiheadAttention``), query
    from x, key/value from context: ``(B, N, width)`` → same. bias: ``key_bias`` of the keys."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        if context is x:
            q, k, v = self.in_proj(x).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj.weight.split([width, 2 * width])
            b_q, b_kv = self.in_proj.bias.split([width, 2 * width])
            q = F.linear(x, w_q, b_q)
            k, v = F.linear(context, w_kv, b_kv).chunk(2, dim=-1)
        return self.out_proj(self.attend(q, k, v, bias))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Projected ``(B, N, width)`` queries, keys, values → attended values, before out_proj."""
        b, n, width = q.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, -1, self.heads, width // self.heads).transpose(1, 2)

        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=bias, dropout_p=p)
        return y.transpose(1, 2).reshape(b, n, width)


class FeedForwardEncoder(nn.Module):
    """Audio/visual (and the "mlp" text variant) encoder: ``(..., width)`` → ``(..., hidden)``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextLayer(nn.Module):
    """One layer of the standard post-LayerNorm transformer encoder (the function and parameters of
    ``nn.TransformerEncoderLayer`` with ReLU) over packed tokens: only the attention sees the padded
    layout, so every position-wise product skips the padding.

    tokens: ``(T, width)`` the real utterances; index: ``(T,)`` their positions in the flattened
    ``(B*N)`` layout; bias: ``key_bias`` ``(B, 1, 1, N)`` → ``(T, width)``.
    """

    def __init__(self, width: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.attn = Attention(width, heads, dropout)
        self.attn_norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff), nn.ReLU(), Dropout(dropout), nn.Linear(ff, width))
        self.ff_norm = nn.LayerNorm(width)
        self.dropout = Dropout(dropout)

    def forward(self, tokens: torch.Tensor, index: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n = bias.shape[0], bias.shape[-1]
        qkv = self.attn.in_proj(tokens)
        padded = qkv.new_zeros(b * n, qkv.shape[1]).index_copy(0, index, qkv).view(b, n, -1)
        attended = self.attn.attend(*padded.chunk(3, dim=-1), bias).reshape(b * n, -1)[index]
        x = self.attn_norm(tokens + self.dropout(self.attn.out_proj(attended)))
        return self.ff_norm(x + self.dropout(self.ff(x)))


class TransformerTextEncoder(nn.Module):
    """Standard transformer over a dialogue's sentence embeddings at their own width (heads from
    ``text_heads``), then a projection to the hidden size: ``(B, N, width)`` → ``(B, N, hidden)``
    (zero at padding)."""

    def __init__(self, width: int, hidden: int, layers: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TextLayer(width, text_heads(width), ff, dropout) for _ in range(layers))
        self.proj = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        index = mask.reshape(-1).nonzero().squeeze(1)
        tokens = x.reshape(b * n, width)[index]
        bias = key_bias(mask, x.dtype)
        for layer in self.layers:
            tokens = layer(tokens, index, bias)
        out = self.proj(tokens)
        return out.new_zeros(b * n, out.shape[1]).index_copy(0, index, out).view(b, n, -1)


class LSTMTextEncoder(nn.Module):
    """Bidirectional LSTM variant of the text encoder: ``(B, N, width)`` → ``(B, N, hidden)``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(width, hidden // 2, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * (hidden // 2), hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.proj(out)


@dataclass
class DialogueGraph:
    """The RT-GCN graph of a batch, over its real utterances only.

    Node ``m * T + u`` is modality m of the u-th real utterance (dialogues in batch order, T real
    utterances in all). src/dst/relation: ``(E,)`` edges; norm: ``(E,)`` 1 / (number of edges of the
    same relation into the same node), RGCN's per-relation mean. dense_index: ``(M*T,)`` position of
    each node in the ``(B, M*N)`` per-dialogue layout; dense_mask: ``(B, M*N, M*N)`` True where node
    q receives from node k (row = receiver).
    """

    src: torch.Tensor
    dst: torch.Tensor
    relation: torch.Tensor
    norm: torch.Tensor
    dense_index: torch.Tensor
    dense_mask: torch.Tensor
    n_relations: int


def n_relations(n_modalities: int) -> int:
    """{past, self, future} per modality plus one per ordered pair of modalities (15 for three)."""
    return 3 * n_modalities + n_modalities * (n_modalities - 1)


def dialogue_graph(lengths: torch.Tensor, n_modalities: int, wp: int, wf: int) -> DialogueGraph:
    """Build the RT-GCN graph for dialogues of the given lengths ``(B,)`` with tensor operations.

    Temporal edges, per modality m: from utterance j to every utterance k of the same dialogue in
    [j-wp, j+wf), relation 3m + (0 past: k < j, 1 self, 2 future: k > j). Cross-modal edges: from
    modality m1 to modality m2 of the same utterance, one relation per ordered pair (m1, m2).
    """
    device = lengths.device
    m_count = n_modalities
    b = lengths.shape[0]
    n = int(lengths.max())
    total = int(lengths.sum())
    dialogue = torch.repeat_interleave(torch.arange(b, device=device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    utterance = torch.arange(total, device=device)
    position = utterance - starts[dialogue]

    offsets = torch.arange(-wp, wf, device=device)
    target = position[:, None] + offsets[None, :]
    valid = (target >= 0) & (target < lengths[dialogue][:, None])
    src_u = utterance[:, None].expand_as(target)[valid]
    step = offsets[None, :].expand_as(target)[valid]
    direction = torch.sign(step) + 1
    modality = torch.arange(m_count, device=device)[:, None]
    temporal_src = (modality * total + src_u).reshape(-1)
    temporal_dst = (modality * total + src_u + step).reshape(-1)
    temporal_rel = (3 * modality + direction).reshape(-1)

    pairs = torch.tensor(
        [(i, j) for i in range(m_count) for j in range(m_count) if i != j], dtype=torch.long, device=device
    ).reshape(-1, 2)
    cross_src = (pairs[:, :1] * total + utterance).reshape(-1)
    cross_dst = (pairs[:, 1:] * total + utterance).reshape(-1)
    cross_rel = (3 * m_count + torch.arange(len(pairs), device=device))[:, None].expand(-1, total).reshape(-1)

    src = torch.cat([temporal_src, cross_src])
    dst = torch.cat([temporal_dst, cross_dst])
    relation = torch.cat([temporal_rel, cross_rel])
    r_count = n_relations(m_count)
    key = dst * r_count + relation
    count = torch.zeros(m_count * total * r_count, device=device).index_add_(
        0, key, torch.ones_like(key, dtype=torch.float)
    )
    norm = 1.0 / count[key]

    node_modality = torch.arange(m_count, device=device).repeat_interleave(total)
    node_utterance = utterance.repeat(m_count)
    dense_slot = node_modality * n + position[node_utterance]
    dense_index = dialogue[node_utterance] * (m_count * n) + dense_slot
    dense_mask = torch.zeros(b * m_count * n, m_count * n, dtype=torch.bool, device=device)
    dense_mask[dense_index[dst], dense_slot[src]] = True
    return DialogueGraph(
        src, dst, relation, norm, dense_index, dense_mask.view(b, m_count * n, m_count * n), r_count
    )


class RelationalGraphConv(nn.Module):
    """R-GCN layer (parameters and function of torch_geometric's ``RGCNConv`` with defaults):
    out_i = root·x_i + bias + Σ_r mean_{j→i of relation r} W_r·x_j. ``(nodes, in)`` → ``(nodes, out)``."""

    def __init__(self, in_features: int, out_features: int, relations: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(relations, in_features, out_features))
        self.root = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.weight)
        nn.init.xavier_uniform_(self.root)

    def forward(self, x: torch.Tensor, graph: DialogueGraph) -> torch.Tensor:
        r, d_in, d_out = self.weight.shape
        per_relation = (x @ self.weight.permute(1, 0, 2).reshape(d_in, r * d_out)).view(-1, d_out)
        messages = per_relation[graph.src * r + graph.relation] * graph.norm[:, None]
        out = torch.addmm(self.bias, x, self.root)
        # Under autocast the products come out in bf16 but the norm-scaled messages in fp32.
        return out.index_add(0, graph.dst, messages.to(out.dtype))


class GraphTransformerConv(nn.Module):
    """Graph transformer layer (parameters and function of torch_geometric's ``TransformerConv``
    with concatenated heads and root weight): each node attends over the nodes it receives from.

    The attention runs per dialogue as dense masked attention over its M·N nodes, which is exact
    (edges never leave a dialogue) and much faster than per-edge gather/scatter.
    ``(nodes, in)`` → ``(nodes, heads * out)``.
    """

    def __init__(self, in_features: int, out_features: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.out_features = out_features
        self.lin_query = nn.Linear(in_features, heads * out_features)
        self.lin_key = nn.Linear(in_features, heads * out_features)
        self.lin_value = nn.Linear(in_features, heads * out_features)
        self.lin_skip = nn.Linear(in_features, heads * out_features)

    def forward(self, x: torch.Tensor, graph: DialogueGraph) -> torch.Tensor:
        b, slots, _ = graph.dense_mask.shape
        width = self.heads * self.out_features

        def dense(y: torch.Tensor) -> torch.Tensor:
            # Padded slots stay zero; the mask keeps them out of every real node's attention.
            out = y.new_zeros(b * slots, width).index_copy(0, graph.dense_index, y)
            return out.view(b, slots, self.heads, self.out_features).transpose(1, 2)

        q, k, v = dense(self.lin_query(x)), dense(self.lin_key(x)), dense(self.lin_value(x))
        # A padded slot receives from nothing; let it attend to itself so its (discarded) row is finite.
        mask = graph.dense_mask | torch.eye(slots, dtype=torch.bool, device=x.device)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        attended = attended.transpose(1, 2).reshape(b * slots, width)[graph.dense_index]
        return attended + self.lin_skip(x)


class RTGCN(nn.Module):
    """Relational temporal graph network: RGCN → graph transformer → BatchNorm → LeakyReLU.
    ``(M*T, hidden)`` node features → ``(M*T, heads * hidden)``."""

    def __init__(self, hidden: int, relations: int, heads: int) -> None:
        super().__init__()
        self.rgcn = RelationalGraphConv(hidden, hidden, relations)
        self.transformer = GraphTransformerConv(hidden, hidden, heads)
        self.norm = nn.BatchNorm1d(heads * hidden)

    def forward(self, x: torch.Tensor, graph: DialogueGraph) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.transformer(self.rgcn(x, graph), graph)))


class CrossModalLayer(nn.Module):
    """Pre-LayerNorm transformer layer whose keys/values may come from another modality (MulT)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.ff_norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, 4 * width), nn.ReLU(), Dropout(dropout), nn.Linear(4 * width, width)
        )
        self.dropout = Dropout(dropout)
        for linear in (self.ff[0], self.ff[3]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
        q = self.attn_norm(x)
        kv = q if context is None else self.attn_norm(context)
        x = x + self.dropout(self.attn(q, kv, bias))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class CrossModalTransformer(nn.Module):
    """Stack of CrossModalLayers with inputs scaled by √width, no position encoding, and a final
    LayerNorm. Self-attention when no context is given. ``(B, N, width)`` → same."""

    def __init__(self, width: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.scale = math.sqrt(width)
        self.layers = nn.ModuleList(CrossModalLayer(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x * self.scale
        context = None if context is None else context * self.scale
        for layer in self.layers:
            x = layer(x, context, bias)
        return self.norm(x)


class PairwiseCrossModal(nn.Module):
    """P-CM: for each target modality j, cross-attend from j to every other modality k, concatenate
    the results, refine them with self-attention; concatenate over targets.
    modality → ``(B, N, hidden)`` → ``(B, N, M(M-1)·hidden)``."""

    def __init__(
        self,
        modalities: tuple[str, ...],
        hidden: int,
        heads: int,
        layers: int,
        self_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.modalities = modalities
        self.cross = nn.ModuleDict(
            {
                f"{j}{k}": CrossModalTransformer(hidden, heads, layers, dropout)
                for j in modalities
                for k in modalities
                if j != k
            }
        )
        width = hidden * (len(modalities) - 1)
        self.refine = nn.ModuleDict(
            {j: CrossModalTransformer(width, heads, self_layers, dropout) for j in modalities}
        )

    def forward(self, x: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        bias = key_bias(mask, next(iter(x.values())).dtype)
        out = []
        for j in self.modalities:
            crossed = [self.cross[f"{j}{k}"](x[j], bias, context=x[k]) for k in self.modalities if k != j]
            out.append(self.refine[j](torch.cat(crossed, dim=-1), bias))
        return torch.cat(out, dim=-1)


class CORECT(nn.Module):
    """CORECT with an optional VAD head: ``Batch`` → ``ModelOutput`` with log_probs ``(B, N, C)``
    (uniform at padding) and vad ``(B, N, 3)``."""

    def __init__(self, config: CORECTConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        modalities = config.modalities
        self.encoders = nn.ModuleDict()
        for m in modalities:
            width = config.widths[m]
            if m != "t" or config.text_encoder == "mlp":
                self.encoders[m] = FeedForwardEncoder(width, h)
            elif config.text_encoder == "transformer":
                self.encoders[m] = TransformerTextEncoder(
                    width, h, config.text_layers, config.text_ff, config.dropout
                )
            else:
                self.encoders[m] = LSTMTextEncoder(width, h)
        self.speaker = nn.Embedding(config.n_speakers, h)
        self.graph = RTGCN(h, n_relations(len(modalities)), config.gnn_heads)
        self.pcm = (
            PairwiseCrossModal(
                modalities, h, config.pcm_heads, config.pcm_layers, config.pcm_self_layers, config.pcm_dropout
            )
            if len(modalities) > 1
            else None
        )
        width = config.representation_width
        self.classifier = nn.Sequential(
            nn.Linear(width, h), nn.ReLU(), Dropout(config.dropout), nn.Linear(h, config.n_classes)
        )
        self.vad_head = VADHead(width, config.vad_hidden) if config.vad_head else None

    def representation(self, batch: Batch) -> torch.Tensor:
        """Final utterance representation of the real utterances, in batch order: ``(T, width)``."""
        mask = batch.mask
        speakers = self.speaker(batch.speakers)
        encoded = {m: self.encoders[m](batch.features[m], mask) + speakers for m in self.config.modalities}
        graph = dialogue_graph(batch.lengths.to(mask.device), len(encoded), self.config.wp, self.config.wf)
        nodes = torch.cat([x[mask] for x in encoded.values()])
        total = nodes.shape[0] // len(encoded)
        graph_out = self.graph(nodes, graph).view(len(encoded), total, -1).transpose(0, 1).reshape(total, -1)
        if self.pcm is None:
            return graph_out
        return torch.cat([graph_out, self.pcm(encoded, mask)[mask]], dim=-1)

    def forward(self, batch: Batch) -> ModelOutput:
        mask = batch.mask
        h = self.representation(batch)
        b, n = mask.shape
        c = self.config.n_classes
        scores = F.log_softmax(self.classifier(h), dim=-1)
        log_probs = torch.full((b, n, c), -math.log(c), dtype=scores.dtype, device=h.device)
        log_probs = log_probs.masked_scatter(mask[..., None], scores)
        vad = None
        if self.vad_head is not None:
            unit = self.vad_head(h)
            vad = unit.new_zeros(b, n, 3).masked_scatter(mask[..., None], unit)
        return ModelOutput(log_probs=log_probs, vad=vad)

    def classification_loss(
        self,
        output: ModelOutput,
        batch: Batch,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """NLL of the labelled utterances (optionally class-weighted, against smoothed labels when
        ``label_smoothing`` > 0); zero with gradient if none are."""
        return labelled_nll(output.log_probs, batch.labels, class_weights, label_smoothing)
