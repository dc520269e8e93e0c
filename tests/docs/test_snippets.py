"""What README.md and docs/*.md state that the code can check, so the documentation cannot
drift: relative links and repository paths exist, every ``powerattn`` command of a bash
block parses, and the tables of docs/patterns.md, the constants of docs/operator.md and the
config of docs/huggingface.md are what the code gives. (tests/test_docs.py runs the Python
blocks.) CPU, a few seconds."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import powerattn
from powerattn.cli import build_parser
from powerattn.patterns import PATTERNS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKDOWN = DOCS + sorted((ROOT / "results").rglob("*.md"))
PATTERNS_MD = (ROOT / "docs" / "patterns.md").read_text()


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links() -> list[tuple[str, Path, str]]:
    out = []
    for path in MARKDOWN:
        for m in re.finditer(r"\]\(([^)\s]+)\)", path.read_text()):
            if not re.match(r"[a-z]+:", m.group(1)):
                out.append((_rel(path), path, m.group(1)))
    return out


LINKS = _links()


@pytest.mark.parametrize(("where", "path", "target"), LINKS, ids=[f"{w}:{t}" for w, _, t in LINKS])
def test_relative_link_resolves(where, path, target):
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    assert dest.exists(), f"{where}: link to {target}: no such file"
    if anchor and dest.is_file():
        heads = re.findall(r"^#+ (.*)$", dest.read_text(), flags=re.M)
        assert anchor in {_slug(h) for h in heads}, f"{where}: no heading #{anchor} in {file}"


def test_repository_paths_in_docs_exist():
    missing = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"`((?:results|scripts|tests|src|docs)/[^`\s]*)`", text):
            name = m.group(1).split("::")[0]
            if re.search(r"[<*{$]|/[A-Z]+(/|$)", name):  # placeholders: <name>, AREA, globs
                continue
            if not (ROOT / name).exists():
                missing.append(f"{_rel(path)}:{text[: m.start()].count(chr(10)) + 1}: {name}")
    assert not missing, missing


def _shell_commands() -> list[tuple[str, list[str]]]:
    """Each command line of the ```bash blocks (continuations joined, comments dropped)."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.S | re.M):
            first = text[: m.start()].count("\n") + 2
            block = re.sub(r"\\\n\s*", " ", m.group(1))
            for i, line in enumerate(block.splitlines()):
                argv = shlex.split(line, comments=True)
                if argv and "<" not in line:
                    out.append((f"{_rel(path)}:{first + i}", argv))
    return out


def _cli_argv(argv: list[str]) -> list[str] | None:
    """The ``powerattn`` arguments a command line runs, or None where it runs none."""
    env = {}
    while argv and re.match(r"^\w+=", argv[0]):
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    if argv[:1] == ["powerattn"]:
        return argv[1:]
    for module in ("powerattn", "powerattn.cli"):
        if module in argv and argv[argv.index(module) - 1] == "-m":
            return argv[argv.index(module) + 1 :]
    if argv[:2] == ["bash", "scripts/gpu_train.sh"]:  # PARTS BUDGET_S, then passkey flags
        preset = env.get("PRESET", "gpu-mix")
        return ["experiment", "passkey", "--preset", preset, "--out", "x", "--parts", argv[2],
                *argv[4:]]  # fmt: skip
    return None


COMMANDS = _shell_commands()


def test_docs_show_commands():
    assert sum(_cli_argv(list(a)) is not None for _, a in COMMANDS) >= 10, COMMANDS


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_shell_command_parses(where, argv, capsys):
    argv = list(argv)
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(argv[1:]) <= set(targets), f"{where}: no make target {argv[1:]}"
        return
    scripts = [a for a in argv if a.startswith("scripts/")]
    assert all((ROOT / s).exists() for s in scripts), f"{where}: {scripts}"
    cli = _cli_argv(argv)
    if cli is None:
        return
    try:
        build_parser().parse_args(cli)
    except SystemExit:
        pytest.fail(f"{where}: powerattn {shlex.join(cli)}: {capsys.readouterr().err}")


def _table(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with ``header``."""
    lines = text[text.index(header) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip("|").split("|")])
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def test_patterns_md_catalogue():
    """Degree and density at 32K of each default pattern; the last block's key blocks."""
    rows = _table(PATTERNS_MD, "| name | rule (block level)")
    assert {r[0] for r in rows} == set(PATTERNS)
    for name, *_, degree, density in rows:
        p = powerattn.get_pattern(name)
        pct = f"{100 * p.density(32768):.1f}%".replace("100.0%", "100%")
        assert (int(degree), density) == (p.max_degree(128), pct), name
    for name, cell in _table(PATTERNS_MD, "| pattern | key blocks of query block 127"):
        while "(" in cell:  # drop the remarks, nested ones included
            cell = re.sub(r"\([^()]*\)", "", cell)
        blocks: list[int] = []
        for tok in cell.replace(" ", "").split(","):
            if tok == "...":
                blocks.append(-1)  # filled below: the step of the two before it
            elif ".." in tok:
                lo, hi = map(int, tok.split(".."))
                blocks.extend(range(lo, hi + 1))
            else:
                blocks.append(int(tok))
        for i, b in enumerate(blocks):
            if b == -1:
                step = blocks[i - 1] - blocks[i - 2]
                blocks[i : i + 1] = list(range(blocks[i - 1] + step, blocks[i + 1], step))
        assert sorted(blocks) == powerattn.get_pattern(name).kv_blocks(127), name


def _reach(pattern, seq_len: int) -> str:
    hops = np.asarray(powerattn.hops(pattern, seq_len))
    layers = powerattn.layers_for_full_coverage(pattern, seq_len)
    return str(layers) if layers is not None else f"never ({_pct((hops >= 0).mean())})"


def test_patterns_md_receptive_field_tables():
    pats = powerattn.equal_budget(32768)
    rows = _table(PATTERNS_MD, "| pattern | degree | layers to full coverage")
    assert [r[0] for r in rows] == list(pats)
    for name, degree, full, cov in rows:
        p = pats[name]
        c = powerattn.coverage(p, 32768, 8)
        want = " / ".join(_pct(c[i - 1]) for i in (2, 4, 6, 8))
        assert int(degree) == p.max_degree(128), name
        assert full.replace(" reachable", "") == _reach(p, 32768), name
        assert cov == want or (name == "full" and cov == "100%"), (name, cov, want)

    header = "| tokens (blocks) | budget |"
    names = [c.strip() for c in PATTERNS_MD[PATTERNS_MD.index(header) :].split("\n")[0]
             .strip("|").split("|")][2:]  # fmt: skip
    for size, budget, *cells in _table(PATTERNS_MD, header):
        seq_len = 256 * int(re.search(r"\((\d+)\)", size).group(1))
        pats = powerattn.equal_budget(seq_len)
        assert int(budget) == pats["power"].max_degree(seq_len // 256), size
        assert cells == [_reach(pats[n], seq_len) for n in names], size


def test_patterns_md_dense_prefixes():
    """docs/patterns.md, "Short sequences are not sparse": the lengths up to which power and
    the sliding window are full causal attention."""
    text = " ".join(PATTERNS_MD.split())
    for name, claim in {
        "power": "({tokens} tokens = {blocks} blocks",
        "sliding_window": "sliding window likewise up to {blocks} blocks ({tokens} tokens:",
    }.items():
        n = powerattn.receptive.dense_prefix_tokens(name)
        assert claim.format(tokens=f"{n:,}", blocks=n // 256) in text, name


def test_operator_md_constants():
    import powerattn.ops.api
    import powerattn.ops.decode
    import powerattn.ops.dense
    import powerattn.ops.flex

    modules = [powerattn.ops.api, powerattn.ops.dense, powerattn.ops.flex, powerattn.ops.decode]
    found = 0
    for path in DOCS:
        for m in re.finditer(r"`(?:powerattn\.[\w.]+\.)?([A-Z][A-Z0-9_]+) = ([\d*]+)`",
                             path.read_text()):  # fmt: skip
            name, value = m.group(1), eval(m.group(2))  # noqa: S307 - digits and ** only
            owners = [mod for mod in modules if hasattr(mod, name)]
            assert owners, f"{_rel(path)}: no constant {name}"
            assert getattr(owners[0], name) == value, f"{_rel(path)}: {name}"
            found += 1
    assert found >= 4


def test_huggingface_md_config_entry():
    transformers = pytest.importorskip("transformers")
    import powerattn.hf as pt

    text = (ROOT / "docs" / "huggingface.md").read_text()
    shown = json.loads(re.search(r"```json\n(.*?)```", text, flags=re.S).group(1))
    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=28,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    pt.apply(model, "power", full_layers="2 of every 7")  # the paper's hybrid, Qwen2-7B's depth
    assert model.config.attn_implementation == shown["attn_implementation"]
    assert model.config.powerattn == shown["powerattn"]
