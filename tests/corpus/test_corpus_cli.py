"""`lantern data convert / example / inspect` through the CLI shell and the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lantern.cli import main
from lantern.corpus import load_corpus
from lantern.corpus.convert import convert_corpus
from tests.corpus.corpus_fixtures import (
    cogmen_tuple,
    corect_dict,
    dialogue_tables,
    dump_pickle,
    write_emoeval,
)
from tests.corpus.csv_fixtures import fake_models, meld_row, meld_splits, write_emorynlp, write_meld


@pytest.fixture
def cogmen_file(tmp_path):
    tables = dialogue_tables(n_train=10, n_test=3, py2=True)
    return dump_pickle(tmp_path / "IEMOCAP_features.pkl", cogmen_tuple(tables), py2=True), tables


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_convert_cogmen_then_inspect_json_counts(tmp_path, capsys, cogmen_file):
    src, tables = cogmen_file
    ids = [uid.decode() for d in tables["train_ids"] for uid in tables["ids"][d]]
    ids += [uid.decode() for d in tables["test_ids"] for uid in tables["ids"][d]]
    emoeval = write_emoeval(
        tmp_path / "iemocap", {"Ses01F_impro01": [(uid, "neu", 2.5, 3.0, 3.5) for uid in ids[:-4]]}
    )
    out = tmp_path / "corpus"
    code, stdout, _ = _run(
        capsys, "data", "convert", src, "--format", "cogmen", "--emoeval", emoeval, "--out", out
    )
    assert code == 0
    assert stdout.count("\n") == 1 and f"wrote {out}" in stdout
    assert f"VAD {len(ids) - 4}/{len(ids)} utterances, 4 without VAD" in stdout

    code, stdout, _ = _run(capsys, "data", "inspect", out, "--json")
    assert code == 0
    summary = json.loads(stdout)
    labels = [x for d in tables["train_ids"] + tables["test_ids"] for x in tables["labels"][d]]
    assert summary["dialogues"] == 13 and summary["utterances"] == len(ids) == len(labels)
    assert summary["splits"] == {"train": 9, "dev": 1, "test": 3}
    assert summary["labels"] == ["hap", "sad", "neu", "ang", "exc", "fru"]
    assert summary["label_counts"] == {name: labels.count(i) for i, name in enumerate(summary["labels"])}
    assert summary["speakers"] == 2
    assert summary["modalities"] == {"t": 100, "a": 100, "v": 512}
    assert summary["vad_coverage"] == pytest.approx((len(ids) - 4) / len(ids))

    code, stdout, _ = _run(capsys, "data", "inspect", out)
    assert code == 0 and "VAD coverage" in stdout and "fru" in stdout


def test_console_script_inspect(tmp_path, capsys, cogmen_file):
    src, _ = cogmen_file
    out = tmp_path / "c"
    assert (
        _run(capsys, "data", "convert", src, "--format", "cogmen", "--dev-fraction", "0.2", "--out", out)[0]
        == 0
    )
    script = shutil.which("lantern", path=str(Path(sys.executable).parent))
    assert script is not None, "the lantern console script is not installed next to this Python"
    done = subprocess.run(
        [script, "data", "inspect", out, "--json"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["splits"] == {"train": 8, "dev": 2, "test": 3}


def test_errors_are_one_line_and_leave_no_output(tmp_path, capsys):
    tables = dialogue_tables()
    tables["labels"]["Ses01F_impro01"][1] = 9
    src = dump_pickle(tmp_path / "bad.pkl", cogmen_tuple(tables))
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "data", "convert", src, "--format", "cogmen", "--out", out)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and "bad.pkl" in stderr and "utterance Ses01F_impro01_M001" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pkl"]

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    code, _, stderr = _run(capsys, "data", "convert", evil, "--format", "sdt", "--out", out)
    assert code == 2 and "posix.system" in stderr and not out.exists()

    good = dump_pickle(tmp_path / "corect.pkl", corect_dict(dialogue_tables()))
    code, _, stderr = _run(
        capsys, "data", "convert", good, "--format", "corect", "--dev-fraction", "0.2", "--out", out
    )
    assert code == 2 and "--dev-fraction does not apply" in stderr and not out.exists()


def test_convert_corect_and_overwrite(tmp_path, capsys):
    src = dump_pickle(tmp_path / "data_iemocap.pkl", corect_dict(dialogue_tables(widths=(768, 100, 512))))
    out = tmp_path / "c"
    assert _run(capsys, "data", "convert", src, "--format", "corect", "--out", out)[0] == 0
    code, _, stderr = _run(capsys, "data", "convert", src, "--format", "corect", "--out", out)
    assert code == 2 and "already exists" in stderr
    assert _run(capsys, "data", "convert", src, "--format", "corect", "--out", out, "--overwrite")[0] == 0
    assert load_corpus(out).modalities == {"t": 768, "a": 100, "v": 512}


def test_example_command(tmp_path, capsys):
    out = tmp_path / "ex"
    code, stdout, _ = _run(capsys, "data", "example", "--out", out, "--dialogues", "6", "--seed", "2")
    assert code == 0 and "synthetic" in stdout
    corpus = load_corpus(out)
    assert len(corpus) == 6 and corpus.feature_sources["a"] == "synthetic"
    _, stdout, _ = _run(capsys, "data", "inspect", out, "--json")
    assert json.loads(stdout)["vad_coverage"] == 1.0
    again = tmp_path / "ex2"
    _run(capsys, "data", "example", "--out", again, "--dialogues", "6", "--seed", "2")
    np.testing.assert_array_equal(
        np.load(out / "features" / "v.npy"), np.load(again / "features" / "v.npy")
    )  # same seed, same corpus


def test_convert_jsonl_and_minilm_text_features(tmp_path, capsys, monkeypatch, cogmen_file):
    fake_models(monkeypatch, width=384)
    src = tmp_path / "mine.jsonl"
    src.write_text(
        json.dumps(
            {"id": "a", "split": "train", "utterances": [{"speaker": "x", "text": "hi", "label": "neu"}]}
        )
    )
    out = tmp_path / "j"
    assert (
        _run(capsys, "data", "convert", src, "--format", "jsonl", "--labels", "iemocap6", "--out", out)[0]
        == 0
    )
    corpus = load_corpus(out)
    assert corpus.modalities == {"t": 384} and corpus.dialogues[0].labels == [2]
    code, _, stderr = _run(
        capsys,
        "data",
        "convert",
        src,
        "--format",
        "jsonl",
        "--text-features",
        "file",
        "--out",
        tmp_path / "j2",
    )
    assert code == 2 and "jsonl carries no text feature vectors" in stderr
    src.write_text(json.dumps({"id": "a", "utterances": [{"speaker": "x", "text": "hi"}]}))
    code, _, stderr = _run(capsys, "data", "convert", src, "--format", "jsonl", "--out", tmp_path / "j3")
    assert code == 2 and "line 1: missing 'split'" in stderr  # a training corpus states its splits

    pickle_src, _ = cogmen_file
    out = tmp_path / "m"
    assert (
        _run(
            capsys,
            "data",
            "convert",
            pickle_src,
            "--format",
            "cogmen",
            "--text-features",
            "minilm",
            "--out",
            out,
        )[0]
        == 0
    )
    corpus = load_corpus(out)
    assert corpus.modalities == {"t": 384, "a": 100, "v": 512}
    assert corpus.feature_sources["t"] == "sentence-transformers/all-MiniLM-L6-v2"
    first = corpus.dialogues[0].utterances[0]
    assert corpus.dialogues[0].features["t"][0, 0] == np.float32(len(first.text))


def test_emoeval_that_matches_nothing_is_an_error(tmp_path, capsys):
    src = dump_pickle(tmp_path / "data_iemocap.pkl", corect_dict(dialogue_tables()))
    emoeval = write_emoeval(
        tmp_path / "iemocap", {"Ses01F_impro01": [("Ses01F_impro01_F000", "neu", 2.5, 2.5, 2.5)]}
    )
    out = tmp_path / "c"
    code, _, stderr = _run(
        capsys, "data", "convert", src, "--format", "corect", "--emoeval", emoeval, "--out", out
    )
    assert code == 2 and "none of the corpus's" in stderr and "Ses01F_impro01_000" in stderr
    assert not out.exists()


def test_convert_meld_csv_directory(tmp_path, capsys, monkeypatch):
    models = fake_models(monkeypatch)
    src = tmp_path / "MELD"
    write_meld(src, bom="train")
    out = tmp_path / "meld-corpus"
    code, stdout, stderr = _run(capsys, "data", "convert", src, "--format", "meld-csv", "--out", out)
    assert code == 0 and "\r" not in stderr  # not a terminal: whole progress lines, no redrawn bar
    assert stderr.splitlines()[-1].startswith("embedding transcripts") and "10/10" in stderr
    assert (
        f"wrote {out}: 5 dialogues (train 2, dev 1, test 2), 10 utterances, labels meld7, modalities t=6"
        in stdout
    )
    corpus = load_corpus(out)
    assert corpus.feature_sources == {"t": "sentence-transformers/all-MiniLM-L6-v2"}
    assert [u.id for u in corpus.dialogues[0].utterances] == [
        "train_dia0_utt0",
        "train_dia0_utt1",
        "train_dia0_utt3",
    ]
    first = corpus.dialogues[0].utterances[2]
    assert (
        corpus.dialogues[0].features["t"][2, 0]
        == len(first.text)
        == len("First line\nsecond line, then more")
    )
    assert sum(len(b) for b in models["sentence-transformers/all-MiniLM-L6-v2"].batches) == 10

    # --overwrite reuses the replaced corpus's rows: same encoder, same texts, no embedding.
    models.clear()
    assert _run(capsys, "data", "convert", src, "--format", "meld-csv", "--out", out, "--overwrite")[0] == 0
    assert models == {}
    code, stdout, _ = _run(
        capsys,
        "data",
        "convert",
        src,
        "--format",
        "meld-csv",
        "--target",
        "sentiment",
        "--out",
        out,
        "--overwrite",
    )
    assert code == 0 and "labels meld-sentiment" in stdout and models == {}  # labels changed, texts did not
    summary = json.loads(_run(capsys, "data", "inspect", out, "--json")[1])
    assert summary["label_counts"] == {"negative": 5, "neutral": 3, "positive": 2}

    code, stdout, _ = _run(
        capsys, "data", "convert", src, "--format", "meld-csv", "--text-features", "st:org/model",
        "--out", out, "--overwrite", "--quiet",
    )  # fmt: skip
    assert code == 0 and list(models) == ["st:org/model"]  # another encoder: embedded again
    assert load_corpus(out).feature_sources["t"] == "st:org/model"


def test_progress_bar_on_a_terminal_unless_quiet(tmp_path, capsys, monkeypatch):
    fake_models(monkeypatch)
    write_meld(tmp_path / "MELD")
    convert_corpus(tmp_path / "MELD", "meld-csv", progress=True)
    assert "10/10" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as if a person watched
    argv = ["data", "convert", tmp_path / "MELD", "--format", "meld-csv", "--out"]
    code, _, stderr = _run(capsys, *argv, tmp_path / "c1")
    assert code == 0 and "embedding transcripts" in stderr and "10/10" in stderr
    code, _, stderr = _run(capsys, *argv, tmp_path / "c2", "--quiet")
    assert code == 0 and stderr == ""


def test_convert_emorynlp_csv_directory(tmp_path, capsys, monkeypatch):
    fake_models(monkeypatch)
    write_emorynlp(tmp_path / "emory")
    out = tmp_path / "c"
    code, stdout, _ = _run(
        capsys, "data", "convert", tmp_path / "emory", "--format", "emorynlp-csv", "--out", out
    )
    assert code == 0 and "4 dialogues (train 2, dev 1, test 1), 7 utterances, labels emorynlp7" in stdout
    assert load_corpus(out).dialogues[0].speakers[1] == "Monica Geller & Rachel Green"


def test_csv_formats_refuse_what_does_not_apply(tmp_path, capsys, monkeypatch):
    fake_models(monkeypatch)
    write_meld(tmp_path / "MELD")
    out = tmp_path / "out"
    for extra, expected in [
        (["--dev-fraction", "0.2"], "--dev-fraction does not apply to --format meld-csv"),
        (["--text-features", "file"], "meld-csv carries no text feature vectors"),
        (["--text-features", "glove"], "name no sentence encoder"),
        (["--labels", "iemocap6"], "format meld-csv reads its own label set (meld7 here"),
    ]:
        code, _, stderr = _run(
            capsys, "data", "convert", tmp_path / "MELD", "--format", "meld-csv", *extra, "--out", out
        )
        assert code == 2 and expected in stderr and stderr.count("\n") == 1, stderr
    code, _, stderr = _run(
        capsys, "data", "convert", tmp_path / "MELD", "--format", "meld-csv", "--labels", "meld-sentiment",
        "--target", "sentiment", "--out", out,
    )  # fmt: skip
    assert code == 0  # naming the implied set is allowed
    write_emorynlp(tmp_path / "emory")
    code, _, stderr = _run(
        capsys,
        "data",
        "convert",
        tmp_path / "emory",
        "--format",
        "emorynlp-csv",
        "--target",
        "sentiment",
        "--out",
        tmp_path / "emory-out",
    )
    assert code == 2 and "target 'sentiment' applies to format meld-csv only" in stderr


def test_bad_csv_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    models = fake_models(monkeypatch)
    splits = meld_splits()
    splits["test"].append(meld_row(12, 3, "Twice?", "Ann"))
    write_meld(tmp_path / "MELD", splits)
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        capsys, "data", "convert", tmp_path / "MELD", "--format", "meld-csv", "--out", out
    )
    assert code == 2 and stdout == "" and stderr.count("\n") == 1
    assert "test_sent_emo.csv" in stderr and "line 5: Utterance_ID 3 repeats" in stderr
    assert "utterance test_dia12_utt3" in stderr
    assert not out.exists() and models == {}  # refused before any embedding or writing
