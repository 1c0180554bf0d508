"""mpruner.sparsity's report, masks and 2:4 conversion against values worked out by hand.

The model below is small enough to count by eye: every figure in the expected table and dict
is written out (the comments say where each comes from), not recomputed by the code under test.
"""
import pytest
import torch
import torch.nn as nn

from mpruner import sparsity
from mpruner.sparsity import semi_structured


class Net(nn.Module):
    """fc: Linear 4->3 with 2 weight zeros and 1 bias zero; pw: 1x1 conv under a mask of 5 zeros;
    k3: a 3x3 conv (not sparsifiable, but counted in the totals) with 9 zeros; head and tied
    share one weight (counted once in the totals, listed under both names)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.pw = nn.Conv2d(4, 2, 1, bias=False)
        self.k3 = nn.Conv2d(2, 2, 3, bias=False)
        self.head = nn.Linear(3, 4, bias=False)
        self.tied = nn.Linear(3, 4, bias=False)
        self.tied.weight = self.head.weight
        with torch.no_grad():
            for p in self.parameters():  # no accidental zeros
                p.copy_(p.abs() + 0.1)
            self.fc.weight[0, :2] = 0
            self.fc.bias[1] = 0
            self.k3.weight[0, 0] = 0
        sparsity.attach_masks(self, {"pw": PW_MASK})


PW_MASK = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])[:, :, None, None]

EXPECTED_TABLE = "\n".join([
    "layer kind         params      zeros sparsity",
    "fc    Linear           12          2    16.7%",
    "pw    Conv2d            8          5    62.5%  (masked)",
    "head  Linear           12          0     0.0%",
    "tied  Linear           12          0     0.0%",
    # 15 (fc) + 8 (pw) + 36 (k3) + 12 (head = tied) parameters; 2 + 1 + 5 + 9 zeros
    "all parameters                  71         17    23.9%",
])


def test_report_every_field():
    rep = sparsity.report(Net())
    assert rep.to_dict() == {
        "total_params": 71, "total_zeros": 17, "nonzero": 54, "sparsity": 17 / 71,
        "layers": [
            {"name": "fc", "kind": "Linear", "shape": [3, 4], "numel": 12, "zeros": 2, "masked": False,
             "sparsity": 2 / 12},
            {"name": "pw", "kind": "Conv2d", "shape": [2, 4, 1, 1], "numel": 8, "zeros": 5, "masked": True,
             "sparsity": 5 / 8},
            {"name": "head", "kind": "Linear", "shape": [4, 3], "numel": 12, "zeros": 0, "masked": False,
             "sparsity": 0.0},
            {"name": "tied", "kind": "Linear", "shape": [4, 3], "numel": 12, "zeros": 0, "masked": False,
             "sparsity": 0.0},
        ]}
    assert rep.table() == EXPECTED_TABLE and str(rep) == EXPECTED_TABLE
    assert sparsity.count_nonzero(Net()) == 54


def test_report_table_pads_to_the_longest_name():
    model = nn.Sequential()
    model.add_module("a_rather_long_name", nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert sparsity.report(model).table().splitlines() == [
        "layer              kind         params      zeros sparsity",
        "a_rather_long_name Linear            4          1    25.0%",
        "all parameters                       4          1    25.0%",
    ]


def test_an_empty_report_divides_by_one():
    rep = sparsity.report(nn.ReLU())
    assert rep.to_dict() == {"total_params": 0, "total_zeros": 0, "nonzero": 0, "sparsity": 0.0, "layers": []}
    assert rep.table().splitlines()[0] == "layer kind         params      zeros sparsity"


def test_report_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        sparsity.report({"fc": 1})


def test_masks_from_zeros_by_name_and_by_default():
    net = Net()
    sparsity.make_permanent(net)
    default = sparsity.masks_from_zeros(net)
    assert list(default) == ["fc", "pw"]  # the targets holding zeros, in module order; head has none
    assert torch.equal(default["fc"], torch.tensor([[0.0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]))
    assert torch.equal(default["pw"], PW_MASK) and default["pw"].dtype == torch.float32
    named = sparsity.masks_from_zeros(net, names=("head",))  # asked for: given even without zeros
    assert list(named) == ["head"] and torch.equal(named["head"], torch.ones(4, 3))
    assert sparsity.masks_from_zeros(net, names=iter(["k3"]))["k3"].shape == (2, 2, 3, 3)


@pytest.mark.parametrize("rows,expected", [
    ([[1.0, 0, 2, 0, 0, 0, 0, 3]], True),      # 2 and 1 non-zeros per group of 4
    ([[0.0, 0, 0, 0]], True),                  # none at all is at most 2
    ([[1.0, 2, 3, 0]], False),                 # 3 of 4
    ([[1.0, 2, 0, 0], [1, 2, 3, 4]], False),   # one row breaks it
    ([[1.0, 0, 2, 0, 0, 0]], False),           # 6 columns: not groups of 4
])
def test_is_2_4(rows, expected):
    assert semi_structured._is_2_4(torch.tensor(rows)) is expected


def test_is_2_4_needs_a_matrix():
    assert semi_structured._is_2_4(torch.tensor([1.0, 0, 0, 0])) is False
    assert semi_structured._is_2_4(torch.zeros(2, 4, 1, 1)) is False


class _OnCuda(torch.Tensor):
    """A CPU tensor that reports a CUDA device: the conversion's own logic, run without a GPU."""

    @property
    def device(self):
        return torch.device("cuda", 0)


class _CudaLinear(nn.Linear):
    """An nn.Linear whose registered weight reads as if it lived on a GPU once ``on_gpu`` is set."""

    on_gpu = False

    def __getattr__(self, name):
        value = super().__getattr__(name)
        return value.as_subclass(_OnCuda) if name == "weight" and self.on_gpu else value


def test_to_semi_structured_converts_the_2_4_linears_only(monkeypatch):
    converted_weights = []

    def fake_convert(weight):
        assert type(weight) is _OnCuda and not weight.requires_grad
        converted_weights.append(weight.clone())
        return torch.zeros_like(weight)  # stands for the sparse tensor

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", fake_convert)
    model = nn.Sequential(_CudaLinear(4, 2, bias=False), _CudaLinear(4, 2, bias=False), nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]))
        model[1].weight.copy_(torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]))
        model[2].weight.zero_()  # 2:4 sparse, but a conv: never converted
    sparsity.attach_masks(model, {"1": torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])})
    # model[0] is dense and stays; model[1] is 2:4 only through its mask, which must be folded first
    model[0].on_gpu = model[1].on_gpu = True
    assert semi_structured.to_semi_structured(model) == ["1"]
    assert not sparsity.has_masks(model)
    assert len(converted_weights) == 1
    assert torch.equal(converted_weights[0], torch.tensor([[1.0, 0, 0, 4], [0, 6, 7, 0]]))
    weight = model[1]._parameters["weight"]
    assert isinstance(weight, nn.Parameter) and not weight.requires_grad and torch.equal(weight, torch.zeros(2, 4))
    assert model[0].weight.requires_grad and model[0].weight[0, 0] == 1


def test_to_semi_structured_names_the_cpu_layer():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0, 4], [0, 6, 7, 0]]))
    with pytest.raises(ValueError, match=r"needs the model on a CUDA GPU \(layer '0' is on cpu\).*no CPU kernels"):
        semi_structured.to_semi_structured(model)


def test_has_masks_needs_a_prune_mask_not_a_look_alike():
    model = nn.Sequential(nn.Linear(4, 2))
    model[0].register_buffer("weight_mask", torch.ones(2, 4))  # a model's own buffer of that name
    assert not sparsity.has_masks(model)
    sparsity.attach_masks(model, {"0": torch.ones(2, 4)})
    assert sparsity.has_masks(model)


@pytest.mark.parametrize("pattern", [None, "60:120"])
def test_ties_zero_the_lower_indices_first(pattern):
    # 120 equal scores per row: long enough that an unstable sort would pick other indices
    from mpruner.sparsity.wanda import row_mask

    nm = sparsity.parse_pattern(pattern)
    mask = row_mask(torch.ones(3, 120), torch.ones(120), 0.5, nm)
    expected = torch.ones(3, 120, dtype=torch.float64)
    expected[:, :60] = 0
    assert torch.equal(mask, expected)
    # the same with a lower score in the kept half: it goes, and the tie decides the rest
    weights = torch.ones(3, 120)
    weights[:, 100] = 0.5
    mask = row_mask(weights, torch.ones(120), 0.5, nm)
    expected[:, 59], expected[:, 100] = 1, 0
    assert torch.equal(mask, expected)


def test_masks_follow_the_weight_device_and_dtype():
    # norms collected on the CPU, a model elsewhere ("meta" stands for a GPU): masks live with each weight
    model = nn.Sequential(nn.Linear(8, 2, device="meta", dtype=torch.float64))
    masks = sparsity.wanda_masks(model, {"0": torch.ones(8, dtype=torch.float32)}, sparsity=0.5)
    assert masks["0"].device.type == "meta" and masks["0"].dtype == torch.float64
    sparsity.attach_masks(model, {"0": torch.ones(2, 8, dtype=torch.bool)})
    assert model[0].weight_mask.device.type == "meta" and model[0].weight_mask.dtype == torch.float64


def test_attach_masks_casts_the_mask_to_the_weight_dtype():
    model = nn.Sequential(nn.Linear(4, 2, dtype=torch.float64))
    sparsity.attach_masks(model, {"0": torch.tensor([[True, False, True, False], [False, True, True, True]])})
    assert model[0].weight_mask.dtype == torch.float64 and model[0].weight.dtype == torch.float64
    assert int((model[0].weight == 0).sum()) == 3


def test_effective_weight_reads_the_mask_after_a_step():
    from mpruner.sparsity.layers import effective_weight

    layer = nn.Linear(4, 2)
    sparsity.attach_masks(nn.Sequential(layer), {"0": torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 0]])})
    with torch.no_grad():
        layer.weight_orig.fill_(2.0)  # an optimizer step; layer.weight is the product of the last forward
    assert torch.equal(effective_weight(layer), torch.tensor([[2.0, 0, 2, 2], [2, 2, 2, 0]]))
    assert not torch.equal(layer.weight, effective_weight(layer))
    plain = nn.Linear(4, 2)
    plain.register_buffer("weight_mask", torch.zeros(2, 4))  # a look-alike without weight_orig
    assert effective_weight(plain) is plain.weight


def test_totals_count_a_shared_weight_once_and_the_rest_of_its_module():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight = model[0].weight  # tied: the second module's weight was seen, its bias was not
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 1.0]))
        model[1].bias.copy_(torch.tensor([0.0, 0.0]))
    rep = sparsity.report(model)
    assert (rep.total_params, rep.total_zeros) == (4 + 2 + 2, 1 + 1 + 2)
    assert sparsity.count_nonzero(model) == 4


def test_a_parameter_named_weight_orig_without_a_mask_counts_as_itself():
    module = nn.Module()
    module.weight_orig = nn.Parameter(torch.zeros(3))  # a model's own parameter of that name
    module.weight = nn.Parameter(torch.ones(2))
    rep = sparsity.report(module)
    assert (rep.total_params, rep.total_zeros) == (5, 3)
