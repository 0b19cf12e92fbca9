"""AdaFuseRecognizer2D, AdaFuseHook and AdaFuseMetric against mmaction2's own machinery."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mmaction")

from adafuse_plugin import AdaFuseConfigError, AdaFuseInputError, iter_gates  # noqa: E402
from adafuse_plugin.mmaction import AdaFuseHook, AdaFuseMetric  # noqa: E402
from adafuse_plugin.mmaction.recognizer import COUNTS_FIELD  # noqa: E402

PREPROCESSOR = dict(
    type="ActionDataPreprocessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    format_shape="NCHW",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def recognizer(backbone: dict, in_channels: int, segments: int = 2, **adafuse) -> torch.nn.Module:
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope("mmaction")
    return MODELS.build(
        dict(
            type="AdaFuseRecognizer2D",
            backbone=backbone,
            cls_head=dict(
                type="TSNHead", num_classes=5, in_channels=in_channels, average_clips="prob"
            ),
            adafuse=dict(num_segments=segments, hidden_size=16, input_size=32, **adafuse),
            data_preprocessor=PREPROCESSOR,
        )
    )


def batch(clips: int = 2, segments: int = 2, size: int = 32) -> dict:
    from mmaction.structures import ActionDataSample

    samples = [ActionDataSample().set_gt_labels(torch.tensor([i % 5])) for i in range(clips)]
    inputs = [torch.randint(0, 255, (segments, 3, size, size), dtype=torch.uint8)] * clips
    return dict(inputs=inputs, data_samples=samples)


def policy_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "policy_net" in k}


R18 = dict(type="ResNet", depth=18, pretrained=None, norm_eval=False)


def test_init_weights_leaves_policy_networks_alone():
    model = recognizer(R18, 512)
    before = policy_parameters(model)
    model.init_weights()
    after = policy_parameters(model)
    assert before.keys() == after.keys() and before
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, msg=name)
    fc1 = next(v for k, v in after.items() if k.endswith("fc1.weight"))
    assert fc1.std() < 0.01  # the paper's N(0, 0.001), not Kaiming


def test_norm_eval_and_partial_bn_do_not_freeze_policy_networks():
    backbone = dict(R18, norm_eval=True, partial_bn=True, frozen_stages=4)
    model = recognizer(backbone, 512)
    model.train()
    for _, gate in iter_gates(model.backbone):
        assert gate.policy_net.norm.training
        assert all(p.requires_grad for p in gate.policy_net.parameters())
    assert not model.backbone.layer1[0].conv1.bn.training  # the backbone's own BN is frozen


def test_loss_has_flops_term_and_logged_statistics():
    model = recognizer(R18, 512, flops_weight=0.5)
    model.init_weights()
    data = model.data_preprocessor(batch(), True)
    losses = model(**data, mode="loss")
    assert {
        "loss_cls",
        "loss_flops",
        "keep_ratio",
        "reuse_ratio",
        "skip_ratio",
        "gflops_adaptive",
    } <= set(losses)
    total, log_vars = model.parse_losses(losses)
    torch.testing.assert_close(total, losses["loss_cls"] + losses["loss_flops"])
    assert log_vars["keep_ratio"] + log_vars["reuse_ratio"] + log_vars["skip_ratio"] == (
        pytest.approx(1.0)
    )
    total.backward()
    grads = [p.grad for k, p in model.named_parameters() if "policy_net.fc2" in k]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_tsm_optimizer_constructor_covers_policy_parameters():
    from mmaction.registry import MODELS
    from mmengine.optim import build_optim_wrapper

    backbone = dict(
        type="ResNetTSM",
        depth=18,
        num_segments=2,
        pretrained=None,
        pretrained2d=False,
        partial_bn=True,
    )
    model = recognizer(backbone, 512, share_policy=True)
    assert MODELS.get("AdaFuseRecognizer2D") is type(model)
    model.train()
    wrapper = build_optim_wrapper(
        model,
        dict(
            constructor="TSMOptimWrapperConstructor",
            paramwise_cfg=dict(fc_lr5=True),
            optimizer=dict(type="SGD", lr=0.01, momentum=0.9),
        ),
    )
    groups = wrapper.optimizer.param_groups
    optimised = {id(p) for g in groups for p in g["params"]}
    policy = [p for k, p in model.named_parameters() if "policy_net" in k]
    assert policy and all(id(p) in optimised for p in policy)
    lr5 = next(g for g in groups if g["lr"] == pytest.approx(0.05))["params"]
    assert lr5 == [model.cls_head.fc_cls.weight]  # the classifier keeps its 5x lr


def test_strict_pretrained_loader_of_mobilenetv2_tsm(tmp_path):
    from mmaction.models.backbones import MobileNetV2

    path = tmp_path / "mbv2.pth"
    torch.save(MobileNetV2(pretrained=None).state_dict(), path)
    backbone = dict(type="MobileNetV2TSM", num_segments=2, pretrained=str(path), pretrained2d=True)
    model = recognizer(backbone, 1280)
    model.init_weights()  # strict=True load: must not see the AdaFuse modules
    assert len(list(iter_gates(model.backbone))) > 0


def test_timm_and_torchvision_backbones_train_and_predict():
    for backbone, channels in (
        (dict(type="timm.resnet18", pretrained=False), 512),
        (dict(type="torchvision.resnet18"), 512),
    ):
        model = recognizer(backbone, channels)
        model.init_weights()
        data = model.data_preprocessor(batch(), True)
        assert torch.isfinite(model(**data, mode="loss")["loss_flops"])
        model.eval()
        with torch.no_grad():
            predictions = model(**model.data_preprocessor(batch(), False), mode="predict")
        assert predictions[0].metainfo[COUNTS_FIELD].clips == 1


def test_metric_accumulates_the_whole_split():
    model = recognizer(R18, 512).eval()
    metric = AdaFuseMetric()
    outputs = []
    with torch.no_grad():
        for _ in range(3):
            samples = model(**model.data_preprocessor(batch(clips=3), False), mode="predict")
            outputs += samples
            metric.process(None, [s.to_dict() for s in samples])
    result = metric.compute_metrics(metric.results)
    assert {"top1", "top5", "gflops_dense", "gflops_real", "gflops_upb", "layer1.0/skip"} <= set(
        result
    )
    skipped = sum(s.metainfo[COUNTS_FIELD].blocks["layer1.0"]["skip"] for s in outputs)
    elements = sum(s.metainfo[COUNTS_FIELD].blocks["layer1.0"]["elements"] for s in outputs)
    assert result["layer1.0/skip"] == pytest.approx(skipped / elements)
    assert result["gflops_real"] <= result["gflops_upb"] + 1e-9


def test_hook_schedules_and_validation():
    assert AdaFuseHook().temperature(5, 10) == 0.67
    hook = AdaFuseHook(tau=1.0, tau_end=0.1, schedule="exp")
    assert hook.temperature(0, 11) == pytest.approx(1.0)
    assert hook.temperature(10, 11) == pytest.approx(0.1)
    assert AdaFuseHook(tau=1.0, tau_end=0.5, schedule="linear").temperature(5, 11) == 0.75
    with pytest.raises(AdaFuseConfigError, match="needs tau_end"):
        AdaFuseHook(schedule="linear")
    with pytest.raises(AdaFuseConfigError, match="schedule must be one of"):
        AdaFuseHook(schedule="cosine")


def test_hook_ramps_the_flops_weight_over_its_warmup():
    from types import SimpleNamespace

    from mmengine.logging import MessageHub

    model = recognizer(R18, 512, flops_weight=0.2)
    hook = AdaFuseHook(flops_warmup=0.5)
    hub = MessageHub.get_instance("adafuse-hook-warmup-test")
    weights = []
    for iteration in (0, 25, 50, 99):
        runner = SimpleNamespace(model=model, iter=iteration, max_iters=100, message_hub=hub)
        hook.before_train_iter(runner, iteration)
        weights.append(model.flops_loss.weight)
    assert weights == pytest.approx([0.0, 0.1, 0.2, 0.2])
    assert hub.get_scalar("train/flops_weight").current() == pytest.approx(0.2)
    assert AdaFuseHook().flops_weight_factor(0, 100) == 1.0  # the paper: no warm-up
    with pytest.raises(AdaFuseConfigError, match="flops_warmup must be in"):
        AdaFuseHook(flops_warmup=1.5)


def test_clips_of_the_wrong_length_are_an_error_wherever_the_model_runs():
    """num_segments=4 with 6- or 8-frame clips: fusion would cross videos or split one."""
    model = recognizer(R18, 512, segments=4)
    for frames in (6, 8):
        data = model.data_preprocessor(batch(clips=2, segments=frames), True)
        with pytest.raises(AdaFuseInputError, match=f"{frames} frames per sample, but adafuse"):
            model(**data, mode="loss")
    model.eval()
    data = model.data_preprocessor(batch(clips=2, segments=6), False)
    with pytest.raises(AdaFuseInputError, match="or a multiple, one per test view"):
        model(**data, mode="predict")
    data = model.data_preprocessor(batch(clips=2, segments=8), False)
    assert len(model(**data, mode="predict")) == 2  # two test views of 4 frames each


def test_within_pair_accuracy_compares_each_class_with_its_partner():
    from adafuse_plugin.mmaction.metric import per_pair_accuracy, within_pair_accuracy

    scores = [
        [0.1, 0.9, 0.0, 0.0],  # label 1 beats its partner 0: hit
        [0.0, 0.5, 0.2, 0.3],  # label 2 loses to its partner 3 (top-1 is class 1): miss
        [0.0, 0.6, 0.1, 0.3],  # label 3 beats 2 although top-1 is class 1: hit
    ]
    assert within_pair_accuracy(scores, [1, 2, 3]) == pytest.approx(2 / 3)
    # Per pair: pair 0 (classes 0, 1) has the first clip (a hit), pair 1 the other two.
    assert per_pair_accuracy(scores, [1, 2, 3]) == pytest.approx({0: 1.0, 1: 0.5})
    with pytest.raises(AdaFuseConfigError, match="no clips"):
        within_pair_accuracy([], [])


def test_multi_view_tsm_test_is_the_mean_of_its_views():
    """mmaction2's TSM protocol (twice_sample x ThreeCrop: 6 views of T frames, view-major):
    the gates fuse each view on its own and the head averages the views' probabilities, so
    the 6-view score equals the mean of the 6 views predicted one by one; the metric counts
    FLOPs per view and per video."""
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope("mmaction")
    torch.manual_seed(0)
    model = MODELS.build(
        dict(
            type="AdaFuseRecognizer2D",
            backbone=dict(
                type="ResNetTSM", depth=18, pretrained=None, num_segments=4, norm_eval=False
            ),
            cls_head=dict(
                type="TSMHead",
                num_classes=5,
                in_channels=512,
                num_segments=4,
                average_clips="prob",
            ),
            adafuse=dict(num_segments=4, hidden_size=16, input_size=32),
            data_preprocessor=PREPROCESSOR,
        )
    ).eval()
    for _, gate in iter_gates(model.backbone):
        torch.nn.init.normal_(gate.policy_net.fc2.weight, 0.0, 0.5)  # every action taken
    video = torch.randint(0, 255, (24, 3, 32, 32), dtype=torch.uint8)

    def predict(frames: torch.Tensor) -> list:
        from mmaction.structures import ActionDataSample

        sample = ActionDataSample().set_gt_labels(torch.tensor([1]))
        data = dict(inputs=[frames], data_samples=[sample])
        with torch.no_grad():
            return model(**model.data_preprocessor(data, False), mode="predict")

    whole = predict(video)
    views = [predict(video[4 * v : 4 * (v + 1)])[0].pred_scores.item for v in range(6)]
    torch.testing.assert_close(whole[0].pred_scores.item, torch.stack(views).mean(0))
    metric = AdaFuseMetric()
    metric.process(None, [s.to_dict() for s in whole])
    result = metric.compute_metrics(metric.results)
    assert result["views"] == 6
    assert result["gflops_real_video"] == pytest.approx(6 * result["gflops_real"])


def test_test_views_are_counted_and_pseudo_clips_refused():
    from adafuse_plugin.mmaction.runner import views_per_video

    def sampling(**kwargs) -> list:
        return [dict(type="SampleFrames", clip_len=1, frame_interval=1, test_mode=True, **kwargs)]

    crop = [dict(type="ThreeCrop", crop_size=224)]
    assert views_per_video(sampling(num_clips=8), 8) == 1
    assert views_per_video(sampling(num_clips=8, twice_sample=True) + crop, 8) == 6
    assert views_per_video([dict(type="TenCrop", crop_size=224)] + sampling(num_clips=8), 8) == 1
    assert views_per_video([dict(type="SampleFrames", clip_len=8, num_clips=3)], 8) == 3
    dense = dict(type="DenseSampleFrames", clip_len=1, num_clips=8, test_mode=True)
    assert views_per_video([dense], 8) == 10
    with pytest.raises(AdaFuseConfigError, match="num_clips=25 one-frame segments.*num_segments=5"):
        views_per_video(sampling(num_clips=25), 5)
    with pytest.raises(AdaFuseConfigError, match="clip_len=4 frames.*num_segments=8"):
        views_per_video([dict(type="SampleFrames", clip_len=4, num_clips=2)], 8)
    with pytest.raises(AdaFuseConfigError, match="UniformSample is not a sampling"):
        views_per_video([dict(type="UniformSample", clip_len=8)], 8)
