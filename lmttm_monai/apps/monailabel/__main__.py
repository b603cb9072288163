"""``python -m lmttm_monai.apps.monailabel``: where the MONAI Label app is, which bundles it would serve, and the
command that starts it."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lmttm_monai.apps.monailabel import APP_DIR, check_studies, start_command
from lmttm_monai.apps.monailabel.bundles import default_bundles_dir, select_bundles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmttm_monai.apps.monailabel", description=__doc__)
    parser.add_argument("--studies", default="STUDIES_DIR", help="folder of images (NIfTI, NRRD, PNG/TIFF) to serve")
    parser.add_argument("--models", default="all", help="'all' or bundle names separated by commas")
    parser.add_argument("--bundles_dir", default=None, help="folder of bundles (default: the checkout's bundles/)")
    parser.add_argument("--host", default=None, help="address to listen on (MONAI Label's default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="port (MONAI Label's default: 8000)")
    args = parser.parse_args(argv)

    bundles_dir = args.bundles_dir or default_bundles_dir()
    print(f"app: {APP_DIR}")
    print(f"bundles: {bundles_dir}")
    try:
        for bundle in select_bundles(bundles_dir, args.models):
            print(f"  {bundle.describe()}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if Path(args.studies).expanduser().exists():  # a folder to make later is fine; one that serves nothing is not
        try:
            check_studies(args.studies)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    command = start_command(args.studies, args.models, args.bundles_dir, args.host, args.port)
    print("start (in the MONAI Label environment, docs/monailabel.md):")
    print("  " + shlex.join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
