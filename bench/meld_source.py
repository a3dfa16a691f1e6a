"""The real MELD release as a Lantern corpus, for the real-data benchmarks.

The CSVs are read where the user keeps them (GPL-3.0: nothing of them enters the project); the
converted corpus goes to a cache directory outside the repository, and its MiniLM rows are reused
from there when the transcripts are unchanged, so only the first conversion embeds (~2 minutes on
two cores). Imported by ``real_data.py`` and ``real_data_recipe_search.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from lantern.corpus.convert import convert_corpus
from lantern.corpus.native import CORPUS_JSON, save_corpus

DEFAULT_CACHE = Path(os.environ.get("LANTERN_BENCH_CACHE", Path.home() / ".cache" / "lantern-bench"))


def meld_corpus(meld_dir: str | Path, cache: str | Path = DEFAULT_CACHE, *, target: str = "emotion") -> Path:
    """Convert ``meld_dir`` (train/dev/test_sent_emo.csv) with the bundled MiniLM into
    ``cache/meld-<target>`` and return that corpus directory."""
    out = Path(cache) / f"meld-{target}"
    previous = out if (out / CORPUS_JSON).is_file() else None
    corpus, _ = convert_corpus(
        meld_dir, "meld-csv", target=target, text_features="minilm", cache_dir=previous, progress=False
    )
    save_corpus(corpus, out, overwrite=True)
    return out
