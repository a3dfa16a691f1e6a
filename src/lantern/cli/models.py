"""`lantern models summary`, `train`, `predict`, `evaluate`: the vanilla model stage from the shell."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lantern.cli.command import add_command
from lantern.cli.options import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    share_below_one,
)
from lantern.errors import LanternError
from lantern.train_config import CLASS_WEIGHTS, PRESET_NOTES, PRESETS, TrainConfig

# The registry's names, spelled out so that building the parser does not import torch.
MODEL_NAMES = ("corect", "sdt")
SPLIT_CHOICES = ("train", "dev", "test", "all")


def _recipe_default(key: str) -> str:
    """``default: the recipe's (corect 50, sdt-iemocap 150, ...)``: what a training flag falls back to
    under each preset, read from the presets themselves so the help never restates a number."""
    fallback = getattr(TrainConfig(), key)
    values = ", ".join(f"{name} {recipe.get(key, fallback)}" for name, recipe in PRESETS.items())
    return f"default: the recipe's — {values}"


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    models = add_command(
        sub,
        "models",
        help="describe the vanilla models (CORECT, SDT): parameter counts for a corpus or given sizes",
        examples=["lantern models summary corect --corpus corpora/meld7"],
    )
    group = models.add_subparsers(dest="models_command", required=True, metavar="MODELS_COMMAND")
    p = add_command(
        group,
        "summary",
        help="parameter counts of a model for a corpus, or for given classes/widths/speakers",
        examples=[
            "lantern models summary corect --corpus corpora/iemocap6",
            "lantern models summary sdt --classes 6 --widths t=1024,a=1582,v=342 --speakers 2 --json",
        ],
    )
    p.add_argument("model", choices=MODEL_NAMES, help="the architecture")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, metavar="CORPUS_DIR", help="size the model for this corpus")
    source.add_argument(
        "--classes", type=int, metavar="C", help="number of classes (with --widths, --speakers)"
    )
    p.add_argument("--widths", metavar="t=W,a=W,v=W", help="input width per modality (with --classes)")
    p.add_argument("--speakers", type=int, default=2, metavar="N", help="speaker vocabulary size")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=_summary)

    p = add_command(
        sub,
        "train",
        help="train a vanilla model; writes RUN_DIR/vanilla/ and its predictions",
        description="Train a vanilla model (CORECT or SDT with a VAD head) on a corpus's train split, "
        "select the epoch on dev weighted F1, and write the checkpoint and the predictions of every "
        "split. Every setting left out comes from the recipe (--preset), which the command names.",
        examples=[
            "lantern train --corpus corpora/meld7 --model sdt --modalities t --out runs/meld-sdt",
            "lantern train --corpus corpora/iemocap6 --model corect --out runs/r1 --seed 1 --epochs 30",
        ],
    )
    p.add_argument("--corpus", required=True, type=Path, metavar="CORPUS_DIR", help="the corpus (required)")
    p.add_argument("--model", required=True, choices=MODEL_NAMES, help="the architecture (required)")
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="the run directory to write")
    p.add_argument(
        "--preset",
        metavar="NAME",
        help=f"training recipe: {', '.join(PRESETS)} (default: the text recipe chosen on MELD dev for a "
        "text-only MELD/EmoryNLP corpus, else the model's published one)",
    )
    p.add_argument(
        "--epochs", type=positive_int, metavar="N", help=f"training epochs ({_recipe_default('epochs')})"
    )
    p.add_argument("--seed", type=int, metavar="S", help=f"random seed ({_recipe_default('seed')})")
    p.add_argument(
        "--device",
        metavar="D",
        help="auto (a GPU when there is one), cpu, cuda, cuda:1, ... (default auto)",
    )
    p.add_argument(
        "--lambda-vad",
        type=non_negative_float,
        metavar="X",
        help=f"weight of the VAD loss, 0 for none (default {TrainConfig().lambda_vad:g})",
    )
    p.add_argument(
        "--modalities",
        metavar="t,a,v",
        help="use only these modalities of the corpus (default: all the corpus has)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        help=f"dialogues per batch ({_recipe_default('batch_size')})",
    )
    p.add_argument("--lr", type=positive_float, metavar="LR", help=f"learning rate ({_recipe_default('lr')})")
    p.add_argument(
        "--class-weights",
        choices=CLASS_WEIGHTS,
        help="weigh the classification loss by 1/prior or 1/sqrt(prior) of each class "
        f"({_recipe_default('class_weights')})",
    )
    p.add_argument(
        "--patience",
        type=non_negative_int,
        metavar="N",
        help="stop after N epochs without a better dev weighted F1, 0 for never "
        f"({_recipe_default('patience')})",
    )
    p.add_argument(
        "--average-epochs",
        type=non_negative_float,
        metavar="E",
        help="evaluate, select and save a moving average of the weights over about E epochs, 0 for "
        f"the weights as trained ({_recipe_default('average_epochs')})",
    )
    p.add_argument(
        "--threads",
        type=non_negative_int,
        metavar="N",
        help="torch CPU threads in every epoch: a fixed count makes a rerun with the same seed give "
        "the same model on this machine; 0 asks before every epoch for the cores other processes "
        "leave free, faster on a shared machine but not bit-reproducible (default: 0)",
    )
    p.add_argument(
        "--label-smoothing",
        type=share_below_one,
        metavar="EPS",
        help="train against labels smoothed towards uniform by EPS, 0 for the labels as given (default: 0)",
    )
    p.add_argument(
        "--crossfit",
        type=int,
        nargs="?",
        const=5,
        default=0,
        metavar="K",
        help="also write K-fold cross-fitted train predictions (K = 5 when given alone; default: none)",
    )
    p.set_defaults(handler=_train)

    p = add_command(
        sub,
        "predict",
        help="predict a corpus split with a trained vanilla model",
        examples=["lantern predict --run runs/r1 --corpus corpora/iemocap6 --split test --out test.jsonl"],
    )
    p.add_argument("--run", required=True, type=Path, metavar="RUN_DIR", help="a trained run (required)")
    p.add_argument("--corpus", required=True, type=Path, metavar="CORPUS_DIR", help="the corpus (required)")
    p.add_argument("--split", required=True, choices=SPLIT_CHOICES, help="the split to predict (required)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="predictions JSONL to write")
    p.set_defaults(handler=_predict)

    p = add_command(
        sub,
        "evaluate",
        help="accuracy, weighted F1, per-class F1, confusion matrix",
        examples=["lantern evaluate --predictions test.jsonl", "lantern evaluate --run runs/r1 --json"],
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--predictions", type=Path, metavar="FILE", help="a predictions JSONL file")
    what.add_argument(
        "--run", type=Path, metavar="RUN_DIR", help="a run: every fusion method × seed on test, vs vanilla"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=_evaluate)


def _parse_widths(text: str | None) -> dict[str, int]:
    if not text:
        raise LanternError("--classes needs --widths, e.g. --widths t=768,a=100,v=512")
    widths = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not value.strip().isdigit():
            raise LanternError(f"--widths: {item!r} is not MODALITY=WIDTH (e.g. t=768)")
        widths[name.strip()] = int(value)
    return widths


def _summary(args: argparse.Namespace) -> int:
    import torch

    from lantern.models.registry import MODELS, build_model, config_for_corpus, parameter_summary

    if args.corpus is not None:
        from lantern.corpus.native import load_corpus

        config = config_for_corpus(args.model, load_corpus(args.corpus))
    else:
        config = MODELS[args.model][1](
            n_classes=args.classes, n_speakers=args.speakers, widths=_parse_widths(args.widths)
        )
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = build_model(args.model, config)
    summary = {"model": args.model, **parameter_summary(model), "config": config.to_json()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    widths = " ".join(f"{m}={w}" for m, w in config.widths.items())
    print(f"{args.model}: {config.n_classes} classes, {config.n_speakers} speakers, widths {widths}")
    for key in ("total_parameters", "backbone_parameters", "vad_head_parameters"):
        print(f"  {key.replace('_', ' '):<22}{summary[key]:>14,}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from lantern.training import train_run

    modalities = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
    summary = train_run(
        args.corpus,
        args.out,
        args.model,
        preset=args.preset,
        crossfit=args.crossfit,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        lambda_vad=args.lambda_vad,
        modalities=modalities,
        batch_size=args.batch_size,
        lr=args.lr,
        class_weights=args.class_weights,
        patience=args.patience,
        average_epochs=args.average_epochs,
        label_smoothing=args.label_smoothing,
        threads=args.threads,
    )
    dev = summary["dev"]
    chosen = "the default for this corpus" if summary["preset_source"] == "default" else "as asked"
    print(f"recipe {summary['preset']} ({chosen}): {PRESET_NOTES[summary['preset']]}")
    print(
        f"trained {summary['model']} ({summary['preset']}): best dev epoch {summary['best_epoch']}, "
        f"accuracy {dev['accuracy']:.2f}, weighted F1 {dev['weighted_f1']:.2f}; "
        f"{summary['parameters']['total_parameters']:,} parameters"
    )
    print(f"wrote {summary['vanilla_dir']}")
    if "crossfit" in summary:
        print(f"wrote {summary['crossfit']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from lantern.corpus.native import load_corpus
    from lantern.predictions import write_predictions
    from lantern.rundir import RunDir
    from lantern.training import load_checkpoint, predict

    model, meta = load_checkpoint(RunDir(args.run).vanilla.dir)
    corpus = load_corpus(args.corpus)
    dialogues = corpus.dialogues if args.split == "all" else corpus.split(args.split)
    predictions = predict(model, meta, dialogues)
    write_predictions(args.out, predictions)
    print(f"wrote {args.out}: {len(predictions)} utterances of {len(dialogues)} dialogues ({args.split})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.run is not None:
        from lantern.evaluation import evaluate_run, results_table

        metrics = evaluate_run(args.run)
        print(json.dumps(metrics, indent=2) if args.json else results_table(metrics))
        return 0
    from lantern.evaluation import score_predictions

    report = score_predictions(args.predictions)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_report(report)
    return 0


def _print_report(report: dict) -> None:
    classes = report["classes"]
    width = max(8, *(len(c) + 2 for c in classes))
    print(f"{report['source']}: {report['n']} labelled utterances")
    print(f"  accuracy     {report['accuracy']:6.2f}")
    print(f"  weighted F1  {report['weighted_f1']:6.2f}")
    print(f"  macro F1     {report['macro_f1']:6.2f}")
    print("  per class" + " " * (width - 5) + "precision  recall      F1  support")
    for c in classes:
        print(
            f"    {c:<{width}}{report['per_class_precision'][c]:9.2f}{report['per_class_recall'][c]:8.2f}"
            f"{report['per_class_f1'][c]:8.2f}{report['support'][c]:9d}"
        )
    print("  confusion (rows: gold, columns: predicted)")
    print("    " + " " * width + "".join(f"{c:>{width}}" for c in classes))
    for c, row in zip(classes, report["confusion"], strict=True):
        print(f"    {c:<{width}}" + "".join(f"{v:>{width}}" for v in row))
