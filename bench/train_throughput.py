"""Training throughput of the vanilla models on an IEMOCAP-sized corpus.

Measures what one training epoch costs (collate + forward + classification and VAD loss +
backward + fused Adam step, batches from the trainer's ``length_batches``) in utterances per second
and peak memory, for CORECT (batch 10 dialogues, widths t=768, a=100, v=512) and SDT (batch 16,
t=1024, a=1582, v=342), each model in its own subprocess so that peak memory is its own. The
corpus is random features of the right shapes: 120 training dialogues, lengths 8-90 (mean ~50).

The reference figure for the public CORECT code is its measured epoch on this kind of corpus
(121 dialogues, 6,276 utterances in 22-26 s on an idle 2-core machine: ~261 utt/s); pass
``--public-corect-utt-per-s`` to compare against a figure measured elsewhere (the printed ratio
means something only on the machine the reference was measured on). On a loaded machine use
``--threads 1``: OpenMP threads that wait on each other for many small operations slow down badly
when other processes hold the cores.

    python bench/train_throughput.py --device auto --models corect,sdt --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lantern.corpus.dialogue import Dialogue, Utterance
from lantern.models.batch import Batch, collate
from lantern.models.heads import masked_vad_loss
from lantern.training import mixed_precision

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
PUBLIC_CORECT_UTT_PER_S = 6276 / 24.0
SETUPS = {
    "corect": {"batch": 10, "widths": {"t": 768, "a": 100, "v": 512}, "lr": 2.5e-4, "weight_decay": 1e-8},
    "sdt": {"batch": 16, "widths": {"t": 1024, "a": 1582, "v": 342}, "lr": 1e-4, "weight_decay": 1e-5},
}


def random_dialogues(n: int, widths: dict[str, int], n_classes: int, seed: int) -> list[Dialogue]:
    """n dialogues of two alternating speakers, lengths uniform on 8..90, random features/labels/VAD."""
    rng = np.random.default_rng(seed)
    dialogues = []
    for i in range(n):
        length = int(rng.integers(8, 91))
        utterances = [
            Utterance(
                id=f"d{i}_u{j}",
                speaker="MF"[int(rng.integers(2))],
                text="",
                label=int(rng.integers(n_classes)),
                vad=tuple(rng.uniform(1, 5, 3).tolist()),
            )
            for j in range(length)
        ]
        features = {m: rng.standard_normal((length, w), dtype=np.float32) for m, w in widths.items()}
        dialogues.append(Dialogue(id=f"d{i}", split="train", utterances=utterances, features=features))
    return dialogues


def sorted_batches(dialogues: list[Dialogue], batch_size: int, rng: random.Random) -> list[list[Dialogue]]:
    """Batches of the whole corpus sorted by length (least padding), in random order."""
    order = list(range(len(dialogues)))
    rng.shuffle(order)
    order.sort(key=lambda i: len(dialogues[i]))
    batches = [[dialogues[i] for i in order[j : j + batch_size]] for j in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def random_batches(dialogues: list[Dialogue], batch_size: int, rng: random.Random) -> list[list[Dialogue]]:
    """Batches in shuffled order, ignoring length (what the public code does)."""
    order = list(range(len(dialogues)))
    rng.shuffle(order)
    return [[dialogues[i] for i in order[j : j + batch_size]] for j in range(0, len(order), batch_size)]


def build(name: str, widths: dict[str, int], vad_head: bool) -> torch.nn.Module:
    if name == "corect":
        from lantern.models.corect import CORECT, CORECTConfig

        return CORECT(CORECTConfig(n_classes=6, n_speakers=2, widths=widths, vad_head=vad_head))
    from lantern.models.sdt import SDT, SDTConfig

    return SDT(SDTConfig(n_classes=6, n_speakers=2, widths=widths, vad_head=vad_head))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def measure(name: str, args: argparse.Namespace) -> dict:
    """Train ``name`` for ``args.epochs`` epochs after one warm-up step; return its figures."""
    setup = SETUPS[name]
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dialogues = random_dialogues(args.dialogues, setup["widths"], 6, args.seed)
    speakers = {"F": 0, "M": 1}
    modalities = list(setup["widths"])
    model = build(name, setup["widths"], not args.no_vad).to(device)
    options = {"fused": True} if args.adam == "fused" else {}
    optimizer = torch.optim.Adam(
        model.parameters(), lr=setup["lr"], weight_decay=setup["weight_decay"], **options
    )
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    def step(batch: Batch) -> None:
        with mixed_precision(args.precision, device):
            output = model(batch)
            loss = model.classification_loss(output, batch)
            if output.vad is not None:
                loss = loss + masked_vad_loss(output.vad, batch.vad, batch.vad_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def batches() -> list[list[Dialogue]]:
        if args.batching == "trainer":
            from lantern.training import length_batches

            return length_batches(dialogues, setup["batch"], generator)
        if args.batching == "sorted":
            return sorted_batches(dialogues, setup["batch"], rng)
        return random_batches(dialogues, setup["batch"], rng)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train()
    step(collate(batches()[0], speakers, modalities).to(device))
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    epoch_seconds, cpu_seconds, padded, real = [], [], 0, 0
    for _ in range(args.epochs):
        start, cpu_start = time.perf_counter(), time.process_time()
        for chunk in batches():
            batch = collate(chunk, speakers, modalities).to(device)
            padded += batch.mask.numel()
            real += int(batch.lengths.sum())
            step(batch)
        sync()
        epoch_seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    utterances = sum(len(d) for d in dialogues)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vad_head": not args.no_vad,
        "dialogues": args.dialogues,
        "utterances_per_epoch": utterances,
        "batch_dialogues": setup["batch"],
        "batching": args.batching,
        "adam": args.adam,
        "precision": args.precision if device.type == "cuda" else "fp32",
        "padding_fraction": round(1 - real / padded, 4),
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "epoch_cpu_seconds": [round(s, 3) for s in cpu_seconds],
        "utt_per_s_best": round(utterances / min(epoch_seconds), 1),
        "utt_per_s_mean": round(utterances * len(epoch_seconds) / sum(epoch_seconds), 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def machine() -> dict:
    """What the figures were measured on."""
    info = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    return torch.device(name)


def run_child(name: str) -> dict | None:
    """Measure one model in a fresh interpreter (its own peak memory); None if it cannot run."""
    command = [sys.executable, __file__, *sys.argv[1:], "--child", name]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        print(f"{name}: skipped ({reason})")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", default="corect,sdt")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dialogues", type=int, default=120)
    parser.add_argument(
        "--batching",
        default="trainer",
        choices=["trainer", "sorted", "random"],
        help="lantern.training.length_batches (default), the whole corpus sorted by length, or unsorted",
    )
    parser.add_argument(
        "--adam",
        default="fused",
        choices=["fused", "default"],
        help="fused Adam, or torch's default (for-loop on CPU)",
    )
    parser.add_argument(
        "--no-vad", action="store_true", help="the published networks, without Lantern's VAD head"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "tf32", "bf16"], help="GPU arithmetic (CPU: fp32)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--public-corect-utt-per-s", type=float, default=PUBLIC_CORECT_UTT_PER_S)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "sdt":
            try:
                import lantern.models.sdt  # noqa: F401
            except ImportError as error:
                raise SystemExit(f"lantern.models.sdt does not import: {error}") from error
        print(json.dumps(measure(args.child, args)))
        return 0

    resolve_device(args.device)
    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in SETUPS:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(SETUPS)}")
        figures = run_child(name)
        if figures is not None:
            results[name] = figures
    if "corect" in results:
        results["corect"]["public_reference_utt_per_s"] = round(args.public_corect_utt_per_s, 1)
        results["corect"]["speedup_vs_public"] = round(
            results["corect"]["utt_per_s_best"] / args.public_corect_utt_per_s, 2
        )

    print(f"{'model':<8}{'params':>12}{'epoch s':>10}{'utt/s':>9}{'padding':>9}{'peak MB':>10}  vs public")
    for name, f in results.items():
        ratio = f"{f['speedup_vs_public']:.2f}x" if "speedup_vs_public" in f else "-"
        print(
            f"{name:<8}{f['parameters']:>12,}{min(f['epoch_seconds']):>10.2f}{f['utt_per_s_best']:>9.1f}"
            f"{f['padding_fraction']:>9.1%}{f['peak_memory_mb']:>10.0f}  {ratio}"
        )
    if {"corect", "sdt"} <= results.keys():
        ratio = results["corect"]["utt_per_s_best"] / results["sdt"]["utt_per_s_best"]
        print(f"CORECT / SDT utterances per second: {ratio:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine(), "epochs": args.epochs, "results": results}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
