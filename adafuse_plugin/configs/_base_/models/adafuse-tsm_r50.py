# AdaFuse-TSM ResNet-50: the TSM baseline plus AdaFuse in every block, shared policy nets
# (Linear layers shared between blocks of equal shape, one BatchNorm1d per block), wired
# like the authors' networks: the shifted block input feeds conv1, the policy and the
# downsample shortcut (tsm_wiring='mmaction2' keeps mmaction2's own TSM block instead).
_base_ = ["tsm_r50.py"]
model = dict(
    type="AdaFuseRecognizer2D",
    adafuse=dict(
        num_segments=8, tau=0.67, hidden_quota=196608, share_policy=True, tsm_wiring="authors"
    ),
)
val_evaluator = dict(type="AdaFuseMetric")
test_evaluator = val_evaluator
custom_hooks = [dict(type="AdaFuseHook", tau=0.67)]
