# TSM ResNet-50 baseline (ImageNet-pretrained, shift 1/8), 8 segments.
model = dict(
    type="Recognizer2D",
    backbone=dict(
        type="ResNetTSM",
        depth=50,
        pretrained="torchvision://resnet50",
        num_segments=8,
        shift_div=8,
        norm_eval=False,
    ),
    cls_head=dict(
        type="TSMHead",
        num_classes=174,
        in_channels=2048,
        num_segments=8,
        is_shift=True,
        spatial_type="avg",
        consensus=dict(type="AvgConsensus", dim=1),
        dropout_ratio=0.5,
        init_std=0.001,
        average_clips="prob",
    ),
    data_preprocessor=dict(
        type="ActionDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        format_shape="NCHW",
    ),
)
val_evaluator = dict(type="AccMetric")
test_evaluator = val_evaluator
