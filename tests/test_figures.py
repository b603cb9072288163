"""Pictures of ``python -m lmttm_monai.experiments.results`` (:mod:`lmttm_monai.experiments.figures`), drawn from real tiny runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def results(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmttm_monai.experiments.results", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def assert_picture(path: Path, min_width: int = 400, min_height: int = 300) -> None:
    """A complete, non-blank PNG of a plausible size."""
    from matplotlib.image import imread

    assert path.is_file(), path
    assert path.read_bytes().startswith(PNG_SIGNATURE), path
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert min_width <= width <= 5000 and min_height <= height <= 5000, (path, width, height)
    assert pixels[..., :3].std() > 0.02, f"{path} is (nearly) one colour"


def linked_pictures(results_md: Path) -> list[Path]:
    """The pictures results.md links, resolved from its folder (the links are relative)."""
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", results_md.read_text())
    assert all(not Path(link).is_absolute() for link in links), links
    return [(results_md.parent / link).resolve() for link in links]


def test_train_loss_is_the_mean_per_epoch_and_a_resumed_epoch_counts_once():
    from lmttm_monai.experiments.records import read_train_loss as _read_train_loss

    line = "2026-12-02 05:48:49,206 - INFO - Epoch: {}/3, Iter: {}/2 -- train_loss: {} \n"
    log = line.format(1, 1, "1.0") + line.format(1, 2, "0.5") + line.format(2, 1, "9.0")  # killed in epoch 2
    log += line.format(2, 1, "0.4") + line.format(2, 2, "0.2") + "Epoch[2] Metrics -- val_auc: 0.5\n"  # resumed
    assert _read_train_loss(log) == pytest.approx([0.75, 0.3])


def test_without_matplotlib_the_table_says_how_to_install_it_and_asking_for_figures_is_an_error(
    tmp_path, monkeypatch, capsys
):
    from lmttm_monai.experiments import figures, results

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib now raises ImportError
    info = {"name": "salstm", "arms": ["U-Net"], "seeds": [0], "overrides": {}, "jobs": 1, "machine": {}}
    (tmp_path / "comparison.json").write_text(json.dumps(info))
    table = Path(results.table(str(tmp_path))).read_text()
    missing = 'the figures need matplotlib, which is not installed: pip install "lmttm-monai[figures]"'
    assert f"Figures not drawn: {missing}." in table
    with pytest.raises(figures.MissingMatplotlibError, match=re.escape('pip install "lmttm-monai[figures]"')):
        results.table(str(tmp_path), figures=str(tmp_path / "pictures"))
    with pytest.raises(SystemExit):
        results.main(["table", str(tmp_path), "--figures", str(tmp_path / "pictures")])
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lmttm_monai.experiments.results: error: {missing}"


def test_a_comparison_without_a_finished_run_gets_no_figures_and_a_line_saying_so(tmp_path):
    pytest.importorskip("matplotlib")
    from lmttm_monai.experiments import results

    info = {"name": "salstm", "arms": ["U-Net"], "seeds": [0], "overrides": {}, "jobs": 1, "machine": {}}
    (tmp_path / "comparison.json").write_text(json.dumps(info))
    (tmp_path / "u-net" / "seed0").mkdir(parents=True)  # started, never finished: no run.json
    table = Path(results.table(str(tmp_path))).read_text()
    assert f"No figures: no run of salstm in {tmp_path} has finished yet (none has a run.json)." in table
    assert "![" not in table and not (tmp_path / "figures").exists()


def test_a_curve_validated_every_4_epochs_is_drawn_at_those_epochs_not_at_its_index(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from lmttm_monai.experiments import figures, records

    # mam_unetr validates every 4 epochs: 5 values over 20 epochs belong to epochs 4, 8, ..., 20
    record = {"arm": "MAM-UNETR", "seed": 0, "curve": [0.1, 0.2, 0.3, 0.4, 0.5], "train_loss": [1.0] * 20}
    (tmp_path / "mam-unetr" / "seed0").mkdir(parents=True)
    (tmp_path / "mam-unetr" / "seed0" / "run.json").write_text(json.dumps(record))
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure) or str(path))
    comparison = records.select_arms(records.comparison_named("mam_unetr"), ["MAM-UNETR"])
    figures.curves(tmp_path, comparison, tmp_path / "curves.png")
    validation, loss = drawn[0].axes[:2]
    assert list(validation.lines[0].get_xdata()) == [4, 8, 12, 16, 20]
    assert list(loss.lines[0].get_xdata()) == list(range(1, 21))
    assert validation.get_title().endswith("after every 4 epochs")


@pytest.mark.slow
def test_a_classification_run_draws_curves_roc_confusion_and_memory_pictures_linked_from_results_md(
    medmnist_dir, tmp_path
):
    pytest.importorskip("matplotlib")
    out, pictures = tmp_path / "results", tmp_path / "docs" / "figures"
    budget = f"epochs=1,epoch_length=2,batch_size=8,num_workers=0,dataset_dir={medmnist_dir}"
    made = results("run", "lmttm", "--out", str(out), "--seeds", "0", "--arms", "lmttm", "--override", budget,
                   "--figures", str(pictures))  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    expected = [pictures / f"lmttm_adrenalmnist3d_28_{name}.png" for name in ("curves", "roc", "confusion")]
    expected.append(pictures / "lmttm_adrenalmnist3d_28_lmttm_memory.png")
    assert sorted(pictures.iterdir()) == sorted(expected)  # no temporary file left behind
    for path in expected:
        assert_picture(path, min_height=600 if "memory" in path.name else 300)
    assert linked_pictures(out / "results.md") == [p.resolve() for p in expected]
    assert "](../docs/figures/lmttm_adrenalmnist3d_28_curves.png)" in (out / "results.md").read_text()
    record = json.loads((out / "lmttm" / "seed0" / "run.json").read_text())
    assert len(record["train_loss"]) == 1 and record["train_loss"][0] > 0

    # a run.json written before train_loss was recorded: the loss curve is read from train.log instead
    from lmttm_monai.experiments.figures import _train_loss

    assert _train_loss(out / "lmttm" / "seed0", {}) == pytest.approx(record["train_loss"], abs=1e-6)


def test_the_memory_picture_of_a_ttm_run_and_none_for_a_resnet(medmnist_dir, tmp_path):
    """TTM (one memory, read and written whole) and a network without memory, on untrained weights: no training."""
    pytest.importorskip("matplotlib")
    import torch

    from lmttm_monai.experiments import figures

    for overlay in ("ttm.json", "resnet18.json"):
        run_dir = tmp_path / overlay / "seed0"
        (run_dir / "models").mkdir(parents=True)
        overrides = {"dataset_dir": str(medmnist_dir)}
        parser = figures._bundle_parser("lmttm", ("train.json", "evaluate.json", overlay), overrides, run_dir)
        torch.save(parser.get_parsed_content("network_def").state_dict(), run_dir / "models" / "model.pt")
        record = {"arm": overlay, "seed": 0, "overlays": [overlay], "overrides": overrides}
        (run_dir / "run.json").write_text(json.dumps(record))
        made = figures.memory_weights(run_dir, tmp_path / f"{overlay}.png")
        if overlay == "ttm.json":
            assert made == str(tmp_path / "ttm.json.png")
            assert_picture(Path(made), min_height=600)
        else:
            assert made is None and not (tmp_path / f"{overlay}.png").exists()


@pytest.mark.slow
def test_every_picture_prefix_names_its_dataset_the_default_one_too():
    from lmttm_monai.experiments.figures import figure_prefix

    assert figure_prefix("salstm", {}) == "salstm_hippocampus"
    assert figure_prefix("mam_unetr", {}) == "mam_unetr_drive"
    assert figure_prefix("mam_swinunetr", {"dataset_dir": "/data/Task02_Heart/"}) == "mam_swinunetr_heart"
    assert figure_prefix("salstm", {"image_size": 64}) == "salstm_hippocampus_64"
    assert figure_prefix("lmttm", {}) == "lmttm_adrenalmnist3d_28"


@pytest.mark.slow
def test_a_segmentation_run_draws_curves_and_best_median_worst_overlays(hippocampus_dir, tmp_path):
    pytest.importorskip("matplotlib")
    from lmttm_monai.experiments.results import table

    budget = f"epochs=1,epoch_length=2,max_cases=4,num_workers=0,dataset_dir={hippocampus_dir}"
    made = results("run", "salstm", "--out", str(tmp_path), "--seeds", "0", "--arms", "u-net", "--override", budget)
    assert made.returncode == 0, made.stderr[-3000:]
    names = ("salstm_hippocampus_curves.png", "salstm_hippocampus_u-net_overlays.png")
    for path in [tmp_path / "figures" / name for name in names]:  # without --figures: OUT/figures
        assert_picture(path)
    assert linked_pictures(tmp_path / "results.md") == [(tmp_path / "figures" / name).resolve() for name in names]
    # `table OUT --figures DIR` draws them again into DIR
    table(str(tmp_path), figures=str(tmp_path / "elsewhere"))
    assert linked_pictures(tmp_path / "results.md") == [(tmp_path / "elsewhere" / name).resolve() for name in names]


def test_a_one_class_overlay_colours_each_pixel_by_where_label_and_prediction_agree():
    pytest.importorskip("matplotlib")
    import numpy as np
    from matplotlib.colors import to_rgb

    from lmttm_monai.experiments.figures import BOTH_COLOUR, LABEL_COLOUR, PREDICTION_COLOUR, _agreement_picture

    shown = np.full((2, 3), 0.5)  # rows x columns
    label = np.array([[1, 0], [1, 0], [0, 0]])  # [columns, rows], as the panels hold them
    prediction = np.array([[1, 1], [0, 0], [0, 0]])
    picture = _agreement_picture(shown, label, prediction)
    assert picture.shape == (2, 3, 3)
    assert tuple(picture[0, 0]) == to_rgb(BOTH_COLOUR)  # row 0, column 0: in both
    assert tuple(picture[0, 1]) == to_rgb(LABEL_COLOUR)  # missed
    assert tuple(picture[1, 0]) == to_rgb(PREDICTION_COLOUR)  # predicted only
    assert np.allclose(picture[1, 2], 0.55 * 0.5)  # background: the dimmed image
