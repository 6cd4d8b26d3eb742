"""Reliability: every bad input fails fast with a clear message and writes nothing; properties of the grid;
SIGKILL during a map or a training run, then resume; disk full; paths never leave the output root."""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cemap import results
from cemap.config import compose_config
from cemap.grid import ROI, BlockGrid, GeometryError
from cemap.imageio import read_image
from cemap.run import compute
from tests.conftest import REPO


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


@functools.cache
def _bomb_png() -> bytes:
    """400 M pixels in 48 kB: over Pillow's decompression-bomb limit."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    good = _png(tmp_path / "good.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    data = Path(good).read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.png").write_text("this is not an image")
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    _png(tmp_path / "transparent.png", rgba)
    (tmp_path / "empty_bank").mkdir()
    np.savez(tmp_path / "badbank.npz", patches=np.zeros((4, 8, 6, 3), np.uint8))
    header = io.BytesIO()  # a header declaring 143 GiB in a file of a few hundred bytes
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (2_000_000, 160, 160, 3)})
    with zipfile.ZipFile(tmp_path / "hugebank.npz", "w") as z:
        z.writestr("patches.npy", header.getvalue() + bytes(100))
    (tmp_path / "bomb.png").write_bytes(_bomb_png())
    torch.manual_seed(0)
    from cemap.models import DnCNN

    torch.save(DnCNN(features=16, depth=3).state_dict(), tmp_path / "wrong_arch.pth")
    return {"good": good, "dir": str(tmp_path)}


BASE = ["model=dncnn_tiny", "roi.x=8", "roi.y=8", "roi.size=8", "cem.estimator=fixed", "cem.n_samples=1",
        "device=cpu", "progress=false"]

BAD_INPUTS = [
    # (overrides with {dir} / {good}, error type name, message fragment)
    (["image={dir}/missing.png"], "ImageError", "does not exist"),
    (["image={dir}/truncated.png"], "ImageError", "cannot be read"),
    (["image={dir}/notes.png"], "ImageError", "cannot be read"),
    (["image={dir}/transparent.png"], "ImageError", "transparent"),
    (["image={dir}"], "ImageError", "is not a file"),
    (["image={good}", "cem.block_size=64"], "GeometryError", "larger than the 32x32 image"),
    (["image={good}", "cem.block_size=0"], "GeometryError", "block_size=0"),
    (["image={good}", "roi.x=30"], "GeometryError", "outside the 32x32"),
    (["image={good}", "roi.size=0"], "GeometryError", "roi.size=0"),
    (["image={good}", "roi.size=40", "roi.x=0", "roi.y=0"], "GeometryError", "outside the 32x32"),
    (["image={good}", "task=sr_x4", "model=srresnet_tiny", "cem.block_size=6"], "GeometryError", "multiple of the task scale 4"),
    (["image={good}", "task=sr_x4"], "ValueError", "has scale 1 but task sr needs scale 4"),
    (["image={good}", "patches.source=folder", "patches.path={dir}/empty_bank"], "PatchBankError", "no images"),
    (["image={good}", "patches.source=npz", "patches.path={dir}/badbank.npz"], "PatchBankError", "(N, P, P, 3)"),
    (["image={good}", "patches.source=npz", "patches.path={dir}/nobank.npz"], "PatchBankError", "does not exist"),
    (["image={good}", "ckpt={dir}/wrong_arch.pth"], "CheckpointError", "does not fit DnCNN"),
    (["image={good}", "ckpt={dir}/missing.pth"], "CheckpointError", "does not exist"),
    (["image={good}", "cem.estimator=magic"], "ValueError", "unknown estimator 'magic'"),
    (["image={good}", "cem.metric=lpips"], "ValueError", "unknown metric 'lpips'"),
    (["image={good}", "cem.shard=3/3"], "ValueError", "cem.shard='3/3'"),
    (["image={good}", "trained.schedule=tiny_dncnn"], "MissingTrainedModel", "train it first: python -m cemap.train"),
    (["image={dir}/bomb.png"], "ImageError", "too large to open safely"),
    (["image={good}", "patches.source=npz", "patches.path={dir}/hugebank.npz"], "PatchBankError", "143 GiB"),
    (["image={good}", "cem.tol=nan"], "SettingError", "cem.tol=nan: must be a finite number"),
    (["image={good}", "cem.tol=-0.01"], "SettingError", "cem.tol=-0.01: must be >= 0.0"),
    (["image={good}", "cem.z=nan"], "SettingError", "cem.z=nan: must be a finite number"),
    (["image={good}", "cem.z=-1"], "SettingError", "cem.z=-1.0: must be >= 0.0"),
    (["image={good}", "cem.locality.atol=nan"], "SettingError", "cem.locality.atol=nan"),
    (["image={good}", "cem.estimator=adaptive", "cem.adaptive.target_se=nan"], "SettingError", "cem.adaptive.target_se=nan"),
]


@pytest.mark.parametrize("overrides,error,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_fails_fast_with_a_clear_message(files, tmp_path, overrides, error, message) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    cfg = compose_config("run", [*BASE, *(o.format(**files) for o in overrides), f"output_root={out}"],
                         with_choices=True)
    with pytest.raises(Exception) as info:
        compute(cfg, out / "run")
    assert type(info.value).__name__ == error or error in [c.__name__ for c in type(info.value).__mro__], info.value
    assert message in str(info.value)
    assert not list(out.rglob("cem.npz")) and not list(out.rglob("summary.json"))


def test_model_output_errors_name_model_and_task(tmp_path: Path) -> None:
    from cemap import CausalEffectMap
    from cemap.engine import ModelOutputError
    from cemap.tasks import Derain

    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for model, what in ((lambda x: x[..., 1:, :], "returned"), (lambda x: x + float("inf"), "NaN or inf")):
        with pytest.raises(ModelOutputError, match=f"model broken.*{what}.*derain|model broken {what}.* derain"):
            CausalEffectMap(model, Derain(), device="cpu", model_name="broken").attribute(image, ROI(0, 0, 8), 8, "fixed")


def test_a_model_working_in_0_255_is_refused() -> None:
    from cemap import CausalEffectMap
    from cemap.engine import ModelOutputError
    from cemap.tasks import Denoise

    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with pytest.raises(ModelOutputError, match=r"with median 1[0-9][0-9].*divided by 255"):
        CausalEffectMap(lambda x: x * 255.0 + 0.5, Denoise(), device="cpu").attribute(image, ROI(0, 0, 8), 8, "fixed")


@pytest.mark.parametrize("clean,expected", [
    (np.full((2, 2, 3), 51, dtype=np.uint8), 0.2),                        # H x W x 3 uint8: 0..255
    (np.full((2, 2, 3), 0.2, dtype=np.float64), 0.2),                     # H x W x 3 float: [0, 1] (was cast to 0)
    (torch.full((3, 2, 2), 51, dtype=torch.uint8), 0.2),                  # (3, H, W) uint8: 0..255 (was read as 51.0)
    (torch.full((3, 2, 2), 0.2), 0.2),
])
def test_the_api_reads_each_dtype_by_its_rule(clean, expected) -> None:  # type: ignore[no-untyped-def]
    from cemap.engine import as_clean_tensor

    out = as_clean_tensor(clean)
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32 and torch.allclose(out, torch.full_like(out, expected))


@pytest.mark.parametrize("clean,message", [
    (np.full((2, 2, 3), 51.0), r"in \[0, 1\], got \[51, 51\]; for 0..255 values give uint8"),
    (np.full((2, 2, 3), 51, dtype=np.int64), "give uint8"),
    (torch.full((3, 2, 2), float("nan")), "with NaN/inf"),
    (np.zeros((3, 2, 2), dtype=np.uint8), "must be H x W x 3"),
    (torch.zeros((2, 2, 3)), r"must be \(3, H, W\)"),
])
def test_the_api_refuses_ambiguous_images(clean, message) -> None:  # type: ignore[no-untyped-def]
    from cemap.engine import as_clean_tensor

    with pytest.raises(ValueError, match=message):
        as_clean_tensor(clean)


@pytest.mark.parametrize("name,array,mode", [
    ("gray", np.full((9, 10), 7, np.uint8), None),
    ("gray16", (np.arange(90, dtype=np.uint16).reshape(9, 10) * 700), "I;16"),
    ("palette", None, "P"),
])
def test_gray_16bit_and_palette_images_are_converted(tmp_path: Path, name: str, array, mode) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.png"
    if mode == "P":
        Image.new("P", (10, 9), color=3).save(path)
    elif mode == "I;16":
        Image.fromarray(array).save(path)
    else:
        Image.fromarray(array).save(path)
    img = read_image(path)
    assert img.shape == (9, 10, 3) and img.dtype == np.uint8


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80), b=st.integers(-2, 40), scale=st.sampled_from([1, 2, 3, 4]),
       x=st.integers(-4, 90), y=st.integers(-4, 90), size=st.integers(-1, 40))
def test_grid_properties(h: int, w: int, b: int, scale: int, x: int, y: int, size: int) -> None:
    try:
        grid = BlockGrid(h, w, b, scale=scale)
    except GeometryError as exc:
        assert str(exc)
        return
    cover = np.zeros((h, w), dtype=int)
    for block in grid.blocks:
        cover[block.y0 : block.y1, block.x0 : block.x1] += 1
    assert (cover == 1).all()
    roi = ROI(x, y, size)
    try:
        mask = grid.roi_mask(roi)
    except GeometryError as exc:
        assert "roi" in str(exc)
        return
    touched = np.zeros(grid.shape, dtype=bool)
    for block in grid.blocks:
        if block.y0 < y + size and y < block.y1 and block.x0 < x + size and x < block.x1:
            touched[block.row, block.col] = True
    assert np.array_equal(mask, touched)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), b=st.integers(-1, 24), scale=st.sampled_from([1, 2, 4]),
       x=st.integers(-2, 44), y=st.integers(-2, 44), size=st.integers(0, 24))
def test_engine_returns_a_map_or_a_clear_error(h: int, w: int, b: int, scale: int, x: int, y: int, size: int) -> None:
    """Whatever the geometry, the engine either returns a map on the right grid or raises a named error."""
    from cemap import CausalEffectMap, Fixed, PatchBank
    from cemap.tasks import Denoise, SuperResolution

    image = np.random.default_rng(h * 100 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    task = Denoise() if scale == 1 else SuperResolution(scale)

    def model(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, scale_factor=scale, mode="nearest") if scale > 1 else t * 0.9

    bank = PatchBank(np.random.default_rng(0).integers(0, 256, (8, 24, 24, 3), dtype=np.uint8))
    try:
        result = CausalEffectMap(model, task, device="cpu").attribute(image, ROI(x, y, size), b, Fixed(n_samples=1),
                                                                      patches=bank)
    except (GeometryError, ValueError) as exc:
        assert str(exc)
        return
    assert result.shape == (-(-h // b), -(-w // b)) and np.isfinite(result.effects).all()


def _kill_when(path_glob: str, root: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if list(root.glob(path_glob)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared to kill at")


CEM_ARGS = ["model=dncnn_tiny", "image=embedded:rocket", "crop=48", "roi.x=16", "roi.y=16", "roi.size=16",
            "cem.estimator=fixed", "cem.n_samples=12", "cem.batch_size=4", "cem.checkpoint_every_s=0", "device=cpu",
            "progress=false"]


def test_sigkill_during_a_map_then_resume(tmp_path: Path) -> None:
    killed = subprocess.Popen([sys.executable, "-m", "cemap.run", *CEM_ARGS, f"output_root={tmp_path / 'a'}"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when("cache/*/cem.partial.npz", tmp_path / "a", killed)
    resumed = subprocess.run([sys.executable, "-m", "cemap.run", *CEM_ARGS, f"output_root={tmp_path / 'a'}"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = subprocess.run([sys.executable, "-m", "cemap.run", *CEM_ARGS, f"output_root={tmp_path / 'b'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    a = results.CEMResult.load(json.loads(resumed.stdout.strip().splitlines()[-1])["result_dir"])
    b = results.CEMResult.load(json.loads(whole.stdout.strip().splitlines()[-1])["result_dir"])
    assert np.array_equal(a.effects, b.effects) and np.array_equal(a.se, b.se, equal_nan=True)
    assert a.meta["forwards"] < b.meta["forwards"]  # the resumed run did not start over
    assert not list((tmp_path / "a").rglob("*.tmp"))


TRAIN_ARGS = ["model=dncnn_tiny", "task=denoise", "train.steps=40", "train.batch_size=4", "train.patch_size=32",
              "train.checkpoint_every=2", "train.val_every=0", "data=dead_leaves", "data.n_images=2", "data.size=64",
              "val_data.crop=32", "device=cpu", "progress=false"]


@pytest.mark.slow  # resuming from last.pth stays in the fast suite (tests/test_training.py, in-process)
def test_sigkill_during_training_then_resume(tmp_path: Path) -> None:
    killed = subprocess.Popen([sys.executable, "-m", "cemap.train", *TRAIN_ARGS, f"output_root={tmp_path / 'a'}"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when("models/*/last.pth", tmp_path / "a", killed)
    for root in ("a", "b"):
        proc = subprocess.run([sys.executable, "-m", "cemap.train", *TRAIN_ARGS, f"output_root={tmp_path / root}"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    a = next((tmp_path / "a").glob("models/*/final.pth"))
    b = next((tmp_path / "b").glob("models/*/final.pth"))
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(sa["params"][k], sb["params"][k]) for k in sa["params"])
    assert json.loads((a.parent / "eval.json").read_text())["resumed_from"] > 0


def test_disk_full_keeps_the_earlier_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    results.atomic_write_json(target, {"old": True})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(results.ResultWriteError, match="No space left"):
        results.atomic_write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(results.ResultWriteError, match="cannot"):
        results.atomic_write_json(blocker / "sub" / "summary.json", {})


def test_two_jobs_on_one_result_folder_are_serialised(tmp_path: Path) -> None:
    with results.exclusive(tmp_path / "job"):
        with pytest.raises(results.ResultLockedError, match="another job"):
            with results.exclusive(tmp_path / "job"):
                pass


def test_names_from_configs_cannot_escape_the_output_root(tmp_path: Path) -> None:
    with pytest.raises(results.OutsideOutputRootError, match="outside output_root"):
        results.ensure_inside(tmp_path / "out", tmp_path / "out" / "experiments" / ".." / ".." / "elsewhere")
    cfg = compose_config("run", [*BASE, "image=embedded:coffee", "crop=16", f"output_root={tmp_path / 'out'}"],
                         with_choices=True)
    with pytest.raises(results.OutsideOutputRootError):
        compute(cfg, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_a_map_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    cfg = compose_config("run", [*BASE, "image=embedded:coffee", "crop=16", f"output_root={tmp_path}"], with_choices=True)
    summary = compute(cfg, tmp_path / "run")
    assert summary["n_blocks"] == 4


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_integer_or_boolean_weights_are_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    from cemap.checkpoint import CheckpointError, load_checkpoint
    from tests.conftest import conv_stack

    model = conv_stack(2)
    save_file({k: v.to(dtype) for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=f"dtype_mismatch .*checkpoint {dtype} vs model torch.float32"):
        load_checkpoint(conv_stack(2), tmp_path / "w.safetensors")
    save_file({k: v.half() for k, v in model.state_dict().items()}, str(tmp_path / "h.safetensors"))
    load_checkpoint(conv_stack(2), tmp_path / "h.safetensors")  # another float precision loads


def test_a_partial_edge_block_at_the_centre_maps_with_locality_on(tmp_path: Path) -> None:
    overrides = ["model=dncnn_tiny", "task=denoise", "device=cpu", "image=embedded:chelsea", "crop=24",
                 "cem.block_size=16", "roi.x=0", "roi.y=0", "roi.size=8", "progress=false", f"output_root={tmp_path}"]
    summary = compute(compose_config("run", overrides, with_choices=True), tmp_path / "run")
    assert summary["n_blocks"] == 4


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["cem.npz truncated", "cem.json garbled", "cem.partial.npz truncated"])
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(files, tmp_path, damage, caplog) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    cfg = compose_config("run", [*BASE, f"image={files['good']}", f"output_root={out}"], with_choices=True)
    first = compute(cfg, out / "run1")
    [cache] = list((out / "cache").iterdir())
    name = damage.split()[0]
    if name == "cem.partial.npz":  # a partial state left by a killed run, next to no finished map
        (cache / name).write_bytes((cache / results.RESULT_ARRAYS).read_bytes())
        _truncate(cache / name)
        (cache / results.RESULT_ARRAYS).unlink()
    elif name == "cem.json":
        (cache / name).write_text("{not json")
    else:
        _truncate(cache / name)
    second = compute(cfg, out / "run2")
    assert second["origin_psnr"] == first["origin_psnr"] and second["n_positive"] == first["n_positive"]
    assert "damaged" in caplog.text and str(cache) in caplog.text


def test_written_files_follow_the_umask_not_0600(tmp_path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    path = results.atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # 0644 under the usual umask 022 (mkstemp alone: 0600)


def _merge_many(path: Path, who: str) -> None:
    for i in range(25):
        results.merge_json_records(path, {f"{who}-{i}": {"finished": True}})


def test_concurrent_runs_files_keep_every_writers_records(tmp_path: Path) -> None:
    """Two training runs that export into one folder used to leave only the last writer's jobs in zoo_runs.json."""
    import multiprocessing

    path = tmp_path / "export" / "zoo_runs.json"
    results.atomic_write_json(path, {"earlier-run": {"finished": True}})
    writers = [multiprocessing.get_context("fork").Process(target=_merge_many, args=(path, f"w{k}")) for k in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0] * 4
    merged = results.read_json(path)
    assert set(merged) == {"earlier-run"} | {f"w{k}-{i}" for k in range(4) for i in range(25)}
    assert results.merge_json_records(path, {"w0-0": {"finished": False}})["w0-0"] == {"finished": False}


def test_a_lab_tiff_is_refused_not_read_as_rgb(tmp_path: Path) -> None:
    from cemap.imageio import ImageError

    Image.new("LAB", (8, 8), (50, 20, 30)).save(tmp_path / "lab.tif")
    with pytest.raises(ImageError, match="colour mode LAB"):
        read_image(tmp_path / "lab.tif")


def test_exif_orientation_is_applied_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stored = np.zeros((8, 16, 3), dtype=np.uint8)
    stored[0, :4] = 255  # a mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif)
    with caplog.at_level("INFO"):
        shown = read_image(tmp_path / "turned.png")
    assert shown.shape == (16, 8, 3) and np.array_equal(shown, np.rot90(stored, k=-1))
    assert "EXIF orientation 6 applied" in caplog.text


@pytest.mark.parametrize("device,message", [
    ("foo", "is not a device name"),
    pytest.param("cuda", "no usable CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")),
])
def test_an_unusable_device_is_a_device_error(device: str, message: str) -> None:
    from cemap.engine import DeviceError, resolve_device

    with pytest.raises(DeviceError, match=message):
        resolve_device(device)


def test_a_planted_pathway_control_on_a_bright_crop_is_not_mistaken_for_0_255() -> None:
    """control_reach adds 3 x (crop mean - 0.4): on a white crop its median output is ~2.8, still [0, 1] units."""
    from cemap import CausalEffectMap
    from cemap.models.controls import ControlRestorer
    from cemap.tasks import Denoise

    image = np.full((16, 16, 3), 250, dtype=np.uint8)
    model = ControlRestorer(branch="global_mean", gain=3.0, centre=0.4)
    result = CausalEffectMap(model, Denoise(sigma=0.0), device="cpu").attribute(image, ROI(0, 0, 8), 8, "fixed",
                                                                               patches=np.zeros((4, 8, 8, 3), np.uint8))
    assert np.isfinite(result.origin)


def test_a_full_disk_leaves_no_half_written_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The summary is the last file a job writes; if it cannot be written, the maps and figures written before it are
    removed too (the cache keeps the maps), so no run folder looks finished without its summary."""
    cfg = compose_config("run", [*BASE, "image=embedded:coffee", "crop=16", f"output_root={tmp_path / 'out'}"],
                         with_choices=True)
    run_dir = tmp_path / "out" / "runs" / "job"
    run_dir.mkdir(parents=True)
    (run_dir / "run.log").write_text("hydra's log\n")
    real = results.atomic_write_json

    def full_for_the_summary(path, obj):  # type: ignore[no-untyped-def]
        if Path(path).name == results.SUMMARY:
            raise results.ResultWriteError(f"cannot write {path}: [Errno 28] No space left on device")
        return real(path, obj)

    monkeypatch.setattr(results, "atomic_write_json", full_for_the_summary)
    with pytest.raises(results.ResultWriteError, match="No space left"):
        compute(cfg, run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.log"]
    assert list((tmp_path / "out" / "cache").rglob(results.RESULT_ARRAYS)), "the map itself stays in the cache"
    monkeypatch.setattr(results, "atomic_write_json", real)
    assert compute(cfg, run_dir)["cached"] and (run_dir / results.SUMMARY).is_file()
