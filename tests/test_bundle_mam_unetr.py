"""End-to-end runs of bundles/mam_unetr (2D MAM-UNETR) through ``python -m monai.bundle`` on real DRIVE images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import assert_export_matches_eager, bundle, config_list, dice, raises_naming, read_rows
from conftest import REPO_ROOT
from monai.bundle import ConfigParser
from PIL import Image

from lmttm_monai.data import drive_datalist
from lmttm_monai.networks.nets import MemoryUNETR

BUNDLE = REPO_ROOT / "bundles" / "mam_unetr"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f"{n}.json") for n in ("train", "evaluate", "inference"))
PLAIN = str(CONFIGS / "unetr.json")
QUICK = ["--max_cases", "2", "--epochs", "1", "--val_interval", "1", "--train#trainer#epoch_length", "2", "--num_workers", "0",
         "--num_samples", "2"]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dirs(drive_dir, tmp_path_factory):
    """Train briefly, then evaluate and infer with the kept checkpoint."""
    root = tmp_path_factory.mktemp("mam_unetr_run")
    paths = ["--dataset_dir", str(drive_dir), "--ckpt_dir", str(root / "models")]
    logs = {
        "train": bundle("run", "training", "--config_file", TRAIN, *paths, "--output_dir", str(root / "train"), *QUICK),
        "evaluate": bundle(
            "run", "evaluating", "--config_file", config_list(TRAIN, EVALUATE), *paths,
            "--output_dir", str(root / "eval"), "--max_cases", "2", "--num_workers", "0",
        ),
        "infer": bundle(
            "run", "--config_file", INFERENCE, *paths, "--output_dir", str(root / "infer"), "--max_cases", "1",
            "--num_workers", "0",
        ),
    }  # fmt: skip
    return root, paths, logs


def binary(path) -> np.ndarray:
    return np.array(Image.open(path)) > 127


def test_training_keeps_the_best_validation_checkpoint(run_dirs):
    root, _, logs = run_dirs
    assert "val_mean_dice" in logs["train"]
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "vit.blocks.11.attn.qkv.weight" in state


def test_evaluation_reports_vessel_dice_inside_the_field_of_view_and_writes_pngs(run_dirs, drive_dir):
    root, _, _ = run_dirs
    cases = drive_datalist(drive_dir, "test", max_cases=2)
    assert set(dict(read_rows(root / "eval" / "metrics.csv"))) == {"test_mean_dice", "test_hd95"}
    raw = read_rows(root / "eval" / "test_mean_dice_raw.csv")
    reported = {Path(r[0]).name: float(r[1]) for r in raw[1:]}
    assert sorted(reported) == sorted(Path(c["image"]).name for c in cases)
    for case in cases:
        seg = binary(root / "eval" / Path(case["image"]).name.replace(".tif", "_seg.png"))
        label, fov = binary(case["label"]), binary(case["mask"])
        assert seg.shape == label.shape  # same pixel grid and orientation as the input picture
        assert not seg[~fov].any()  # nothing predicted outside the field of view
        # the reported Dice is the Dice of the written PNG against the label, inside the field of view
        assert dice(seg.astype(int), (label & fov).astype(int), 1) == pytest.approx(reported[Path(case["image"]).name])


def test_inference_writes_a_png_per_test_image_in_its_pixel_grid(run_dirs, drive_dir):
    root, _, _ = run_dirs
    assert [p.name for p in (root / "infer").iterdir()] == ["01_test_seg.png"]
    fov = binary(drive_dir / "test" / "mask" / "01_test_mask.gif")
    assert binary(root / "infer" / "01_test_seg.png").shape == fov.shape


def test_inference_on_a_folder_skips_bad_files_and_finishes_the_rest(run_dirs, drive_dir, tmp_path):
    root, paths, _ = run_dirs
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(drive_dir / "test" / "images" / "02_test.tif", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    log = bundle("run", "--config_file", INFERENCE, *paths, "--output_dir", str(out), "--input_dir", str(folder),
                 "--num_workers", "0")  # fmt: skip
    assert "skipping" in log and "broken.png" in log
    seg = binary(out / "02_test_seg.png")
    assert seg.shape == binary(drive_dir / "test" / "mask" / "02_test_mask.gif").shape
    assert [p.name for p in out.iterdir()] == ["02_test_seg.png"]


def test_plain_unetr_baseline_is_one_override():
    parser = ConfigParser()
    parser.read_config([TRAIN, PLAIN])
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MemoryUNETR) and net.transmission == "none"
    default = ConfigParser()
    default.read_config(TRAIN)
    assert default.get_parsed_content("network_def").transmission == "sts"


def test_both_arms_start_from_the_same_weights_under_one_seed():
    # The results table pairs MAM-UNETR and UNETR per seed: that pairing is only fair if the memory adds no
    # parameters and does not shift the random stream, so that one seed gives both arms the same initial weights.
    from monai.utils import set_determinism

    states = []
    for files in ([TRAIN], [TRAIN, PLAIN]):
        parser = ConfigParser()
        parser.read_config(files)
        set_determinism(seed=parser["seed"])  # what the bundle's initialize does before the network is built
        states.append(parser.get_parsed_content("network_def").state_dict())
    set_determinism(seed=None)
    mam, plain = states
    assert mam.keys() == plain.keys()
    assert [k for k in mam if not torch.equal(mam[k], plain[k])] == []


def test_ckpt_export_writes_torchscript_with_the_eager_output(run_dirs):
    root, _, _ = run_dirs
    assert_export_matches_eager(root / "models", CONFIGS / "metadata.json", [INFERENCE], torch.randn(2, 3, 96, 96))


def test_bad_inputs_are_clear_errors_that_name_the_file(drive_dir, tmp_path):
    parser = ConfigParser()
    parser.read_config(TRAIN)
    transform = parser.get_parsed_content("validate#preprocessing")
    case = drive_datalist(drive_dir, "val")[0]
    small = tmp_path / "small_manual1.gif"
    Image.open(case["label"]).crop((0, 0, 300, 300)).save(small)
    raises_naming(r"small_manual1\.gif.*does not match", transform, {**case, "label": str(small)})
    grey_3d = tmp_path / "volume.npy"
    np.save(grey_3d, np.zeros((4, 30, 30, 30), np.float32))
    raises_naming(r"volume\.npy.*expected a 2D image", transform, {**case, "image": str(grey_3d)})
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tif")
    raises_naming(r"broken\.tif", transform, {**case, "image": str(broken)})
    with pytest.raises(FileNotFoundError, match="no DRIVE images"):
        drive_datalist(tmp_path, "train")
