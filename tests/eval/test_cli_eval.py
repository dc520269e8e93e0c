"""``powerattn eval`` end to end at tiny size on the CPU: corpus -> language models ->
perplexity summary -> RULER continued training and scoring -> probing, through the CLI module
(called via its own ``register``)."""

from __future__ import annotations

import argparse
import json
import tarfile

import pytest
import torch

from powerattn.commands import eval as eval_cmd


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="powerattn")
    eval_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


def test_end_to_end_tiny(tmp_path, make_docs, capsys):
    src = make_docs(tmp_path / "src")
    corpus, runs, res = tmp_path / "corpus", tmp_path / "runs", tmp_path / "results"
    assert _run("corpus", "--out", str(corpus), "--source", str(src), "--min-chars", "2000",
                "--test-permille", "300") == 0  # fmt: skip
    common = ["--preset", "tiny", "--device", "cpu", "--patterns", "full,power"]
    assert _run("ppl", "--corpus", str(corpus), "--out", str(runs / "lm"), *common,
                "--results", str(res / "lm")) == 0  # fmt: skip
    summary = json.loads((res / "lm" / "summary.json").read_text())
    assert summary["context"] == 320 and len(summary["runs"]) == 2
    assert f"wrote {(res / 'lm').resolve()}: " in capsys.readouterr().err  # where it went
    assert {r["pattern"] for r in summary["runs"]} == {"full", "power"}
    assert all(r["tokens_trained"] == 3 * 2 * 320 for r in summary["runs"])
    # --summarize regenerates the same summary from the runs' outputs alone
    (res / "lm" / "summary.json").unlink()
    assert _run("ppl", "--summarize", str(runs / "lm"), "--results", str(res / "lm")) == 0
    assert json.loads((res / "lm" / "summary.json").read_text()) == summary
    ppl = json.loads((runs / "lm" / "power-s0" / "ppl.json").read_text())
    assert ppl["check_pass"] and set(ppl["check"]) == {"init", "trained"}  # before and after

    assert _run("ruler", "--train", "--lm-runs", str(runs / "lm"), "--out", str(runs / "ruler"),
                "--preset", "tiny", "--device", "cpu", "--patterns", "power", "--samples", "1",
                "--tasks", "niah_single,vt", "--hybrid",
                "--results", str(res / "ruler")) == 0  # fmt: skip
    ruler_sum = json.loads((res / "ruler" / "summary.json").read_text())
    assert ruler_sum["length"] == 320
    # The hybrid keeps the last 2 of every 7 layers full: both of the tiny model's 2.
    assert {(s["pattern"], s["task"]) for s in ruler_sum["scores"]} == {
        (p, t) for p in ("power", "power-full0_1") for t in ("niah_single", "vt")
    }
    hybrid = json.loads((runs / "ruler" / "power-full0_1-s0" / "config.json").read_text())
    assert hybrid["pattern"]["full_layers"] == [0, 1]
    assert (res / "ruler" / "details.json").is_file()
    assert (res / "ruler" / "ruler.png").stat().st_size > 0
    verdicts = json.loads((res / "ruler" / "details.json").read_text())["verdicts"]
    assert verdicts["models"] == {"power": ["power-full0_1-s0"]}  # the hybrid; no full run
    assert set(verdicts["claims"].values()) == {"inconclusive (full attention missing)"}
    one = tmp_path / "one.json"  # any one model: our run directory
    assert _run("ruler", "--model", str(runs / "lm" / "power-s0"), "--length", "320",
                "--tasks", "vt", "--samples", "1", "--device", "cpu",
                "--out", str(one)) == 0  # fmt: skip
    assert json.loads(one.read_text())["predictions"][0]["task"] == "vt"
    run = json.loads((runs / "ruler" / "power-s0" / "ruler.json").read_text())
    assert run["started_from"].endswith("power-s0/checkpoint.pt")  # continued the LM
    # The same call again resumes every run from its own checkpoint: the record still names
    # the LM run it started from (not "scratch").
    assert _run("ruler", "--train", "--lm-runs", str(runs / "lm"), "--out", str(runs / "ruler"),
                "--preset", "tiny", "--device", "cpu", "--patterns", "power", "--samples", "1",
                "--tasks", "niah_single,vt", "--results", str(res / "ruler")) == 0  # fmt: skip
    again = json.loads((runs / "ruler" / "power-s0" / "ruler.json").read_text())
    assert again["started_from"] == run["started_from"] and again["steps"] == run["steps"]

    assert _run("probe", "--out", str(runs / "probe"), "--preset", "smoke-mix",
                "--device", "cpu", "--patterns", "power", "--per-key", "4",
                "--train-out", str(tmp_path / "passkey"),
                "--results", str(res / "probing")) == 0  # fmt: skip
    rows = json.loads((res / "probing" / "summary.json").read_text())["runs"]
    assert {r["trained"] for r in rows} == {False, True}
    assert set(rows[0]) == {"pattern", "seed", "trained", "layer", "block", "accuracy"}
    assert len(rows) == 2 * 3 * 12  # before/after x (embeddings + 2 layers) x 12 blocks
    # The trained runs again, as --from-runs: the same checkpoint, the same probes.
    assert _run("probe", "--out", str(tmp_path / "again"), "--from-runs",
                str(tmp_path / "passkey"), "--device", "cpu", "--patterns", "power",
                "--per-key", "4", "--results", str(tmp_path / "again_res")) == 0  # fmt: skip
    assert json.loads((tmp_path / "again_res" / "summary.json").read_text())["runs"] == rows
    assert (res / "probing" / "heatmaps.png").stat().st_size > 0
    details = json.loads((res / "probing" / "details.json").read_text())
    assert details["power-s0"]["after"]["max_before_needle"] <= 0.5  # causality
    assert "last layer, last block" in capsys.readouterr().out

    # A GPU call's output (runs.tgz without checkpoints, log.txt) -> the committed results,
    # from the runs' outputs alone.
    out, root = tmp_path / "out", tmp_path / "root"
    out.mkdir()
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        for area in ("lm", "ruler", "probe"):
            tar.add(runs / area, arcname=area,
                    filter=lambda t: None if "checkpoint" in t.name else t)  # fmt: skip
    (out / "log.txt").write_text("the call's log\n")
    assert _run("results", "--from", str(out), "--root", str(root)) == 0
    for area, ref in (("lm", res / "lm"), ("ruler", res / "ruler"), ("probing", res / "probing")):
        got = json.loads((root / area / "summary.json").read_text())
        assert got == json.loads((ref / "summary.json").read_text()), area
        assert (root / area / "table.txt").stat().st_size > 0
    assert (root / "lm" / "ppl_by_position.png").stat().st_size > 0
    assert (root / "probing" / "heatmaps.png").stat().st_size > 0
    assert (root / "lm" / "call_log.txt").read_text() == "the call's log\n"
    assert not list(root.rglob("checkpoint*"))
    # Without --from: the same results from the committed runs.
    (root / "lm" / "summary.json").unlink()
    assert _run("results", "--root", str(root)) == 0
    assert json.loads((root / "lm" / "summary.json").read_text()) == summary


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="give --corpus and --out"):
        _run("ppl", "--out", str(tmp_path))
    with pytest.raises(ValueError, match="preset must be one of"):
        _run("ppl", "--corpus", str(tmp_path), "--out", str(tmp_path), "--preset", "huge")
    with pytest.raises(ValueError, match="unknown patterns"):
        _run("ppl", "--corpus", str(tmp_path), "--out", str(tmp_path), "--patterns", "nope")
    with pytest.raises(ValueError, match="no such folder; give a run directory"):
        _run("ruler", "--model", str(tmp_path / "missing"))
    assert eval_cmd.main(["probe", "--summarize", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="--preset, --jobs: training options, not for --from"):
        _run("probe", "--out", str(tmp_path), "--from-runs", str(tmp_path), "--preset",
             "gpu-mix", "--jobs", "3")  # fmt: skip
    with pytest.raises(ValueError, match="preset must be one of"):
        _run("probe", "--out", str(tmp_path / "p"), "--preset", "gpu")
    with pytest.raises(ValueError, match="no .*per_run; give --from"):
        _run("results", "--root", str(tmp_path))
    with pytest.raises(ValueError, match="no such folder or file; give the GPU call"):
        _run("results", "--from", str(tmp_path / "missing.tgz"), "--root", str(tmp_path))


def test_ruler_on_a_local_hf_checkpoint(tmp_path, capsys):
    """--model with a saved transformers model and tokenizer (not ours): the suite runs
    through the tokenizer wrapper and prints the table; --pattern switches it to power."""
    transformers = pytest.importorskip("transformers")
    from powerattn.eval.bpe import DEFAULT_PATH

    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(DEFAULT_PATH), bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    cfg = transformers.LlamaConfig(
        vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "r.json"
    assert _run("ruler", "--model", str(tmp_path / "m"), "--pattern", "power", "--length", "512",
                "--tasks", "niah_single", "--samples", "2", "--device", "cpu",
                "--out", str(out)) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["length"] == 512 and len(res["predictions"]) == 2
    assert "single" in capsys.readouterr().out


# ------------------------------------------------------------ a new user's mistakes
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``powerattn eval ARGV`` through the console entry point: (exit code, stdout, stderr)."""
    from powerattn.cli import main

    rc = main(["eval", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str, *words: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("powerattn eval: error: "), err
    for w in words:
        assert w in err, (w, err)


def _fake_run(path):
    """A run directory of eval ppl as far as --model can tell before loading it."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "checkpoint.pt").write_bytes(b"")
    return path


def test_a_missing_corpus_is_refused_without_creating_it(tmp_path, capsys):
    corpus = tmp_path / "no_corpus"
    rc, _, err = _cli(capsys, "ppl", "--corpus", str(corpus), "--out", str(tmp_path / "lm"),
                      "--device", "cpu", "--patterns", "power")  # fmt: skip
    assert rc == 2
    _one_line(err, "eval corpus --out")
    assert not corpus.exists()  # a later --source or --model of that path is not fooled


@pytest.mark.parametrize(
    "argv, words",
    [
        # a folder of runs, not one run: its runs are named
        (["--model", "{lm}"], ["neither a run directory", "--model {lm}/power-s0"]),
        # a run whose checkpoint did not come back (results/*/per_run)
        (["--model", "{lm}/nockpt"], ["no checkpoint.pt"]),
        (["--model", "{lm}/power-s0", "--pattern", "full"], ["--pattern", "transformers"]),
        (["--model", "{lm}/power-s0", "--tasks", "nosuchtask"], ["unknown tasks", "vt"]),
        (["--train", "--out", "{tmp}/r", "--tasks", "nosuchtask"], ["unknown tasks"]),
        (["--train", "--out", "{tmp}/r", "--lm-runs", "{tmp}/typo"], ["--lm-runs", "typo"]),
        (["--train", "--out", "{tmp}/r", "--length", "1024"], ["--length", "--model"]),
    ],
)
def test_ruler_mistakes_are_one_line(tmp_path, capsys, argv, words):
    lm = tmp_path / "lm"
    _fake_run(lm / "power-s0")
    (lm / "nockpt").mkdir()
    (lm / "nockpt" / "config.json").write_text('{"pattern": {"name": "power"}}')
    fill = {"lm": str(lm), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    rc, out, err = _cli(capsys, "ruler", *argv, "--device", "cpu", "--preset", "tiny")
    assert rc == 2 and out == ""
    _one_line(err, *[w.format(**fill) for w in words])
    assert not (tmp_path / "r").exists()  # refused before any run started


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--engine", "nope"], ["engine", "torch"]),
        (["--device", "gpu"], ["device", "cpu"]),
    ],
)
def test_probe_options_are_checked_before_training(tmp_path, capsys, argv, words):
    rc, out, err = _cli(capsys, "probe", "--out", str(tmp_path / "p"), "--preset", "smoke-mix",
                        "--patterns", "power", *argv)  # fmt: skip
    assert rc == 2 and out == ""
    _one_line(err, *words)
    assert not (tmp_path / "p").exists()  # nothing trained


def test_results_from_a_missing_folder_names_what_to_give(tmp_path, capsys):
    rc, _, err = _cli(capsys, "results", "--from", str(tmp_path / "nope"), "--root",
                      str(tmp_path / "root"))  # fmt: skip
    assert rc == 2
    _one_line(err, "no such folder", "runs.tgz")
    (tmp_path / "notes.txt").write_text("not an archive")
    rc, _, err = _cli(capsys, "results", "--from", str(tmp_path / "notes.txt"), "--root",
                      str(tmp_path / "root"))  # fmt: skip
    assert rc == 2
    _one_line(err, "notes.txt is not a runs.tgz")


def test_python_m_reports_os_errors_in_one_line(tmp_path, capsys):
    """``python -m powerattn.commands.eval`` (the GPU scripts) reports as ``powerattn eval``."""
    src = tmp_path / "call"
    (src / "lm" / "power-s0").mkdir(parents=True)
    (src / "lm" / "power-s0" / "ppl.json").write_text("{}")
    blocker = tmp_path / "file"  # --root under a file: the copy fails with an OSError
    blocker.write_text("")
    assert eval_cmd.main(["results", "--from", str(src), "--root", str(blocker / "r")]) == 2
    _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("what", ["corpus", "tokenizer", "ppl", "ruler", "probe", "results"])
def test_help_says_what_each_option_takes_and_its_default(capsys, what):
    """Every option has a help text; one with a default names it (as ``(DEFAULT)`` or
    ``default``); no stray ``%%``."""
    parser = argparse.ArgumentParser(prog="powerattn")
    eval_cmd.register(parser.add_subparsers(dest="command"))
    sub = parser._subparsers._group_actions[0].choices["eval"]
    p = sub._subparsers._group_actions[0].choices[what]
    for a in p._actions:
        if a.dest == "help":
            continue
        assert a.help, (what, a.option_strings)
        if a.default not in (None, False, [], argparse.SUPPRESS) and not a.required:
            d = a.default
            shown = f"{d:g}" if isinstance(d, float) else d
            shown = ",".join(map(str, d)) if isinstance(d, list) else shown
            assert f"({shown}" in a.help or "default" in a.help, (what, a.option_strings, a.help)
    with pytest.raises(SystemExit):
        _run(what, "--help")
    out = capsys.readouterr().out
    assert "%%" not in out
    if what == "ruler":
        from powerattn.eval.ruler import TASKS

        assert all(t in " ".join(out.split()) for t in TASKS)
