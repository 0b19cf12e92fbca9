# jester: 27 classes, 8 segments (TSN sampling 1x1x8), 224 crop, 1 clip at test.
# Expected layout under data_root (user-provided; see docs/train-mmaction2.md):
#   rawframes/...                      one folder of {:05}.jpg frames per video
#   jester_train_list_rawframes.txt  <folder> <num_frames> <label> per line
#   jester_val_list_rawframes.txt
# Same frames format and pipelines as Something V1 (no flip: a flip changes the label).
_base_ = ["sthv1.py"]

data_root = "data/jester"
ann_file_train = data_root + "/jester_train_list_rawframes.txt"
ann_file_val = data_root + "/jester_val_list_rawframes.txt"
ann_file_test = ann_file_val
frames = dict(img=data_root + "/rawframes")

train_dataloader = dict(dataset=dict(ann_file=ann_file_train, data_prefix=frames))
val_dataloader = dict(dataset=dict(ann_file=ann_file_val, data_prefix=frames))
test_dataloader = dict(dataset=dict(ann_file=ann_file_test, data_prefix=frames))
