"""The Python examples of README.md and docs/*.md run as written (CPU, small inputs), so the
documentation cannot drift from the API. Names the examples leave undefined (``q, k, v``,
``model``, ``inputs``, ``batch``; ``powerattn`` for README's continued examples) are provided
here; a hub download is replaced by a tiny
random-initialised Llama, because nothing may be downloaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import powerattn  # noqa: E402
from powerattn.patterns import PATTERNS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HUB_LOAD = re.compile(
    r"^(\s*)model = AutoModelForCausalLM\.from_pretrained\(\"[\w.-]+/[\w.-]+\".*$"
)


def _blocks() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for i, m in enumerate(re.finditer(r"```python\n(.*?)```", text, flags=re.S)):
            out.append((f"{path.name}#{i}", m.group(1)))
    return out


def _namespace() -> dict:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(3, 97, (1, 40))
    q = torch.randn(1, 4, 300, 16)
    k, v = torch.randn(2, 1, 2, 300, 16)
    return {
        "powerattn": powerattn,  # README's examples continue one another
        "model": model,
        "inputs": {"input_ids": ids},
        "batch": {"input_ids": ids},
        "q": q,
        "k": k,
        "v": v,
        "pattern": powerattn.get_pattern("power", block_size=64),
        "AutoModelForCausalLM": transformers.AutoModelForCausalLM,
    }


BLOCKS = _blocks()


def test_the_docs_have_examples():
    assert len(BLOCKS) >= 4, [name for name, _ in BLOCKS]


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_doc_example_runs(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples save checkpoints to relative paths
    code = "\n".join(
        HUB_LOAD.sub(r"\1pass  # hub model -> the tiny model of the namespace", line)
        for line in code.splitlines()
    )
    ns = _namespace()
    registered = dict(PATTERNS)  # docs/patterns.md registers an example pattern: undo it
    try:
        exec(compile(code, name, "exec"), ns)  # noqa: S102 - our own documentation
    finally:
        PATTERNS.clear()
        PATTERNS.update(registered)


def test_readme_values_in_comments_are_right():
    """The outputs the README shows in comments are what the code returns."""
    p = powerattn.get_pattern("power")
    assert p.kv_blocks(127) == [0, 63, 95, 111, 119, 123, 124, 125, 126, 127]
    assert "p.kv_blocks(127)                                # [0, 63, 95, 111, 119, 123, 124, " \
        "125, 126, 127]" in (ROOT / "README.md").read_text()  # fmt: skip
