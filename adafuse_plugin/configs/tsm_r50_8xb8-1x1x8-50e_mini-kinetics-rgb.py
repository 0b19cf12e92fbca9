_base_ = [
    "_base_/models/tsm_r50.py",
    "_base_/datasets/mini-kinetics.py",
    "_base_/schedules/sgd_50e.py",
    "_base_/default_runtime.py",
]

model = dict(cls_head=dict(num_classes=200))
optim_wrapper = dict(optimizer=dict(lr=0.02))
