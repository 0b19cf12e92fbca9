# mini-kinetics: 200 classes, 8 segments (TSN sampling 1x1x8), 224 crop, 1 clip at test.
# Expected layout under data_root (user-provided; see docs/train-mmaction2.md):
#   videos/...                      the video files
#   mini-kinetics_train_list_videos.txt  <video path> <label> per line
#   mini-kinetics_val_list_videos.txt
# Video files like Something V2; random flip only here (on Something/Jester a flip changes
# the label).
_base_ = ["sthv2.py"]

data_root = "data/mini-kinetics"
ann_file_train = data_root + "/mini-kinetics_train_list_videos.txt"
ann_file_val = data_root + "/mini-kinetics_val_list_videos.txt"
ann_file_test = ann_file_val
videos = dict(video=data_root + "/videos")

train_pipeline = [
    dict(type="DecordInit"),
    dict(type="SampleFrames", clip_len=1, frame_interval=1, num_clips=8),
    dict(type="DecordDecode"),
    dict(type="Resize", scale=(-1, 256)),
    dict(
        type="MultiScaleCrop",
        input_size=224,
        scales=(1, 0.875, 0.75, 0.66),
        random_crop=False,
        max_wh_scale_gap=1,
        num_fixed_crops=13,
    ),
    dict(type="Resize", scale=(224, 224), keep_ratio=False),
    dict(type="Flip", flip_ratio=0.5),
    dict(type="FormatShape", input_format="NCHW"),
    dict(type="PackActionInputs"),
]

train_dataloader = dict(
    dataset=dict(ann_file=ann_file_train, data_prefix=videos, pipeline=train_pipeline)
)
val_dataloader = dict(dataset=dict(ann_file=ann_file_val, data_prefix=videos))
test_dataloader = dict(dataset=dict(ann_file=ann_file_test, data_prefix=videos))
