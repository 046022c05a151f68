"""MALUNet against the authors' reference (../shared/reference) and its tied memory."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch

from models import InputSizeError, create_model
from models.malunet import ExternalAttention, MALUNet

N_TOTAL = 177_943  # sum of numel over parameters(): the paper's 0.177 M
N_UNIQUE = 146_711  # distinct storage: the six IEA memories count once
N_BRIDGE = 16_614


def _ref(shared_dir: Path) -> dict:
    return torch.load(shared_dir / "reference" / "malunet_reference.pt")


def _keys_file(shared_dir: Path) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (shared_dir / "reference" / "malunet_state_dict_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def _unique_numel(model: torch.nn.Module) -> int:
    storages = {}
    for p in model.parameters():
        s = p.untyped_storage()
        storages[s.data_ptr()] = s.nbytes() // p.element_size()
    return sum(storages.values())


def _iea_blocks(model: torch.nn.Module) -> list[ExternalAttention]:
    return [m for m in model.modules() if isinstance(m, ExternalAttention)]


def _assert_tied(model: torch.nn.Module) -> None:
    blocks = _iea_blocks(model)
    assert len(blocks) == 6
    for b in blocks:
        assert b.is_tied
        assert torch.equal(b.linear_1.weight, b.linear_0.weight.permute(1, 0, 2))


def test_state_dict_names_and_shapes_match_reference(shared_dir: Path) -> None:
    ours = [(k, tuple(v.shape)) for k, v in create_model("malunet").state_dict().items()]
    assert len(ours) == 279
    assert ours == _keys_file(shared_dir)


def test_reference_output_float32(shared_dir: Path) -> None:
    ref = _ref(shared_dir)
    model = create_model("malunet")
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(ref["input"]))
    assert prob.shape == ref["output"].shape
    assert (prob - ref["output"]).abs().max().item() <= 1e-5


def test_reference_output_float64(shared_dir: Path) -> None:
    # Float64 removes our rounding; what is left is the reference's own float32
    # error (about 1.1e-5 max, 9e-7 mean), identical on every machine.
    ref = _ref(shared_dir)
    model = create_model("malunet")
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval().double()
    with torch.no_grad():
        prob = torch.sigmoid(model(ref["input"].double()))
    err = (prob - ref["output"].double()).abs()
    assert err.max().item() <= 2e-5
    assert err.mean().item() <= 2e-6


def test_authors_initialisation_reproduces_reference(shared_dir: Path) -> None:
    # The reference weights are the authors' init under torch.manual_seed(0):
    # same construction order, same draws (timm's trunc_normal_ for Linear).
    torch.manual_seed(0)
    ours = create_model("malunet").state_dict()
    theirs = _ref(shared_dir)["state_dict"]
    mismatched = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert mismatched == []


def test_parameter_counts() -> None:
    model = create_model("malunet")
    assert sum(p.numel() for p in model.parameters()) == N_TOTAL
    assert _unique_numel(model) == N_UNIQUE
    assert sum(p.numel() for p in model.scab.parameters()) == N_BRIDGE
    no_bridge = create_model("malunet", bridge=False)
    assert sum(p.numel() for p in no_bridge.parameters()) == N_TOTAL - N_BRIDGE
    untied = create_model("malunet", tie_memory=False)
    assert _unique_numel(untied) == N_TOTAL


def test_thop_macs_match_paper_count() -> None:
    thop = pytest.importorskip("thop")
    macs, _ = thop.profile(
        create_model("malunet"), inputs=(torch.rand(1, 3, 256, 256),), verbose=False
    )
    assert int(macs) == 82_972_800  # the paper's "0.085 GFLOPs"


def test_forward_returns_logits_at_input_size() -> None:
    model = create_model("malunet", num_classes=2, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 96) * 255)
    assert out.shape == (2, 2, 64, 96)
    assert out.dtype == torch.float32


def test_split_att_conv_and_no_bridge_run() -> None:
    x = torch.rand(1, 3, 64, 64)
    for kw in ({"split_att": "conv"}, {"bridge": False}):
        with torch.no_grad():
            assert create_model("malunet", **kw).eval()(x).shape == (1, 1, 64, 64)


def test_bad_input_size_and_channels() -> None:
    model = create_model("malunet").eval()
    with pytest.raises(InputSizeError, match=r"multiples of 32, got 250x250"):
        model(torch.rand(1, 3, 250, 250))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got \(1, 1, 64, 64\)"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(3, 64, 64))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="c_list"):
        MALUNet(c_list=[8, 16, 24, 32, 48])
    with pytest.raises(ValueError, match="c_list"):
        MALUNet(c_list=[8, 16, 24, 32, 48, 66])
    with pytest.raises(ValueError, match="split_att"):
        MALUNet(split_att="mlp")


def test_tie_is_a_shared_transposed_view() -> None:
    model = create_model("malunet")
    _assert_tied(model)
    block = _iea_blocks(model)[0]
    with torch.no_grad():
        block.linear_0.weight[3, 1, 0] = 123.0
    assert block.linear_1.weight[1, 3, 0].item() == 123.0
    block.untie_()  # the check above must be able to fail
    assert not block.is_tied


def test_tie_survives_load_state_dict(shared_dir: Path) -> None:
    model = create_model("malunet")
    model.load_state_dict(_ref(shared_dir)["state_dict"], strict=True)
    _assert_tied(model)
    assigned = create_model("malunet")
    # Separate (cloned) tensors, as a checkpoint written by another tool would hold.
    cloned = {
        k: v.clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()
    }
    assigned.load_state_dict(cloned, strict=True, assign=True)
    _assert_tied(assigned)


def test_tie_survives_conversion_deepcopy_and_pickle() -> None:
    model = create_model("malunet")
    # .double()/.half() re-create every parameter just as .to("cuda") does.
    model = model.double()
    _assert_tied(model)
    model = model.to("cpu", torch.float32)
    _assert_tied(model)
    _assert_tied(copy.deepcopy(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    _assert_tied(torch.load(buf, weights_only=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tie_survives_cuda() -> None:
    _assert_tied(create_model("malunet").cuda())


def test_tie_survives_adamw_step() -> None:
    model = create_model("malunet")
    block = _iea_blocks(model)[0]
    before = block.linear_0.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    model(torch.rand(2, 3, 64, 64) * 255).sigmoid().mean().backward()
    assert block.linear_0.weight.grad is not None and block.linear_1.weight.grad is not None
    opt.step()
    assert not torch.equal(block.linear_0.weight, before)
    _assert_tied(model)


def test_untied_checkpoint_is_refused_by_tied_model(shared_dir: Path) -> None:
    state = copy.deepcopy(_ref(shared_dir)["state_dict"])
    state["encoder4.0.linear_1.weight"] = state["encoder4.0.linear_1.weight"].contiguous() + 0.5
    with pytest.raises(RuntimeError, match="tie_memory=False"):
        create_model("malunet").load_state_dict(state)
    untied = create_model("malunet", tie_memory=False)
    untied.load_state_dict(state, strict=True)
    assert torch.equal(untied.encoder4[0].linear_1.weight, state["encoder4.0.linear_1.weight"])
    assert torch.equal(untied.encoder4[0].linear_0.weight, state["encoder4.0.linear_0.weight"])
