"""AdaFuse block semantics: fusion per channel, history, policies, gradients, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adafuse_plugin as af
from adafuse_plugin.gate import KEEP, REUSE, SKIP

from .conftest import force_decisions


def _stage_io(net, block_index=0):
    """Hooks recording the unfused first-stage output and the second conv's input."""
    record = {}
    block = net[block_index]
    block.act1.register_forward_hook(lambda m, a, out: record.__setitem__("y", out.clone()))
    block.conv2.register_forward_pre_hook(lambda m, a: record.__setitem__("fused", a[0].clone()))
    return record


def test_keep_reuse_skip_per_channel_on_hand_built_example(tiny_net):
    record = _stage_io(tiny_net)  # registered before patching: sees the unfused output
    af.patch_model(tiny_net, num_segments=3)
    gate = tiny_net[0].adafuse
    force_decisions(gate, [KEEP, REUSE, SKIP, REUSE])
    tiny_net.eval()
    tiny_net(torch.randn(6, 4, 5, 5))  # 2 clips x 3 frames
    y = record["y"].view(2, 3, 4, 5, 5)
    fused = record["fused"].view(2, 3, 4, 5, 5)
    assert torch.equal(fused[:, :, 0], y[:, :, 0])  # keep
    assert torch.equal(fused[:, 1:, 1], y[:, :-1, 1])  # reuse the previous frame
    assert torch.equal(fused[:, 1:, 3], y[:, :-1, 3])
    assert torch.all(fused[:, 0, [1, 3]] == 0)  # no history before the first frame
    assert torch.all(fused[:, :, 2] == 0)  # skip
    expected = torch.tensor([KEEP, REUSE, SKIP, REUSE]).expand(2, 3, 4)
    assert torch.equal(af.collect_decisions(tiny_net)["0"], expected)


def test_reuse_takes_the_unfused_previous_feature(tiny_net):
    """y_{t-1} is the raw first-stage output, not the fused one (which is 0 if skipped)."""
    record = _stage_io(tiny_net)
    af.patch_model(tiny_net, num_segments=4)
    tiny_net.eval()
    gate = tiny_net[0].adafuse
    # Alternate the policy per frame through the pooled input: make the decision depend
    # on the frame by giving the policy a huge weight on v_t's first channel.
    net = gate.policy_net
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.norm.running_var.fill_(1.0)
        net.norm.running_mean.zero_()
        net.norm.weight.fill_(1.0)
        net.fc1.weight[0, 4] = 1.0  # hidden 0 = v_t[0]
        net.fc2.weight[1::3, 0] = 100.0  # reuse when v_t[0] > 0
        net.fc2.bias[2::3] = 1.0  # otherwise skip
    x = torch.randn(4, 4, 3, 3)
    x[:, 0] = torch.tensor([-1.0, 1.0, -1.0, 1.0]).view(4, 1, 1)  # skip, reuse, skip, reuse
    tiny_net(x)
    d = af.collect_decisions(tiny_net)["0"][0]
    assert d[:, 0].tolist() == [SKIP, REUSE, SKIP, REUSE]
    y, fused = record["y"], record["fused"]
    assert torch.equal(fused[1], y[0])  # frame 0 was skipped, yet frame 1 reuses its y
    assert torch.equal(fused[3], y[2])


def test_policy_sees_previous_frame_and_zero_history(tiny_net):
    af.patch_model(tiny_net, num_segments=3)
    seen = {}
    net = tiny_net[0].adafuse.policy_net
    net.register_forward_pre_hook(lambda m, a: seen.update(prev=a[0], cur=a[1]))
    x = torch.randn(6, 4, 5, 5)
    tiny_net(x)
    pooled = x.mean(dim=(2, 3)).view(2, 3, 4)
    prev, cur = seen["prev"].view(2, 3, 4), seen["cur"].view(2, 3, 4)
    assert torch.allclose(cur, pooled)
    assert torch.all(prev[:, 0] == 0)
    assert torch.allclose(prev[:, 1:], pooled[:, :-1])


def test_keep_policy_reproduces_unpatched_model_exactly(resnet18):
    resnet18.eval()
    x = torch.randn(4, 3, 64, 64)
    reference = resnet18(x)
    af.patch_model(resnet18, num_segments=2, policy="keep")
    assert torch.equal(resnet18(x), reference)
    assert all(bool((d == KEEP).all()) for d in af.collect_decisions(resnet18).values())


def test_gradients_reach_every_policy_net(resnet18):
    af.patch_model(resnet18, num_segments=2)
    resnet18.train()
    flops_loss = af.AdaFuseFlopsLoss(resnet18, input_shape=(2, 3, 64, 64), weight=0.1)
    logits = af.consensus(resnet18(torch.randn(4, 3, 64, 64)), 2)
    loss = F.cross_entropy(logits, torch.tensor([0, 1])) + flops_loss()
    loss.backward()
    for name, gate in af.iter_gates(resnet18):
        grads = [p.grad for p in gate.policy_net.parameters()]
        assert all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_flops_loss_alone_trains_the_policy_towards_skipping(tiny_net):
    """Minimising the FLOPs term must raise the skip share: the gradient has the right sign."""
    af.patch_model(tiny_net, num_segments=2, hidden_size=8)
    flops_loss = af.AdaFuseFlopsLoss(tiny_net, input_shape=(2, 4, 8, 8), weight=1.0)
    params = [p for _, g in af.iter_gates(tiny_net) for p in g.policy_net.parameters()]
    optimizer = torch.optim.SGD(params, lr=5.0)
    x = torch.randn(8, 4, 8, 8)
    tiny_net.train()
    torch.manual_seed(0)
    for _ in range(40):
        optimizer.zero_grad()
        tiny_net(x)
        flops_loss().backward()
        optimizer.step()
    tiny_net.eval()
    tiny_net(x)
    skip = torch.cat([d.flatten() for d in af.collect_decisions(tiny_net).values()]) == SKIP
    assert skip.float().mean() > 0.9


def test_eval_is_deterministic_and_training_samples(resnet18):
    af.patch_model(resnet18, num_segments=2)
    x = torch.randn(4, 3, 64, 64)
    resnet18.eval()
    first, d1 = resnet18(x), af.collect_decisions(resnet18)
    second, d2 = resnet18(x), af.collect_decisions(resnet18)
    assert torch.equal(first, second)
    assert all(torch.equal(d1[k], d2[k]) for k in d1)
    resnet18.train()
    torch.manual_seed(1)
    resnet18(x)
    s1 = af.collect_decisions(resnet18)
    torch.manual_seed(2)
    resnet18(x)
    s2 = af.collect_decisions(resnet18)
    assert any(not torch.equal(s1[k], s2[k]) for k in s1)


def test_gumbel_eval_decisions_sample_the_policy_softmax(resnet18):
    """The authors' test protocol: eval decisions drawn from softmax(logits), reproducible
    under a seed; argmax (our default) always takes the most likely action."""
    af.patch_model(resnet18, num_segments=2).eval()
    probabilities = torch.tensor([0.6, 0.3, 0.1])
    for _, gate in af.iter_gates(resnet18):
        with torch.no_grad():
            gate.policy_net.fc2.weight.zero_()
            gate.policy_net.fc2.bias.copy_(probabilities.log().repeat(gate.groups))
    x = torch.randn(8, 3, 32, 32)
    resnet18(x)
    assert all((d == KEEP).all() for d in af.collect_decisions(resnet18).values())
    af.set_eval_decisions(resnet18, "gumbel")
    torch.manual_seed(0)
    first = resnet18(x)
    decisions = torch.cat([d.flatten() for d in af.collect_decisions(resnet18).values()])
    shares = decisions.bincount(minlength=3) / decisions.numel()
    torch.testing.assert_close(shares, probabilities, atol=0.02, rtol=0)
    torch.manual_seed(0)
    assert torch.equal(resnet18(x), first)
    with pytest.raises(af.AdaFuseConfigError, match="eval_decisions must be one of"):
        af.set_eval_decisions(resnet18, "sample")


@pytest.mark.parametrize(("policy", "forbidden"), [("keep_skip", REUSE), ("keep_reuse", SKIP)])
def test_restricted_learned_policies_never_take_the_forbidden_action(resnet18, policy, forbidden):
    af.patch_model(resnet18, num_segments=2, policy=policy)
    for _, gate in af.iter_gates(resnet18):
        with torch.no_grad():  # make the forbidden action the most attractive one
            gate.policy_net.fc2.bias.view(-1, 3)[:, forbidden] = 50.0
    for mode in (True, False):
        resnet18.train(mode)
        resnet18(torch.randn(4, 3, 64, 64))
        decisions = torch.cat([d.flatten() for d in af.collect_decisions(resnet18).values()])
        assert not bool((decisions == forbidden).any())
        assert bool((decisions == KEEP).any())


def test_random_policy_follows_its_ratios(resnet18):
    af.patch_model(resnet18, num_segments=2, policy="random", random_ratios=(0.5, 0.2, 0.3))
    resnet18.eval()
    resnet18(torch.randn(8, 3, 64, 64))
    decisions = torch.cat([d.flatten() for d in af.collect_decisions(resnet18).values()])
    shares = torch.bincount(decisions, minlength=3).float() / decisions.numel()
    assert torch.allclose(shares, torch.tensor([0.5, 0.2, 0.3]), atol=0.02)


def test_threshold_policy_keeps_the_largest_l1_channels(tiny_net):
    record = _stage_io(tiny_net)
    af.patch_model(tiny_net, num_segments=1, policy="threshold", threshold_keep_ratio=0.5)
    tiny_net(torch.randn(3, 4, 6, 6))
    y = record["y"]
    decisions = af.collect_decisions(tiny_net)["0"].view(3, 4)
    norms = y.abs().mean(dim=(2, 3))
    for frame in range(3):
        top = set(norms[frame].topk(2).indices.tolist())
        assert set((decisions[frame] == KEEP).nonzero().flatten().tolist()) == top
        assert int((decisions[frame] == SKIP).sum()) == 2
    assert torch.equal(record["fused"], y * (decisions == KEEP).view(3, 4, 1, 1))


def test_granularity_groups_channels(resnet18):
    af.patch_model(resnet18, num_segments=2, granularity=16)
    resnet18.train()
    resnet18(torch.randn(4, 3, 64, 64))
    for name, d in af.collect_decisions(resnet18).items():
        groups = d.view(*d.shape[:2], -1, 16)
        assert torch.equal(groups, groups[..., :1].expand_as(groups)), name
        assert resnet18.get_submodule(name).adafuse.policy_net.groups == d.shape[-1] // 16


def test_temperature_is_settable_at_run_time(resnet18):
    af.patch_model(resnet18, num_segments=2)
    assert all(g.tau == pytest.approx(0.67) for _, g in af.iter_gates(resnet18))
    af.set_temperature(resnet18, 2.0)
    assert all(g.tau == 2.0 for _, g in af.iter_gates(resnet18))
    with pytest.raises(af.AdaFuseConfigError, match="tau"):
        af.set_temperature(resnet18, 0.0)


def test_policy_init_follows_the_paper(resnet18):
    af.patch_model(resnet18, num_segments=2)
    net = resnet18.layer4[1].adafuse.policy_net
    assert float(net.fc1.weight.detach().std()) == pytest.approx(0.001, rel=0.05)
    assert float(net.fc2.bias.detach().abs().sum()) == 0.0
    with torch.no_grad():
        net.fc1.weight.fill_(1.0)
    af.reset_policy_parameters(resnet18)
    assert float(net.fc1.weight.detach().std()) == pytest.approx(0.001, rel=0.05)
