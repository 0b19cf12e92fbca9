_base_ = [
    "_base_/models/tsn_r50.py",
    "_base_/datasets/mini-kinetics.py",
    "_base_/schedules/sgd_50e.py",
    "_base_/default_runtime.py",
]

model = dict(cls_head=dict(num_classes=200))
