# The paper's recipe: SGD momentum 0.9, wd 5e-4, 50 epochs, lr x0.1 at epochs 20 and 40,
# gradient clip 20, total batch 64 (8 GPUs x 8 clips; the paper used 4 x 16).
# TSMOptimWrapperConstructor: 2x lr on biases, no wd on BN, 5x lr on the last fc.
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=50, val_begin=1, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

param_scheduler = [
    dict(type="MultiStepLR", begin=0, end=50, by_epoch=True, milestones=[20, 40], gamma=0.1)
]

optim_wrapper = dict(
    constructor="TSMOptimWrapperConstructor",
    paramwise_cfg=dict(fc_lr5=True),
    optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4),
    clip_grad=dict(max_norm=20, norm_type=2),
)

# lr is for a total batch of 64; `adafuse train --auto-scale-lr` scales it linearly.
auto_scale_lr = dict(enable=False, base_batch_size=64)
