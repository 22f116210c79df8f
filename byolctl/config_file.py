"""Reading `--config FILE`: flat keys named like the options (dashes or underscores)."""

import tomllib
from pathlib import Path
from typing import Any

import yaml

from byol.errors import UserError


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a .yaml/.yml or .toml file, keys normalized to config field names."""
    if not path.is_file():
        raise UserError(f"Config file {path} does not exist; check the path.")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text()) or {}
        else:
            raise UserError(f"Config file {path} must end in .yaml, .yml or .toml.")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise UserError(f"Config file {path} is not valid: {error}".splitlines()[0]) from error
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of setting: value.")
    return {key.replace("-", "_"): value for key, value in data.items()}
