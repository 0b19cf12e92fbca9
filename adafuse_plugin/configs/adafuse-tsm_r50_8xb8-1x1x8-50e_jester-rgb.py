_base_ = [
    "_base_/models/adafuse-tsm_r50.py",
    "_base_/datasets/jester.py",
    "_base_/schedules/sgd_50e.py",
    "_base_/default_runtime.py",
]

model = dict(
    cls_head=dict(num_classes=27),
    adafuse=dict(flops_weight=0.1, flops_mode="real", normalize=False),
)
optim_wrapper = dict(optimizer=dict(lr=0.02))
