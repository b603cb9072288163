"""Outputs are never replaced unasked and never half-written (``lmttm_monai.utils.outputs``, the savers built on it)."""

from __future__ import annotations

import csv
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from lmttm_monai.handlers.training_checkpoint import CheckpointSaver, atomic_torch_save
from lmttm_monai.data import AtomicSaveImage, ClassProbabilitySaver
from lmttm_monai.utils.errors import UserError
from lmttm_monai.utils.outputs import OutputExistsError, as_bool, atomic_path, refuse_overwrite


def test_atomic_path_replaces_only_with_a_complete_file_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old, complete\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("new, but cut sh")
            raise RuntimeError("killed while writing")
    assert target.read_text() == "old, complete\n"
    assert os.listdir(tmp_path) == ["metrics.csv"]  # no temporary file left behind
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("new, complete\n")
    assert target.read_text() == "new, complete\n" and os.listdir(tmp_path) == ["metrics.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # readable as a plain open() would make it


def test_refuse_overwrite_names_the_existing_file_and_the_ways_on(tmp_path):
    refuse_overwrite([str(tmp_path / "predictions.csv"), str(tmp_path / "*_seg.*")])  # nothing there yet: fine
    (tmp_path / "a_seg.nii.gz").write_bytes(b"x")
    (tmp_path / "b_seg.nii.gz").write_bytes(b"x")
    with pytest.raises(OutputExistsError) as error:
        refuse_overwrite([str(tmp_path / "*_seg.*")])
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'a_seg.nii.gz'} (and 1 more) exists, written by an earlier run")
    assert "--overwrite true" in message and "--output_dir" in message and "--resume" not in message
    refuse_overwrite([str(tmp_path / "*_seg.*")], overwrite="true")  # as python -m monai.bundle passes it
    refuse_overwrite([str(tmp_path / "*_seg.*")], overwrite=True)


def test_an_earlier_training_checkpoint_is_refused_with_resume_as_the_first_way_on(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"checkpoint.pt \(and 1 more\) exists.*--resume true to continue"):
        refuse_overwrite([str(tmp_path / "model.pt"), str(tmp_path / "checkpoint.pt")])
    refuse_overwrite([str(tmp_path / "model.pt"), str(tmp_path / "checkpoint.pt")], resume="True")


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("True", True), ("1", True), ("yes", True),
                                             (False, False), ("false", False), ("False", False), ("0", False), (0, False)])  # fmt: skip
def test_yes_no_keys_read_what_a_command_line_passes(value, expected):
    assert as_bool(value, "overwrite") is expected


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, None, [True]])
def test_a_yes_no_key_with_another_value_is_refused_by_name(value):
    with pytest.raises(UserError, match=r"^overwrite must be true or false, got "):
        as_bool(value, "overwrite")


def test_class_probability_csv_has_a_header_integer_classes_and_replaces_the_old_file_only_when_complete(tmp_path):
    (tmp_path / "predictions.csv").write_text("an earlier run's file\n")
    saver = ClassProbabilitySaver(tmp_path, "predictions.csv", ["normal", "hyperplasia"])
    assert (tmp_path / "predictions.csv").read_text() == "an earlier run's file\n"  # kept until the new one is done
    saver.save_batch(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), {"filename_or_obj": ["a.nii.gz", "b.nii.gz"]})
    saver.finalize()
    rows = list(csv.reader(open(tmp_path / "predictions.csv")))
    assert rows[0] == ["filename", "prob_normal", "prob_hyperplasia", "predicted_class"]
    assert [r[0] for r in rows[1:]] == ["a.nii.gz", "b.nii.gz"] and [r[-1] for r in rows[1:]] == ["0", "1"]
    assert os.listdir(tmp_path) == ["predictions.csv"]
    # a row that does not fit the header fails before anything is written
    broken = ClassProbabilitySaver(tmp_path, "predictions.csv", ["normal", "hyperplasia"])
    broken.save_batch(torch.tensor([[0.2, 0.3, 0.5]]), {"filename_or_obj": ["c.nii.gz"]})
    with pytest.raises(ValueError, match="has 3 values but 2 classes are named"):
        broken.finalize()
    assert len(list(csv.reader(open(tmp_path / "predictions.csv")))) == 3


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".mhd", ".nrrd"])
def test_atomic_save_image_leaves_the_complete_file_under_its_final_name_only(tmp_path, ext):
    saver = AtomicSaveImage(output_dir=tmp_path, output_postfix="seg", output_ext=ext, separate_folder=False,
                            print_log=False, savepath_in_metadict=True)  # fmt: skip
    labels = torch.randint(0, 3, (1, 8, 9, 10)).to(torch.uint8)
    image = MetaTensor(labels, affine=torch.diag(torch.tensor([2.0, 1.5, 1.0, 1.0])), meta={"filename_or_obj": "case_1.nii.gz"})
    saver(image)
    final = tmp_path / f"case_1_seg{ext}"
    assert image.meta["saved_to"] == str(final)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # the staging folder is gone
    if ext == ".mhd":
        assert sorted(os.listdir(tmp_path)) == ["case_1_seg.mhd", "case_1_seg.zraw"]  # header and its (compressed) data
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(final)))
    np.testing.assert_array_equal(read.transpose(2, 1, 0), labels[0].numpy())


def test_checkpoints_are_written_atomically_and_load_with_weights_only(tmp_path):
    network = torch.nn.Linear(3, 2)
    atomic_torch_save({"network": network.state_dict()}, tmp_path / "checkpoint.pt")
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["network"]["weight"].shape == (2, 3)
    saver = CheckpointSaver(str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt")
    assert dict(saver.key_metric_record()) == {"_saved": []}  # ignite's record of the best so far: none yet
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_checkpoint_saver_creates_its_folder_before_ignite_checks_for_it(tmp_path, monkeypatch):
    # Under torchrun, ignite's rank-0 check-then-create races another rank's makedirs (FileExistsError in CI);
    # the folder must already exist when ignite looks, so ignite never creates it.
    from ignite.handlers.checkpoint import DiskSaver

    seen = []
    real_check = DiskSaver._check_and_setup

    def recording_check(dirname, create_dir, require_empty):
        seen.append(dirname.is_dir())
        real_check(dirname, create_dir, require_empty)

    monkeypatch.setattr(DiskSaver, "_check_and_setup", staticmethod(recording_check))
    save_dir = tmp_path / "run" / "models"
    CheckpointSaver(str(save_dir), {"model": torch.nn.Linear(3, 2)}, save_key_metric=True, key_metric_filename="model.pt")
    assert seen and all(seen)
