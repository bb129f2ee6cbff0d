"""Reading YAML files with one clear error for a missing file or invalid YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from terraseg.errors import TerrasegError


def read_yaml(path: str | os.PathLike[str], what: str, error: type[TerrasegError]) -> Any:
    """Parse a YAML file; a missing file raises ``error("<path>: <what> not found")`` and invalid
    YAML ``error("<path>: invalid YAML (...)")``."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{p}: invalid YAML ({exc})") from exc
