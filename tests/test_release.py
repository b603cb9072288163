"""The release path end to end, on the real AdrenalMNIST3D data: a copy of bundles/lmttm with its shipped weights,
``python -m lmttm_monai.bundle.release package`` turns it into a release, a local HTTP server on 127.0.0.1 serves it, and it
comes back the three ways a user can download it (``monai.bundle download --url``, ``monai.apps.download_and_extract``
with a hash, ``python -m lmttm_monai.bundle.release download --hash_val``) to be loaded and run. Then each way a release
can go wrong, through the command line: exit status 1 and a one-line error as the last line of stderr.

Runs that do not depend on each other start together (``run_together``): each one spends seconds importing MONAI.
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import monai.bundle
import monai.bundle.scripts
import numpy as np
import pytest
import torch
from monai.apps import download_and_extract
from monai.apps.utils import HashCheckError

from conftest import REPO_ROOT
from lmttm_monai.bundle import release as rel

BUNDLES = REPO_ROOT / "bundles"
NAMES = ("lmttm", "mam_swinunetr", "mam_unetr", "salstm")
CLI = "lmttm_monai.bundle.release"
ERROR = "lmttm_monai.bundle.release: error: "
WRONG_HASH = hashlib.sha256(b"not this release").hexdigest()
# one thread per run: the runs share two cores, and OpenMP threads spinning while they wait would take them from others
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.slow


def release_cli(*args: str) -> list[str]:
    """The argument list of ``python -m lmttm_monai.bundle.release ARGS`` for :func:`run_together`."""
    return ["-m", CLI, *args]


def run_together(commands: dict[str, list[str]], logs: Path) -> dict:
    """Start ``python ARGS`` for every entry of ``commands`` at once and wait for all; each result keeps the stdout
    and stderr (written to files in ``logs``: a full pipe would stall a process until its turn to be read)."""
    logs.mkdir(parents=True, exist_ok=True)
    running = {}
    for key, args in commands.items():
        out, err = open(logs / f"{key}.out", "w"), open(logs / f"{key}.err", "w")
        process = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=out, stderr=err,
                                   env={**os.environ, **ONE_THREAD})  # fmt: skip
        running[key] = (process, out, err)
    results = {}
    for key, (process, out, err) in running.items():
        process.wait(timeout=1200)
        out.close()
        err.close()
        stdout, stderr = (logs / f"{key}.out").read_text(), (logs / f"{key}.err").read_text()
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command failed with status 1 and its last line of stderr is one ``lmttm_monai.bundle.release: error:`` line
    holding every fragment; returns that line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert lines and lines[-1].startswith(ERROR), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


def read_large_files(text: str) -> list[dict]:
    """Entries of a large_files.yml in the block style this project writes (the environment has no YAML library:
    MONAI reads large_files.yml with PyYAML, an optional dependency)."""
    assert re.search(r"^large_files:\s*$", text, re.M), text
    entries: list[dict] = []
    for line in text.splitlines():
        match = re.fullmatch(r"\s*(- )?\s*(\w+): (\".*\")\s*", line)
        if match:
            if match.group(1):
                entries.append({})
            entries[-1][match.group(2)] = json.loads(match.group(3))
    try:
        import yaml
    except ImportError:
        return entries
    assert yaml.safe_load(text)["large_files"] == entries  # where PyYAML is installed, MONAI reads the same
    return entries


def succeeded(*results: subprocess.CompletedProcess) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-6000:]


def zip_contents(zip_file: Path) -> dict[str, bytes]:
    """The files of a release zip, by path inside its top-level folder."""
    with zipfile.ZipFile(zip_file) as zf:
        return {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist() if not n.endswith("/")}


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        header, *rows = [row for row in csv.reader(f) if row]
    assert header[0] == "filename"
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A folder served over HTTP on 127.0.0.1 (a free port), and its base url."""
    www = tmp_path_factory.mktemp("www")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@dataclass
class Scenario:
    work: Path
    copy: Path  # a copy of bundles/lmttm with its shipped models/model.pt
    version: str
    dist: Path
    zip: Path
    asset: Path
    url: str  # of the zip, on the local server
    zip_sha: str
    runs: dict  # name -> subprocess.CompletedProcess

    @property
    def predictions(self) -> Path:
        """Inference on the copy (the repository's bundle and weights) before it was packaged."""
        return self.copy / "eval" / "predictions.csv"


@pytest.fixture(scope="module")
def scenario(medmnist_dir, server, tmp_path_factory) -> Scenario:
    """The whole path, in four steps (the runs within a step start together):

    1. copy bundles/lmttm with its shipped weights; the refusals that need no release (a download onto an existing
       folder, the package of a bundle that fails a check);
    2. infer with the copy, and package it into the served folder;
    3. download the release with ``monai.bundle download --url`` (into d1) and ``lmttm_monai.bundle.release download
       --hash_val`` (into d3);
    4. infer with the bundle that monai.bundle downloaded; meanwhile, the refusals of damaged releases and of an
       existing zip.
    """
    www, base = server
    work = tmp_path_factory.mktemp("release")
    copy = Path(shutil.copytree(BUNDLES / "lmttm", work / "src" / "lmttm",
                                ignore=shutil.ignore_patterns("eval", "__pycache__", "checkpoint.pt", "*.ts")))  # fmt: skip
    assert sha256(copy / "models" / "model.pt") == sha256(BUNDLES / "lmttm" / "models" / "model.pt")
    version = json.loads((copy / "configs" / "metadata.json").read_text())["version"]
    stem = f"lmttm_v{version}"
    dist = www / "dist"
    zip_path, url = dist / f"{stem}.zip", f"{base}/dist/{stem}.zip"
    download = ["download", "--name", "lmttm", "--version", version]
    bad = work / "bad"

    (bad / "exists" / "lmttm").mkdir(parents=True)
    (bad / "exists" / "lmttm" / "mine.txt").write_text("the user's own files")
    broken = Path(shutil.copytree(copy, bad / "broken" / "lmttm"))
    meta_file = broken / "configs" / "metadata.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "changelog": {}}, indent=4))
    runs = run_together(
        {
            "exists": release_cli(*download, "--url", url, "--bundle_dir", str(bad / "exists")),
            "check_fails": release_cli("package", str(broken), "--output_dir", str(bad / "broken_dist")),
        },  # fmt: skip
        work / "logs",
    )

    runs |= run_together(
        {
            "infer": ["-m", "monai.bundle", "run", "--config_file", str(copy / "configs" / "inference.json"),
                      "--bundle_root", str(copy), "--dataset_dir", str(medmnist_dir), "--num_workers", "0"],
            "package": release_cli("package", str(copy), "--output_dir", str(dist)),
        },  # fmt: skip
        work / "logs",
    )
    succeeded(runs["infer"], runs["package"])

    data = zip_path.read_bytes()
    (www / "truncated").mkdir()
    (www / "truncated" / f"{stem}.zip").write_bytes(data[: len(data) // 2])
    (www / "flat").mkdir()
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(www / "flat" / f"{stem}.zip", "w") as flat:
        for info in src.infolist():  # the same files, without the top-level lmttm/ folder
            flat.writestr(info.filename.split("/", 1)[1], src.read(info))
    zip_sha = sha256(zip_path)
    d1, d3 = work / "d1", work / "d3"
    runs |= run_together(
        {
            "monai_download": ["-m", "monai.bundle", *download, "--url", url, "--bundle_dir", str(d1)],
            "release_download": release_cli(*download, "--url", url, "--bundle_dir", str(d3), "--hash_val", zip_sha),
        },
        work / "logs",
    )
    succeeded(runs["monai_download"], runs["release_download"])

    downloaded = d1 / "lmttm"
    runs |= run_together(
        {
            "infer_downloaded": ["-m", "monai.bundle", "run", "--config_file",
                                 str(downloaded / "configs" / "inference.json"), "--bundle_root", str(downloaded),
                                 "--dataset_dir", str(medmnist_dir), "--num_workers", "0"],
            "truncated": release_cli(*download, "--url", f"{base}/truncated/{stem}.zip",
                                     "--bundle_dir", str(bad / "t")),
            "flat": release_cli(*download, "--url", f"{base}/flat/{stem}.zip", "--bundle_dir", str(bad / "f")),
            "hash": release_cli(*download, "--url", url, "--bundle_dir", str(bad / "h"), "--hash_val", WRONG_HASH),
            "zip_exists": release_cli("package", str(copy), "--output_dir", str(dist)),
        },  # fmt: skip
        work / "logs",
    )
    succeeded(runs["infer_downloaded"])
    return Scenario(work, copy, version, dist, zip_path, dist / f"{stem}_model.pt", url, zip_sha, runs)


@pytest.mark.parametrize("name", NAMES)
def test_large_files_yml_of_each_bundle_names_the_asset_of_its_current_version_and_the_shipped_files_hash(name):
    version = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())["version"]
    entries = read_large_files((BUNDLES / name / "large_files.yml").read_text())
    expected = {"path": "models/model.pt", "url": rel.asset_url(name, version)}
    shipped = BUNDLES / name / "models" / "model.pt"
    if subprocess.run(["git", "ls-files", "--error-unmatch", str(shipped)], cwd=REPO_ROOT, capture_output=True).returncode == 0:
        # the committed file: MONAI's download_url finds it with this hash and downloads nothing
        expected |= {"hash_val": hashlib.sha256(shipped.read_bytes()).hexdigest(), "hash_type": "sha256"}
    assert entries == [expected]
    assert entries[0]["url"].endswith(f"/releases/download/{name}_v{version}/{name}_v{version}_model.pt")


def test_download_builds_the_github_url_as_monai_bundle_download_does():
    ours = rel.github_bundle_url("lmttm", "0.2.0", "owner/repo/lmttm_v0.2.0")
    # monai.bundle download --source github joins name and version with "_v" and asks its url helper
    assert ours == monai.bundle.scripts._get_git_release_url("owner", "repo", "lmttm_v0.2.0", "lmttm_v0.2.0.zip")


def test_package_writes_one_top_level_folder_and_the_asset_its_large_files_yml_names(scenario):
    with zipfile.ZipFile(scenario.zip) as zf:
        names = set(zf.namelist())
        packaged_weights = zf.read("lmttm/models/model.pt")
        large_files = read_large_files(zf.read("lmttm/large_files.yml").decode())
    assert {n.split("/")[0] for n in names} == {"lmttm"}
    assert {"lmttm/LICENSE", "lmttm/configs/metadata.json", "lmttm/configs/inference.json", "lmttm/docs/README.md",
            "lmttm/models/model.pt", "lmttm/large_files.yml"} <= names  # fmt: skip
    assert scenario.predictions.is_file()  # the copy has run outputs in eval/; the zip leaves them out
    assert not [n for n in names if n.startswith("lmttm/eval/") or "__pycache__" in n]
    assert [n for n in names if n.startswith("lmttm/models/")] == ["lmttm/models/model.pt"]
    stem = f"lmttm_v{scenario.version}"
    url = f"https://github.com/{rel.DEFAULT_REPO}/releases/download/{stem}/{stem}_model.pt"
    weights_sha = hashlib.sha256(packaged_weights).hexdigest()
    assert large_files == [{"path": "models/model.pt", "url": url, "hash_val": weights_sha, "hash_type": "sha256"}]
    assert sha256(scenario.asset) == weights_sha == sha256(BUNDLES / "lmttm" / "models" / "model.pt")
    assert sorted(p.name for p in scenario.dist.iterdir()) == sorted([scenario.zip.name, scenario.asset.name])
    lines = scenario.runs["package"].stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("passed ")] == [
        "passed bundle directory", "passed version", "passed metadata format", "passed required packages",
        "passed data shape", "passed weights", "passed torchscript",
    ]  # fmt: skip
    assert str(scenario.zip) in lines[-1] and scenario.zip_sha in lines[-1] and str(scenario.asset) in lines[-1]


def test_monai_bundle_download_unpacks_the_release_and_load_gives_the_shipped_network(scenario, monkeypatch):
    d1 = scenario.work / "d1"
    assert (d1 / "lmttm" / "configs" / "metadata.json").is_file()

    def went_online(*args, **kwargs):
        raise AssertionError("monai.bundle.load tried to download the bundle it already has")

    monkeypatch.setattr(monai.bundle.scripts, "download", went_online)
    net = monai.bundle.load(
        name="lmttm", bundle_dir=d1, source="github", repo=f"{rel.DEFAULT_REPO}/lmttm_v{scenario.version}",
        workflow_type="inference", device="cpu",
    )  # fmt: skip
    trained = torch.load(BUNDLES / "lmttm" / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = net.state_dict()
    # load copies the matching keys only (copy_model_state): compare the key sets too
    assert state.keys() == trained.keys()
    for key, value in trained.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_downloaded_bundle_infers_the_predictions_of_the_repositorys_bundle_and_shipped_weights(scenario):
    names, scores = read_predictions(scenario.work / "d1" / "lmttm" / "eval" / "predictions.csv")
    expected_names, expected = read_predictions(scenario.predictions)
    assert names == expected_names and len(names) == 298
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


def test_download_and_extract_checks_the_sha256_and_a_wrong_one_unpacks_nothing(scenario, tmp_path):
    pytest.importorskip("requests", reason="monai.apps.download_and_extract asks the server for the file name "
                                           "with requests (get_filename_from_url): pip install requests")  # fmt: skip
    # monai.bundle.download (MONAI 1.6.1) takes no hash_val: download_and_extract is MONAI's way to check one
    assert "hash_val" not in inspect.signature(monai.bundle.download).parameters
    good, bad = tmp_path / "good", tmp_path / "bad"
    name = scenario.zip.name
    download_and_extract(scenario.url, good / name, good, hash_val=scenario.zip_sha, hash_type="sha256")
    assert files_under(good / "lmttm") == zip_contents(scenario.zip)
    with pytest.raises(HashCheckError):
        download_and_extract(scenario.url, bad / name, bad, hash_val=WRONG_HASH, hash_type="sha256")
    assert not bad.exists() or not any(bad.iterdir())


def test_release_download_checks_the_hash_and_leaves_only_the_bundle_folder(scenario):
    d3 = scenario.work / "d3"
    assert [p.name for p in d3.iterdir()] == ["lmttm"]  # no zip, no temporary folder
    assert files_under(d3 / "lmttm") == zip_contents(scenario.zip)
    assert "sha256 checked" in scenario.runs["release_download"].stdout.strip().splitlines()[-1]


def test_truncated_zip_is_refused_and_nothing_is_unpacked(scenario):
    assert_refused(scenario.runs["truncated"], "truncated", "download it again")
    assert not (scenario.work / "bad" / "t").exists()  # not even the folder it created


def test_zip_without_the_top_level_folder_is_refused_as_not_a_bundle_release(scenario):
    assert_refused(scenario.runs["flat"], "this is not a MONAI bundle release: the zip must hold lmttm/ at its top")
    assert not (scenario.work / "bad" / "f").exists()  # not even the folder it created


def test_wrong_hash_is_refused_with_the_expected_and_the_found_hash_and_nothing_is_unpacked(scenario):
    assert_refused(scenario.runs["hash"], f"expected {WRONG_HASH}, got {scenario.zip_sha}")
    assert not (scenario.work / "bad" / "h").exists()  # not even the folder it created


def test_existing_target_folder_is_kept_without_overwrite(scenario):
    exists = scenario.work / "bad" / "exists"
    assert_refused(scenario.runs["exists"], str(exists / "lmttm"), "--overwrite True")
    assert [p.name for p in exists.iterdir()] == ["lmttm"]
    assert [p.name for p in (exists / "lmttm").iterdir()] == ["mine.txt"]


def test_existing_zip_is_not_overwritten_without_overwrite(scenario):
    assert_refused(scenario.runs["zip_exists"], str(scenario.zip), "--overwrite True")
    assert sha256(scenario.zip) == scenario.zip_sha
    assert sorted(p.name for p in scenario.dist.iterdir()) == sorted([scenario.zip.name, scenario.asset.name])


def test_package_of_a_bundle_failing_a_check_writes_nothing(scenario):
    meta_file = scenario.work / "bad" / "broken" / "lmttm" / "configs" / "metadata.json"
    assert_refused(scenario.runs["check_fails"], str(meta_file), "has no changelog entry")
    assert not (scenario.work / "bad" / "broken_dist").exists()


def test_overwrite_replaces_an_existing_bundle_folder(scenario, tmp_path, capsys):
    (tmp_path / "lmttm").mkdir()
    (tmp_path / "lmttm" / "mine.txt").write_text("the user's own files")
    rel.download("lmttm", scenario.version, url=scenario.url, bundle_dir=str(tmp_path), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["lmttm"]
    assert files_under(tmp_path / "lmttm") == zip_contents(scenario.zip)
    assert "not checked against a hash" in capsys.readouterr().out


def test_package_failing_while_it_writes_the_zip_leaves_no_temporary_file(scenario, tmp_path):
    linked = Path(shutil.copytree(scenario.copy, tmp_path / "lmttm", ignore=shutil.ignore_patterns("eval")))
    # a dangling link passes every check and fails only while the zip is being written
    (linked / "docs" / "figure.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(rel.ReleaseError, match=r"cannot package .*figure\.png"):
        rel.package(str(linked), output_dir=str(tmp_path / "dist"))
    assert list((tmp_path / "dist").iterdir()) == []


def test_debug_shows_the_traceback_instead_of_the_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "lmttm").mkdir()
    args = ["download", "--name", "lmttm", "--version", "0.1.0", "--url", "http://127.0.0.1:9/lmttm_v0.1.0.zip",
            "--bundle_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        rel.main(args)
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(ERROR)
    with pytest.raises(rel.ReleaseError, match="exists"):
        rel.main([*args, "--debug"])
    monkeypatch.setenv("LMTTM_DEBUG", "1")
    with pytest.raises(rel.ReleaseError, match="exists"):
        rel.main(args)


@pytest.mark.parametrize("command", ["package", "download", "verify"])
def test_help_of_each_command_says_what_it_does_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        rel.main([command, "--help"])
    assert info.value.code == 0
    captured = capsys.readouterr()
    shown = captured.out + captured.err  # fire writes help to stdout on a terminal, else to stderr
    assert "Example:" in shown and f"python -m lmttm_monai.bundle.release {command}" in shown


@pytest.mark.parametrize(
    ("member", "problem"),
    [("lmttm/../evil.txt", "escapes the lmttm/ folder"), ("/lmttm/evil.txt", "escapes the lmttm/ folder"),
     ("lmttm/link", "symbolic link")],
)  # fmt: skip
def test_zip_member_escaping_the_bundle_folder_is_refused(tmp_path, member, problem):
    path = tmp_path / "lmttm_v0.1.0.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("lmttm/configs/metadata.json", json.dumps({"version": "0.1.0"}))
        info = zipfile.ZipInfo(member)
        if problem == "symbolic link":
            info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(rel.ReleaseError, match=problem):
        rel.check_release_zip(path, "lmttm", "0.1.0", source="the zip")
