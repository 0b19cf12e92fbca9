# Small CPU config: AdaFuse-TSM ResNet-18 from scratch on the generated videos of
# adafuse_plugin.demo.videos (10 classes, 64x64). Used by the tests and as a smoke run:
#   python -c "from adafuse_plugin.demo.videos import generate_dataset as g; \
#              g('data/adafuse_synthetic', size='small')"
#   OMP_NUM_THREADS=1 adafuse train mmaction_configs/adafuse-tsm_r18_1xb2-1x1x4-2e_synthetic-rgb.py
# No flip: the generated classes come in mirrored pairs (moving_left / moving_right).
_base_ = ["_base_/schedules/sgd_50e.py", "_base_/default_runtime.py"]

num_segments = 4
model = dict(
    type="AdaFuseRecognizer2D",
    backbone=dict(
        type="ResNetTSM",
        depth=18,
        pretrained=None,
        pretrained2d=False,
        num_segments=num_segments,
        shift_div=8,
        norm_eval=False,
    ),
    cls_head=dict(
        type="TSMHead",
        num_classes=10,
        in_channels=512,
        num_segments=num_segments,
        is_shift=True,
        spatial_type="avg",
        consensus=dict(type="AvgConsensus", dim=1),
        dropout_ratio=0.2,
        init_std=0.001,
        average_clips="prob",
    ),
    adafuse=dict(
        num_segments=num_segments,
        tau=0.67,
        hidden_size=32,
        flops_weight=0.1,
        flops_mode="real",
        normalize=True,
        input_size=64,
    ),
    data_preprocessor=dict(
        type="ActionDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        format_shape="NCHW",
    ),
)
val_evaluator = dict(type="AdaFuseMetric", paired_classes=True)
test_evaluator = val_evaluator
custom_hooks = [dict(type="AdaFuseHook", tau=0.67)]

dataset_type = "VideoDataset"
data_root = "data/adafuse_synthetic"
train_pipeline = [
    dict(type="DecordInit"),
    dict(type="SampleFrames", clip_len=1, frame_interval=1, num_clips=num_segments),
    dict(type="DecordDecode"),
    dict(type="Resize", scale=(64, 64), keep_ratio=False),
    dict(type="FormatShape", input_format="NCHW"),
    dict(type="PackActionInputs"),
]
val_pipeline = [
    dict(type="DecordInit"),
    dict(type="SampleFrames", clip_len=1, frame_interval=1, num_clips=num_segments, test_mode=True),
    dict(type="DecordDecode"),
    dict(type="Resize", scale=(64, 64), keep_ratio=False),
    dict(type="FormatShape", input_format="NCHW"),
    dict(type="PackActionInputs"),
]
test_pipeline = val_pipeline  # read by mmaction2's inference APIs (video files)
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        ann_file=data_root + "/train_list.txt",
        data_prefix=dict(video=data_root),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        ann_file=data_root + "/val_list.txt",
        data_prefix=dict(video=data_root),
        pipeline=val_pipeline,
        test_mode=True,
    ),
)
test_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        ann_file=data_root + "/test_list.txt",
        data_prefix=dict(video=data_root),
        pipeline=val_pipeline,
        test_mode=True,
    ),
)

train_cfg = dict(max_epochs=2)
param_scheduler = [dict(type="MultiStepLR", begin=0, end=2, by_epoch=True, milestones=[1])]
optim_wrapper = dict(optimizer=dict(lr=0.002))
auto_scale_lr = dict(enable=False, base_batch_size=2)
default_hooks = dict(logger=dict(interval=1))
