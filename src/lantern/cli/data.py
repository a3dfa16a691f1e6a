"""`lantern data convert`, `example`, `inspect`: make a native corpus directory and look inside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lantern.cli.command import add_command
from lantern.cli.options import positive_int
from lantern.corpus.convert import FORMATS, OWN_DEV_SPLIT, TARGETS
from lantern.errors import LanternError
from lantern.labels import BUILTIN


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    data = add_command(
        sub,
        "data",
        help="convert public ERC files or your JSONL into a corpus directory, generate one, inspect one",
        examples=["lantern data convert ../MELD.Raw --format meld-csv --out corpora/meld7"],
    )
    group = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = add_command(
        group,
        "convert",
        help="read a public layout (or your JSONL) into a native corpus directory",
        description="Read a public ERC layout (IEMOCAP/MELD feature pickles, the MELD and EmoryNLP CSV "
        "releases) or your own dialogues (JSONL) into a corpus directory, the input of every later stage. "
        "A bad row is one error line naming file, line and utterance (exit 2); nothing is written.",
        examples=[
            "lantern data convert MELD.Raw/ --format meld-csv --out corpora/meld7",
            "lantern data convert emorynlp/ --format emorynlp-csv --out corpora/emorynlp7",
            "lantern data convert IEMOCAP_features.pkl --format cogmen --emoeval IEMOCAP_full_release/ "
            "--out corpora/iemocap6",
            "lantern data convert mine.jsonl --format jsonl --labels iemocap6 --out corpora/mine",
        ],
    )
    p.add_argument(
        "src",
        type=Path,
        metavar="SRC",
        help="the input file; for meld-csv / emorynlp-csv the directory holding the three split files",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="the input layout (required)")
    p.add_argument(
        "--emoeval", type=Path, metavar="DIR", help="IEMOCAP EmoEvaluation folder(s) to join VAD from"
    )
    p.add_argument(
        "--labels",
        metavar="NAME",
        help=f"label set ({', '.join(BUILTIN)}; default: the format's own, or for jsonl the names met)",
    )
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="emotion",
        help="meld-csv: label the Emotion column (meld7) or the Sentiment column (meld-sentiment)",
    )
    p.add_argument(
        "--text-features",
        metavar="SPEC",
        help="'file': the file's text vectors (default for the pickles); 'minilm': embed the transcripts "
        "with the bundled offline MiniLM (default for jsonl, meld-csv, emorynlp-csv); "
        "'st:PATH_OR_NAME': with that sentence-transformers model",
    )
    p.add_argument(
        "--dev-fraction",
        type=float,
        metavar="F",
        help="share of train dialogues (the first ones, in file order) made dev (default 0.1; "
        f"not for {', '.join(OWN_DEV_SPLIT)}, whose files state their splits)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress while embedding transcripts")
    p.add_argument(
        "--out", required=True, type=Path, metavar="CORPUS_DIR", help="the corpus directory to write"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing corpus directory")
    p.set_defaults(handler=_convert)

    p = add_command(
        group,
        "example",
        help="write the built-in synthetic IEMOCAP-shaped corpus (not real data)",
        examples=["lantern data example --out corpora/example --dialogues 30"],
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="CORPUS_DIR", help="the corpus directory to write"
    )
    p.add_argument(
        "--dialogues", type=positive_int, default=151, metavar="N", help="number of dialogues"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    p.add_argument(
        "--text-features",
        choices=("synthetic", "minilm"),
        default="synthetic",
        help="'synthetic' class-structured 768-d vectors, or MiniLM embeddings of the transcripts",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing corpus directory")
    p.set_defaults(handler=_example)

    p = add_command(
        group,
        "inspect",
        help="counts of a corpus directory: dialogues, splits, labels, modalities",
        examples=["lantern data inspect corpora/meld7", "lantern data inspect corpora/meld7 --json"],
    )
    p.add_argument("corpus", type=Path, metavar="CORPUS_DIR", help="a directory `data convert` wrote")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=_inspect)


def _describe(corpus, out: Path) -> str:
    splits = ", ".join(f"{s} {n}" for s, n in corpus.summary()["splits"].items())
    widths = " ".join(f"{m}={w}" for m, w in corpus.modalities.items()) or "none"
    return (
        f"wrote {out}: {len(corpus.dialogues)} dialogues ({splits}), {corpus.n_utterances} utterances, "
        f"labels {corpus.labels.name}, modalities {widths}"
    )


def _convert(args: argparse.Namespace) -> int:
    from lantern.corpus.convert import convert_corpus
    from lantern.corpus.native import save_corpus

    if args.dev_fraction is not None and args.format in OWN_DEV_SPLIT:
        raise LanternError(
            f"--dev-fraction does not apply to --format {args.format}: the file states its splits"
        )
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out}: already exists (pass --overwrite to replace it)")
    # The corpus being replaced caches the embeddings of unchanged texts by the same encoder.
    corpus, report = convert_corpus(
        args.src,
        args.format,
        emoeval=args.emoeval,
        labels=args.labels,
        text_features=args.text_features,
        dev_fraction=args.dev_fraction,
        target=args.target,
        cache_dir=args.out if args.out.is_dir() else None,
        progress=False if args.quiet else None,
    )
    out = save_corpus(corpus, args.out, overwrite=args.overwrite)
    vad = report.summary() if report is not None else "VAD none (no --emoeval)"
    print(f"{_describe(corpus, out)}; {vad}")
    return 0


def _example(args: argparse.Namespace) -> int:
    from lantern.corpus.example import generate_example
    from lantern.corpus.native import save_corpus

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out}: already exists (pass --overwrite to replace it)")
    corpus = generate_example(args.dialogues, args.seed, text_features=args.text_features)
    out = save_corpus(corpus, args.out, overwrite=args.overwrite)
    print(f"{_describe(corpus, out)}; {corpus.name}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from lantern.corpus.native import corpus_fingerprint, load_corpus

    corpus = load_corpus(args.corpus)
    summary = {**corpus.summary(), "feature_sources": dict(corpus.feature_sources)}
    summary["fingerprint"] = corpus_fingerprint(args.corpus)
    summary["path"] = str(args.corpus)
    if args.json:
        print(json.dumps(summary))
        return 0
    _print_table(summary)
    return 0


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    overview = Table(title=f"{summary['path']}: {summary['name']}", show_header=False)
    overview.add_row("dialogues", str(summary["dialogues"]))
    overview.add_row("utterances", str(summary["utterances"]))
    for split, n in summary["splits"].items():
        overview.add_row(f"  {split}", f"{n} dialogues, {summary['split_utterances'][split]} utterances")
    overview.add_row("speakers", str(summary["speakers"]))
    for m, width in summary["modalities"].items():
        source = summary["feature_sources"].get(m, "file")
        overview.add_row(f"modality {m}", f"{width}-d ({source})")
    overview.add_row("VAD coverage", f"{summary['vad_coverage']:.1%}")
    overview.add_row("unlabelled", str(summary["unlabelled"]))
    overview.add_row("fingerprint", summary["fingerprint"])
    console.print(overview)
    labels = Table(title=f"label set {summary['label_set']}")
    labels.add_column("label")
    labels.add_column("utterances", justify="right")
    labels.add_column("share", justify="right")
    total = sum(summary["label_counts"].values()) or 1
    for name, count in summary["label_counts"].items():
        labels.add_row(name, str(count), f"{count / total:.1%}")
    console.print(labels)
