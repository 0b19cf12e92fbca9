# AdaFuse-TSM ResNet-50: the TSM baseline plus AdaFuse in every block, shared policy nets.
_base_ = ["tsm_r50.py"]
model = dict(
    type="AdaFuseRecognizer2D",
    adafuse=dict(num_segments=8, tau=0.67, hidden_quota=196608, share_policy=True),
)
val_evaluator = dict(type="AdaFuseMetric")
test_evaluator = val_evaluator
custom_hooks = [dict(type="AdaFuseHook", tau=0.67)]
