"""The Python standard library's own source as a text corpus, split into train / validation / test by file.

Every machine with Python has this corpus, so a language model can be trained and measured offline. Which files
belong to it and which split each file is in are fixed rules, documented here, so the corpus is the same on every
machine with the same Python version (same minor version: the same files; the same patch release: the same bytes):

- **files**: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, except folders that are not the standard
  library proper or that distributions package separately (:data:`SKIP_DIRS`: third-party ``site-packages``, the
  test suites, IDLE, Tkinter and its demos, lib2to3, distutils, ensurepip, the generated ``encodings`` tables and
  ``pydoc_data`` topic strings, the build's ``config-*`` folder) and the machine-specific ``_sysconfigdata_*.py``.
  Paths are relative POSIX paths, sorted, so the order does not depend on the file system.
- **split**: the first 8 bytes of ``sha256("slimkit-stdlib:" + relative path)`` as an integer, modulo 100: buckets
  0–4 are **test**, 5–9 **validation**, the rest **train** (≈ 90 / 5 / 5 by file). A file's split depends on its
  path alone, so adding or removing other files never moves it.
- **text**: the bytes decoded with the encoding Python itself would use (PEP 263 cookie, default UTF-8); a file
  that does not decode is left out and listed in ``TextCorpus.skipped``.

``TextCorpus.fingerprint()`` is a SHA-256 over every (split, path, content hash): two machines with equal
fingerprints have byte-identical splits. Nothing here imports or runs the files it reads.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import sys
import sysconfig
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from slimkit._errors import DataError

#: bump when the file rule, the split rule or the decoding changes: it is part of every cache key downstream
CORPUS_VERSION = 1
SPLITS = ("train", "valid", "test")
SKIP_DIRS = frozenset({
    "site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "idlelib", "tkinter",
    "turtledemo", "lib2to3", "distutils", "ensurepip", "encodings", "pydoc_data",
})
_SPLIT_SALT = "slimkit-stdlib:"
TEST_BUCKETS = range(0, 5)
VALID_BUCKETS = range(5, 10)


def split_of(relative_path: str) -> str:
    """The split (``train``, ``valid`` or ``test``) of a file, from a hash of its relative POSIX path alone."""
    digest = hashlib.sha256((_SPLIT_SALT + relative_path).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket in TEST_BUCKETS:
        return "test"
    if bucket in VALID_BUCKETS:
        return "valid"
    return "train"


def _skipped_path(relative: Path) -> bool:
    parts = relative.parts
    if any(part in SKIP_DIRS or part.startswith("config-") for part in parts[:-1]):
        return True
    return parts[-1].startswith("_sysconfigdata_")


def stdlib_files(root: str | os.PathLike | None = None) -> list[str]:
    """The corpus's files under ``root`` (default: this interpreter's standard library), as sorted POSIX paths."""
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise DataError(f"the standard library folder '{base}' does not exist: pass root= a folder of .py files")
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in filenames:
            if name.endswith(".py"):
                relative = (Path(dirpath) / name).relative_to(base)
                if not _skipped_path(relative):
                    found.append(relative.as_posix())
    return sorted(found)


def decode_source(data: bytes) -> str:
    """Decode Python source bytes the way the interpreter would (PEP 263 cookie or BOM, else UTF-8)."""
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    text = data.decode(encoding)
    return text[1:] if text.startswith("\ufeff") else text


@dataclass(frozen=True)
class TextCorpus:
    """A set of text files split by file. ``files[split]`` lists relative paths; ``digests`` their SHA-256."""

    name: str
    root: Path
    files: dict[str, tuple[str, ...]]
    digests: dict[str, str]
    skipped: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: f"{sys.version_info.major}.{sys.version_info.minor}")

    def text(self, relative_path: str) -> str:
        """One file's text, checked against the digest recorded when the corpus was listed."""
        data = (self.root / relative_path).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.digests[relative_path]:
            raise DataError(f"'{self.root / relative_path}' changed since the corpus was read: rebuild it")
        return decode_source(data)

    def texts(self, split: str) -> list[str]:
        """The texts of one split's files, in path order."""
        return [self.text(path) for path in self._split(split)]

    def num_bytes(self, split: str) -> int:
        """UTF-8 bytes of one split's texts (the denominator of bits per byte)."""
        return sum(len(text.encode("utf-8")) for text in self.texts(split))

    def fingerprint(self, split: str | None = None) -> str:
        """SHA-256 over (corpus version, split, path, content digest) of one split, or of all splits."""
        h = hashlib.sha256(f"{self.name} v{CORPUS_VERSION}\n".encode())
        for name in ((split,) if split is not None else SPLITS):
            for path in self._split(name):
                h.update(f"{name}\t{path}\t{self.digests[path]}\n".encode())
        return h.hexdigest()

    def _split(self, split: str) -> tuple[str, ...]:
        if split not in self.files:
            raise DataError(f"unknown text split '{split}': use one of {', '.join(SPLITS)}")
        return self.files[split]

    def summary(self) -> dict[str, object]:
        """File counts, bytes and fingerprints per split (for reports and cache records)."""
        return {
            "name": self.name, "python": self.python, "corpus_version": CORPUS_VERSION,
            "fingerprint": self.fingerprint(),
            "splits": {s: {"files": len(self.files[s]), "bytes": self.num_bytes(s), "fingerprint": self.fingerprint(s)}
                       for s in SPLITS},
            "skipped_undecodable": list(self.skipped),
        }


def read_corpus(root: str | os.PathLike | None = None, name: str = "stdlib") -> TextCorpus:
    """List, hash and split the ``.py`` files under ``root`` (default: the standard library) by the module's rules."""
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    digests: dict[str, str] = {}
    skipped: list[str] = []
    for path in stdlib_files(base):
        data = (base / path).read_bytes()
        try:
            decode_source(data)
        except (SyntaxError, UnicodeDecodeError, LookupError):
            skipped.append(path)
            continue
        digests[path] = hashlib.sha256(data).hexdigest()
        files[split_of(path)].append(path)
    if not files["train"] or not files["valid"] or not files["test"]:
        raise DataError(f"the corpus under '{base}' has too few .py files to split ({len(digests)} readable): "
                        "point root= at a folder with at least a few dozen")
    return TextCorpus(name, base, {s: tuple(v) for s, v in files.items()}, digests, tuple(skipped))


@functools.lru_cache(maxsize=1)
def stdlib_corpus() -> TextCorpus:
    """This interpreter's standard library as a :class:`TextCorpus` (listed once per process)."""
    return read_corpus()
