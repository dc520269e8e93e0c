"""A long-document corpus built offline from files already on the machine.

``build_corpus`` walks its sources, keeps text files of at least ``min_chars`` characters,
drops exact duplicates (by SHA-256 of the content), and splits the rest into ``train`` and
``test`` by a hash: a document is held out iff ``int(h[:8], 16) % 1000 < test_permille``.
What a source contributes is read in a fixed order (by path hash), so a size cap keeps the
same documents on every rebuild of the same files.

Split key (``split_key``, ``--split-key``):

* ``path`` (the default) -- ``h`` is the SHA-256 of the document's *relative path*
  (:func:`path_key`: its ``path`` below its source root, cut after the last ``site-packages``
  or ``dist-packages`` component, so ``site-packages/numpy/core/numeric.py`` of any root is
  ``numpy/core/numeric.py``; a package document's ``numpy/``). Every version of one file (numpy
  installed both in the interpreter's and in a venv's site-packages, in different versions) is
  on the same side; and within a source only one version of each relative path is kept: the
  first in the read order (below) that passes the length checks, whether or not its content is
  then dropped as an exact duplicate. Between equal paths relative to their roots that is the
  first absolute path with ``group="file"`` and the first root with ``group="package"``. The
  other versions are dropped before any selection; the manifest counts those that are not an
  exact duplicate of a document already read (``other_versions_dropped``). Near-twins under
  *different* relative paths (a vendored copy such as ``pip/_vendor/...``) are not caught.
* ``content`` -- ``h`` is the document's own hash (its ``id``), and every version is kept:
  two versions of one file are different content and each is split independently, so a
  held-out document can have a near-twin in training. Corpora built before ``--split-key``
  existed used this rule; ``content`` rebuilds them byte for byte (manifest included: a
  manifest without ``split_key`` means ``content``).

Either way the split depends on the files only, so a document is on the same side on every
machine and in every rebuild, and no document is on both sides.

Sources (``--source``, repeatable):

* ``python`` -- the ``.py`` files of the running interpreter's standard library and
  site-packages (``sysconfig``): repository-level code with long-range dependencies (imports,
  definitions used hundreds of lines later). The standard library is under the PSF licence;
  each package's files keep their own licence (recorded per document as the top-level
  directory, the package). The corpus is built on the machine that uses it and not
  redistributed.
* any directory -- every ``*.py``, ``*.txt`` and ``*.md`` file below it (e.g. public-domain
  prose unpacked from a package; see docs/evaluation.md), licence ``"see source"`` unless a
  ``LICENCE`` entry is given as ``DIR=LICENCE``.

Grouping (``group``, ``--group``):

* ``file`` (the default) -- one file is one document, as described above.
* ``package`` -- repository-level documents: all files of one *package directory* are
  concatenated into one document. The unit is the top-level directory below the root: for
  site-packages the top-level package (all of ``numpy/``), for the standard library each
  top-level package (``email/``, ``asyncio/``, ``test/``), for a directory source each
  immediate subdirectory of DIR. Files directly below a root (single-file modules such as
  ``os.py`` or ``six.py``) stay single documents, with their text unchanged. Within a package
  the files go in a fixed order (by directory, each directory's files before its
  subdirectories', ``__init__.py`` first, then by name), each preceded by a header line
  ``# file: PATH`` (PATH relative to the package's parent, e.g. ``email/parser.py``) and
  separated by a blank line. Empty files are left out, and so is a file whose exact content
  an earlier kept document already holds (vendored or installed-twice copies: no file's text is
  on both sides of the split). A document holds at most ``max_package_chars`` characters
  (200,000, about 56K tokens, 14 windows of 4096: one giant package such as ``torch/`` does not
  dominate): files are added until the cap, and the last is cut at a line end. ``min_chars``
  applies to the whole document (a package's small files count), the per-file ``max_chars``
  to each file. Units are read in the order of the hash of their path, so a ``max_mb`` cap
  keeps the same packages on every rebuild. Top-level directories rather than immediate parent
  directories: a subpackage's files import and call the rest of its package, which is the
  long-range dependence wanted, and immediate parents would cut most packages into pieces
  shorter than one window.

Long-range selection (``select_longrange``, ``--select-longrange FRACTION``; default: none):

* after collecting (and before splitting) keep only the documents whose own *far-only copy
  share* is in the top ``FRACTION`` of all collected documents, as PG19 keeps long books: a
  rule on the text fixed before any model is trained. The score
  (:func:`powerattn.eval.longrange.document_score`, ``n = 8``): each document tokenized with
  the committed BPE after ``<bos>`` and cut into consecutive 4096-token windows from its start
  as the evaluation cuts it; in each window, the share of late tokens (positions 3072..4095)
  whose preceding 8-gram occurred, followed by the same token, only more than 1024 tokens back
  (every match ends before position 2048, the start of the truncated input); the mean over
  the document's windows. The ``ceil(FRACTION * S)`` highest of the ``S`` scored documents are
  kept (ties by document hash), train and test alike, so both splits are selected by the same
  rule and the split is the unchanged hash rule. A document shorter than one window (fewer
  than 4096 tokens with ``<bos>``) has no late region and no score: it is dropped (the
  evaluation never reads it either). ``max_mb`` caps the text *before* the selection, so a
  selected corpus holds about ``FRACTION`` of it. The manifest adds ``select_longrange``: the
  rule, its parameters, the tokenizer's hash, the counts, the threshold (lowest kept score),
  summaries of the scores and every scored document's score by hash.

Output: ``OUT/train.jsonl`` and ``OUT/test.jsonl`` (one ``{"id", "source", "path", "licence",
"text"}`` per line) and ``OUT/manifest.json`` (arguments, per-source counts, licences, the
interpreter, and the sorted hashes of each split; with ``group="package"`` also ``group`` and
``max_package_chars``, absent for the default ``file`` grouping, whose output is unchanged;
``select_longrange`` only with a selection; with ``split_key="path"`` also ``split_key`` and
``other_versions_dropped`` per source, absent with ``content``, whose output is what it was
before the option existed).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".py", ".txt", ".md")
PYTHON_LICENCE = "PSF-2.0 (standard library); site-packages: each package's own licence"
MANIFEST = "manifest.json"
GROUPS = ("file", "package")
SPLIT_KEYS = ("path", "content")
MAX_PACKAGE_CHARS = 200_000
FILE_HEADER = "# file: {path}\n"  # before each file of a package document
_SITE_DIRS = ("site-packages", "dist-packages")  # dist-packages: Debian's system Python


@dataclass(frozen=True)
class Document:
    id: str  # SHA-256 of the text
    source: str
    path: str  # relative to its source root
    licence: str
    text: str


def split_of(doc_id: str, test_permille: int) -> str:
    """``"test"`` or ``"train"`` for a split hash (a hex SHA-256: the document's ``id`` with
    ``split_key="content"``, that of its :func:`path_key` with ``"path"``)."""
    return "test" if int(doc_id[:8], 16) % 1000 < test_permille else "train"


def path_key(path: str) -> str:
    """The relative path that ``split_key="path"`` splits and deduplicates by: a document's
    ``path`` (POSIX, relative to its source root) after its last ``site-packages`` or
    ``dist-packages`` component, if any: ``"site-packages/numpy/core/numeric.py"`` ->
    ``"numpy/core/numeric.py"``, ``"dist-packages/numpy/"`` -> ``"numpy/"``, ``"os.py"`` ->
    ``"os.py"``."""
    parts = path.split("/")
    top = _below_site(parts)
    return "/".join(parts[top:]) if top else path


def _below_site(parts: list[str]) -> int:
    """Index of the first path component after the last ``site-packages``/``dist-packages``
    directory among ``parts`` (0 if there is none)."""
    marks = [i for i, p in enumerate(parts[:-1]) if p in _SITE_DIRS]
    return marks[-1] + 1 if marks else 0


def split_hash(doc: Document, split_key: str = "path") -> str:
    """The hash that decides ``doc``'s side (see :func:`split_of`)."""
    if split_key == "content":
        return doc.id
    return hashlib.sha256(path_key(doc.path).encode("utf-8")).hexdigest()


def document_split(doc: Document, test_permille: int, split_key: str = "path") -> str:
    """``"test"`` or ``"train"``: the side of ``doc`` under ``split_key``."""
    return split_of(split_hash(doc, split_key), test_permille)


def _check_split_key(split_key: str) -> None:
    if split_key not in SPLIT_KEYS:
        raise ValueError(f"split_key must be one of {SPLIT_KEYS}, got {split_key!r}")


def python_roots() -> list[Path]:
    """The standard library and site-packages directories of this interpreter."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = Path(paths[key]).resolve()
        # A virtual environment's site-packages lies inside its platstdlib: walk it once.
        if p.is_dir() and not any(p == r or r in p.parents for r in roots):
            roots.append(p)
    return roots


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(suffixes))
    return out


def _read(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse_source(spec: str) -> tuple[str, list[Path], tuple[str, ...], str]:
    """``(name, roots, suffixes, licence)`` of a ``--source`` entry."""
    if spec == "python":
        return "python", python_roots(), (".py",), PYTHON_LICENCE
    path, _, licence = spec.partition("=")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(
            f"source {spec!r} is neither 'python' nor a directory; give 'python' or DIR[=LICENCE]"
        )
    return str(root), [root.resolve()], SUFFIXES, licence or "see source"


def _admit(doc_id: str, key: str, seen: set[str], claimed: set[str] | None) -> str:
    """Whether a document is kept: ``"keep"`` (recorded in ``seen``, and its path ``key`` in
    ``claimed``), ``"version"`` (another version of a path already kept; ``claimed`` is None
    with ``split_key="content"``: never) or ``"duplicate"`` (exact content already kept)."""
    if claimed is not None:
        if key in claimed:
            return "duplicate" if doc_id in seen else "version"
        claimed.add(key)
    if doc_id in seen:
        return "duplicate"
    seen.add(doc_id)
    return "keep"


def collect(
    sources: list[str],
    min_chars: int = 16384,
    max_chars: int = 2_000_000,
    max_bytes: int | None = None,
    group: str = "file",
    max_package_chars: int = MAX_PACKAGE_CHARS,
    split_key: str = "path",
    dropped: dict[str, int] | None = None,
) -> dict[str, list[Document]]:
    """The documents of each source (deduplicated across all sources by content, first source
    wins), sorted by hash; files shorter than ``min_chars`` or longer than ``max_chars``
    characters, not UTF-8, or with NUL bytes are skipped.

    ``split_key="path"``: within a source, only the first version of each :func:`path_key`
    that passes the length checks is kept (module docstring); ``dropped``, if given, receives
    per source the number of other versions dropped. ``"content"``: every version is kept.

    ``max_bytes``: at most about this much text per source. Files are read in the order of the
    hash of their path relative to their root (a fixed pseudo-random order), so a capped corpus
    takes the same files on every rebuild and reads only what it keeps (site-packages can hold
    gigabytes).

    ``group``: ``"file"`` (one file, one document) or ``"package"`` (one package directory, one
    document of at most ``max_package_chars`` characters; see the module docstring).
    """
    if not sources:
        raise ValueError("give at least one source: 'python' or a directory")
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    _check_split_key(split_key)
    dropped = {} if dropped is None else dropped
    if group == "package":
        if max_package_chars < min_chars:
            raise ValueError(
                f"max_package_chars ({max_package_chars}) is below min_chars ({min_chars}): "
                "no document could be kept"
            )
        return _collect_packages(
            sources, min_chars, max_chars, max_bytes, max_package_chars, split_key, dropped
        )
    seen: set[str] = set()
    out: dict[str, list[Document]] = {}
    for spec in sources:
        name, roots, suffixes, licence = _parse_source(spec)
        claimed: set[str] = set()  # path keys with a kept version (split_key="path")
        dropped[name] = 0
        files = []
        for root in roots:
            for path in _files(root, suffixes):
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                # UTF-8 takes 1-4 bytes per character: a cheap bound before reading.
                if min_chars <= size <= 4 * max_chars:
                    rel = path.relative_to(root).as_posix()
                    files.append((hashlib.sha256(rel.encode()).hexdigest(), rel, path))
        docs, used = [], 0
        for _, rel, path in sorted(files):
            if max_bytes is not None and used >= max_bytes:
                break
            text = _read(path)
            if text is None or not min_chars <= len(text) <= max_chars:
                continue
            doc_id = hashlib.sha256(text.encode("utf-8")).hexdigest()
            verdict = _admit(doc_id, path_key(rel), seen, claimed if split_key == "path" else None)
            dropped[name] += verdict == "version"
            if verdict != "keep":
                continue
            lic = licence
            packages = [d for d in _SITE_DIRS if d in path.parts]
            if name == "python" and packages:  # dist-packages: Debian's system Python
                package = path.parts[path.parts.index(packages[0]) + 1]
                lic = f"package {package}: its own licence"
            docs.append(Document(doc_id, name, rel, lic, text))
            used += len(text.encode("utf-8"))
        out[name] = sorted(docs, key=lambda d: d.id)
    return out


def package_of(rel: str) -> tuple[str, str] | None:
    """``(package directory, its parent)`` of a file at ``rel`` (a POSIX path relative to its
    root), both relative to the root, or ``None`` for a file directly below the root or below a
    ``site-packages`` directory in it (a single-file module): ``"email/parser.py"`` ->
    ``("email", "")``, ``"site-packages/numpy/core/x.py"`` -> ``("site-packages/numpy",
    "site-packages")``."""
    parts = rel.split("/")
    top = _below_site(parts)
    if len(parts) - top < 2:
        return None
    return "/".join(parts[: top + 1]), "/".join(parts[:top])


def _member_order(rel: str) -> tuple[tuple[str, ...], bool, str]:
    """Sort key of a package's files: by directory (a directory's files before its
    subdirectories'), ``__init__.py`` first, then by name."""
    parent, _, name = rel.rpartition("/")
    return tuple(parent.split("/")), name != "__init__.py", name


def _cap(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a line end where there is one."""
    if len(text) <= limit:
        return text
    end = text.rfind("\n", 0, limit) + 1
    return text[: end or limit]


def _collect_packages(
    sources: list[str],
    min_chars: int,
    max_chars: int,
    max_bytes: int | None,
    max_package_chars: int,
    split_key: str,
    dropped: dict[str, int],
) -> dict[str, list[Document]]:
    """:func:`collect` with ``group="package"``."""
    seen: set[str] = set()  # document hashes
    seen_files: set[str] = set()  # hashes of the files in kept package documents
    out: dict[str, list[Document]] = {}
    for spec in sources:
        name, roots, suffixes, licence = _parse_source(spec)
        claimed: set[str] = set()  # path keys with a kept version (split_key="path")
        dropped[name] = 0
        units: dict[tuple[str, int, str], list[tuple[str, Path]]] = {}
        for r, root in enumerate(roots):
            for path in _files(root, suffixes):
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                rel = path.relative_to(root).as_posix()
                pkg = package_of(rel)
                if pkg is None and size < min_chars:  # a single file, too short on its own
                    continue
                if 0 < size <= 4 * max_chars:
                    unit = rel if pkg is None else pkg[0]
                    key = (hashlib.sha256(unit.encode()).hexdigest(), r, unit)
                    units.setdefault(key, []).append((rel, path))
        docs, used = [], 0
        for (_, _, unit), members in sorted(units.items()):
            if max_bytes is not None and used >= max_bytes:
                break
            pkg = package_of(members[0][0])
            if pkg is None:  # a single-file module: the file as it is
                text = _read(members[0][1])
                if text is None or len(text) > max_chars:
                    continue
                text, file_ids = _cap(text, max_package_chars), set()
            else:
                text, file_ids = _package_text(
                    members, pkg[1], max_chars, max_package_chars, seen_files
                )
            if len(text) < min_chars:
                continue
            doc_path = unit if pkg is None else unit + "/"
            doc_id = hashlib.sha256(text.encode("utf-8")).hexdigest()
            key = path_key(doc_path)  # another root's version of a package: dropped
            verdict = _admit(doc_id, key, seen, claimed if split_key == "path" else None)
            dropped[name] += verdict == "version"
            if verdict != "keep":
                continue
            seen_files |= file_ids
            lic = licence
            parts = unit.split("/")
            top = _below_site(parts)
            if name == "python" and top:
                lic = f"package {parts[top]}: its own licence"
            docs.append(Document(doc_id, name, doc_path, lic, text))
            used += len(text.encode("utf-8"))
        out[name] = sorted(docs, key=lambda d: d.id)
    return out


def _package_text(
    members: list[tuple[str, Path]],
    parent: str,
    max_chars: int,
    limit: int,
    seen_files: set[str],
) -> tuple[str, set[str]]:
    """The document of one package (its files ``(rel, path)``, ``parent`` the directory that
    the header paths are relative to) and the hashes of the files it holds."""
    pieces: list[str] = []
    ids: set[str] = set()
    n = 0
    for rel, path in sorted(members, key=lambda m: _member_order(m[0])):
        text = _read(path)
        if text is None or not text.strip() or len(text) > max_chars:
            continue
        file_id = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if file_id in seen_files or file_id in ids:
            continue
        ids.add(file_id)
        header = FILE_HEADER.format(path=rel[len(parent) + 1 :] if parent else rel)
        piece = ("\n" if pieces else "") + header + text + ("" if text.endswith("\n") else "\n")
        pieces.append(piece)
        n += len(piece)
        if n >= limit:
            break
    return _cap("".join(pieces), limit), ids


def build_corpus(
    out_dir: str | Path,
    sources: list[str],
    *,
    max_mb: float = 200.0,
    min_chars: int = 16384,
    test_permille: int = 50,
    group: str = "file",
    max_package_chars: int = MAX_PACKAGE_CHARS,
    select_longrange: float | None = None,
    tokenizer_path: str | Path | None = None,
    split_key: str = "path",
) -> dict[str, Any]:
    """Build the corpus into ``out_dir`` (see the module docstring); returns the manifest.

    ``max_mb``: about this many MB of text per source at most (see :func:`collect`);
    ``test_permille``: held-out share of documents, in thousandths; ``group``: ``"file"`` or
    ``"package"`` (documents of at most ``max_package_chars`` characters);
    ``select_longrange``: keep only this top share (0 < FRACTION <= 1) of documents by their
    far-only copy share (module docstring; ``None``: no selection), scored with the BPE at
    ``tokenizer_path`` (the committed one by default); ``split_key``: ``"path"`` (split by
    relative path, one version per path) or ``"content"`` (split by content hash, every
    version kept: the rule before this option, byte for byte).
    """
    if not 0 < test_permille < 1000:
        raise ValueError(f"test_permille must be in 1..999, got {test_permille}")
    if max_mb <= 0:
        raise ValueError(f"max_mb must be positive, got {max_mb}")
    check_fraction(select_longrange)
    _check_split_key(split_key)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dropped: dict[str, int] = {}
    per_source = collect(
        sources,
        min_chars=min_chars,
        max_bytes=int(max_mb * 1e6),
        group=group,
        max_package_chars=max_package_chars,
        split_key=split_key,
        dropped=dropped,
    )
    selection = None
    if select_longrange is not None:  # after the dedup by path: other versions are not scored
        per_source, selection = select_documents(
            per_source, select_longrange, test_permille, tokenizer_path, split_key
        )
    splits: dict[str, list[Document]] = {"train": [], "test": []}
    counts = {}
    for name, docs in per_source.items():
        for d in docs:
            splits[document_split(d, test_permille, split_key)].append(d)
        counts[name] = {
            "documents": len(docs),
            "mb": round(sum(len(d.text.encode("utf-8")) for d in docs) / 1e6, 3),
        }
    if not splits["test"] or not splits["train"]:
        raise ValueError(
            f"the corpus has {len(splits['train'])} training and {len(splits['test'])} held-out "
            "documents; add sources, lower --min-chars or raise --test-permille"
            + (" (or --select-longrange)" if selection is not None else "")
        )
    for split, docs in splits.items():
        tmp = out / f"{split}.jsonl.tmp"
        with open(tmp, "w") as f:
            for d in docs:
                f.write(json.dumps(d.__dict__) + "\n")
        os.replace(tmp, out / f"{split}.jsonl")
    manifest = {
        "sources": sources,
        "min_chars": min_chars,
        "max_mb": max_mb,
        "test_permille": test_permille,
        # Only when not the default, so that a file-grouped manifest is what it always was.
        **({"group": group, "max_package_chars": max_package_chars} if group != "file" else {}),
        # Only with "path", so that a "content" manifest is what it was before the option
        # (a manifest without "split_key" was split by content).
        **(
            {"split_key": split_key, "other_versions_dropped": dropped}
            if split_key == "path"
            else {}
        ),
        "python": sys.version.split()[0],
        "roots": {name: [str(r) for r in _parse_source(name)[1]] for name in per_source},
        "counts": counts,
        "licences": {name: _parse_source(name)[3] for name in per_source},
        "documents": {k: len(v) for k, v in splits.items()},
        "chars": {k: sum(len(d.text) for d in v) for k, v in splits.items()},
        "ids": {k: sorted(d.id for d in v) for k, v in splits.items()},
        # Only with a selection, so that a manifest without one is what it always was.
        **({"select_longrange": selection} if selection is not None else {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def check_fraction(fraction: float | None) -> None:
    """Refuse a ``select_longrange`` fraction outside (0, 1] (``None``: no selection)."""
    if fraction is None:
        return
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ValueError(f"--select-longrange takes a number in (0, 1], got {fraction!r}")
    if not 0 < fraction <= 1:
        raise ValueError(
            f"--select-longrange FRACTION must be in (0, 1] (the share of documents kept, "
            f"e.g. 0.25), got {fraction}"
        )


def select_documents(
    per_source: dict[str, list[Document]],
    fraction: float,
    test_permille: int,
    tokenizer_path: str | Path | None = None,
    split_key: str = "path",
) -> tuple[dict[str, list[Document]], dict[str, Any]]:
    """The documents of each source kept by the long-range selection (module docstring), in
    their order, and the manifest's record of it. All sources' documents are ranked
    together, independently of the split (``split_key`` and ``test_permille`` only sort the
    kept scores' summaries by side)."""
    from .bpe import DEFAULT_PATH, BPETokenizer
    from .longrange import CONTEXT, SELECT_N, document_scores, regions, summary, top_fraction

    check_fraction(fraction)
    tok_path = Path(tokenizer_path or DEFAULT_PATH)
    tokenizer = BPETokenizer(tok_path)
    docs = [d for name in per_source for d in per_source[name]]
    values = document_scores([d.text for d in docs], tokenizer, SELECT_N, CONTEXT)
    scores = {d.id: v for d, v in zip(docs, values, strict=True)}
    side = {d.id: document_split(d, test_permille, split_key) for d in docs}
    kept_ids, threshold = top_fraction(scores, fraction)
    kept = set(kept_ids)
    if not kept:
        raise ValueError(
            f"--select-longrange: none of the {len(docs)} documents fills one {CONTEXT}-token "
            "window, so none has a score; add sources with longer files or raise --max-mb"
        )
    start, cut = regions(CONTEXT)

    def _summ(ids: Any) -> dict[str, Any]:
        return summary(scores[i] for i in ids if scores[i] is not None)

    record = {
        "rule": (
            f"keep the ceil(fraction * scored) documents with the highest far-only copy share "
            f"(ties by id): the share of late tokens (positions {start}..{CONTEXT - 1} of each "
            f"consecutive {CONTEXT}-token window from the document's start, committed BPE after "
            f"<bos>) whose preceding {SELECT_N}-gram occurred followed by the same token only "
            f"ending before position {cut}, mean over the document's windows; documents "
            f"shorter than one window have no score and are dropped; before the split"
        ),
        "fraction": fraction,
        "n": SELECT_N,
        "context": CONTEXT,
        "late_start": start,
        "cut": cut,
        "tokenizer": tok_path.name,
        "tokenizer_sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
        "documents_before": len(docs),
        "documents_scored": sum(v is not None for v in values),
        "documents_unscored_dropped": sum(v is None for v in values),
        "documents_kept": len(kept),
        "threshold": threshold,
        "score_summary": {
            "all": _summ(scores),
            "kept": _summ(kept),
            "kept_train": _summ(i for i in kept if side[i] == "train"),
            "kept_test": _summ(i for i in kept if side[i] == "test"),
        },
        "scores": {i: v for i, v in sorted(scores.items()) if v is not None},
    }
    out = {name: [d for d in ds if d.id in kept] for name, ds in per_source.items()}
    return out, record


def read_documents(corpus_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """The documents of ``split`` (``"train"`` or ``"test"``) of a built corpus."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(corpus_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist; build the corpus first: powerattn eval corpus --out "
            f"{corpus_dir}"
        )
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
