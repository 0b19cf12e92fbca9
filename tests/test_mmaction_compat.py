"""Tests for adafuse_plugin.mmaction.compat: each fix is needed on this stack, and works."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

pytest.importorskip("mmaction")

import torch  # noqa: E402

from adafuse_plugin import AdaFuseConfigError  # noqa: E402
from adafuse_plugin.mmaction import apply_compat_fixes, compat  # noqa: E402

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
TSN_R50_CFG = "recognition/tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_kinetics400-rgb.py"
BSN_PEM_CFG = "localization/bsn/bsn_pem_1xb16-400x100-20e_activitynet-feature.py"


@pytest.fixture(autouse=True)
def _no_unsafe_opt_in(monkeypatch):
    """No test may pass because someone's shell allows unsafe loading."""
    monkeypatch.delenv(compat.ALLOW_UNSAFE_ENV, raising=False)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mmaction_scope():
    apply_compat_fixes()
    from mmaction.utils import register_all_modules

    register_all_modules(init_default_scope=True)


class _TouchOnUnpickle:
    """A 'malicious' object: unpickling it runs ``Path(marker).touch()``."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _GetattrOnUnpickle:
    """Unpickling calls ``getattr(HistoryBuffer, 'update')``: only allow-listed globals."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer

        return (getattr, (HistoryBuffer, "update"))


def _recognizer_cfg(backbone: dict, in_channels: int) -> dict:
    return dict(
        type="Recognizer2D",
        backbone=backbone,
        cls_head=dict(type="TSNHead", num_classes=3, in_channels=in_channels, average_clips="prob"),
        data_preprocessor=dict(
            type="ActionDataPreprocessor", mean=MEAN, std=STD, format_shape="NCHW"
        ),
    )


def _samples(n: int, num_frames: int):
    from mmaction.structures import ActionDataSample

    gen = torch.Generator().manual_seed(0)
    inputs = [
        torch.randint(0, 255, (num_frames, 3, 32, 32), generator=gen, dtype=torch.uint8)
        for _ in range(n)
    ]
    samples = [ActionDataSample().set_gt_labels(torch.tensor(i % 3)) for i in range(n)]
    return inputs, samples


class _TinyVideos(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        from mmaction.structures import ActionDataSample

        gen = torch.Generator().manual_seed(index)
        frames = torch.randint(0, 255, (2, 3, 32, 32), generator=gen, dtype=torch.uint8)
        sample = ActionDataSample().set_gt_labels(torch.tensor(index % 3))
        return dict(inputs=frames, data_samples=sample)


def _make_runner(work_dir: Path, name: str, max_epochs: int, **kwargs):
    from mmengine.runner import Runner

    model = _recognizer_cfg(dict(type="ResNet", depth=18, pretrained=None), 512)
    return Runner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=name,
        default_scope="mmaction",
        train_dataloader=dict(
            dataset=_TinyVideos(),
            batch_size=2,
            num_workers=0,
            sampler=dict(type="DefaultSampler", shuffle=False),
        ),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
        param_scheduler=dict(type="MultiStepLR", milestones=[1], by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1)),
        log_level="WARNING",
        **kwargs,
    )


@pytest.fixture(scope="module")
def runner_checkpoint(tmp_path_factory, mmaction_scope) -> Path:
    """A checkpoint written by a real mmengine Runner training an mmaction2 TSN-R18."""
    work_dir = tmp_path_factory.mktemp("runner")
    _make_runner(work_dir, "adafuse_compat_train", max_epochs=1).train()
    path = work_dir / "epoch_1.pth"
    assert path.is_file()
    return path


@pytest.fixture
def malicious_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    state = {"state_dict": {"w": torch.zeros(2)}, "meta": {"epoch": 1}}
    torch.save({**state, "extra": _TouchOnUnpickle(marker)}, path)
    return path, marker


# --------------------------------------------------------------------------------------
# The unpatched stack is broken (each fix is needed)
# --------------------------------------------------------------------------------------

_UNPATCHED_PROBE = textwrap.dedent(
    """
    import importlib.util, json, os, pickle, sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    import mmaction
    from mmengine.config import utils as config_utils
    from mmengine.runner import checkpoint as ckpt
    from mmengine.utils import is_installed

    runner_ckpt, evil_url, model_dir, marker = sys.argv[1:5]
    out = {}
    def probe(name, func):
        try:
            func()
            out[name] = "ok"
        except Exception as err:
            out[name] = f"{type(err).__name__}: {err}"

    out["has_pkg_resources"] = importlib.util.find_spec("pkg_resources") is not None
    probe("is_installed", lambda: is_installed("mmaction2"))
    probe("metafile", lambda: config_utils._get_cfg_metainfo(
        os.path.dirname(mmaction.__file__), "x.py"))
    probe("resume_load", lambda: ckpt._load_checkpoint(runner_ckpt, map_location="cpu"))
    probe("url_load", lambda: ckpt.load_url(evil_url, model_dir=model_dir, progress=False))
    out["url_payload_ran"] = os.path.exists(marker)

    from mmaction.models.backbones import MobileNetV2TSM
    probe("mbv2tsm_init", lambda: MobileNetV2TSM(pretrained=None).init_weights())
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_unpatched_stack_needs_every_fix(runner_checkpoint, malicious_checkpoint, tmp_path):
    """In a fresh interpreter without the fixes, each problem actually occurs."""
    evil_path, marker = malicious_checkpoint
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _UNPATCHED_PROBE,
            str(runner_checkpoint),
            evil_path.resolve().as_uri(),
            str(tmp_path / "hub"),
            str(marker),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    if not out["has_pkg_resources"]:  # setuptools >= 82
        assert out["is_installed"].startswith("ModuleNotFoundError"), out
    assert out["metafile"].startswith("AttributeError") and "partition" in out["metafile"], out
    assert out["resume_load"].startswith("UnpicklingError"), out
    assert "HistoryBuffer" in out["resume_load"], out
    # mmengine's URL loaders unpickle downloads fully: the payload ran.
    assert out["url_load"] == "ok" and out["url_payload_ran"], out
    assert out["mbv2tsm_init"].startswith("TypeError"), out


def test_plain_weights_only_load_rejects_mmengine_checkpoint(runner_checkpoint):
    found = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(runner_checkpoint)))
    assert "mmengine.logging.history_buffer.HistoryBuffer" in found
    assert "builtins.getattr" in found
    # Our allow-list is scoped: plain torch.load is as strict as before.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(runner_checkpoint, weights_only=True)


# --------------------------------------------------------------------------------------
# apply_compat_fixes: imports, idempotence
# --------------------------------------------------------------------------------------


def _patched_objects():
    import mmengine.config.config
    import mmengine.hub.hub
    import mmengine.utils
    from mmaction.models.backbones import MobileNetV2TSM, ResNetTSM
    from mmengine.config import utils as config_utils
    from mmengine.runner import checkpoint as ckpt

    return {
        "utils.is_installed": mmengine.utils.is_installed,
        "config.get_installed_path": mmengine.config.config.get_installed_path,
        "hub.get_installed_path": mmengine.hub.hub.get_installed_path,
        "hub._get_cfg_metainfo": mmengine.hub.hub._get_cfg_metainfo,
        "config_utils._get_cfg_metainfo": config_utils._get_cfg_metainfo,
        "local scheme": ckpt.CheckpointLoader._schemes[""],
        "load_url": ckpt.load_url,
        "load_checkpoint": ckpt.CheckpointLoader.__dict__["load_checkpoint"].__func__,
        "ResNetTSM.init_weights": ResNetTSM.__dict__["init_weights"],
        "MobileNetV2TSM.init_weights": MobileNetV2TSM.__dict__["init_weights"],
    }


def test_apply_compat_fixes_is_idempotent(mmaction_scope, runner_checkpoint):
    first = _patched_objects()
    assert all(compat._is_marked(obj) for obj in first.values()), first
    apply_compat_fixes()
    compat.fix_mmengine_checkpoint_loading()
    compat.fix_mmengine_pkg_resources()
    assert _patched_objects() == first
    # Still one wrapper deep: loading works and leaves no allow-list behind.
    from mmengine.runner.checkpoint import _load_checkpoint

    before = set(torch.serialization.get_safe_globals())
    assert "state_dict" in _load_checkpoint(str(runner_checkpoint), map_location="cpu")
    assert set(torch.serialization.get_safe_globals()) == before


@pytest.mark.parametrize(
    ("backbone", "in_channels", "num_frames"),
    [
        (dict(type="ResNet", depth=18, pretrained=None), 512, 3),
        (
            dict(type="ResNetTSM", depth=50, pretrained=None, pretrained2d=False, num_segments=8),
            2048,
            8,
        ),
        (dict(type="TANet", depth=50, num_segments=8, pretrained=None), 2048, 8),
        # Default pretrained2d=True and no checkpoint: crashed before the fix.
        (dict(type="MobileNetV2TSM", pretrained=None, num_segments=8), 1280, 8),
    ],
    ids=["tsn-r18", "tsm-r50", "tanet-r50", "mobilenetv2-tsm"],
)
@pytest.mark.slow
def test_recognizer2d_builds_and_trains(mmaction_scope, backbone, in_channels, num_frames):
    from mmaction.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(_recognizer_cfg(backbone, in_channels))
    model.init_weights()
    inputs, samples = _samples(2, num_frames)

    model.train()
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), training=True)
    assert data["inputs"].shape == (2, num_frames, 3, 32, 32)
    losses = model(**data, mode="loss")
    losses["loss_cls"].backward()
    assert torch.isfinite(losses["loss_cls"])

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), training=False)
        preds = model(**data, mode="predict")
    assert [p.pred_scores.item.shape for p in preds] == [(3,), (3,)]


# --------------------------------------------------------------------------------------
# (a) pkg_resources and (b) list-valued metafile Config
# --------------------------------------------------------------------------------------


def test_package_lookup_without_pkg_resources(mmaction_scope):
    import mmaction
    import mmengine.utils
    from mmengine.utils import package_utils

    assert mmengine.utils.is_installed("mmaction2")
    assert mmengine.utils.is_installed("mmaction")  # module name, via find_spec
    assert not mmengine.utils.is_installed("adafuse-no-such-package")
    assert package_utils.package2module("mmaction2") == "mmaction"
    mmaction_dir = os.path.dirname(mmaction.__file__)
    assert os.path.samefile(mmengine.utils.get_installed_path("mmaction2"), mmaction_dir)
    with pytest.raises(ImportError):
        mmengine.utils.get_installed_path("adafuse-no-such-package")


def test_metafile_with_config_list(mmaction_scope):
    import mmaction
    from mmengine.config import utils as config_utils

    root = os.path.dirname(mmaction.__file__)
    info = config_utils._get_cfg_metainfo(root, BSN_PEM_CFG)
    assert info["Config"] == f"configs/{BSN_PEM_CFG}"
    info = config_utils._get_cfg_metainfo(root, TSN_R50_CFG)
    assert info["Config"] == f"configs/{TSN_R50_CFG}"
    with pytest.raises(ValueError):
        config_utils._get_cfg_metainfo(root, "recognition/tsn/no_such_config.py")


def test_mmaction_base_config_inheritance(mmaction_scope, tmp_path):
    from mmengine.config import Config

    cfg_file = tmp_path / "child.py"
    cfg_file.write_text(
        f"_base_ = 'mmaction::{TSN_R50_CFG}'\nmodel = dict(cls_head=dict(num_classes=7))\n"
    )
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.model.type == "Recognizer2D"
    assert cfg.model.backbone.type == "ResNet"
    assert cfg.model.cls_head.num_classes == 7


# --------------------------------------------------------------------------------------
# (c) checkpoint loading
# --------------------------------------------------------------------------------------


def test_safe_load_runner_checkpoint(runner_checkpoint):
    from mmengine.logging import HistoryBuffer

    before = set(torch.serialization.get_safe_globals())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unsafe fallback warns: must not happen
        ckpt = compat.safe_load_checkpoint(runner_checkpoint)
    assert set(torch.serialization.get_safe_globals()) == before
    assert set(ckpt) >= {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"}
    loss_history = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(loss_history, HistoryBuffer)
    assert loss_history.data[0].shape == (2,)
    assert float(loss_history.mean()) == pytest.approx(float(loss_history.data[0].mean()))
    # File-like objects work too.
    with open(runner_checkpoint, "rb") as handle:
        again = compat.safe_load_checkpoint(handle)
    assert torch.equal(
        again["state_dict"]["cls_head.fc_cls.weight"], ckpt["state_dict"]["cls_head.fc_cls.weight"]
    )


def test_allow_list_covers_numpy_1_and_2_names():
    names = {e[1] for e in compat.mmengine_checkpoint_safe_globals() if isinstance(e, tuple)}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        assert {f"{module}._reconstruct", f"{module}.scalar"} <= names
    assert "builtins.getattr" in names


def test_malicious_checkpoint_rejected_by_default(malicious_checkpoint, monkeypatch):
    path, marker = malicious_checkpoint
    with pytest.raises(compat.UnsafeCheckpointError, match=compat.ALLOW_UNSAFE_ENV):
        compat.safe_load_checkpoint(path)
    assert not marker.exists()
    # torch's global escape hatch does not switch our loader to unsafe mode.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(compat.UnsafeCheckpointError):
        compat.safe_load_checkpoint(path)
    assert not marker.exists()


def test_getattr_is_restricted(tmp_path):
    path = tmp_path / "getattr.pth"
    torch.save({"x": _GetattrOnUnpickle()}, path)
    with pytest.raises(compat.UnsafeCheckpointError):
        compat.safe_load_checkpoint(path)


def test_malicious_checkpoint_loads_only_on_explicit_opt_in(malicious_checkpoint, monkeypatch):
    path, marker = malicious_checkpoint
    with pytest.warns(UserWarning, match="full unpickling"):
        ckpt = compat.safe_load_checkpoint(path, allow_unsafe=True)
    assert marker.exists() and ckpt["meta"] == {"epoch": 1}

    marker.unlink()
    monkeypatch.setenv(compat.ALLOW_UNSAFE_ENV, "0")
    with pytest.raises(compat.UnsafeCheckpointError):
        compat.safe_load_checkpoint(path)
    assert not marker.exists()
    monkeypatch.setenv(compat.ALLOW_UNSAFE_ENV, "1")
    with pytest.warns(UserWarning, match="full unpickling"):
        compat.safe_load_checkpoint(path)
    assert marker.exists()


def test_mmengine_loaders_use_safe_loading(mmaction_scope, runner_checkpoint, malicious_checkpoint):
    from mmengine.runner import checkpoint as ckpt

    path, marker = malicious_checkpoint
    with pytest.raises(compat.UnsafeCheckpointError):
        ckpt._load_checkpoint(str(path), map_location="cpu")
    with pytest.raises(compat.UnsafeCheckpointError):
        ckpt.load_url(path.resolve().as_uri(), model_dir=str(path.parent / "hub"))
    assert not marker.exists()

    loaded = ckpt.load_url(
        runner_checkpoint.resolve().as_uri(), model_dir=str(path.parent / "hub"), progress=False
    )
    assert "message_hub" in loaded

    from mmaction.registry import MODELS

    model = MODELS.build(_recognizer_cfg(dict(type="ResNet", depth=18, pretrained=None), 512))
    ckpt.load_checkpoint(model, str(runner_checkpoint), map_location="cpu", strict=True)
    saved = torch.load(runner_checkpoint, weights_only=False)["state_dict"]
    assert torch.equal(model.cls_head.fc_cls.weight, saved["cls_head.fc_cls.weight"])


def test_runner_resume_without_force_no_weights_only(runner_checkpoint, tmp_path):
    from mmengine.hooks import Hook

    class CountIters(Hook):
        def __init__(self) -> None:
            self.iters = 0

        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            self.iters += 1

    counter = CountIters()
    checkpoint = tmp_path / "epoch_1.pth"
    shutil.copy(runner_checkpoint, checkpoint)
    runner = _make_runner(
        tmp_path,
        "adafuse_compat_resume",
        max_epochs=2,
        load_from=str(checkpoint),
        resume=True,
        custom_hooks=[counter],
    )
    runner.train()
    assert counter.iters == 2  # only epoch 2 ran: epoch 1 came from the checkpoint
    assert (runner.epoch, runner.iter) == (2, 4)
    assert runner.message_hub.get_scalar("train/loss").data[0].shape == (4,)
    assert (tmp_path / "epoch_2.pth").is_file()


def test_work_dir_config_is_parsed_not_executed(tmp_path):
    """A crafted config dump in a work dir runs no code unless the caller opts in."""
    from adafuse_plugin.mmaction.runner import load_config_dump
    from adafuse_plugin.mmaction.streaming import load_work_dir

    marker = tmp_path / "pwned"
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    (work_dir / "config.py").write_text(
        f"model = dict(type='Recognizer2D', depth=-50, tags=['a', ('b', 1.5)], on=True)\n"
        f"__import__('pathlib').Path({str(marker)!r}).touch()\n"
    )
    (work_dir / "epoch_1.pth").write_bytes(b"")
    with pytest.raises(AdaFuseConfigError, match="only NAME = value assignments"):
        load_work_dir(work_dir)
    (work_dir / "config.py").write_text(
        f"x = __import__('pathlib').Path({str(marker)!r}).touch()\n"
    )
    with pytest.raises(AdaFuseConfigError, match="is not a plain value"):
        load_work_dir(work_dir)
    assert not marker.exists()
    load_config_dump(work_dir / "config.py", allow_unsafe=True)  # the explicit opt-in
    assert marker.exists()
    plain = tmp_path / "plain.py"
    plain.write_text("model = dict(type='R', depth=-50, tags=['a', ('b', 1.5)], on=True, n=None)\n")
    cfg = load_config_dump(plain)
    assert cfg.model.to_dict() == dict(type="R", depth=-50, tags=["a", ("b", 1.5)], on=True, n=None)


def test_mmengine_dumps_with_non_identifier_keys_load(tmp_path):
    """mmengine writes ``dict({'.key.': ...})`` for keys that are no identifiers (e.g.
    ``paramwise_cfg.custom_keys``); the safe loader reads them and still refuses code."""
    from mmengine.config import Config

    from adafuse_plugin.mmaction.runner import load_config_dump

    options = {".adafuse.": dict(lr_mult=10.0), "backbone.layer1": dict(decay_mult=0.0)}
    optim_wrapper = dict(paramwise_cfg=dict(custom_keys=options), clip_grad=None)
    dump = tmp_path / "dump.py"
    Config(dict(optim_wrapper=optim_wrapper)).dump(dump)
    assert "dict({" in dump.read_text()  # mmengine's own form, not written by hand
    assert load_config_dump(dump).optim_wrapper.to_dict() == optim_wrapper
    dump.write_text("x = dict(__import__('os').environ)\n")
    with pytest.raises(AdaFuseConfigError, match="is not a plain value"):
        load_config_dump(dump)


def test_unsafe_opt_in_ends_with_its_command(monkeypatch):
    """`--allow-unsafe-checkpoints` holds while its command runs, not afterwards."""
    from adafuse_plugin import cli
    from adafuse_plugin.mmaction.compat import unsafe_checkpoints_allowed

    monkeypatch.delenv("ADAFUSE_ALLOW_UNSAFE_CHECKPOINTS", raising=False)
    seen = []

    class Runner:
        def test(self):
            seen.append(unsafe_checkpoints_allowed())
            return {}

    monkeypatch.setattr(cli, "_runner", lambda args: Runner())
    assert cli.main(["test", "config.py", "ckpt.pth", "--allow-unsafe-checkpoints"]) == 0
    assert seen == [True] and not unsafe_checkpoints_allowed()
    assert cli.main(["test", "config.py", "ckpt.pth"]) == 0
    assert seen == [True, False]
