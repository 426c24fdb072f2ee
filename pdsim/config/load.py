"""Loading experiment YAML files, with ``--set key.path=value`` overrides.

Errors name the file, the field path and the offending value, e.g.
``experiments/x.yaml: deployments[1].prefill.gpu: unknown GPU 'H900'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pdsim.config.schema import Experiment
from pdsim.errors import ConfigError


@dataclass(frozen=True)
class LoadedExperiment:
    """A validated experiment and where it came from.

    Attributes:
        config: the validated experiment.
        path: the YAML file.
        base_dir: directory that relative paths in the config are resolved against.
    """

    config: Experiment
    path: Path
    base_dir: Path

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else (self.base_dir / p)


def _format_loc(loc: tuple, data: Any) -> str:
    """Dotted path of a pydantic error location, without the discriminator tags pydantic inserts.

    A location element is a tag when the raw mapping at that point has no such key but its ``kind``
    equals the element; walking the raw data tells tags apart from user names such as a workload
    called ``trace``.
    """
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue  # discriminator tag
        out += ("." if out else "") + str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return out


def format_validation_error(source: str, err: ValidationError, data: Any = None) -> str:
    lines = []
    for e in err.errors():
        loc = _format_loc(tuple(e["loc"]), data)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        given = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{source}: {loc or '<top>'}: {msg}{shown}")
    return "\n".join(lines)


def _set_path(data: Any, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = None
            if part.lstrip("-").isdigit():
                idx = int(part)
            else:
                for j, item in enumerate(node):
                    if isinstance(item, dict) and item.get("name") == part:
                        idx = j
                        break
            if idx is None or not -len(node) <= idx < len(node):
                names = [it.get("name") for it in node if isinstance(it, dict)]
                raise ConfigError(f"{source}: --set {dotted}: no list item {part!r} at {where} (names: {names})")
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node or not isinstance(node[part], (dict, list)):
                    raise ConfigError(f"{source}: --set {dotted}: no section {where!r} in the experiment")
                node = node[part]
        else:
            raise ConfigError(f"{source}: --set {dotted}: {where!r} is not a section")


def apply_overrides(data: dict, overrides: list[str], source: str) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config mapping in place.

    List items are addressed by index or by their ``name`` (``deployments.Baseline-A100.pool.instances=4``).

    Raises:
        ConfigError: malformed override or a path that does not exist.
    """
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"--set {ov!r}: expected KEY.PATH=VALUE")
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
        _set_path(data, key.strip(), value, source)
    return data


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file's top-level mapping, without the ``x-`` keys (they hold YAML anchors for reuse, as in
    docker-compose files).

    Raises:
        ConfigError: missing file, YAML syntax error, or a top level that is not a mapping.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}


def load_experiment_file(path: Path | str, overrides: list[str] | None = None) -> LoadedExperiment:
    """Read, override and validate an experiment YAML.

    Raises:
        ConfigError: missing file, YAML syntax error, unknown key, wrong type or value (one message
            per problem, each naming the file, the field and the value).
    """
    path = Path(path)
    data = read_yaml_mapping(path, "experiment")
    apply_overrides(data, overrides or [], str(path))
    try:
        config = Experiment.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err, data)) from None
    return LoadedExperiment(config=config, path=path, base_dir=path.parent)
