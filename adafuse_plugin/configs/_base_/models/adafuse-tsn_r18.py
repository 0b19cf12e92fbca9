# AdaFuse-TSN ResNet-18: AdaFuse in every block, one policy net per block.
model = dict(
    type="AdaFuseRecognizer2D",
    backbone=dict(type="ResNet", depth=18, pretrained="torchvision://resnet18", norm_eval=False),
    cls_head=dict(
        type="TSNHead",
        num_classes=174,
        in_channels=512,
        spatial_type="avg",
        consensus=dict(type="AvgConsensus", dim=1),
        dropout_ratio=0.5,
        init_std=0.001,
        average_clips="prob",
    ),
    adafuse=dict(num_segments=8, tau=0.67, hidden_size=1024),
    data_preprocessor=dict(
        type="ActionDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        format_shape="NCHW",
    ),
)
val_evaluator = dict(type="AdaFuseMetric")
test_evaluator = val_evaluator
custom_hooks = [dict(type="AdaFuseHook", tau=0.67)]
