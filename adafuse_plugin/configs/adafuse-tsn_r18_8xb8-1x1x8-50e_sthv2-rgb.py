_base_ = [
    "_base_/models/adafuse-tsn_r18.py",
    "_base_/datasets/sthv2.py",
    "_base_/schedules/sgd_50e.py",
    "_base_/default_runtime.py",
]

model = dict(
    cls_head=dict(num_classes=174),
    adafuse=dict(flops_weight=0.075, flops_mode="real", normalize=False),
)
