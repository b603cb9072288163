"""Checks every bundle of the project must pass, as model-zoo's CI runs them: metadata, network in/out, config
consistency between training and inference, and a changelog entry for the current version."""

from __future__ import annotations

import json

import pytest
from monai.bundle import ConfigParser

from bundle_helpers import SCHEMA, bundle, config_list
from conftest import REPO_ROOT, require_path

BUNDLES = REPO_ROOT / "bundles"
# bundle -> the overlays that change its network (each must still fit the metadata's input and output)
NETWORK_OVERLAYS = {
    "lmttm": ["ttm.json"],
    "mam_swinunetr": ["swinunetr.json", "sts.json"],
    "mam_unetr": ["unetr.json"],
    "salstm": ["lstmsa.json", "unet.json"],
}
# keys that training and inference must agree on, where the bundle has them
SHARED_KEYS = ("bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "dataset_name", "image_size", "num_classes",
               "roi_size", "split_ratios", "split_seed", "val_cases")  # fmt: skip


def test_every_bundle_is_listed_here():
    assert sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()) == sorted(NETWORK_OVERLAYS)


@pytest.mark.parametrize("name", sorted(NETWORK_OVERLAYS))
def test_metadata_passes_verify_metadata_and_has_a_changelog_entry_for_its_version(name):
    require_path(SCHEMA)
    meta_file = BUNDLES / name / "configs" / "metadata.json"
    bundle("verify_metadata", "--meta_file", str(meta_file), "--filepath", str(SCHEMA))
    meta = json.loads(meta_file.read_text())
    assert meta["version"] in meta["changelog"]
    for path in ("LICENSE", "docs/README.md", "docs/data_license.txt", "configs/logging.conf"):
        assert (BUNDLES / name / path).is_file(), path


@pytest.mark.parametrize(
    ("name", "overlay"), [(n, o) for n, overlays in sorted(NETWORK_OVERLAYS.items()) for o in [None, *overlays]]
)
def test_network_passes_verify_net_in_out(name, overlay):
    configs = BUNDLES / name / "configs"
    files = [str(configs / "inference.json")] + ([str(configs / overlay)] if overlay else [])
    bundle("verify_net_in_out", "network_def", "--meta_file", str(configs / "metadata.json"),
           "--config_file", config_list(*files), "--n", "2")  # fmt: skip


@pytest.mark.parametrize("name", sorted(NETWORK_OVERLAYS))
def test_inference_and_training_build_the_same_network_from_the_same_settings(name):
    configs = BUNDLES / name / "configs"
    train, infer = ConfigParser(), ConfigParser()
    train.read_config(str(configs / "train.json"))
    infer.read_config(str(configs / "inference.json"))
    assert train["network_def"] == infer["network_def"]
    for key in SHARED_KEYS:
        if key in train.config or key in infer.config:
            assert train[key] == infer[key], key
