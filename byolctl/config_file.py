"""Reading `--config FILE`: flat keys named like the options (dashes or underscores)."""

import tomllib
from pathlib import Path
from typing import Any

import yaml

from byol.config import SETTING_NAMES, PretrainConfig, check_settings
from byol.errors import UserError

# Settings a file may hold besides the config fields: where the run goes, and its preset.
FILE_ONLY_KEYS = frozenset({"out", "preset"})


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a .yaml/.yml or .toml file, keys normalized to config field names, each
    value checked against its setting's type and range (UserError naming the file's key)."""
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
        mark = getattr(error, "problem_mark", None)  # YAML's position; TOML's is in the text
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"Config file {path} is not valid: {error}".splitlines()[0]
                        + where) from error
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of setting: value.")
    settings: dict[str, Any] = {}
    keys: dict[str, str] = {}  # field name -> the key as the file spells it
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in settings:
            raise UserError(f"Config file {path} sets {name} twice (spelled with dashes and "
                            "with underscores); keep one.")
        settings[name], keys[name] = value, str(key)
    valid = SETTING_NAMES | FILE_ONLY_KEYS
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise UserError(f"Config file {path} has unknown setting(s) {', '.join(unknown)}; "
                        f"valid ones are {', '.join(sorted(valid))}.")
    settings.update(check_settings(
        PretrainConfig, {name: value for name, value in settings.items() if name in SETTING_NAMES},
        lambda name: f"{keys[name]} in {path}"))
    return settings
