"""What every config section shares: typed loading through pydantic and the
checks that name the key.

A section is a plain dataclass deriving `Section`. Loading a mapping into it
(`load_section`) is pydantic's work: it checks types, converts values
(`2` -> `2.0` for a float, `2.0` -> `2` for an integer) and builds nested
sections; then each section's `_validate` checks its own rules. Every
problem becomes one `ConfigError` naming the dotted key, e.g.
`tasks.rating.weight: expected a number, got 'heavy'`. A dataclass built in
Python (`ModelConfig(embedding_dim=64)`) is not checked until it is loaded.

Example:

>>> import dataclasses
>>> @dataclasses.dataclass
... class Demo(Section):
...   width: int = 8
...   def _validate(self):
...     if self.width < 1:
...       raise ConfigError("width: must be at least 1")
>>> load_section(Demo, {"width": 4.0}).width
4
>>> load_section(Demo, {"width": 0})
Traceback (most recent call last):
...
tfmtl.errors.ConfigError: width: must be at least 1
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

import pydantic

from tfmtl.errors import ConfigError


class Section:
  """Base of a config section (a dataclass): pydantic loads it, refusing keys
  it does not declare; then `load_section` calls every section's `_validate`,
  inner sections first."""

  # bools stay strict (`StrictBool` fields); strings accept numbers, as YAML
  # reads `tpu: 123`; infinities and NaN are no setting's value.
  __pydantic_config__ = pydantic.ConfigDict(extra="forbid", coerce_numbers_to_str=True,
                                            allow_inf_nan=False)

  def _validate(self) -> None:
    """Checks rules among the section's values; raises `ConfigError` whose
    message starts with the key, relative to the section."""


_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer",
             "int_from_float": "an integer", "float_type": "a number",
             "float_parsing": "a number", "finite_number": "a finite number",
             "bool_type": "true or false", "string_type": "a string",
             "dict_type": "a mapping", "dataclass_type": "a mapping",
             "dataclass_exact_type": "a mapping", "list_type": "a list"}


@functools.cache
def _adapter(cls) -> pydantic.TypeAdapter:
  return pydantic.TypeAdapter(cls)


def load_section(cls, values: Any):
  """Builds section `cls` from plain values (what YAML gives) and checks its
  rules; raises `ConfigError` naming the first bad key."""
  try:
    section = _adapter(cls).validate_python(values)
  except pydantic.ValidationError as error:
    raise ConfigError(_message(cls, error.errors()[0])) from None
  _check(section, "")
  return section


def _check(value: Any, path: str) -> None:
  """Calls `_validate` of every section in `value`, inner ones first, with
  `path` (the dotted key of `value`, ending in '.') before its messages."""
  if isinstance(value, Section):
    for field in dataclasses.fields(value):
      _check(getattr(value, field.name), f"{path}{field.name}.")
    try:
      value._validate()  # pylint: disable=protected-access
    except ConfigError as error:
      raise ConfigError(f"{path}{error}") from None
  elif isinstance(value, dict):
    for key, item in value.items():
      _check(item, f"{path}{key}.")
  elif isinstance(value, list):
    for i, item in enumerate(value):
      _check(item, f"{path.rstrip('.')}[{i}].")


def _message(cls, error: dict) -> str:
  """One pydantic error about section `cls` as `dotted.key: problem`."""
  path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                 for part in error["loc"]).lstrip(".")
  if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
    section = path.rpartition(".")[0]
    known = [field.name for field in dataclasses.fields(_section_at(cls, error["loc"][:-1]))]
    return f"unknown key {path!r}; known keys in {section or 'config'}: {', '.join(known)}"
  if error["type"] in _EXPECTED:
    problem = f"expected {_EXPECTED[error['type']]}, got {error['input']!r}"
  elif error["type"] == "missing":
    problem = "required key is missing"
  else:
    problem = error["msg"]
  return f"{path or 'config'}: {problem}"


def _section_at(cls, loc: tuple) -> type:
  """The section class at `loc` (keys, list positions) inside section `cls`."""
  hint = cls
  for part in loc:
    if dataclasses.is_dataclass(hint):
      hint = typing.get_type_hints(hint)[part]
    else:  # dict[str, X] or list[X]
      hint = typing.get_args(hint)[-1]
    while not dataclasses.is_dataclass(hint) and typing.get_origin(hint) not in (dict, list):
      hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))  # Optional
  return hint


def check_name(value: str, field: str) -> str:
  """Returns `value` if it is a safe file or folder name: letters, digits,
  '-', '_' or '.', not starting with '.' (so never '.', '..' or hidden);
  raises `ConfigError` naming `field` otherwise."""
  if not value or value.startswith(".") or not all(c.isalnum() or c in "-_." for c in value):
    raise ConfigError(f"{field}: {value!r} must be letters, digits, '-', '_' or '.', "
                      "not starting with '.'")
  return value


def one_of(field: str, value: Any, allowed, what: str = "value") -> None:
  """Raises `ConfigError` naming `field` unless `value` is in `allowed`."""
  if value not in allowed:
    raise ConfigError(f"{field}: unknown {what} {value!r}; expected one of "
                      f"{', '.join(allowed)}")


def check_widths(field: str, widths: list[int]) -> None:
  """Raises `ConfigError` naming `field` unless every layer width is positive."""
  if any(width < 1 for width in widths):
    raise ConfigError(f"{field}: layer widths must be at least 1, got {widths}")
