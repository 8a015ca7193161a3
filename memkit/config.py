"""Run configurations: plain YAML naming registered parts, checked before anything is built.

A config names a stream, a model, an optional memory and a learner, each as a
mapping with ``name`` plus the factory's keyword arguments, and one byte
budget shared by the model and the memory::

    name: split_digits_er
    seed: 0
    budget: 100KB
    stream: {name: split_digits, n_experiences: 5}
    model: {name: mlp, hidden: [100]}
    memory: {name: reservoir}
    learner: {name: er, epochs: 5, lr: 0.1}

Errors name the key path (``config.learner.epochs``), what was expected and
what came.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from memkit.budget import Budget, BudgetExceeded, parse_size
from memkit.learner import Learner
from memkit.registry import get
from memkit.streams import Stream

SECTIONS = {"stream": True, "model": True, "memory": False, "learner": True}
TOP_LEVEL = {"name", "seed", "budget", *SECTIONS}


class ConfigError(ValueError):
    """A configuration that cannot be built; the message names the key path."""


class BudgetTooSmall(ConfigError):
    """The budget cannot hold the parts the config names (the model, or one memory item)."""


@dataclass
class Setup:
    """What a config builds: the stream, the learner, the shared budget."""

    name: str
    seed: int
    stream: Stream
    learner: Learner
    budget: Budget


def read_yaml(path: str | Path, what: str = "config"):
    """The YAML document at ``path``; a missing file or bad YAML is a clear error."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None


def load_config(path: str | Path) -> dict:
    """Read a YAML config and check its top level."""
    config = read_yaml(path)
    check_top_level(config, where=str(path))
    return config


def check_top_level(config, where: str = "config") -> None:
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a mapping at the top level, got "
                          f"{type(config).__name__}")
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"config: unknown key(s) {unknown}; expected among {sorted(TOP_LEVEL)}")
    required = [key for key, needed in {**SECTIONS, "budget": True}.items() if needed]
    missing = [key for key in required if key not in config]
    if missing:
        raise ConfigError(f"config: missing required key(s) {missing}")
    _expect(isinstance(config.get("seed", 0), int) and not isinstance(config.get("seed"), bool),
            "config.seed", "an int", config.get("seed"))
    try:
        parse_size(config["budget"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config.budget: {exc}") from None


def build(config: Mapping) -> Setup:
    """Build stream, model, budget, memory and learner from a checked config, in that order.

    The model is charged to the budget before the memory takes what is left,
    so model bytes and memory bytes always add up to at most the budget.
    """
    check_top_level(config)
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    stream = _create("stream", config["stream"], seed=seed)
    model = _create("model", config["model"], input_shape=stream.input_shape,
                    n_classes=stream.n_classes)
    budget = Budget(config["budget"])
    try:
        budget.charge_model(model)
    except BudgetExceeded as exc:
        raise BudgetTooSmall(f"config.budget: too small for the model alone ({exc})") from None
    memory = None
    if config.get("memory") is not None:
        memory = _create("memory", config["memory"], spec=memory_spec(config, stream),
                         budget=budget, seed=seed)
    learner = _create("learner", config["learner"], model=model, memory=memory, seed=seed,
                      budget=budget, n_classes=stream.n_classes)
    return Setup(str(config.get("name", "run")), seed, stream, learner, budget)


def memory_spec(config: Mapping, stream: Stream) -> dict:
    """The stream's item spec plus the fields the learner keeps with each item.

    A learner class may declare ``memory_fields(n_classes) -> spec`` (dark
    experience replay stores logits with every exemplar).
    """
    name = config["learner"].get("name") if isinstance(config["learner"], Mapping) else None
    try:
        fields = getattr(get("learner", name), "memory_fields", None)
    except KeyError as exc:
        raise ConfigError(f"config.learner.name: {exc.args[0]}") from None
    return {**stream.spec, **(fields(stream.n_classes) if fields else {})}


def _create(section: str, entry, **injected):
    where = f"config.{section}"
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ConfigError(f"{where}: expected a mapping with a 'name' key, got {entry!r}")
    kind = "store" if section == "memory" else section
    try:
        factory = get(kind, entry["name"])
    except KeyError as exc:
        raise ConfigError(f"{where}.name: {exc.args[0]}") from None
    params = {k: v for k, v in entry.items() if k != "name"}
    kwargs = {**_accepted(factory, injected), **_checked(factory, params, where)}
    try:
        return factory(**kwargs)
    except BudgetExceeded as exc:
        raise BudgetTooSmall(f"{where} ({entry['name']}): {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} ({entry['name']}): {exc}") from exc


def _accepted(factory, injected: dict) -> dict:
    names = inspect.signature(factory).parameters
    return {k: v for k, v in injected.items() if k in names}


def _checked(factory, params: dict, where: str) -> dict:
    signature = inspect.signature(factory)
    hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    for key, value in params.items():
        if key not in signature.parameters or key == "self":
            accepted = [p for p in signature.parameters if p != "self"]
            raise ConfigError(f"{where}.{key}: unknown key; {factory.__name__} accepts {accepted}")
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(f"{where}.{key}: expected {_describe(hint)}, got {value!r}")
    return params


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple)) and all(
            _matches(v, args[0]) for v in value if args and args[0] is not Ellipsis)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    return True  # objects the config cannot express (models, budgets) are injected, not typed


def _describe(hint) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def _expect(ok: bool, where: str, expected: str, got) -> None:
    if not ok:
        raise ConfigError(f"{where}: expected {expected}, got {got!r}")
