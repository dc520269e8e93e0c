"""``powerattn eval {corpus,tokenizer,ppl,ruler,probe}``: the paper's Table 1, Table 2 and
Figure 5 as offline tools (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..eval.corpus import GROUPS, MAX_PACKAGE_CHARS, SPLIT_KEYS
from ..training.config import SPEED_OPTIONS
from ..validate import add_list_argument, nonnegative_int, positive_int

_EPILOG = """\
a campaign, end to end (CPU smoke: --preset tiny; the H200: scripts/gpu_eval.sh):
  powerattn eval corpus --out runs/corpus --source python
  powerattn eval ppl --corpus runs/corpus --out runs/lm --preset gpu --seeds 0,1 --jobs 12
      [--speed compile]     # trainer speed options (the same training; measure first)
  powerattn eval ppl --summarize runs/lm     # its summary into runs/lm/results (--results)
  powerattn eval ruler --train --lm-runs runs/lm --out runs/ruler --preset gpu --steps 300
  powerattn eval ruler --model runs/lm/power-s0 --length 4096     # any one model
  powerattn eval probe --out runs/probe --jobs 3 --speed compile  # preset gpu-mix with CUDA
  powerattn eval probe --out runs/probe --from-runs pk    # runs of experiment passkey --out pk
  powerattn eval results --from OUT     # results/{lm,ruler,probing} from a GPU call's runs.tgz
"""


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="perplexity by position, a RULER-style suite and probing (Tables 1-2, Fig. 5)",
        description="Offline evaluation tools: a corpus and its tokenizer, language models per "
        "pattern and their perplexity by position, a RULER-style suite for any causal LM, and "
        "linear probes of where the passkey's information is. See docs/evaluation.md.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    esub = e.add_subparsers(dest="eval_command", metavar="WHAT")
    e.set_defaults(func=lambda args: e.print_help() or 2)

    c = esub.add_parser("corpus", help="build the long-document corpus from local files")
    c.add_argument("--out", required=True, help="corpus directory (train/test.jsonl, manifest)")
    c.add_argument(
        "--source",
        action="append",
        help="'python' (this interpreter's stdlib and site-packages, the default) or "
        "DIR[=LICENCE] (its .py/.txt/.md files); repeatable",
    )
    c.add_argument("--max-mb", type=float, default=200.0, help="MB of text per source (200)")
    c.add_argument(
        "--min-chars",
        type=positive_int,
        default=16384,
        help="shortest document kept, in characters (16384: ~4,600 tokens)",
    )
    c.add_argument(
        "--test-permille", type=positive_int, default=50, help="held-out share, per mille (50)"
    )
    c.add_argument(
        "--group",
        choices=GROUPS,
        default="file",
        help="one document per file (the default) or per package directory: its files "
        "concatenated in a fixed order, each after a '# file: PATH' line (docs/evaluation.md)",
    )
    c.add_argument(
        "--max-package-chars",
        type=positive_int,
        help=f"with --group package: longest document, in characters ({MAX_PACKAGE_CHARS}: "
        "~56K tokens)",
    )
    c.add_argument(
        "--select-longrange",
        type=float,
        metavar="FRACTION",
        help="keep only the top FRACTION (0 < FRACTION <= 1) of documents by their own "
        "far-only 8-gram copy share in the late quarter of their 4096-token windows (committed "
        "BPE; documents shorter than one window are dropped); before the split, so train and "
        "test follow one rule. The held-out set shrinks with it: raise --test-permille "
        "(e.g. 100 for 0.5, 150 for 0.25 at --max-mb 60) to keep >= ~40 held-out documents "
        "(docs/evaluation.md). Default: no selection",
    )
    c.add_argument(
        "--split-key",
        choices=SPLIT_KEYS,
        default="path",
        help="what decides a document's side: its relative path below its root (the default; "
        "every version of one file, e.g. numpy in two site-packages, on one side, and only one "
        "version kept) or its content hash (every version kept and split on its own: the rule "
        "of corpora built before this option, rebuilt byte for byte)",
    )
    c.set_defaults(func=_corpus)

    t = esub.add_parser("tokenizer", help="train the byte-level BPE on a corpus' training split")
    t.add_argument("--corpus", required=True, help="corpus directory (of eval corpus)")
    t.add_argument("--out", required=True, help="tokenizer JSON to write")
    t.add_argument("--vocab", type=positive_int, default=8192, help="vocabulary size (8192)")
    t.set_defaults(func=_tokenizer)

    p = esub.add_parser(
        "ppl",
        help="train one language model per pattern and seed, perplexity by position",
        description="Train (resuming) and evaluate every (pattern, seed) run into OUT/NAME "
        "(ppl.json next to the trainer's files), then write RESULTS/summary.json and "
        "details.json; --summarize only rewrites the summary from the runs' outputs.",
    )
    _campaign_args(p, need_corpus=True)
    p.add_argument("--out", help="run directory: OUT/PATTERN-sSEED per run")
    p.add_argument("--summarize", metavar="RUNS", help="no training: summarize RUNS/*/ppl.json")
    _results_args(p)
    p.add_argument(
        "--init-from",
        metavar="BASE",
        help="continued pretraining: every run starts from the weights of BASE/full-s<seed> "
        "(an earlier eval ppl run of full attention), with a fresh optimizer and schedule",
    )
    p.set_defaults(func=_ppl)

    r = esub.add_parser(
        "ruler",
        help="RULER-style suite: score a model, or train the pattern runs on it and score",
        description="With --model: score one model (our run directory, or a local "
        "transformers checkpoint, optionally switched to a pattern). With --train: continue "
        "each language-model run of --lm-runs on the task mixture, score it, and write "
        "RESULTS/summary.json.",
    )
    r.add_argument(
        "--model",
        metavar="PATH",
        help="a run directory of eval ppl (OUT/PATTERN-sSEED, with its checkpoint.pt), or a "
        "local transformers checkpoint",
    )
    r.add_argument(
        "--pattern",
        help="with a transformers --model: switch it to this block-sparse pattern (default: "
        "its own attention)",
    )
    r.add_argument(
        "--length",
        type=positive_int,
        help="tokens per sample of --model (4096; --train scores at the preset's context)",
    )
    # powerattn.eval.ruler.TASKS, written out: that module needs torch (--help stays quick)
    add_list_argument(
        r, "--tasks",
        help="task names, of niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, "
        "cwe, fwe (default: all seven)",
    )  # fmt: skip
    r.add_argument("--samples", type=positive_int, default=20, help="samples per task (20)")
    r.add_argument("--train", action="store_true", help="the campaign (see description)")
    r.add_argument(
        "--lm-runs",
        metavar="DIR",
        help="--train: the eval ppl runs to continue (its --out; default: none, every run "
        "starts from scratch)",
    )
    r.add_argument(
        "--hybrid",
        action="store_true",
        help="--train also the paper's hybrid of each sparse pattern (full attention in the "
        "last 2 of every 7 layers)",
    )
    _campaign_args(r, need_corpus=False)
    r.add_argument(
        "--out", help="--train: run directory (OUT/NAME per run); --model: result JSON to write"
    )
    r.add_argument("--summarize", metavar="RUNS", help="no training: summarize RUNS/*/ruler.json")
    _results_args(r)
    r.set_defaults(func=_ruler)

    b = esub.add_parser(
        "probe",
        help="linear probes per layer and block, before and after passkey training",
        description="Probe passkey models: train the passkey experiment's main runs of "
        "--patterns x --seeds (preset gpu-mix, the recipe that passed its gate, where CUDA "
        "is; smoke-mix, its CPU twin, elsewhere; resuming) into --train-out, or take the "
        "runs of --from-runs, and fit one logistic-regression probe per (layer, block) on "
        "block-mean-pooled hidden states (6 candidate keys, needle at 10% depth, the run's "
        "length and blocks) of the run's model at initialisation and of its checkpoint; "
        "writes OUT/PATTERN-sSEED/probe.json, RESULTS/summary.json and heatmaps.png.",
    )
    b.add_argument("--out", help="probe outputs: OUT/PATTERN-sSEED/probe.json")
    b.add_argument(
        "--from-runs", metavar="DIR",
        help="no training: probe these runs of `powerattn experiment passkey` (its --out)",
    )  # fmt: skip
    b.add_argument("--train-out", metavar="DIR", help="where to train the runs (OUT/passkey)")
    b.add_argument(
        "--preset",
        help="gpu-mix (the default with CUDA: the gated recipe, GPU-sized) or smoke-mix (its "
        "CPU twin; the default without CUDA or with --device cpu)",
    )
    add_list_argument(
        b, "--patterns", default=["sliding_window", "power", "full"],
        help="pattern names (sliding_window,power,full)",
    )  # fmt: skip
    add_list_argument(b, "--seeds", nonnegative_int, default=[0], help="seeds (0)")
    b.add_argument("--steps-scale", type=float, help="multiply every stage's steps (1)")
    b.add_argument(
        "--per-key", type=positive_int, default=32, help="probe documents per key (32; 6 keys)"
    )
    b.add_argument(
        "--engine", default="torch", help="torch (batched L-BFGS; the default) or sklearn"
    )
    b.add_argument("--jobs", type=positive_int, help="runs trained at once, one process each (1)")
    b.add_argument("--deadline", type=float, help="seconds from now to stop training")
    b.add_argument(
        "--device",
        default="auto",
        help="where the probes run: auto (the default: cuda if any), cpu or cuda[:N] "
        "(training: cuda if any)",
    )
    _speed_arg(b)
    b.add_argument("--summarize", metavar="RUNS", help="no training: summarize RUNS/*/probe.json")
    _results_args(b)
    b.set_defaults(func=_probe)

    g = esub.add_parser(
        "results",
        help="rebuild results/{lm,lm-base,ruler,probing} from the runs' outputs",
        description="Copy the runs' outputs of a GPU call (--from: its output folder, its "
        "runs.tgz, or a folder with lm/ base/ ruler/ probe/ run directories; base/ is a "
        "continued-pretraining base, gpu_eval.sh LM_DIR=base; no checkpoints) into "
        "ROOT/{lm,lm-base,ruler,probing}/per_run (not git-ignored, unlike runs/) and its "
        "log.txt and gpu.txt into those areas' call_log.txt and gpu.txt, then rewrite each of "
        "those areas' summary.json, details.json, table.txt and figure from its per_run alone; "
        "the areas "
        "the call holds no runs of are left as they are. Without --from: only the rewrite, of "
        "every area with a per_run.",
    )
    g.add_argument("--from", dest="source", help="the call's $OUT folder or runs.tgz")
    g.add_argument("--root", default="results", help="results root (results)")
    g.set_defaults(func=_results)


def _campaign_args(p: argparse.ArgumentParser, need_corpus: bool) -> None:
    if need_corpus:
        p.add_argument("--corpus", help="corpus directory (eval corpus)")
    p.add_argument("--preset", default="tiny", help="tiny (the default: CPU smoke) or gpu")
    add_list_argument(p, "--patterns", help="pattern names (default: every pattern, full first)")
    add_list_argument(p, "--seeds", nonnegative_int, default=[0], help="seeds (0)")
    p.add_argument("--steps", type=positive_int, help="steps per run (default: the preset's)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs at once, in subprocesses (1)")
    p.add_argument(
        "--deadline",
        type=float,
        help="seconds from now after which training stops (resumable; default: none)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (the default: cuda if any), cpu or cuda[:N]"
    )
    p.add_argument("--tokenizer", help="tokenizer JSON (default: the committed one)")
    _speed_arg(p)


RULER_LENGTH = 4096  # eval ruler --model's default --length
RESULTS_DIR = "results"  # the default --results: RUNS/results, inside the runs' own folder
# In a results folder: the runs folder its summary.json was written from (a rerun may rewrite it)
WRITTEN_FROM = "written_from.txt"


def _results_args(p: argparse.ArgumentParser) -> None:
    # A default relative to the working directory (results/lm) overwrote the committed
    # results of a checkout: the default lives under the runs' own folder instead.
    p.add_argument(
        "--results",
        help=f"summary directory (default: RUNS/{RESULTS_DIR}, RUNS being --out or --summarize); "
        "one holding a summary.json of other runs is refused without --force",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite a --results folder's summary.json of other runs (e.g. the committed "
        "results/)",
    )


def _speed_arg(p: argparse.ArgumentParser) -> None:
    add_list_argument(
        p, "--speed", default=[],
        help=f"trainer speed options to switch on, of {', '.join(SPEED_OPTIONS)} (the same "
        "training up to float rounding; recorded in each run's config.json, no part of its "
        "identity: a run resumes with them on or off; compile: 2.4x steps/s for the passkey "
        "model alone on an H200, unmeasured on these: scripts/gpu_eval.sh SPEED=auto)",
    )  # fmt: skip


def _speed(args: argparse.Namespace) -> list[str]:
    """--speed, validated before any run starts (a worker would fail once per run)."""
    from ..eval.lm import speed_options

    return speed_options(args.speed)


def _stop(args: argparse.Namespace) -> float | None:
    return None if args.deadline is None else time.time() + args.deadline


def _tok(args: argparse.Namespace) -> str:
    from ..eval.bpe import DEFAULT_PATH

    return args.tokenizer or str(DEFAULT_PATH)


def _corpus(args: argparse.Namespace) -> int:
    from ..eval.corpus import build_corpus

    if args.max_package_chars is not None and args.group != "package":
        raise ValueError("--max-package-chars needs --group package")
    m = build_corpus(
        args.out,
        args.source or ["python"],
        max_mb=args.max_mb,
        min_chars=args.min_chars,
        test_permille=args.test_permille,
        group=args.group,
        max_package_chars=args.max_package_chars or MAX_PACKAGE_CHARS,
        select_longrange=args.select_longrange,
        split_key=args.split_key,
    )
    shown = {k: v for k, v in m.items() if k != "ids"}
    if "select_longrange" in shown:  # the per-document scores are in the manifest
        shown["select_longrange"] = {
            k: v for k, v in shown["select_longrange"].items() if k != "scores"
        }
    print(json.dumps(shown, indent=1))
    if args.select_longrange is not None and m["documents"]["test"] < 40:
        print(
            f"note: --select-longrange {args.select_longrange} leaves {m['documents']['test']} "
            f"held-out documents (fewer than ~40); raise --test-permille (now "
            f"{args.test_permille})",
            file=sys.stderr,
        )
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from ..eval.bpe import BPETokenizer, train_tokenizer
    from ..eval.corpus import read_documents

    docs = read_documents(args.corpus, "train")
    path = train_tokenizer((d["text"] for d in docs), args.out, args.vocab)
    tok = BPETokenizer(path)
    test = read_documents(args.corpus, "test")
    chars = sum(len(d["text"]) for d in test)
    tokens = sum(len(x) for x in tok.encode_batch([d["text"] for d in test]))
    print(f"{path}: {tok.vocab_size} tokens, {chars / max(tokens, 1):.2f} chars/token held out")
    return 0


def _results_dir(args: argparse.Namespace) -> Path:
    """--results, or RUNS/results (RUNS: --summarize, else --out)."""
    return Path(args.results or Path(args.summarize or args.out) / RESULTS_DIR)


def _check_results(results: Path, runs: str | Path, force: bool) -> None:
    """Refuse (before any training) to overwrite a summary.json written from other runs, e.g.
    the committed results/lm (from its per_run); the same runs' summary is rewritten (a rerun,
    a resume, --summarize: scripts/gpu_eval.sh and gpu_probe.sh)."""
    from ..eval.campaign import PER_RUN

    if force or not (results / "summary.json").is_file():
        return
    runs = Path(runs).resolve()
    mark = results / WRITTEN_FROM
    source = Path(mark.read_text().strip()) if mark.is_file() else None
    if runs in (source, (results / PER_RUN).resolve()):
        return
    which = source or "which: not recorded"
    raise ValueError(
        f"--results {results} already holds a summary.json of other runs ({which}; not {runs}); "
        f"give another --results (default: RUNS/{RESULTS_DIR}) or --force to overwrite it"
    )


def _mark_results(results: Path, runs: str | Path) -> None:
    """Record which runs the summary came from (no record for RESULTS/per_run, the committed
    layout: a machine's absolute path has no place there), then name the folder's files."""
    from ..eval.campaign import PER_RUN

    if Path(runs).resolve() != (results / PER_RUN).resolve():
        (results / WRITTEN_FROM).write_text(f"{Path(runs).resolve()}\n")
    _say_where(results)


def _say_where(results: str | Path) -> None:
    """Name the summary folder."""
    names = sorted(p.name for p in Path(results).iterdir() if p.is_file())
    print(f"wrote {Path(results).resolve()}: {', '.join(names)}", file=sys.stderr)


def _write_results(results: str, name: str, obj: dict) -> Path:
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(obj, indent=1) + "\n")
    return out / name


def _ppl(args: argparse.Namespace) -> int:
    from ..eval import campaign, lm

    if not args.summarize and (not args.corpus or not args.out):
        raise ValueError("give --corpus and --out (or --summarize RUNS)")
    runs, results = args.summarize or args.out, _results_dir(args)
    _check_results(results, runs, args.force)
    if not args.summarize:
        specs = campaign.lm_specs(
            args.corpus, args.out, args.preset, args.patterns or lm.PATTERNS, args.seeds,
            args.steps, args.device, _stop(args), _tok(args), _speed(args), args.init_from,
        )  # fmt: skip
        failed = campaign.run_pool("lm", specs, args.out, args.jobs)
        if failed:
            print(f"failed runs (see {args.out}/lm-NAME.log): {failed}", file=sys.stderr)
    print(write_lm_results(runs, results))
    _mark_results(results, runs)
    return 0


def write_lm_results(runs: str | Path, results: str | Path) -> str:
    """``summary.json``, ``details.json``, ``table.txt`` and ``ppl_by_position.png`` of the
    runs of ``eval ppl`` under ``runs``, into ``results``; returns the table."""
    from ..eval import lm

    summary, details = lm.summarize(runs)
    _write_results(results, "summary.json", summary)
    _write_results(results, "details.json", details)
    agg = details["throughput"]["aggregate_steady_tokens_per_s"]
    span = details["throughput"].get("makespan_tokens_per_s")
    text = (
        lm.summary_table(summary, details)
        + "\n\n"
        + lm.verdict_text(details)
        + "\n\naggregate steady-state training tokens/s (sum over runs): "
        + ("n/a" if agg is None else f"{agg:.4g}")
        + "\ntraining tokens/s of all runs over the longest run's training time (plan with this): "
        + ("n/a" if span is None else f"{span:.4g}")
        + "\n"
    )
    (Path(results) / "table.txt").write_text(text)
    _plot(lm.plot_ppl, summary, details, Path(results) / "ppl_by_position.png")
    return text


def _plot(fn, *args) -> None:
    """A figure if matplotlib is installed (the GPU machine may lack it: `eval results` redraws
    it at home from the runs' outputs)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"matplotlib is not installed: no {args[-1]} (redraw: powerattn eval results)")
        return
    fn(*args)


def _ruler(args: argparse.Namespace) -> int:
    from ..eval import campaign, lm, ruler

    ruler.check_tasks(args.tasks)  # before a model is loaded or a run starts
    if args.model:
        if args.speed:
            raise ValueError("--speed applies to training (--train), not to scoring --model")
        return _ruler_one(args)
    if not args.summarize and (not args.train or not args.out):
        raise ValueError("give --model, or --train with --out (and --lm-runs), or --summarize")
    runs, results = args.summarize or args.out, _results_dir(args)
    _check_results(results, runs, args.force)
    if not args.summarize:
        if args.length is not None:
            raise ValueError(
                "--length applies to --model; --train scores at the preset's context (--preset)"
            )
        if args.pattern:
            raise ValueError(
                "--pattern applies to a transformers --model; --train takes --patterns"
            )
        if args.lm_runs and not Path(args.lm_runs).is_dir():
            raise ValueError(
                f"--lm-runs {args.lm_runs}: no such folder; give the --out of eval ppl, or leave "
                "--lm-runs out to train from scratch"
            )
        patterns = args.patterns or lm.PATTERNS
        campaign._check(args.preset, patterns)
        speed = _speed(args)
        steps = args.steps or lm.PRESETS[args.preset].steps
        variants = [[]] + ([campaign.hybrid_layers(args.preset)] if args.hybrid else [])
        specs = [
            dict(
                lm_runs=args.lm_runs,
                out=str(args.out),
                preset=args.preset,
                pattern=p,
                seed=s,
                steps=steps,
                samples=args.samples,
                device=args.device,
                full_layers=fl,
                tasks=args.tasks,
                stop_time=_stop(args),
                tokenizer=_tok(args),
                speed=speed,
            )  # fmt: skip
            for s in args.seeds
            for fl in variants
            for p in patterns
            if not (fl and p == "full")
        ]
        failed = campaign.run_pool("ruler", specs, args.out, args.jobs)
        if failed:
            print(f"failed runs (see {args.out}/ruler-NAME.log): {failed}", file=sys.stderr)
    print(write_ruler_results(runs, results))
    _mark_results(results, runs)
    return 0


def write_ruler_results(runs: str | Path, results: str | Path) -> str:
    """``summary.json``, ``details.json``, ``table.txt`` and ``ruler.png`` of the runs of
    ``eval ruler --train`` under ``runs``, into ``results``; returns the table."""
    from ..eval import campaign

    summary = campaign.summarize_ruler(runs)
    table, details, found = summary.pop("table"), summary.pop("details"), summary.pop("runs")
    _write_results(results, "summary.json", summary)
    _write_results(results, "details.json", details)
    (Path(results) / "table.txt").write_text(table + "\n")
    campaign.plot_ruler(found, details, Path(results) / "ruler.png")
    return table


def _ruler_one(args: argparse.Namespace) -> int:
    from ..eval import ruler

    length = RULER_LENGTH if args.length is None else args.length
    model, tok = _load_model(args, length)
    res = ruler.evaluate_model(model, tok, length, args.tasks, args.samples)
    print(ruler.table({Path(args.model).name: {**res["scores"], **res["categories"]}}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def _load_model(args: argparse.Namespace, length: int):
    """(model, tokenizer) of --model: a run directory of ours, or a local HF checkpoint."""
    import torch

    from ..training.trainer import resolve_device

    path = Path(args.model)
    device = resolve_device(args.device)
    _check_model_path(path)
    if (path / "checkpoint.pt").is_file():
        if args.pattern:
            raise ValueError(
                f"--pattern applies to a transformers --model; the run {path} keeps its own "
                "pattern (score another run of eval ppl instead)"
            )
        from ..eval.bpe import BPETokenizer
        from ..training.config import TrainConfig
        from ..training.model import build_model

        cfg = TrainConfig.from_dict(json.loads((path / "config.json").read_text()))
        tok = BPETokenizer(_tok(args))
        model = build_model(
            cfg.model, cfg.build_pattern(), max(length, cfg.final_seq_len),
            full_layers=cfg.pattern.full_layers, seed=cfg.seed, tokenizer=tok,
        )  # fmt: skip
        state = torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        return model.to(device), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device)
    if args.pattern:
        from ..transformers import apply

        apply(model, args.pattern)
    return model, tok


def _check_model_path(path: Path) -> None:
    """Refuse a --model that is neither a run of eval ppl with its checkpoint nor a
    transformers checkpoint, naming what it is and what to give instead."""
    if (path / "checkpoint.pt").is_file():
        return
    if not path.is_dir():
        raise ValueError(
            f"--model {path}: {'not a folder' if path.exists() else 'no such folder'}; give a "
            "run directory of eval ppl (OUT/PATTERN-sSEED) or a local transformers checkpoint"
        )
    config = path / "config.json"
    ours = config.is_file() and "model_type" not in json.loads(config.read_text())
    if ours:
        raise ValueError(
            f"--model {path}: a run directory of eval ppl with no checkpoint.pt (runs copied "
            "back from a GPU call keep no checkpoints); score the run where it was trained"
        )
    if not config.is_file():
        runs = sorted(d.name for d in path.iterdir() if (d / "checkpoint.pt").is_file())
        hint = f"; its runs: --model {path}/{runs[0]}" + (" ..." if len(runs) > 1 else "")
        raise ValueError(
            f"--model {path} is neither a run directory of eval ppl (no checkpoint.pt) nor a "
            "transformers checkpoint (no config.json)" + (hint if runs else "")
        )


def _probe(args: argparse.Namespace) -> int:
    from ..eval import probe_runs

    if not args.summarize and not args.out:
        raise ValueError("give --out (or --summarize RUNS)")
    runs, results = args.summarize or args.out, _results_dir(args)
    _check_results(results, runs, args.force)
    if not args.summarize:
        from ..eval.probe import check_engine

        check_engine(args.engine)  # before any training
        from ..training.trainer import resolve_device

        device = resolve_device(args.device)
        speed = _speed(args)
        if args.from_runs:
            training = ("preset", "train_out", "steps_scale", "jobs", "deadline", "speed")
            given = [f for f in training if getattr(args, f) not in (None, [])]
            if given:
                flags = ", ".join("--" + f.replace("_", "-") for f in given)
                raise ValueError(f"{flags}: training options, not for --from-runs")
            source = args.from_runs
        else:
            preset = args.preset or probe_runs.default_preset(device)
            if not args.preset:  # say which: the two differ by days of CPU time
                other = next(p for p in probe_runs.PRESETS if p != preset)
                print(
                    f"preset {preset}, the default on {device.type} (the other: --preset {other})",
                    file=sys.stderr,
                )
            source = args.train_out or str(Path(args.out) / "passkey")
            probe_runs.train_runs(
                source, preset, args.patterns, args.seeds,
                args.jobs or 1, _stop(args), speed,
                1.0 if args.steps_scale is None else args.steps_scale,
            )  # fmt: skip
        found = [probe_runs.find_run(source, p, s) for s in args.seeds for p in args.patterns]
        for run_dir in found:  # every run found before the first is probed
            probe_runs.probe_run(run_dir, args.out, args.per_key, args.engine, args.device)
    print(write_probe_results(runs, results))
    _mark_results(results, runs)
    return 0


def write_probe_results(runs: str | Path, results: str | Path) -> str:
    """``summary.json``, ``details.json`` (per run, and ``verdicts``: Figure 5's decision
    rules), ``table.txt`` and ``heatmaps.png`` of the runs of ``eval probe`` under ``runs``,
    into ``results``; returns the table."""
    from ..eval import campaign

    summary, full = campaign.summarize_probe(runs)
    _write_results(results, "summary.json", summary)
    details = campaign.probe_details(full)  # per run, by name
    details["verdicts"] = campaign.probe_verdicts(full)  # Figure 5's decision rules
    _write_results(results, "details.json", details)
    _plot(campaign.plot_probe, full, Path(results) / "heatmaps.png")
    lines = []
    for r in full:
        exact = (r.get("passkey") or {}).get("exact_match", {}).get(str(r["seq_len"]))
        lines.append(
            f"{r['name']:<24} last layer, last block: before {r['before'][-1][-1]:.2f}, "
            f"after {r['after'][-1][-1]:.2f} (chance {r['chance']:.2f}; "
            f"{r['steps']}/{r['steps_planned']} steps"
            + (", INCOMPLETE" if r["steps"] < r["steps_planned"] else "")
            + ("" if exact is None else f"; passkey exact match at {r['seq_len']}: {exact:.3f}")
            + ")"
        )
    text = "\n".join(lines) + "\n\n" + campaign.probe_verdict_text(details["verdicts"])
    (Path(results) / "table.txt").write_text(text + "\n")
    return text


def _results(args: argparse.Namespace) -> int:
    from ..eval import campaign

    root = Path(args.root)
    areas = None  # every area with runs; with --from, only the call's
    if args.source:
        copied = campaign.unpack_runs(args.source, root)
        print(f"copied the runs' outputs into {', '.join(map(str, copied)) or 'nothing'}")
        areas = {d.parent.name for d in copied}
    writers = {
        "lm": write_lm_results,
        "lm-base": write_lm_results,
        "ruler": write_ruler_results,
        "probing": write_probe_results,
    }
    done = 0
    for area, write in writers.items():
        runs = root / area / campaign.PER_RUN
        if runs.is_dir() and (areas is None or area in areas):
            print(f"== {root / area}\n{write(runs, root / area)}")
            done += 1
    if not done:
        raise ValueError(
            f"no {root}/{{lm,lm-base,ruler,probing}}/{campaign.PER_RUN}; give --from with the GPU "
            "call's output (its runs.tgz)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m powerattn.commands.eval ...`` (the same as ``powerattn eval ...``)."""
    parser = argparse.ArgumentParser(prog="powerattn")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    from ..cli import _user_errors

    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # bad input: one clear line, as `powerattn eval`
        if not isinstance(exc, _user_errors()):
            raise
        print(f"powerattn eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
