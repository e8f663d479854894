"""Config files are YAML 1.2 (ruamel.yaml): `1e-3` is a number, `yes` a
string, and a key written twice is an error naming its path and both lines.

>>> load_yaml("train: {learning_rate: 1e-3, log_dir: yes}")
{'train': {'learning_rate': 0.001, 'log_dir': 'yes'}}
"""

from __future__ import annotations

from typing import Any, Optional

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from tfmtl.errors import ConfigError


def yaml_io() -> YAML:
  """A YAML 1.2 reader and writer of plain dicts, lists and scalars."""
  yaml = YAML(typ="safe", pure=True)
  yaml.default_flow_style = False
  yaml.sort_base_mapping_type_on_output = False
  return yaml


def load_yaml(text: str) -> Any:
  """Parses YAML 1.2 text (`1e-3` is a float) into plain Python values;
  malformed text or a key written twice raises a one-line `ConfigError`."""
  yaml = yaml_io()
  try:
    return yaml.load(text)
  except DuplicateKeyError as error:
    raise ConfigError(_duplicate_key(yaml.compose(text)) or _problem(error)) from None
  except ReaderError as error:
    raise ConfigError(f"not a text YAML file ({error.reason})") from None
  except YAMLError as error:
    raise ConfigError(_problem(error)) from None


def _problem(error: YAMLError) -> str:
  """A YAML error in one line: the problem and where."""
  problem = getattr(error, "problem", None) or str(error).strip().splitlines()[-1]
  mark = getattr(error, "problem_mark", None)
  where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
  return f"not valid YAML: {problem}{where}"


def _duplicate_key(node, prefix: str = "", seen: Optional[set] = None) -> Optional[str]:
  """Names the first key written twice in one mapping of a composed YAML
  document, with its dotted path and both lines; None if there is none."""
  seen = set() if seen is None else seen
  if id(node) in seen:  # an alias
    return None
  seen.add(id(node))
  children = []
  if isinstance(node, MappingNode):
    lines = {}
    for key, value in node.value:
      name = prefix + str(key.value)
      first, line = lines.get((key.tag, str(key.value))), key.start_mark.line + 1
      if first:
        return f"key {name!r} appears twice " + (
            f"(lines {first} and {line})" if first != line else f"(line {line})")
      lines[key.tag, str(key.value)] = line
      children.append((value, name + "."))
  elif isinstance(node, SequenceNode):
    children = [(item, f"{prefix.rstrip('.')}[{i}].") for i, item in enumerate(node.value)]
  for child, child_prefix in children:
    found = _duplicate_key(child, child_prefix, seen)
    if found:
      return found
  return None
