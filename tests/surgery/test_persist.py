"""save_pruned / load_pruned (mpruner/surgery/persist.py): checkpoints of pruned models
without pickle, the removal record replayed on a fresh model, every refusal.

The checkpoint directory is a format other tools read (transformers' safetensors loaders,
people diffing mpruner.json), so its layout and every refusal's message are pinned word for
word.
"""
import json

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

import mpruner
from mpruner.surgery import get_record, load_pruned, model_stats, remove_layers, save_pruned
from mpruner.surgery import persist as P
from tests.helpers import surgery_models as zoo
from tests.helpers.surgery_models import n_params, output_of, tv_resnet


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.blocks(x))


pytestmark = pytest.mark.filterwarnings("ignore:no mpruner adapter recognises")

WIDTH = "'width' must be a list of {'after': step index, 'modules': {name: shapes}}"

GOOD = {"format": P.FORMAT, "version": P.VERSION, "model_class": "x.Net", "adapter": "generic",
        "original": {"blocks": 4}, "steps": [{"blocks": [1]}]}


def _checkpoint(tmp_path, record=None, text=None):
    """A checkpoint directory whose weights carry ``record`` (or the raw ``text``) as metadata."""
    tmp_path.mkdir(exist_ok=True)
    body = text if text is not None else json.dumps(record)
    save_file({"w": torch.ones(1)}, str(tmp_path / P.WEIGHTS_NAME), metadata={P.METADATA_KEY: body})
    return tmp_path


def _record_error(tmp_path, record=None, text=None) -> str:
    path = _checkpoint(tmp_path, record, text)
    with pytest.raises(ValueError) as info:
        P.read_record(path)
    return str(info.value).replace(repr(str(path / P.WEIGHTS_NAME)), "W")


# The checkpoint's layout: the record names the model's class; its two copies (mpruner.json and
# the weights' metadata) agree; mpruner.json is indent-2 sorted-key JSON (a stable diff); the
# metadata says "format": "pt", which transformers' safetensors loaders require.
def test_checkpoint_layout(tmp_path):
    pruned = mpruner.remove_layers(Net(), {"blocks": [1]})
    P.save_pruned(pruned, tmp_path)
    record = P.read_record(tmp_path)
    assert record["model_class"] == f"{Net.__module__}.{Net.__qualname__}"
    assert (tmp_path / P.RECORD_NAME).read_text() == json.dumps(record, indent=2, sort_keys=True) + "\n"
    with safe_open(str(tmp_path / P.WEIGHTS_NAME), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta[P.METADATA_KEY] == json.dumps(record, indent=2, sort_keys=True)


# A nested directory is created with its parents; refusals name what they got.
def test_save_pruned_arguments(tmp_path):
    assert P.save_pruned(Net(), tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b" / P.WEIGHTS_NAME).is_file()
    with pytest.raises(TypeError) as info:
        P.save_pruned(5, tmp_path / "c")
    assert str(info.value) == "model must be a torch.nn.Module, got int"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError) as info:
        P.save_pruned(Net(), tmp_path / "file")
    assert str(info.value) == f"path {str(tmp_path / 'file')!r} is a file; save_pruned writes a directory"


# Each malformed field of a record is refused naming the file and the field, word for word.
@pytest.mark.parametrize("change, message", [
    ({"adapter": ..., "steps": ...}, "it has no 'adapter', 'steps'"),
    ({"adapter": 5}, "'adapter' must be a string, got 5"),
    ({"original": {"blocks": "4"}}, "'original' must map block-list names to block counts"),
    ({"original": {"blocks": 1.5}}, "'original' must map block-list names to block counts"),
    ({"original": {"blocks": True}}, "'original' must map block-list names to block counts"),
    ({"original": {"blocks": -1}}, "'original' must map block-list names to block counts"),
    ({"original": []}, "'original' must map block-list names to block counts"),
    ({"steps": {}}, "'steps' must be a list"),
    ({"steps": [{"blocks": [-1]}]}, "steps[0] must map block-list names to lists of indices >= 0"),
    ({"steps": [{"blocks": [True]}]}, "steps[0] must map block-list names to lists of indices >= 0"),
    ({"steps": [{"blocks": 1}]}, "steps[0] must map block-list names to lists of indices >= 0"),
    ({"steps": [[1]]}, "steps[0] must map block-list names to lists of indices >= 0"),
    ({"steps": [{"other": [1]}]}, "steps[0] names block lists ['other'] that 'original' does not have"),
    ({"width": 5}, WIDTH),
    ({"width": [{"after": 2, "modules": {}}]}, WIDTH),
    ({"width": [{"after": True, "modules": {}}]},
     WIDTH),
    ({"width": [{"after": 0, "modules": []}]}, WIDTH),
])
def test_record_problems_word_for_word(tmp_path, change, message):
    record = {k: v for k, v in {**GOOD, **change}.items() if v is not ...}
    assert _record_error(tmp_path, record) == f"W: malformed mpruner record: {message}"


# The boundaries the checks above must let through: a block count of 0, index 0, a width
# change after the last step, and no width at all.
def test_record_boundaries_are_valid(tmp_path):
    record = {**GOOD, "original": {"blocks": 4, "empty": 0}, "steps": [{"blocks": [0]}],
              "width": [{"after": 0, "modules": {}}, {"after": 1, "modules": {}}]}
    assert P.read_record(_checkpoint(tmp_path, record)) == record


# read_record's other refusals, word for word: a missing file, no record, bad JSON, another
# format or a newer version, an unreadable safetensors header.
def test_read_record_messages(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        P.read_record(tmp_path / "none")
    assert str(info.value) == (f"{str(tmp_path / 'none' / P.WEIGHTS_NAME)!r} does not exist; path must be a "
                               "directory written by mpruner.save_pruned")
    assert _record_error(tmp_path / "j", text="{") == (
        "W: the mpruner record in its metadata is not valid JSON (Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1))")
    reads = f"this mpruner reads {P.FORMAT!r} up to version {P.VERSION}"
    assert _record_error(tmp_path / "l", text="[1]") == f"W holds a record of format/version 'list'; {reads}"
    assert _record_error(tmp_path / "v", {**GOOD, "version": 2}) == \
        f"W holds a record of format/version ({P.FORMAT!r}, 2); {reads}"
    assert _record_error(tmp_path / "s", {**GOOD, "version": "1"}) == \
        f"W holds a record of format/version ({P.FORMAT!r}, '1'); {reads}"
    assert _record_error(tmp_path / "f", {**GOOD, "format": "x"}) == \
        f"W holds a record of format/version ('x', 1); {reads}"
    (tmp_path / "m").mkdir()
    save_file({"w": torch.ones(1)}, str(tmp_path / "m" / P.WEIGHTS_NAME))
    with pytest.raises(ValueError) as info:
        P.read_record(tmp_path / "m")
    assert str(info.value) == (f"{str(tmp_path / 'm' / P.WEIGHTS_NAME)!r} has no mpruner record in its metadata; "
                               "was it written by mpruner.save_pruned?")
    (tmp_path / "m" / P.WEIGHTS_NAME).write_bytes(b"garbage!")
    with pytest.raises(ValueError) as info:
        P.read_record(tmp_path / "m")
    assert str(info.value).startswith(f"{str(tmp_path / 'm' / P.WEIGHTS_NAME)!r} is not a readable safetensors "
                                      "file (SafetensorError: ")
    assert str(info.value).endswith("); the checkpoint is damaged or was not written by mpruner.save_pruned")


# A model without parameters or buffers saves and loads (its device falls back to the CPU;
# the CUDA test below covers a model on a GPU).
def test_parameterless_model_round_trip(tmp_path):
    model = nn.Sequential(nn.ReLU(), nn.Tanh(), nn.ReLU())
    P.save_pruned(model, tmp_path)
    loaded = P.load_pruned(tmp_path, lambda: nn.Sequential(nn.ReLU(), nn.Tanh(), nn.ReLU()))
    assert [type(m) for m in loaded] == [nn.ReLU, nn.Tanh, nn.ReLU]


def _narrowed(model, name_in, name_out, width):
    """``model`` with the output of ``name_out`` and the input of ``name_in`` cut to ``width``."""
    from mpruner.surgery.reshape import changed_shapes, module_shapes

    before = module_shapes(model)
    modules = dict(model.named_modules())
    out, nxt = modules[name_out], modules[name_in]
    out.weight = nn.Parameter(out.weight[:width].clone())
    out.bias = nn.Parameter(out.bias[:width].clone())
    out.out_features = width
    nxt.weight = nn.Parameter(nxt.weight[:, :width].clone())
    nxt.in_features = width
    return changed_shapes(before, module_shapes(model))


# load_pruned's width replay: a width change recorded between two removals is replayed after
# the first and before the second (module names shift with each removal), and the rebuilt
# model computes what the saved one did; a change naming a module the model lacks is refused
# naming the file.
def test_width_change_between_removals_round_trip(tmp_path):
    from mpruner.surgery.record import append_width_step

    torch.manual_seed(0)
    model = mpruner.remove_layers(Net(), {"blocks": [1]})          # blocks 0, 2, 3 left
    changed = _narrowed(model, "blocks.1", "blocks.0", 3)
    append_width_step(model, "generic", mpruner.find_blocks(model), changed)
    model = mpruner.remove_layers(model, {"blocks": [2]})          # blocks 0, 2 of the original
    P.save_pruned(model, tmp_path / "w")
    assert [w["after"] for w in P.read_record(tmp_path / "w")["width"]] == [1]
    loaded = P.load_pruned(tmp_path / "w", Net)
    x = torch.randn(5, 4)
    assert loaded.blocks[0].out_features == 3 and len(loaded.blocks) == 2
    assert torch.equal(loaded(x), model(x))
    assert mpruner.surgery.get_record(loaded) == mpruner.surgery.get_record(model)

    only = Net()  # a width change without removals: the record is carried all the same
    append_width_step(only, "generic", mpruner.find_blocks(only), _narrowed(only, "blocks.1", "blocks.0", 2))
    P.save_pruned(only, tmp_path / "o")
    again = P.load_pruned(tmp_path / "o", Net)
    assert mpruner.surgery.get_record(again) == mpruner.surgery.get_record(only) and again.blocks[0].out_features == 2

    record = P.read_record(tmp_path / "w")
    record["width"][0]["modules"] = {"nope": {"tensors": {}, "attributes": {}}}
    _checkpoint(tmp_path / "bad", record)
    with pytest.raises(ValueError) as info:
        P.load_pruned(tmp_path / "bad", Net)
    assert str(info.value).startswith(f"{str(tmp_path / 'bad' / P.WEIGHTS_NAME)!r}: the width change after step 1 "
                                      "of its record cannot be replayed on the model (the record resizes module "
                                      "'nope', which this model does not have")
    assert str(info.value).endswith("); the record is damaged or the factory is not the original architecture")


class _Extra(Net):
    """Net with ``k`` more one-feature layers: 2k tensors the checkpoint of a Net lacks."""

    def __init__(self, k=5):
        super().__init__()
        self.extra = nn.ModuleList([nn.Linear(1, 1) for _ in range(k)])


class _Nine(_Extra):
    """Net with 9 more tensors: one past the 8 an error lists."""

    def __init__(self):
        super().__init__(4)
        self.scale = nn.Parameter(torch.ones(1))


class _FiveBlocks(Net):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)])


class _WideHead(Net):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)


# load_pruned's refusals word for word: the factory's result or type, another architecture,
# a step that cannot be replayed, weights that do not fit (shapes; missing or unexpected
# tensors, the first 8 listed and " ..." only past 8).
def test_load_pruned_messages(tmp_path):
    P.save_pruned(mpruner.remove_layers(Net(), {"blocks": [1]}), tmp_path / "a")
    w = repr(str(tmp_path / "a" / P.WEIGHTS_NAME))
    cls = f"{Net.__module__}.Net"

    def error(factory, path=tmp_path / "a", kind=ValueError):
        with pytest.raises(kind) as info:
            P.load_pruned(path, factory)
        return str(info.value)

    assert error(lambda: 5, kind=TypeError) == "model_factory must return a torch.nn.Module, it returned int"
    assert error("net", kind=TypeError) == ("model_factory must be a callable that builds the original model, e.g. "
                                            "lambda: MyNet(), got str")
    assert error(_FiveBlocks) == (
        f"{w}: model_factory built a model whose blocks are {{'blocks': 5}} (adapter 'generic'), but the checkpoint "
        f"was pruned from {{'blocks': 4}} (adapter 'generic'); pass a factory that builds the original, unpruned "
        f"architecture ({cls})")
    assert error(lambda: nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))).startswith(
        f"{w}: its record's block lists ['blocks'] are not in the model model_factory built (")
    record = P.read_record(tmp_path / "a")
    _checkpoint(tmp_path / "b", {**record, "steps": [{"blocks": [7]}]})
    assert error(Net, tmp_path / "b") == (
        f"{str(tmp_path / 'b' / P.WEIGHTS_NAME)!r}: step 0 of its record cannot be replayed on the model (indices "
        "[7] are out of range for 'blocks', which has 4 blocks (valid indices 0..3)); the record is damaged or the "
        "factory is not the original architecture")
    text = error(_WideHead)
    assert text.startswith(f"the weights in {str(tmp_path / 'a')!r} do not fit the rebuilt model (Error(s) in loading")
    assert text.endswith(f"); is model_factory the architecture that was pruned ({cls})?")
    fit = f"the weights in {str(tmp_path / 'a')!r} do not fit the rebuilt model: "
    names = sorted(f"extra.{i}.{t}" for i in range(5) for t in ("bias", "weight"))
    assert error(_Extra) == f"{fit}missing {names[:8]} ..., unexpected []; is model_factory the architecture that " \
                            f"was pruned ({cls})?"
    assert error(lambda: _Extra(4)) == f"{fit}missing {names[:8]}, unexpected []; is model_factory the architecture " \
                                       f"that was pruned ({cls})?"
    nine = sorted(names[:8] + ["scale"])
    assert error(_Nine) == f"{fit}missing {nine[:8]} ..., unexpected []; is model_factory the architecture that " \
                           f"was pruned ({cls})?"
    for k, model, listed in ((4, _Extra(4), names[:8]), (9, _Nine(), nine[:8] + [" ..."]),
                             (10, _Extra(), names[:8] + [" ..."])):
        P.save_pruned(mpruner.remove_layers(model, {"blocks": [1]}), tmp_path / f"u{k}")
        at = str(tmp_path / f"u{k}")
        more = listed[-1] if listed[-1] == " ..." else ""
        assert error(Net, tmp_path / f"u{k}") == (
            f"the weights in {at!r} do not fit the rebuilt model: missing [], unexpected {listed[:8]}{more}; is "
            f"model_factory the architecture that was pruned ({type(model).__module__}.{type(model).__qualname__})?")


# The reloaded model carries the record (to be saved again with its whole history), without
# the file's own keys; a never-pruned model's reload carries none.
def test_reloaded_model_carries_its_record(tmp_path):
    from mpruner.surgery.record import ATTRIBUTE

    P.save_pruned(mpruner.remove_layers(Net(), {"blocks": [1]}), tmp_path / "a")
    loaded = P.load_pruned(tmp_path / "a", Net)
    assert loaded.__dict__[ATTRIBUTE] == {"adapter": "generic", "original": {"blocks": 4}, "steps": [{"blocks": [1]}]}
    P.save_pruned(Net(), tmp_path / "n")
    assert ATTRIBUTE not in P.load_pruned(tmp_path / "n", Net).__dict__


# The adapter is found with the record's block lists: a model with two block containers,
# pruned in the one it does not guess, reloads.
def test_reload_of_a_model_with_two_block_containers(tmp_path):
    model = mpruner.remove_layers(_Extra(), {"extra": [0]})
    P.save_pruned(model, tmp_path)
    loaded = P.load_pruned(tmp_path, _Extra)
    assert len(loaded.extra) == 4 and len(loaded.blocks) == 4
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


# The error quoted is the reader's own, cut at 120 characters (a damaged header) and 80 (the
# record's JSON): long enough to say what is wrong, never a page.
def test_read_record_quotes_errors_cut_short(tmp_path):
    import struct

    header = json.dumps({"w": {"dtype": "NOPE", "shape": [1], "data_offsets": [0, 4]}}).encode()
    tmp_path.joinpath("h").mkdir()
    weights = tmp_path / "h" / P.WEIGHTS_NAME
    weights.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    with pytest.raises(Exception) as raw:
        safe_open(str(weights), framework="pt")
    assert len(str(raw.value)) > 121
    with pytest.raises(ValueError) as info:
        P.read_record(tmp_path / "h")
    assert str(info.value) == (f"{str(weights)!r} is not a readable safetensors file ({type(raw.value).__name__}: "
                               f"{str(raw.value)[:120]}); the checkpoint is damaged or was not written by "
                               "mpruner.save_pruned")
    digits = "[" + "1" * 5000 + "]"  # json's integer limit: a message longer than 80 characters
    with pytest.raises(ValueError) as want:
        json.loads(digits)
    assert len(str(want.value)) > 81
    assert _record_error(tmp_path / "d", text=digits) == \
        f"W: the mpruner record in its metadata is not valid JSON ({str(want.value)[:80]})"


# The record a never-pruned model is saved with names its adapter and block lists, and for a
# model no adapter recognises has no adapter, no block lists and no steps.
def test_record_of_a_never_pruned_model(tmp_path):
    from mpruner.surgery.persist import adapter_for, read_record

    stack = nn.Sequential(*[nn.Linear(4, 4) for _ in range(3)])
    mpruner.save_pruned(stack, tmp_path / "stack")
    record = read_record(tmp_path / "stack")
    assert record["adapter"] == adapter_for(stack).name and record["adapter"] is not None
    assert record["original"] == {bl.name: len(bl) for bl in mpruner.find_blocks(stack)} and record["steps"] == []

    class Plain(nn.Module):  # no block container: no adapter recognises it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

    mpruner.save_pruned(Plain(), tmp_path / "plain")
    record = read_record(tmp_path / "plain")
    assert {k: record[k] for k in ("adapter", "original", "steps")} == {"adapter": None, "original": {}, "steps": []}


def test_two_steps_replay_in_order(tmp_path):
    model, image = tv_resnet(), torch.randn(1, 3, 32, 32)
    step1 = remove_layers(model, [1])          # layer1.1
    step2 = remove_layers(step1, [4])          # what is now layer3.1
    assert get_record(step2)["steps"] == [{"layer1..layer4": [1]}, {"layer1..layer4": [4]}]
    save_pruned(step2, tmp_path)
    reloaded = load_pruned(tmp_path, zoo.ResNet).eval()
    assert [len(s) for s in (reloaded.layer1, reloaded.layer2, reloaded.layer3, reloaded.layer4)] == [1, 2, 1, 2]
    assert torch.equal(output_of(reloaded, image), output_of(step2, image))


def test_load_pruned_rejects_the_wrong_factory(tmp_path):
    save_pruned(remove_layers(tv_resnet(), [1]), tmp_path)
    with pytest.raises(ValueError, match="pruned from .*original, unpruned architecture"):
        load_pruned(tmp_path, lambda: zoo.ResNet(zoo.BasicBlock, (3, 2, 2, 2)))
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        load_pruned(tmp_path, lambda: None)
    with pytest.raises(TypeError, match="callable"):
        load_pruned(tmp_path, "resnet")
    with pytest.raises(FileNotFoundError, match="save_pruned"):
        load_pruned(tmp_path / "missing", zoo.ResNet)


def test_load_pruned_reports_weights_that_do_not_fit(tmp_path):
    save_pruned(tv_resnet(), tmp_path)  # never pruned: just weights
    with pytest.raises(ValueError, match="do not fit"):
        load_pruned(tmp_path, lambda: zoo.ResNet(num_classes=7))


def test_load_pruned_into_an_instance(tmp_path):
    model, image = tv_resnet(), torch.randn(1, 3, 32, 32)
    pruned = remove_layers(model, [5])
    save_pruned(pruned, tmp_path)
    target = zoo.ResNet()
    assert load_pruned(tmp_path, target) is target
    assert torch.equal(output_of(target.eval(), image), output_of(pruned, image))


def test_hugging_face_model_through_save_pruned(tmp_path):
    model, inputs = zoo.hf_model("gpt2")  # tied embeddings: stored once, restored shared
    pruned = remove_layers(model, [1])
    save_pruned(pruned, tmp_path)
    model_class, config, _ = zoo.hf_case("gpt2")
    reloaded = load_pruned(tmp_path, lambda: model_class(config)).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
    assert torch.equal(output_of(reloaded, inputs), output_of(pruned, inputs))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_prune_save_load_and_stats(tmp_path):
    model, image = tv_resnet().cuda(), torch.randn(2, 3, 32, 32, device="cuda")
    pruned = remove_layers(model, [1, 5])
    assert next(pruned.parameters()).is_cuda
    save_pruned(pruned, tmp_path)
    reloaded = load_pruned(tmp_path, lambda: zoo.ResNet().cuda()).eval()
    assert torch.equal(output_of(reloaded, image), output_of(pruned, image))
    stats = model_stats(pruned, image, repeats=3)
    assert stats.latency_ms > 0 and stats.params == n_params(pruned)
