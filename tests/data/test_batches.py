"""Batches built on the fly (mpruner/data/batches.py): texts read from user files, tokenized
text batches, image batches."""
import pytest
import torch

from mpruner import data as D


def test_read_texts(tmp_path):
    (tmp_path / "lines.txt").write_text("first line\n\n  second  \nthird\n", encoding="utf-8")
    assert D.read_texts(str(tmp_path / "lines.txt")) == ["first line", "second", "third"]
    assert D.read_texts(str(tmp_path / "lines.txt"), limit=2) == ["first line", "second"]
    (tmp_path / "t.csv").write_text('id,review\n1,"good, really"\n2,bad\n', encoding="utf-8")
    assert D.read_texts(str(tmp_path / "t.csv"), column="review") == ["good, really", "bad"]
    with pytest.raises(ValueError, match=r"which column\?.*\['id', 'review'\].*column="):
        D.read_texts(str(tmp_path / "t.csv"))
    with pytest.raises(ValueError, match="no column 'text'"):
        D.read_texts(str(tmp_path / "t.csv"), column="text")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.read_texts(str(tmp_path / "missing.txt"))


class FakeTokenizer:
    pad_token = None
    eos_token = "</s>"

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ids = [[len(w) + 1 for w in t.split()][:max_length] for t in texts]
        T = max(map(len, ids))
        return {"input_ids": torch.tensor([i + [0] * (T - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])}


def test_text_batches():
    texts = D.TextDataset(texts=("a bb", "ccc", "d e f g", "hh"), labels=torch.tensor([0, 1, 1, 0]),
                          classes=("neg", "pos"))
    tokenizer = FakeTokenizer()
    batches = D.text_batches(texts, tokenizer, batch_size=3, max_length=3, with_labels=True)
    assert tokenizer.pad_token == "</s>"  # padding with end-of-sequence when there is no pad token
    out = list(batches)
    assert len(batches) == 2 and len(out) == 2 and list(batches)[0]["input_ids"].shape == (3, 3)
    assert out[1]["labels"].tolist() == [0] and out[0]["attention_mask"].tolist()[1] == [1, 0, 0]
    with pytest.raises(ValueError, match="with_labels=True needs a TextDataset"):
        D.text_batches(["x"], tokenizer, with_labels=True)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        D.text_batches(["x"], tokenizer, batch_size=0)


def test_image_batches():
    dataset = D.ImageDataset(images=torch.arange(5 * 4 * 4, dtype=torch.uint8).reshape(5, 4, 4),
                             labels=torch.arange(5), classes=tuple("abcde"))
    batches = D.image_batches(dataset, batch_size=2, size=8, mean=[0.5] * 3, std=[0.25] * 3, with_labels=True)
    out = list(batches)
    assert [x.shape for x, _ in out] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert out[2][1].tolist() == [4] and torch.equal(out[0][0][:, 0], out[0][0][:, 2])
    plain = next(iter(D.image_batches(dataset.images, batch_size=5)))
    assert plain.shape == (5, 3, 4, 4) and plain.max() <= 1 and torch.allclose(plain[0, 0] * 255,
                                                                                 dataset.images[0].float())
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, C, H, W\)"):
        D.image_batches(torch.zeros(3), batch_size=2)
