"""MedMNIST 3D loading on the real AdrenalMNIST3D files, downloads, and bad input."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lmttm_monai.data import (
    MEDMNIST_3D_NAMES,
    MEDMNIST_EPOCHS,
    MedMNIST3DDataset,
    class_weights,
    load_medmnist3d,
    medmnist3d_datalist,
    medmnist_epochs,
    medmnist_info,
    medmnist_npz_path,
    volume_datalist,
)

ADRENAL_SPLITS = {"train": 1188, "val": 98, "test": 298}


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_split_loads_with_official_counts_shapes_and_labels(medmnist_dir, split, size):
    images, labels = load_medmnist3d("adrenalmnist3d", split, size, medmnist_dir, download=False)
    assert images.shape == (ADRENAL_SPLITS[split], size, size, size) and images.dtype == np.uint8
    assert labels.shape == (ADRENAL_SPLITS[split],) and labels.dtype == np.int64
    assert set(np.unique(labels)) == {0, 1}
    with np.load(medmnist_dir / medmnist_npz_path("adrenalmnist3d", size, "x").split("/")[-1]) as raw:
        np.testing.assert_array_equal(labels, raw[f"{split}_labels"].reshape(-1))  # dataset order kept


def test_dataset_items_are_channel_first_metatensors_named_in_dataset_order(medmnist_dir):
    ds = MedMNIST3DDataset(medmnist_dir, "AdrenalMNIST3D", "val", 28, download=False)
    assert len(ds) == 98
    item = ds[5]
    assert item["image"].shape == (1, 28, 28, 28) and item["image"].dtype == torch.float32
    assert item["image"].meta["filename_or_obj"] == "adrenalmnist3d_val_00005"
    assert item["label"].dtype == torch.int64 and item["index"] == 5
    assert len(MedMNIST3DDataset(medmnist_dir, "adrenalmnist3d", "val", 28, num_samples=7)) == 7


@pytest.mark.parametrize(
    "name,classes,task",
    [
        ("organmnist3d", 11, "multi-class"),
        ("nodulemnist3d", 2, "binary-class"),
        ("adrenalmnist3d", 2, "binary-class"),
        ("fracturemnist3d", 3, "multi-class"),
        ("vesselmnist3d", 2, "binary-class"),
        ("synapsemnist3d", 2, "binary-class"),
    ],
)
def test_class_count_and_task_come_from_medmnist_info(name, classes, task):
    info = medmnist_info(name)
    assert info["num_classes"] == classes and len(info["label_names"]) == classes and info["task"] == task
    assert name in MEDMNIST_3D_NAMES


def test_class_weights_balance_adrenal_training_split_and_refuse_an_absent_class(medmnist_dir):
    data = medmnist3d_datalist(medmnist_dir, "adrenalmnist3d", "train")
    counts = np.bincount([int(item["label"]) for item in data])
    weights = class_weights(data, 2)
    # each class carries the same total weight, N / K
    torch.testing.assert_close(weights * torch.as_tensor(counts, dtype=torch.float32), torch.full((2,), 1188 / 2))
    assert weights[1] > 3 * weights[0]  # hyperplasia is the minority class
    assert torch.equal(class_weights([{"label": 0}, {"label": 1}], 2), torch.ones(2))
    with pytest.raises(ValueError, match="class\\(es\\) 2 have no training item"):
        class_weights([{"label": 0}, {"label": 1}], 3)


def test_default_epochs_are_the_authors_per_dataset_counts():
    assert set(MEDMNIST_EPOCHS) == set(MEDMNIST_3D_NAMES)
    assert medmnist_epochs("AdrenalMNIST3D") == 50 and medmnist_epochs("nodulemnist3d") == 350
    with pytest.raises(ValueError, match="unknown MedMNIST 3D dataset"):
        medmnist_epochs("pathmnist")


def test_unknown_dataset_name_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown MedMNIST 3D dataset 'pathmnist'.*organmnist3d"):
        medmnist_info("pathmnist")


def test_unsupported_size_is_rejected():
    with pytest.raises(ValueError, match="size must be one of"):
        medmnist_npz_path("adrenalmnist3d", 32, "/tmp")


def test_missing_file_without_download_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"adrenalmnist3d\.npz does not exist.*dataset_dir"):
        load_medmnist3d("adrenalmnist3d", "test", 28, tmp_path, download=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failed_download_says_which_file_to_put_where(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/adrenalmnist3d.npz"  # nothing listens there
    with pytest.raises(FileNotFoundError, match=r"downloading it from .* failed.*put it in"):
        load_medmnist3d("adrenalmnist3d", "test", 28, tmp_path, download=True, url=url)
    assert not (tmp_path / "adrenalmnist3d.npz").exists()


def test_failed_download_leaves_no_folder_it_created_and_keeps_one_that_existed(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/adrenalmnist3d.npz"  # nothing listens there
    with pytest.raises(FileNotFoundError, match="failed"):
        load_medmnist3d("adrenalmnist3d", "test", 28, tmp_path / "new" / "medmnist", download=True, url=url)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="failed"):
        load_medmnist3d("adrenalmnist3d", "test", 28, tmp_path, download=True, url=url)
    assert tmp_path.is_dir()


def test_missing_medmnist_package_hint_names_commands_that_exist(monkeypatch):
    import sys

    from lmttm_monai.data import medmnist3d

    monkeypatch.setitem(sys.modules, "medmnist.info", None)  # makes "from medmnist.info import INFO" fail
    with pytest.raises(ImportError) as info:
        medmnist3d._info()
    assert "pip install --no-deps medmnist==3.0.2" in str(info.value)
    assert "lmttm-monai[" not in str(info.value)  # no such package on any registry


def test_missing_file_is_downloaded_over_http_and_md5_checked(medmnist_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(medmnist_dir / "adrenalmnist3d.npz", served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/adrenalmnist3d.npz"
        target = tmp_path / "root"
        images, labels = load_medmnist3d("adrenalmnist3d", "val", 28, target, download=True, url=url)
        assert images.shape == (98, 28, 28, 28)
        digest = hashlib.md5((target / "adrenalmnist3d.npz").read_bytes()).hexdigest()
        assert digest == __import__("medmnist").INFO["adrenalmnist3d"]["MD5"]
        # a file whose MD5 does not match INFO is refused and not left behind
        (served / "adrenalmnist3d_64.npz").write_bytes(b"not the real file")
        url64 = url.replace("adrenalmnist3d.npz", "adrenalmnist3d_64.npz")
        with pytest.raises(FileNotFoundError, match="failed"):
            load_medmnist3d("adrenalmnist3d", "val", 64, target, download=True, url=url64)
        assert not (target / "adrenalmnist3d_64.npz").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_corrupt_npz_names_the_file(tmp_path):
    (tmp_path / "adrenalmnist3d.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"adrenalmnist3d\.npz is not a readable MedMNIST \.npz"):
        load_medmnist3d("adrenalmnist3d", "train", 28, tmp_path, download=False)


def test_npz_without_the_split_arrays_is_rejected(tmp_path):
    np.savez(tmp_path / "adrenalmnist3d.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="has no 'train_images' array"):
        load_medmnist3d("adrenalmnist3d", "train", 28, tmp_path, download=False)


def test_volumes_of_the_wrong_size_or_rank_are_rejected(tmp_path):
    np.savez(tmp_path / "adrenalmnist3d.npz", test_images=np.zeros((2, 28, 28), np.uint8), test_labels=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"test_images has shape \(2, 28, 28\), expected \[N, 28, 28, 28\]"):
        load_medmnist3d("adrenalmnist3d", "test", 28, tmp_path, download=False)


def test_labels_outside_the_class_range_are_rejected(tmp_path):
    np.savez(
        tmp_path / "adrenalmnist3d.npz",
        test_images=np.zeros((2, 28, 28, 28), np.uint8),
        test_labels=np.array([[0], [5]]),
    )
    with pytest.raises(ValueError, match=r"labels range over \[0, 5\] but adrenalmnist3d has 2 classes"):
        load_medmnist3d("adrenalmnist3d", "test", 28, tmp_path, download=False)


def test_volume_folder_skips_and_reports_bad_files_and_keeps_the_rest(tmp_path, caplog):
    nib.save(nib.Nifti1Image(np.random.rand(28, 28, 28).astype(np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    np.save(tmp_path / "b.npy", np.random.rand(28, 28, 28).astype(np.float32))
    np.save(tmp_path / "flat.npy", np.zeros((28, 28), np.float32))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level("WARNING"):
        items = volume_datalist(tmp_path)
    assert [Path(i["image"]).name for i in items] == ["a.nii.gz", "b.npy"]
    assert "broken.nii.gz" in caplog.text and "flat.npy" in caplog.text


def test_volume_folder_without_readable_volumes_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no readable 3D volume"):
        volume_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        volume_datalist(tmp_path / "missing")
