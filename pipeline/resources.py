"""Files that ship with the package: the default configs, and the installed version.

`configs/` is installed beside the packages (see pyproject.toml), so the same relative path finds
it in a source checkout, an editable install and a wheel install.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "quickstart.yaml"
SERVING_CONFIG = CONFIG_DIR / "serving.yaml"


def package_version() -> str:
    """The installed distribution's version ('unknown' when run from a tree that is not installed)."""
    try:
        return metadata.version("hybridrec")
    except metadata.PackageNotFoundError:
        return "unknown"
