"""The corpus builder, the BPE tokenizer and the language-modelling batches."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest

from powerattn.eval import corpus as corpus_mod
from powerattn.eval.bpe import DEFAULT_PATH, BPETokenizer, train_tokenizer
from powerattn.eval.corpus import (
    build_corpus,
    package_of,
    path_key,
    read_documents,
    split_of,
)
from powerattn.training.lm_data import lm_batch_fn


def _path_split(path, permille):
    return split_of(hashlib.sha256(path_key(path).encode()).hexdigest(), permille)


def test_split_by_hash_no_overlap_and_reproducible(tiny_corpus, tmp_path):
    m = json.loads((tiny_corpus / "manifest.json").read_text())
    assert m["split_key"] == "path"
    train, test = set(m["ids"]["train"]), set(m["ids"]["test"])
    assert train and test and not train & test
    for split, ids in (("train", train), ("test", test)):
        docs = read_documents(tiny_corpus, split)
        assert {d["id"] for d in docs} == ids
        assert all(_path_split(d["path"], 300) == split for d in docs)
    # Rebuilding gives the same documents on the same sides.
    again = build_corpus(tmp_path / "again", m["sources"], min_chars=2000, test_permille=300)
    assert again["ids"] == m["ids"]


def test_duplicates_short_and_binary_files_are_dropped(tmp_path, make_docs):
    src = make_docs(tmp_path / "src", n=4)
    (src / "copy.py").write_text((src / "doc0.py").read_text())  # same content
    (src / "short.txt").write_text("tiny")
    (src / "binary.txt").write_bytes(b"\x00" * 5000)
    m = build_corpus(tmp_path / "c", [str(src)], min_chars=2000, test_permille=500)
    assert m["documents"]["train"] + m["documents"]["test"] == 4


def test_bad_input_is_refused(tmp_path, make_docs):
    with pytest.raises(ValueError, match="neither 'python' nor a directory"):
        build_corpus(tmp_path / "c", [str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="test_permille"):
        build_corpus(tmp_path / "c", ["python"], test_permille=0)
    src = make_docs(tmp_path / "one", n=1)
    with pytest.raises(ValueError, match="held-out"):
        build_corpus(tmp_path / "c", [str(src)], min_chars=2000, test_permille=1)
    with pytest.raises(ValueError, match="build the corpus first"):
        read_documents(tmp_path / "nowhere", "train")


def test_tokenizer_trains_and_round_trips(tiny_corpus, tmp_path):
    texts = [d["text"] for d in read_documents(tiny_corpus, "train")]
    tok = BPETokenizer(train_tokenizer(texts, tmp_path / "tok.json", vocab_size=300))
    assert tok.vocab_size == 300
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    sample = "def f(x):\n    return x  # é ü 中\n"
    ids = tok.encode(sample, bos=True)
    assert ids[0] == tok.bos_id and tok.decode(ids) == sample
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, tmp_path / "t.json", vocab_size=10)


def test_committed_tokenizer():
    tok = BPETokenizer(DEFAULT_PATH)
    assert tok.vocab_size == 8192
    text = "import numpy as np\n\nclass Model:\n    def forward(self, x):\n        return x\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2.5  # a real BPE on code, not bytes


def test_lm_batches_are_a_function_of_seed_and_step():
    from powerattn.training.config import Stage, TrainConfig

    tokens = np.arange(10_000, dtype=np.uint16)
    fn = lm_batch_fn(tokens)
    cfg = TrainConfig(stages=[Stage(300, 5)], batch_size=3, seed=1, loss_on="all")
    a, b = fn(cfg, 2), fn(cfg, 2)
    assert a.shape == (3, 300) and a.dtype.is_floating_point is False
    assert (a == b).all() and not (a == fn(cfg, 3)).all()
    assert ((a[:, 1:] - a[:, :-1]) == 1).all()  # contiguous windows of the stream
    with pytest.raises(ValueError, match="shorter than one window"):
        lm_batch_fn(np.arange(100))(cfg, 0)


# ---------------------------------------------------------------- --group package


def _package_tree(root):
    """Two packages (one with a subpackage and an empty file), a single-file module, a file
    copied into both packages, and a short single-file module."""
    line = "value = compute(value)  # long enough to pass the length checks\n"
    files = {
        "pkg/b.py": "b = 2\n" + line * 40,
        "pkg/__init__.py": "from .b import b\n",
        "pkg/a.py": "a = 1",  # no final newline
        "pkg/empty.py": "",
        "pkg/sub/__init__.py": "# sub\n",
        "pkg/sub/c.py": "c = 3\n" + line * 10,
        "pkg/shared.py": "shared = True\n" + line * 5,
        "other/__init__.py": "other = 1\n" + line * 40,
        "other/shared.py": "shared = True\n" + line * 5,  # the same content as pkg/shared.py
        "top.py": "top = 0\n" + line * 60,
        "short.py": "s = 1\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return files


def _docs(corpus):
    return {d["path"]: d for split in ("train", "test") for d in read_documents(corpus, split)}


def test_package_of():
    assert package_of("email/parser.py") == ("email", "")
    assert package_of("email/mime/text.py") == ("email", "")
    assert package_of("os.py") is None
    assert package_of("site-packages/numpy/core/x.py") == ("site-packages/numpy", "site-packages")
    assert package_of("site-packages/six.py") is None
    assert package_of("dist-packages/a/b.py") == ("dist-packages/a", "dist-packages")


def test_package_grouping_concatenates_in_order_with_headers(tmp_path):
    files = _package_tree(tmp_path / "src")
    m = build_corpus(
        tmp_path / "c", [str(tmp_path / "src")], min_chars=500, test_permille=500, group="package"
    )
    assert (m["group"], m["max_package_chars"]) == ("package", 200_000)
    docs = _docs(tmp_path / "c")
    assert set(docs) == {"pkg/", "other/", "top.py"}  # short.py: below min_chars on its own
    assert docs["top.py"]["text"] == files["top.py"]  # a single-file module as it is

    def part(rel):
        text = files[rel]
        return f"# file: {rel}\n{text}" + ("" if text.endswith("\n") else "\n")

    # Each directory's files first (__init__.py first, then by name), then its subdirectories;
    # empty files left out; each file after its header, files separated by a blank line.
    pkg_order = ["pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/shared.py"]
    pkg_order += ["pkg/sub/__init__.py", "pkg/sub/c.py"]
    expected = {"pkg/": "\n".join(part(r) for r in pkg_order)}
    expected["other/"] = "\n".join(part(r) for r in ["other/__init__.py", "other/shared.py"])
    # shared.py's content is kept once only: in the package read first (by path hash).
    first = docs["pkg/"] if "shared" in docs["pkg/"]["text"] else docs["other/"]
    for path in ("pkg/", "other/"):
        if docs[path] is not first:
            expected[path] = expected[path].replace("\n" + part(f"{path}shared.py"), "")
        assert docs[path]["text"] == expected[path]
    assert sum("shared = True" in d["text"] for d in docs.values()) == 1


def test_package_grouping_is_deterministic_and_split_by_document(tmp_path):
    _package_tree(tmp_path / "src")
    kw = dict(min_chars=500, test_permille=500, group="package")
    a = build_corpus(tmp_path / "a", [str(tmp_path / "src")], **kw)
    b = build_corpus(tmp_path / "b", [str(tmp_path / "src")], **kw)
    for split in ("train", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{split}.jsonl"
        ).read_bytes()
    assert a["ids"] == b["ids"]
    train, test = set(a["ids"]["train"]), set(a["ids"]["test"])
    assert train and test and not train & test
    for split, ids in (("train", train), ("test", test)):
        docs = read_documents(tmp_path / "a", split)
        assert {d["id"] for d in docs} == ids
        assert all(_path_split(d["path"], 500) == split for d in docs)
    # No file's text is on both sides: the copied file is kept in one document only.
    texts = {s: " ".join(d["text"] for d in read_documents(tmp_path / "a", s)) for s in a["ids"]}
    assert not ("shared = True" in texts["train"] and "shared = True" in texts["test"])


def test_package_cap(tmp_path):
    _package_tree(tmp_path / "src")
    src, kw = [str(tmp_path / "src")], dict(min_chars=500, test_permille=500, group="package")
    build_corpus(tmp_path / "full", src, **kw)
    build_corpus(tmp_path / "cap", src, max_package_chars=1000, **kw)
    full, capped = _docs(tmp_path / "full"), _docs(tmp_path / "cap")
    assert set(full) == set(capped) and len(full["pkg/"]["text"]) > 1000
    for path, d in capped.items():
        text = d["text"]
        assert full[path]["text"].startswith(text)  # the first characters of the package
        assert len(text) <= 1000 and text.endswith("\n")  # cut at a line end
        if len(full[path]["text"]) > 1000:
            assert len(text) > 1000 - 80  # at most one (short) line less than the cap
    with pytest.raises(ValueError, match="below min_chars"):
        build_corpus(tmp_path / "x", src, max_package_chars=400, **kw)
    with pytest.raises(ValueError, match="group must be"):
        build_corpus(tmp_path / "x", src, group="repo")


def test_default_grouping_is_unchanged(tmp_path, make_docs):
    src = make_docs(tmp_path / "src")
    (src / "pkg").mkdir()
    for i in range(2):  # a package's files are separate documents by default
        (src / "pkg" / f"m{i}.py").write_text((src / f"doc{i}.py").read_text() + f"# {i}\n")
    kw = dict(min_chars=2000, test_permille=300)
    default = build_corpus(tmp_path / "d", [str(src)], **kw)
    explicit = build_corpus(tmp_path / "e", [str(src)], group="file", **kw)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "e" / name).read_bytes()
    assert default["ids"] == explicit["ids"]
    assert set(default) == {
        "sources", "min_chars", "max_mb", "test_permille", "split_key", "other_versions_dropped",
        "python", "roots", "counts", "licences", "documents", "chars", "ids",
    }  # fmt: skip
    paths = sorted(d["path"] for s in ("train", "test") for d in read_documents(tmp_path / "d", s))
    assert paths == sorted([f"doc{i}.py" for i in range(12)] + ["pkg/m0.py", "pkg/m1.py"])


def test_cli_group_package(tmp_path, capsys):
    from powerattn.cli import main

    _package_tree(tmp_path / "src")
    argv = ["eval", "corpus", "--out", str(tmp_path / "c"), "--source", str(tmp_path / "src")]
    argv += ["--min-chars", "500", "--test-permille", "500"]
    assert main([*argv, "--group", "package", "--max-package-chars", "1000"]) == 0
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (m["group"], m["max_package_chars"]) == ("package", 1000)
    capsys.readouterr()
    assert main([*argv, "--max-package-chars", "1000"]) != 0
    assert "needs --group package" in capsys.readouterr().err


# ---------------------------------------------------------------- --select-longrange


def _longrange_tree(root, n=8):
    """``n`` documents of ~5,200-5,900 tokens of random lines (~20 tokens each; one 4096-token
    window); document ``i`` repeats its first ``5 * i`` lines in the window's late quarter, so
    its far-only copy share grows with ``i``; plus a document of >= min_chars characters but
    shorter than one window."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)

    def line():
        a, b, c = (f"{int(v):05x}" for v in rng.integers(0, 16**5, 3))
        return f"v_{a} = f_{b}(x_{c})\n"

    for i in range(n):
        lines = [line() for _ in range(260)]
        # Lines 155..190 fall in the late quarter (tokens 3072..4095); the repeated lines come
        # from its first ~700 tokens (far back), not from the kept 1024 before the late quarter.
        lines[155:155] = lines[: 5 * i]
        (root / f"doc{i}.py").write_text(f"# document {i}\n" + "".join(lines))
    (root / "short.py").write_text("# short\n" + "".join(line() for _ in range(150)))
    return root


@pytest.fixture(scope="module")
def longrange_src(tmp_path_factory):
    return _longrange_tree(tmp_path_factory.mktemp("lr") / "src")


def _ids(corpus):
    return {d["id"]: d for s in ("train", "test") for d in read_documents(corpus, s)}


def test_select_longrange_default_is_unchanged(tmp_path, make_docs):
    src = [str(make_docs(tmp_path / "src"))]
    kw = dict(min_chars=2000, test_permille=300)
    a = build_corpus(tmp_path / "a", src, **kw)
    b = build_corpus(tmp_path / "b", src, select_longrange=None, **kw)
    for name in ("train.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "select_longrange" not in a and a == b


def test_select_longrange_keeps_far_copies_nested_and_deterministic(tmp_path, longrange_src):
    from powerattn.eval.bpe import BPETokenizer
    from powerattn.eval.longrange import document_score

    src, kw = [str(longrange_src)], dict(min_chars=2000, test_permille=600)
    full = _ids(tmp_path / "none") if build_corpus(tmp_path / "none", src, **kw) else None
    assert len(full) == 9
    kept = {}
    for f in (1.0, 0.5, 0.25):
        m = build_corpus(tmp_path / str(f), src, select_longrange=f, **kw)
        kept[f] = _ids(tmp_path / str(f))
        sel = m["select_longrange"]
        assert (sel["fraction"], sel["n"], sel["context"]) == (f, 8, 4096)
        assert (sel["late_start"], sel["cut"]) == (3072, 2048)
        assert sel["documents_before"] == 9 and sel["documents_scored"] == 8
        assert sel["documents_unscored_dropped"] == 1  # short.py: no full window, dropped
        assert sel["documents_kept"] == len(kept[f]) == {1.0: 8, 0.5: 4, 0.25: 2}[f]
        assert sel["threshold"] == min(sel["scores"][i] for i in kept[f])
        assert sel["score_summary"]["kept"]["count"] == len(kept[f])
        # The split is the unchanged path rule: the kept documents on their usual sides.
        train, test = set(m["ids"]["train"]), set(m["ids"]["test"])
        assert not train & test and train | test == set(kept[f])
        for i, d in kept[f].items():
            assert _path_split(d["path"], 600) == ("test" if i in test else "train")
        assert m["documents"]["train"] + m["documents"]["test"] == len(kept[f])
    assert set(kept[0.25]) <= set(kept[0.5]) <= set(kept[1.0]) <= set(full)
    assert all(not d["path"].startswith("short") for d in kept[1.0].values())
    # The planted far-back copies decide the ranking: the documents that repeat the most.
    assert sorted(d["path"] for d in kept[0.25].values()) == ["doc6.py", "doc7.py"]
    # The recorded scores are the library's statistic on each document's own text.
    tok = BPETokenizer()
    sel = json.loads((tmp_path / "0.5" / "manifest.json").read_text())["select_longrange"]
    for i, d in full.items():
        score = document_score(tok.encode(d["text"], bos=True))
        assert (score is None) == (i not in sel["scores"])
        if score is not None:
            assert sel["scores"][i] == pytest.approx(score, abs=1e-6)
    assert sel["scores"][next(i for i, d in full.items() if d["path"] == "doc0.py")] < 0.01
    # Rebuilding gives the same bytes.
    build_corpus(tmp_path / "again", src, select_longrange=0.5, **kw)
    for name in ("train.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "0.5" / name).read_bytes()


def test_select_longrange_bad_fraction(tmp_path, capsys, longrange_src):
    from powerattn.cli import main

    for bad in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            build_corpus(tmp_path / "c", [str(longrange_src)], select_longrange=bad)
    argv = ["eval", "corpus", "--out", str(tmp_path / "c"), "--source", str(longrange_src)]
    capsys.readouterr()
    assert main([*argv, "--select-longrange", "1.5"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--select-longrange FRACTION must be in (0, 1]" in err and "1.5" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()  # refused before anything is read or written


def test_cli_select_longrange(tmp_path, capsys, longrange_src):
    from powerattn.cli import main

    argv = ["eval", "corpus", "--out", str(tmp_path / "c"), "--source", str(longrange_src)]
    argv += ["--min-chars", "2000", "--test-permille", "600", "--select-longrange", "0.5"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["select_longrange"]["fraction"] == 0.5 and m["select_longrange"]["scores"]
    shown = json.loads(out)
    assert "scores" not in shown["select_longrange"] and "ids" not in shown
    assert "fewer than ~40" in err and "--test-permille" in err


# ---------------------------------------------------------------- --split-key


def test_path_key():
    assert path_key("site-packages/numpy/core/numeric.py") == "numpy/core/numeric.py"
    assert path_key("numpy/core/numeric.py") == "numpy/core/numeric.py"
    assert path_key("lib/dist-packages/numpy/") == "numpy/"
    assert path_key("site-packages/six.py") == "six.py"
    assert path_key("os.py") == "os.py" and path_key("email/") == "email/"


# md5 of the three files built by the code before --split-key existed (commit 1180cbe), with
# the temporary directory and the Python version replaced (see _md5s): --split-key content
# must rebuild them byte for byte.
OLD_MD5 = {
    "file": {
        "train.jsonl": "1e6cb2d9d4a05688be07f759d7f810ff",
        "test.jsonl": "e7943f5a7350950f23109e895d00db49",
        "manifest.json": "4e7d9ebdf77f3f2b7d6290ed5a5d5f71",
    },
    "package": {
        "train.jsonl": "ec8b8fc6bae5af526d7271bc130ef6ee",
        "test.jsonl": "876bda3a7606a7444524e9f9b47e8136",
        "manifest.json": "cb16b390b653c7d41e0daf541dd852f6",
    },
    "select": {
        "train.jsonl": "626b94e36f8c6a0fb9bfe8986cf820fe",
        "test.jsonl": "15001bd57abfa902043983793472a27e",
        "manifest.json": "65059ea599b23ae96fec21f2cfbbd036",
    },
}


def _md5s(corpus, base):
    out = {}
    for name in ("train.jsonl", "test.jsonl", "manifest.json"):
        text = (corpus / name).read_text().replace(str(base.resolve()), "<TMP>")
        text = text.replace(f'"python": "{sys.version.split()[0]}"', '"python": "<PY>"')
        out[name] = hashlib.md5(text.encode()).hexdigest()
    return out


def test_split_key_content_is_the_old_corpus_byte_for_byte(tmp_path, monkeypatch, make_docs):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)  # relative sources: the jsonl's "source" holds no tmp path
    src = make_docs(Path("src"))
    (src / "pkg").mkdir()
    for i in range(2):
        (src / "pkg" / f"m{i}.py").write_text((src / f"doc{i}.py").read_text() + f"# {i}\n")
    (src / "copy.py").write_text((src / "doc3.py").read_text())
    Path("ptree").mkdir()
    _package_tree(Path("ptree"))
    _longrange_tree(Path("lr"))
    builds = {
        "file": (["src"], dict(min_chars=2000, test_permille=300)),
        "package": (["ptree"], dict(min_chars=500, test_permille=500, group="package")),
        "select": (["lr"], dict(min_chars=2000, test_permille=600, select_longrange=0.5)),
    }
    for name, (sources, kw) in builds.items():
        m = build_corpus(Path(name), sources, split_key="content", **kw)
        assert "split_key" not in m and "other_versions_dropped" not in m
        assert _md5s(tmp_path / name, tmp_path) == OLD_MD5[name], name
        # The new default differs by design (split by path).
        build_corpus(Path(name + "-path"), sources, **kw)
        assert _md5s(tmp_path / (name + "-path"), tmp_path) != OLD_MD5[name], name


def _two_roots(tmp_path, monkeypatch, make_docs, n=12):
    """A 'python' source of two roots holding the same relative paths in different versions:
    an interpreter's lib (site-packages inside it) and a venv's bare site-packages (its paths
    have no 'site-packages/' prefix), plus one path in the first root only."""
    a = tmp_path / "a_interp" / "lib"
    b = tmp_path / "b_venv" / "site-packages"
    make_docs(a / "site-packages" / "mod", n=n)
    make_docs(b / "mod", n=n)
    for f in (b / "mod").iterdir():  # another version: one more line
        f.write_text(f.read_text() + "# patched in the newer version\n")
    (a / "only.py").write_text((a / "site-packages" / "mod" / "doc0.py").read_text() * 2)
    monkeypatch.setattr(corpus_mod, "python_roots", lambda: [a.resolve(), b.resolve()])
    return a, b


def test_two_versions_of_one_path_one_kept_and_splits_disjoint_by_path(
    tmp_path, monkeypatch, make_docs
):
    _two_roots(tmp_path, monkeypatch, make_docs)
    kw = dict(min_chars=2000, test_permille=500)
    m = build_corpus(tmp_path / "p", ["python"], **kw)
    assert m["split_key"] == "path" and m["other_versions_dropped"] == {"python": 12}
    docs = {s: read_documents(tmp_path / "p", s) for s in ("train", "test")}
    keys = {s: [path_key(d["path"]) for d in docs[s]] for s in docs}
    # One version of each relative path (whichever the read order, by the hash of the path
    # below its root, meets first), and no relative path on both sides.
    assert sorted(keys["train"] + keys["test"]) == sorted(
        [f"mod/doc{i}.py" for i in range(12)] + ["only.py"]
    )
    assert not set(keys["train"]) & set(keys["test"])
    for s in docs:
        assert all(_path_split(d["path"], 500) == s for d in docs[s])
    # content: every version kept and split on its own, and some pairs straddle the split.
    c = build_corpus(tmp_path / "c", ["python"], split_key="content", **kw)
    assert "split_key" not in c and "other_versions_dropped" not in c
    cdocs = {s: read_documents(tmp_path / "c", s) for s in ("train", "test")}
    assert sum(len(v) for v in cdocs.values()) == 25
    ckeys = {s: {path_key(d["path"]) for d in cdocs[s]} for s in cdocs}
    assert ckeys["train"] & ckeys["test"]
    for s in cdocs:
        assert all(split_of(d["id"], 500) == s for d in cdocs[s])


def test_same_relative_path_in_two_roots_first_kept(tmp_path, monkeypatch, make_docs):
    """Equal paths below their roots: the first absolute path (file) or the first root
    (package) is kept; an exact copy is dropped as a duplicate, not counted as a version."""
    a, b = tmp_path / "a" / "lib", tmp_path / "b" / "lib"
    import shutil

    make_docs(a / "site-packages", n=6)  # single-file modules: both splits non-empty
    for f in make_docs(a / "site-packages" / "mod", n=3).iterdir():
        f.write_text(f.read_text() + "# in mod\n")  # not a copy of site-packages/docN.py
    shutil.copytree(a / "site-packages" / "mod", b / "site-packages" / "mod")  # the same ...
    (b / "site-packages" / "mod" / "doc1.py").write_text("# newer\n" * 300)  # ... but one
    monkeypatch.setattr(corpus_mod, "python_roots", lambda: [a.resolve(), b.resolve()])
    kw = dict(min_chars=2000, test_permille=500)
    m = build_corpus(tmp_path / "f", ["python"], **kw)
    docs = _docs(tmp_path / "f")
    mod = {f"site-packages/mod/doc{i}.py" for i in range(3)}
    assert set(docs) == mod | {f"site-packages/doc{i}.py" for i in range(6)}
    assert "# newer" not in docs["site-packages/mod/doc1.py"]["text"]
    assert m["other_versions_dropped"] == {"python": 1}
    c = build_corpus(tmp_path / "fc", ["python"], split_key="content", **kw)
    assert c["documents"]["train"] + c["documents"]["test"] == 10  # the newer doc1 too
    m = build_corpus(tmp_path / "pk", ["python"], group="package", **kw)
    docs = _docs(tmp_path / "pk")
    assert "site-packages/mod/" in docs and "# newer" not in docs["site-packages/mod/"]["text"]
    assert m["other_versions_dropped"] == {"python": 1}
    c = build_corpus(tmp_path / "pkc", ["python"], group="package", split_key="content", **kw)
    assert "# newer" in " ".join(d["text"] for d in _docs(tmp_path / "pkc").values())


def test_select_longrange_after_the_dedup_by_path(tmp_path, monkeypatch):
    """Selection with both keys: the other versions are dropped before scoring."""
    a = tmp_path / "a" / "lib" / "site-packages"
    b = tmp_path / "b" / "lib" / "site-packages"
    _longrange_tree(a / "lr")
    _longrange_tree(b / "lr")
    for f in (b / "lr").iterdir():
        f.write_text(f.read_text() + "# another version\n")
    monkeypatch.setattr(
        corpus_mod, "python_roots", lambda: [a.parent.resolve(), b.parent.resolve()]
    )
    kw = dict(min_chars=2000, test_permille=500, select_longrange=0.75)
    m = build_corpus(tmp_path / "p", ["python"], **kw)
    c = build_corpus(tmp_path / "c", ["python"], split_key="content", **kw)
    sel, csel = m["select_longrange"], c["select_longrange"]
    assert m["other_versions_dropped"] == {"python": 9}
    fields = ("documents_before", "documents_scored", "documents_kept")
    assert [sel[k] for k in fields] == [9, 8, 6]  # one version of each path scored
    assert [csel[k] for k in fields] == [18, 16, 12]  # both versions scored
    for corpus, key in ((tmp_path / "p", "path"), (tmp_path / "c", "content")):
        docs = {s: read_documents(corpus, s) for s in ("train", "test")}
        for s in docs:
            for d in docs[s]:
                h = split_of(d["id"], 500) if key == "content" else _path_split(d["path"], 500)
                assert h == s
    keys = {s: {path_key(d["path"]) for d in read_documents(tmp_path / "p", s)} for s in m["ids"]}
    assert len(keys["train"]) + len(keys["test"]) == 6 and not keys["train"] & keys["test"]
    # The kept summaries follow the same split.
    assert sel["score_summary"]["kept_test"]["count"] == len(m["ids"]["test"])


def test_cli_split_key(tmp_path, capsys, make_docs):
    from powerattn.cli import main

    src = make_docs(tmp_path / "src")
    argv = ["eval", "corpus", "--source", str(src), "--min-chars", "2000"]
    argv += ["--test-permille", "300"]
    assert main([*argv, "--out", str(tmp_path / "p")]) == 0
    assert main([*argv, "--out", str(tmp_path / "c"), "--split-key", "content"]) == 0
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    c = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (m["split_key"], m["other_versions_dropped"]) == ("path", {str(src): 0})
    assert "split_key" not in c and "other_versions_dropped" not in c
    assert json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")["split_key"] == "path"
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "x"), "--split-key", "hash"])
    with pytest.raises(ValueError, match="split_key must be"):
        build_corpus(tmp_path / "x", [str(src)], split_key="hash")
