"""Make and fetch MONAI bundle releases of this project's bundles: ``python -m lmttm_monai.bundle.release COMMAND``.

    python -m lmttm_monai.bundle.release package bundles/lmttm --output_dir dist --repo OWNER/REPO
    python -m lmttm_monai.bundle.release download --name lmttm --version 0.2.0 --repo OWNER/REPO/lmttm_v0.2.0 \\
        --bundle_dir downloads --hash_val SHA256_FROM_THE_RELEASE_NOTES
    python -m lmttm_monai.bundle.release verify bundles/lmttm

``package`` checks the bundle as model-zoo's CI does (:mod:`lmttm_monai.bundle.zoo`) and writes the release zip
``NAME_vVERSION.zip`` (one top-level ``NAME/`` folder, as ``monai.bundle download`` expects) next to the weights
asset ``NAME_vVERSION_model.pt`` that the zip's ``large_files.yml`` names with its sha256. ``download`` is the
careful counterpart of ``monai.bundle download --url``: it checks a hash, refuses a damaged or foreign zip, and leaves
nothing behind when it fails. ``docs/release.md`` is the maintainer and user guide.

An error the user can cause ends the output with one line ``lmttm_monai.bundle.release: error: <message>`` on stderr and
exit status 1; ``--debug`` (or ``LMTTM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import fire
from monai.apps.utils import download_url

from lmttm_monai.bundle import zoo
from lmttm_monai.bundle.zoo import BundleCheckError
from lmttm_monai.utils.errors import UserError, debug_enabled
from lmttm_monai.utils.outputs import atomic_path

__all__ = [
    "DEFAULT_REPO",
    "ReleaseError",
    "release_name",
    "asset_url",
    "github_bundle_url",
    "large_files_yaml",
    "check_release_zip",
    "package",
    "download",
    "verify",
    "main",
]

# the GitHub repository (OWNER/REPO) whose releases the bundles' large_files.yml name; maintainers releasing from
# another repository pass --repo to `package` (and users --repo OWNER/REPO/TAG to `download`)
DEFAULT_REPO = "lmttm-monai/lmttm-monai"
PROG = "lmttm_monai.bundle.release"
WEIGHTS = "models/model.pt"
# what a release zip leaves out of the bundle folder: outputs of runs, caches, and the large_files.yml that
# `package` writes anew (with the hash of what it packages)
EXCLUDED_DIRS = {"eval", "__pycache__"}
LARGE_FILES = {"large_files.yml", "large_files.yaml", "large_files.json"}
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")  # those monai.apps.utils.check_hash supports
BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
CHUNK = 1 << 20


class ReleaseError(UserError):
    """A release command was given something it cannot use; the message is one line: what is wrong, what to do."""


def release_name(name: str, version: str) -> str:
    """``NAME_vVERSION``, the stem MONAI's ``download --source github`` builds the zip name from."""
    return f"{name}_v{version}"


def _github_release_url(repo: str, tag: str, filename: str) -> str:
    owner, repository = repo.split("/")
    return f"https://github.com/{owner}/{repository}/releases/download/{tag}/{filename}"


def asset_url(name: str, version: str, repo: str = DEFAULT_REPO, tag: str | None = None) -> str:
    """URL of the weights asset ``NAME_vVERSION_model.pt`` of the GitHub release ``tag`` (default ``NAME_vVERSION``)."""
    stem = release_name(name, version)
    return _github_release_url(repo, tag or stem, f"{stem}_model.pt")


def github_bundle_url(name: str, version: str, repo: str) -> str:
    """URL of the release zip exactly as ``monai.bundle download --source github --repo OWNER/REPO/TAG`` builds it:
    ``https://github.com/OWNER/REPO/releases/download/TAG/NAME_vVERSION.zip``."""
    owner, repository, tag = repo.split("/")
    return _github_release_url(f"{owner}/{repository}", tag, f"{release_name(name, version)}.zip")


ZIP_NOTE = (
    "# written by python -m lmttm_monai.bundle.release package: hash_val is the sha256 of the models/model.pt in this\n"
    "# zip, which is also the release asset the url names (monai.bundle download_large_files fetches it there)\n"
)
REPOSITORY_NOTE = (
    "# written by python -m lmttm_monai.bundle.release bump: the committed models/model.pt and its sha256; the url is\n"
    "# the weights asset of this version's GitHub release (docs/release.md)\n"
)


def large_files_yaml(url: str, hash_val: str, note: str = ZIP_NOTE) -> str:
    """A ``large_files.yml`` in model-zoo's format (``path``, ``url``, ``hash_val``, ``hash_type``), after ``note``."""
    # JSON strings are YAML double-quoted scalars: no YAML library is needed to write (or to read) this file; MONAI's
    # download_url skips the download when the file is there with this hash
    return (
        note + "large_files:\n"
        f"  - path: {json.dumps(WEIGHTS)}\n"
        f"    url: {json.dumps(url)}\n"
        f"    hash_val: {json.dumps(hash_val)}\n"
        '    hash_type: "sha256"\n'
    )


def _text(value: object, flag: str) -> str:
    """A command-line value that must stay a string; fire reads ``1.0`` as a float and ``123`` as an int."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ReleaseError(f"--{flag} {value!r} was read as a number: quote it, for example --{flag}='\"{value}\"'")
    raise ReleaseError(f"--{flag} must be a non-empty string, got {value!r}")


def _hash_of(path: Path, hash_type: str = "sha256") -> str:
    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_file(folder: Path, final_name: str) -> Path:
    """An empty file in ``folder`` (so that ``os.replace`` onto the final name stays on one file system), with the
    permissions a plain new file gets (``mkstemp`` makes it private, and ``os.replace`` would keep that)."""
    fd, path = tempfile.mkstemp(prefix=f".{final_name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return Path(path)


def _bundle_files(root: Path, skip: Path) -> list[Path]:
    """Files of the bundle folder ``root`` that a release holds, relative to ``root``, sorted; ``skip`` is the output
    folder (left out when it lies inside the bundle). ``models/model.pt`` is not listed: it goes in from the asset."""
    files = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        rel = here.relative_to(root)
        dirs[:] = sorted(
            d for d in dirs
            if d != "__pycache__" and not (rel == Path(".") and d in EXCLUDED_DIRS) and (here / d).resolve() != skip
        )  # fmt: skip
        if rel == Path("models"):
            continue  # only models/model.pt, added separately: no checkpoints of other runs, no model.ts
        for name in sorted(names):
            if (rel == Path(".") and name in LARGE_FILES) or name.endswith(".pyc"):
                continue
            files.append(rel / name)
    return files


def package(
    bundle_dir: str,
    output_dir: str = "dist",
    repo: str = DEFAULT_REPO,
    tag: str | None = None,
    overwrite: bool = False,
) -> None:
    """Check a trained bundle as model-zoo's CI does, then write its release: the zip and the weights asset.

    Writes OUTPUT_DIR/NAME_vVERSION.zip (NAME is the bundle folder's name, VERSION the metadata's ``version``)
    holding one top-level NAME/ folder: configs/, docs/, LICENSE, models/model.pt and a large_files.yml naming
    https://github.com/REPO/releases/download/TAG/NAME_vVERSION_model.pt with the sha256 of that models/model.pt.
    It also writes that file as OUTPUT_DIR/NAME_vVERSION_model.pt, the asset to upload next to the zip. Left out:
    eval/, __pycache__, other files in models/, the bundle's own large_files.yml. Nothing is written if a check
    fails, and a zip is never left half-written.

    Example:
        python -m lmttm_monai.bundle.release package bundles/lmttm --output_dir dist --repo OWNER/REPO

    Args:
        bundle_dir: the bundle folder, with models/model.pt (train the bundle first).
        output_dir: where the zip and the weights asset go.
        repo: GitHub OWNER/REPO of the release (default lmttm-monai/lmttm-monai).
        tag: the release's tag (default NAME_vVERSION).
        overwrite: replace an existing zip and weights asset of the same name.
    """
    root = Path(str(bundle_dir))
    if not root.is_dir():
        raise ReleaseError(f"{root} is not a bundle folder (no such directory)")
    name = root.resolve().name
    version = zoo.load_metadata(root).get("version")
    if not isinstance(version, str) or not version:
        raise ReleaseError(f"{root / 'configs' / 'metadata.json'}: 'version' must be a string such as \"0.2.0\"")
    repo = _text(repo, "repo")
    if len(repo.split("/")) != 2 or not all(repo.split("/")):
        raise ReleaseError(f"--repo must be OWNER/REPO, got {repo!r}")
    tag = release_name(name, version) if tag is None else _text(tag, "tag")
    out = Path(str(output_dir))
    stem = release_name(name, version)
    zip_path, asset = out / f"{stem}.zip", out / f"{stem}_model.pt"
    if not overwrite:
        for path in (zip_path, asset):
            if path.exists():
                raise ReleaseError(f"{path} exists: pass --overwrite True to replace it")

    zoo.verify_bundle(root, require_weights=True, on_pass=lambda line: print(f"passed {line}", flush=True))

    out.mkdir(parents=True, exist_ok=True)
    url = asset_url(name, version, repo, tag)
    tmp_asset, tmp_zip = _temp_file(out, asset.name), _temp_file(out, zip_path.name)
    try:
        # the asset, the zip's models/model.pt and the hash all come from this one copy, so they cannot differ
        shutil.copyfile(root / WEIGHTS, tmp_asset)
        weights_sha = _hash_of(tmp_asset)
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED, strict_timestamps=False) as zf:
            for rel in _bundle_files(root, skip=out.resolve()):
                try:
                    zf.write(root / rel, f"{name}/{rel.as_posix()}")
                except OSError as e:
                    raise ReleaseError(f"cannot package {root / rel}: {e.strerror or e}") from e
            zf.write(tmp_asset, f"{name}/{WEIGHTS}")
            zf.writestr(f"{name}/large_files.yml", large_files_yaml(url, weights_sha))
        os.replace(tmp_asset, asset)  # the asset first: a zip never names a file that is not there
        os.replace(tmp_zip, zip_path)
    except BaseException:
        for path in (tmp_asset, tmp_zip):
            path.unlink(missing_ok=True)
        raise
    print(f"{zip_path} sha256 {_hash_of(zip_path)}, weights asset {asset}: upload both to the release {tag} of {repo}")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def check_release_zip(zip_file: str | os.PathLike, name: str, version: str | None = None, source: str = "") -> None:
    """Refuse ``zip_file`` unless it is a readable zip whose members all lie in one top-level ``name/`` folder that
    holds ``configs/metadata.json`` (of ``version``, when given), with no absolute path, ``..`` or symbolic link.

    ``source`` (the url) names the download in the messages; a :class:`ReleaseError` says what to do.
    """
    source = source or str(zip_file)
    damaged = f"{source} is not a readable zip (truncated or damaged download): download it again"
    if not zipfile.is_zipfile(zip_file):
        raise ReleaseError(damaged)
    try:
        with zipfile.ZipFile(zip_file) as zf:
            bad = zf.testzip()
            infos = zf.infolist()
            meta_name = f"{name}/configs/metadata.json"
            names = {info.filename for info in infos}
            meta_bytes = zf.read(meta_name) if meta_name in names else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ReleaseError(f"{damaged} ({type(e).__name__}: {e})") from e
    if bad is not None:
        raise ReleaseError(f"{damaged} (member {bad} fails its CRC check)")
    for info in infos:
        member = info.filename
        parts = PurePosixPath(member).parts
        if member.startswith("/") or "\\" in member or re.match(r"[A-Za-z]:", member) or ".." in parts:
            raise ReleaseError(f"{source}: member {member!r} escapes the {name}/ folder; refusing to unpack it")
        if _is_symlink(info):
            raise ReleaseError(f"{source}: member {member!r} is a symbolic link; refusing to unpack it")
    tops = sorted({PurePosixPath(info.filename).parts[0] for info in infos if info.filename.strip("/")})
    if tops != [name] or any(info.filename == name for info in infos):
        found = ", ".join(tops[:5]) or "nothing"
        raise ReleaseError(
            f"{source}: this is not a MONAI bundle release: the zip must hold {name}/ at its top (it holds {found})"
        )
    if meta_bytes is None:
        raise ReleaseError(f"{source}: this is not a MONAI bundle release: {meta_name} is missing")
    try:
        metadata = json.loads(meta_bytes)
    except ValueError as e:
        raise ReleaseError(f"{source}: {meta_name} is not readable JSON ({e})") from e
    found = metadata.get("version") if isinstance(metadata, dict) else None
    if version is not None and found != version:
        raise ReleaseError(f"{source} holds {name} version {found}, not {version}: check --version")


def download(
    name: str,
    version: str,
    url: str | None = None,
    repo: str | None = None,
    bundle_dir: str = ".",
    hash_val: str | None = None,
    hash_type: str = "sha256",
    overwrite: bool = False,
) -> None:
    """Download a bundle release zip, check it, and unpack it to BUNDLE_DIR/NAME; on any failure leave nothing.

    Give the zip's --url, or --repo OWNER/REPO/TAG for the GitHub release asset NAME_vVERSION.zip (the url
    monai.bundle download --source github builds). The zip is downloaded with monai.apps.download_url into a
    temporary folder inside BUNDLE_DIR, checked against --hash_val (give it: monai.bundle download cannot check a
    hash), and refused when it is not a readable zip (a truncated download), when its members do not all lie in
    one top-level NAME/ folder holding configs/metadata.json of VERSION, or when a member escapes that folder.
    An existing BUNDLE_DIR/NAME is kept unless --overwrite True.

    Example:
        python -m lmttm_monai.bundle.release download --name lmttm --version 0.2.0 \\
            --repo lmttm-monai/lmttm-monai/lmttm_v0.2.0 --bundle_dir downloads --hash_val SHA256

    Args:
        name: the bundle name, the zip's top-level folder.
        version: the bundle version (quote versions fire would read as numbers: --version='"1.0"').
        url: address of the zip (instead of --repo).
        repo: GitHub OWNER/REPO/TAG (instead of --url).
        bundle_dir: the folder that receives NAME/.
        hash_val: expected hash of the zip.
        hash_type: md5, sha1, sha256 or sha512.
        overwrite: replace an existing BUNDLE_DIR/NAME.
    """
    name, version = _text(name, "name"), _text(version, "version")
    if not BUNDLE_NAME.fullmatch(name):
        raise ReleaseError(f"--name {name!r} is not a bundle name (letters, digits, '.', '_', '-')")
    if (url is None) == (repo is None):
        raise ReleaseError("give exactly one of --url URL and --repo OWNER/REPO/TAG")
    if repo is not None:
        repo = _text(repo, "repo")
        if len(repo.split("/")) != 3 or not all(repo.split("/")):
            raise ReleaseError(f"--repo must be OWNER/REPO/TAG (the release's tag), got {repo!r}")
        url = github_bundle_url(name, version, repo)
    url = _text(url, "url")
    hash_type = _text(hash_type, "hash_type").lower()
    if hash_type not in HASH_TYPES:
        raise ReleaseError(f"--hash_type must be one of {', '.join(HASH_TYPES)}, got {hash_type!r}")
    expected = None if hash_val is None else _text(hash_val, "hash_val").lower()
    root = Path(str(bundle_dir))
    target = root / name
    if target.exists() and not overwrite:
        raise ReleaseError(f"{target} exists: pass --overwrite True to replace it, or choose another --bundle_dir")

    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{release_name(name, version)}.", suffix=".download", dir=root))
    done = False
    try:
        zip_path = tmp / f"{release_name(name, version)}.zip"
        try:
            with warnings.catch_warnings():
                # the hash is checked below (to report the one found); download_url would warn that it checks none
                warnings.filterwarnings("ignore", message="No hash value provided")
                download_url(url=url, filepath=zip_path, hash_val=None, progress=sys.stderr.isatty())
        except Exception as e:
            raise ReleaseError(f"could not download {url}: {zoo.describe_error(e)}: check the url or --repo") from e
        if not zip_path.is_file():
            # download_url ignores PermissionError and NotADirectoryError: it returns with nothing written
            raise ReleaseError(f"could not download {url} into {root}: nothing was written; is {root} writable?")
        if expected is not None:
            found = _hash_of(zip_path, hash_type)
            if found != expected:
                raise ReleaseError(
                    f"{url}: {hash_type} hash check failed: expected {expected}, got {found}: "
                    "the download is damaged or not this release; download it again or check --hash_val"
                )
        check_release_zip(zip_path, name, version, source=url)
        unpacked = tmp / "unpacked"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(unpacked)
        if target.exists():
            if not overwrite:  # it appeared while downloading
                raise ReleaseError(f"{target} exists: pass --overwrite True to replace it")
            previous = tmp / "previous"
            os.replace(target, previous)
            try:
                os.replace(unpacked / name, target)
            except BaseException:
                os.replace(previous, target)
                raise
        else:
            os.replace(unpacked / name, target)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not done:
            with contextlib.suppress(OSError):  # it held nothing but the temporary folder; rmdir keeps anything else
                root.rmdir()
    checked = f"{hash_type} checked" if expected is not None else "no --hash_val given, not checked against a hash"
    print(f"unpacked {url} into {target} ({checked})")


def verify(bundle_dir: str, require_weights: bool = True) -> None:
    """Run model-zoo's checks on a bundle (lmttm_monai.bundle.zoo.verify_bundle) and print each one that passes.

    Checks, in model-zoo's order: the required files (LICENSE, configs/metadata.json, configs/inference.json,
    models/model.pt), the version's changelog entry, the metadata against its schema, the lmttm-monai pin,
    network_def's input and output shapes, the weights (weights_only, strict=True) and the TorchScript export.

    Example:
        python -m lmttm_monai.bundle.release verify bundles/lmttm --require_weights False

    Args:
        bundle_dir: the bundle folder.
        require_weights: also check models/model.pt and its TorchScript export (False for a bundle not trained yet).
    """
    passed = zoo.verify_bundle(
        str(bundle_dir), require_weights=bool(require_weights), on_pass=lambda line: print(f"passed {line}", flush=True)
    )
    note = "" if require_weights else " (weights not checked)"
    print(f"{bundle_dir}: all {len(passed)} checks passed{note}")


def version_mentions(name: str) -> re.Pattern:
    """Where a doc names a release of bundle ``name`` (download commands, release tags); group 2 is the version."""
    return re.compile(rf"(--name {name} --version |download {name} --version |\b{name}_v)(\d+\.\d+\.\d+)")


def _rewrite(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)


def set_version(bundle: str, version: str, change: str, repo: str | None = None) -> str:
    """Give a bundle a new version, everywhere it is written: ``metadata.json`` (``version``, the one-line
    ``changelog`` entry ``change``, the ``lmttm-monai`` pin set to the installed package), ``large_files.yml`` (the
    url of this version's weights asset and the sha256 of the shipped ``models/model.pt``, when the bundle ships
    one), and the download commands and release tags in the model card and in ``repo``'s README.md.

        python -m lmttm_monai.bundle.release bump bundles/salstm 0.8.0 --change "lmttm-monai 0.9.0: ..."
    """
    import lmttm_monai

    root = Path(bundle).expanduser()
    meta_file = root / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise ReleaseError(f"{root}: no configs/metadata.json, not a bundle")
    if not re.fullmatch(r"\d+\.\d+\.\d+", str(version)):
        raise ReleaseError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    change = _text(change, "--change")
    if "\n" in change:
        raise ReleaseError("--change must be one line: the changelog holds one line per version")
    meta = json.loads(meta_file.read_text())
    if str(version) in meta.get("changelog", {}):
        raise ReleaseError(f"{meta_file}: version {version} is already in the changelog")
    meta["version"] = str(version)
    meta["changelog"] = {str(version): change, **meta.get("changelog", {})}
    meta.setdefault("required_packages_version", {})[zoo.PACKAGE] = lmttm_monai.__version__
    with atomic_path(meta_file) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=4) + "\n")
    weights = root / WEIGHTS
    if weights.is_file():
        url = asset_url(root.name, str(version))
        _rewrite(root / "large_files.yml", large_files_yaml(url, _hash_of(weights), REPOSITORY_NOTE))
    # without shipped weights the url of the release asset is all large_files.yml holds that names a version
    docs = [root / "docs" / "README.md"] + ([Path(repo).expanduser() / "README.md"] if repo else [])
    docs += [] if weights.is_file() else [root / "large_files.yml"]
    for doc in docs:
        if doc.is_file():
            _rewrite(doc, version_mentions(root.name).sub(lambda m: m.group(1) + str(version), doc.read_text()))
    return f"{root.name} {version}: {change}"


def bump(bundle: str, version: str, change: str, repo: str = ".") -> None:
    """Set a bundle's new version everywhere it is written (:func:`set_version`); ``repo``: the checkout whose
    README.md names the bundle's downloads."""
    print(set_version(bundle, version, change, repo))


COMMANDS = {"package": package, "download": download, "verify": verify, "bump": bump}


def _fail(message: str) -> None:
    sys.stdout.flush()  # on a terminal the error line must come last
    print(f"{PROG}: error: {zoo.one_line(message, limit=2000)}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Run a command; ``--debug`` anywhere in ``argv`` (or ``LMTTM_DEBUG=1``) re-raises errors with the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or debug_enabled()
    args = [a for a in args if a != "--debug"]
    disabled = logging.root.manager.disable
    if not debug:
        # MONAI logs every call's arguments at INFO; the commands print their own summary lines
        logging.disable(logging.INFO)
    try:
        fire.Fire(COMMANDS, command=args, name=PROG)
    except fire.core.FireExit as e:
        if e.code in (0, None) or debug:
            raise
        _fail(f"invalid command line (fire's message is above); see: python -m {PROG} COMMAND --help")
    except (ReleaseError, BundleCheckError) as e:
        if debug:
            raise
        _fail(str(e))
    finally:
        logging.disable(disabled)  # main() may run inside another program (a test)


if __name__ == "__main__":
    main()
