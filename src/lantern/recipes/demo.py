"""``lantern demo``: the whole pipeline on a small synthetic corpus with the embedded local LLM.

Sized for two CPU cores: the embedded model takes seconds per six-utterance field here, so
dialogues are short (8-12 utterances), fields are six utterances (stride 3, t = 2) and only dev and
test are prompted. The dev split is 30% of the training dialogues rather than 10%, because the
fusion module trains on it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from lantern.fields import FieldSpec
from lantern.llm.config import Endpoint, LLMConfig
from lantern.recipes.config import CorpusSpec, FusionSpec, Notify, PipelineConfig, VanillaSpec
from lantern.recipes.pipeline import run_pipeline

DEMO_DIALOGUES = 30
DEMO_EPOCHS = 40
DEMO_FIELDS = FieldSpec(stride=3, t=2)


def demo_config(dialogues: int = DEMO_DIALOGUES, epochs: int = DEMO_EPOCHS, seed: int = 0) -> PipelineConfig:
    """The demo run: a small synthetic corpus, CORECT, the embedded LLM, every fusion method."""
    return PipelineConfig(
        corpus=CorpusSpec(
            kind="example",
            dialogues=dialogues,
            seed=seed,
            min_len=8,
            max_len=12,
            dev_fraction=0.3,
            widths={"t": 100, "a": 100, "v": 512},
        ),
        vanilla=VanillaSpec(model="corect", preset="quick", seeds=[seed], epochs=epochs),
        llm=LLMConfig(fields=DEMO_FIELDS),
        fusion=FusionSpec(),
    )


def demo(
    run_dir: str | Path = "runs/demo",
    *,
    dialogues: int = DEMO_DIALOGUES,
    epochs: int = DEMO_EPOCHS,
    endpoint: Endpoint | None = None,
    notify: Notify | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo pipeline; ``endpoint`` swaps the embedded model for another LLM."""
    config = demo_config(dialogues=dialogues, epochs=epochs)
    if endpoint is not None:
        config.llm = replace(config.llm, endpoint=endpoint)
    return run_pipeline(config, run_dir, notify=notify, progress=progress)
