_base_ = [
    "_base_/models/adafuse-tsn_efficientnet-b0.py",
    "_base_/datasets/mini-kinetics.py",
    "_base_/schedules/sgd_50e.py",
    "_base_/default_runtime.py",
]

model = dict(
    cls_head=dict(num_classes=200),
    adafuse=dict(flops_weight=0.1, flops_mode="real", normalize=False),
)
