"""``adafuse demo`` and what it is made of: the generated temporal-order videos
(:mod:`.videos`), the recipe that trains and tests the models through mmaction2
(:mod:`.run`) and the report's figures (:mod:`.plots`)."""

from .run import (
    QUICK,
    VARIANTS,
    DemoSettings,
    Variant,
    VideoFolder,
    build_config,
    config_dir,
    dataset_root,
    evaluate_checkpoint,
    format_table,
    prepare_data,
    read_video_folder,
    run_demo,
    train_and_test,
)

__all__ = [
    "QUICK",
    "VARIANTS",
    "DemoSettings",
    "Variant",
    "VideoFolder",
    "build_config",
    "config_dir",
    "dataset_root",
    "evaluate_checkpoint",
    "format_table",
    "prepare_data",
    "read_video_folder",
    "run_demo",
    "train_and_test",
]
