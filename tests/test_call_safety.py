"""Correct however the model is called: threads, replicas, activation checkpointing,
torch.compile, reduced precision and non-finite pixels. Each case is checked against the
plain sequential / eager / float64 run."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import adafuse_plugin as af

from .conftest import force_decisions, randomize_norms

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model(spread_resnet18) -> nn.Module:
    """A patched ResNet-18 (2 frames per clip) whose policies take every action."""
    return spread_resnet18(2)


def _replicate(module: nn.Module) -> nn.Module:
    """What nn.DataParallel's replicate does on one device: shallow module copies that
    share parameters and hook dicts with the original."""
    replica = module._replicate_for_data_parallel()
    replica._parameters = dict(module._parameters)
    for name, child in module._modules.items():
        replica._modules[name] = None if child is None else _replicate(child)
    return replica


def _all_actions(decisions: dict[str, torch.Tensor]) -> bool:
    return bool(
        (torch.cat([d.flatten() for d in decisions.values()]).bincount(minlength=3) > 0).all()
    )


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [False, True])
def test_concurrent_calls_equal_sequential_ones(model, replicas):
    model.eval()
    torch.manual_seed(1)
    inputs = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    expected = []
    with torch.no_grad():
        for x in inputs:
            expected.append((model(x), af.collect_decisions(model)))
    assert _all_actions(expected[0][1])
    callers = [model, _replicate(model) if replicas else model]
    failures: list[str] = []

    def worker(caller: nn.Module, offset: int) -> None:
        try:
            calls(caller, offset)
        except Exception as error:  # a crash in a thread must fail the test
            failures.append(repr(error))

    def calls(caller: nn.Module, offset: int) -> None:
        for call in range(100):
            index = (call + offset) % len(inputs)
            with torch.no_grad():
                out = caller(inputs[index])
            decisions = af.collect_decisions(caller)
            if not torch.equal(out, expected[index][0]):
                failures.append(f"output of call {call}")
            if any(not torch.equal(decisions[k], v) for k, v in expected[index][1].items()):
                failures.append(f"decisions of call {call}")

    threads = [threading.Thread(target=worker, args=(c, i)) for i, c in enumerate(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


def _loss_and_grads(net: nn.Module, x: torch.Tensor):
    flops_loss = af.AdaFuseFlopsLoss(net, input_shape=(2, 3, 32, 32), weight=1.0)
    net.train()
    torch.manual_seed(5)  # the same Gumbel noise in every variant
    loss = net(x).square().mean() + flops_loss()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _checkpoint_blocks(net: nn.Module, use_reentrant: bool) -> None:
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            forward = block.forward
            block.forward = lambda x, f=forward: checkpoint(f, x, use_reentrant=use_reentrant)


def _assert_same(reference, result) -> None:
    (loss, grads), (ref_loss, ref_grads) = result, reference
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
    policy = [g for k, g in grads.items() if "policy_net" in k]
    assert policy and all(g.abs().sum() > 0 for g in policy)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["reentrant", "non-reentrant", "timm"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(model, variant):
    """In float64, so that summation order (recomputation) leaves no visible rounding."""
    model.double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    reference = _loss_and_grads(copy.deepcopy(model), x)
    net = copy.deepcopy(model)
    if variant == "timm":
        net.set_grad_checkpointing(True)
    else:
        _checkpoint_blocks(net, use_reentrant=variant == "reentrant")
    _assert_same(reference, _loss_and_grads(net, x))


@pytest.mark.slow
def test_mmaction2_with_cp_gives_the_same_loss_and_gradients():
    pytest.importorskip("mmaction")
    from mmaction.models.backbones import ResNet

    torch.manual_seed(0)
    plain = randomize_norms(ResNet(depth=50, pretrained=None, with_cp=False))
    af.patch_model(plain, num_segments=2, hidden_size=16)
    for _, gate in af.iter_gates(plain):
        nn.init.normal_(gate.policy_net.fc2.weight, 0.0, 0.5)
    checkpointed = ResNet(depth=50, pretrained=None, with_cp=True)
    af.patch_model(checkpointed, num_segments=2, hidden_size=16)
    checkpointed.load_state_dict(plain.state_dict())
    plain.double(), checkpointed.double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    _assert_same(_loss_and_grads(plain, x), _loss_and_grads(checkpointed, x))


@pytest.mark.slow
def test_torch_compile_train_and_eval_equal_eager(model):
    x = torch.randn(4, 3, 32, 32)
    eager = copy.deepcopy(model)
    reference = _loss_and_grads(eager, x)
    compiled = copy.deepcopy(model)
    flops_loss = af.AdaFuseFlopsLoss(compiled, input_shape=(2, 3, 32, 32), weight=1.0)
    net = torch.compile(compiled, backend="eager")
    compiled.train()
    torch.manual_seed(5)
    loss = net(x).square().mean() + flops_loss()
    loss.backward()
    grads = {k: p.grad for k, p in compiled.named_parameters() if p.grad is not None}
    _assert_same(reference, (loss.detach(), grads))
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), eager(x))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flops_loss_in_reduced_precision_matches_float64(model, dtype):
    """FLOP counts overflow float16: the loss is computed in float32 whatever the masks."""
    for _, gate in af.iter_gates(model):  # stable decisions, equal in every precision
        force_decisions(gate, [index % 3 for index in range(gate.groups)])
    x = torch.randn(4, 3, 32, 32)
    values = {}
    for precision in (torch.float64, dtype):
        net = copy.deepcopy(model).to(precision).eval()
        flops_loss = af.AdaFuseFlopsLoss(net, input_shape=(2, 3, 32, 32), weight=1.0)
        with torch.no_grad():
            net(x.to(precision))
            values[precision] = flops_loss().double()
    assert torch.isfinite(values[dtype])
    assert values[dtype].item() == pytest.approx(values[torch.float64].item(), rel=0.01)


def test_an_inf_pixel_stays_in_its_frame_under_keep(model):
    model.eval()
    for _, gate in af.iter_gates(model):
        force_decisions(gate, [0] * gate.groups)
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 5, 5] = float("inf")
    with torch.no_grad():
        out = model(x)
    assert not torch.isfinite(out[0]).all()
    assert torch.isfinite(out[1]).all()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 2, 3, 32, 32), r"5-D input \(2, 2, 3, 32, 32\).*clips\.flatten\(0, 1\)"),
        ((3, 32, 32), r"3-D input \(3, 32, 32\).*\(N\*T, C, H, W\)"),
        ((0, 3, 32, 32), r"empty batch.*at least one clip of 2 frames"),
        ((3, 3, 32, 32), r"3 frames, not divisible by num_segments=2"),
    ],
)
def test_bad_inputs_are_refused_at_the_model_entry(model, shape, message):
    """Before the stem runs (whose own error would say nothing about clips)."""
    stem_calls = []
    model.conv1.register_forward_hook(lambda *_: stem_calls.append(1))
    with pytest.raises(af.AdaFuseInputError, match=message):
        model(torch.randn(shape))
    assert not stem_calls
    af.unpatch_model(model)  # the entry check goes with the gates
    if len(shape) == 4 and shape[0]:
        model(torch.randn(shape))


def test_training_a_policy_on_a_single_frame_names_the_fix():
    timm = pytest.importorskip("timm")
    net = af.patch_model(timm.create_model("resnet18", num_classes=5), num_segments=1)
    with pytest.raises(af.AdaFuseInputError, match="BatchNorm1d.*num_segments >= 2"):
        net.train()(torch.randn(1, 3, 32, 32))
    net.eval()(torch.randn(1, 3, 32, 32))  # inference on one frame is fine
