# AdaFuse-TSM+Last ResNet-50: TSM everywhere, AdaFuse in the last stage only (hidden 1024).
_base_ = ["adafuse-tsm_r50.py"]
model = dict(
    adafuse=dict(
        _delete_=True,
        num_segments=8,
        tau=0.67,
        stages=(-1,),
        hidden_size=1024,
        share_policy=False,
        tsm_wiring="authors",
    )
)
