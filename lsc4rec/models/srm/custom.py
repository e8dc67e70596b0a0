"""A user's own SRM, named by its dotted path in the config: ``model=custom model.target=my_srm.TinyRec``.

The class lives outside the package (any importable module) and implements
:class:`~lsc4rec.models.srm.base.SequentialRecommender` (docs/custom_model.md). Everything here checks it up
front, before any data is read, so a wrong path, a class that is not an SRM or a hyperparameter its
constructor does not take is one clear error naming the config key and its value, never a traceback from
``importlib`` or from the constructor's call:

- :func:`load_srm_class`: the dotted path imports and names a concrete ``SequentialRecommender`` subclass;
- :func:`check_constructor_params`: the constructor takes ``num_items`` first, every given key, and every
  argument it requires is given;
- :func:`check_built_model`: the built model has the item table the rest of the system keys on.

``num_items`` (the catalogue's size) and ``max_len`` (the run's ``data.max_len``, passed when the constructor
takes it) are the run's, never hyperparameters.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from lsc4rec.models.srm.base import SequentialRecommender

__all__ = [
    "RESERVED_ARGUMENTS",
    "check_built_model",
    "check_constructor_params",
    "load_srm_class",
    "overrides_scoring",
    "takes_argument",
]

#: Constructor arguments the run supplies (``num_items`` the catalogue, ``max_len`` ``data.max_len``).
RESERVED_ARGUMENTS = ("num_items", "max_len")
#: The scoring methods a model that does not score by dot products with its item table overrides together.
SCORING_METHODS = ("position_scores", "position_scores_with_negatives", "score_all", "score_candidates")


def load_srm_class(target: Any, key: str = "model.target") -> type[SequentialRecommender]:
    """The class ``target`` (``package.module.Class``) names; ``key`` names the config key in errors.

    Raises ``ValueError`` when the path is unset or malformed, its module does not import, the module has
    no such attribute, or the attribute is not a concrete :class:`SequentialRecommender` subclass.
    """
    if target is None or str(target).strip() in ("", "???"):
        raise ValueError(
            f"{key} is not set: name your model class by its dotted path, e.g. {key}=my_srm.TinyRec "
            "(docs/custom_model.md)"
        )
    path = str(target).strip()
    module_name, _, class_name = path.rpartition(".")
    if not module_name or not all(part.isidentifier() for part in path.split(".")):
        raise ValueError(f"{key}={path!r} is not a dotted path module.Class (e.g. my_srm.TinyRec)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # The module itself (or a package above it) is missing, rather than something the module imports.
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ValueError(
                f"{key}={path!r}: no module named {module_name!r} (install it, or put the folder holding "
                "it on PYTHONPATH in every process that builds the model)"
            ) from None
        raise ValueError(f"{key}={path!r}: importing {module_name!r} failed: {error}") from error
    except Exception as error:  # the user's module raised while it was imported (any type)
        raise ValueError(
            f"{key}={path!r}: importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"{key}={path!r}: module {module_name!r} has no attribute {class_name!r}")
    if not (inspect.isclass(cls) and issubclass(cls, SequentialRecommender)):
        what = f"class {cls.__module__}.{cls.__qualname__}" if inspect.isclass(cls) else type(cls).__name__
        raise ValueError(
            f"{key}={path!r} is a {what}, not a subclass of "
            "lsc4rec.models.srm.SequentialRecommender (docs/custom_model.md)"
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ValueError(f"{key}={path!r} does not implement {missing} (SequentialRecommender's interface)")
    return cls


def _parameters(cls: type) -> list[inspect.Parameter]:
    """The constructor's parameters, ``self`` left out."""
    return list(inspect.signature(cls).parameters.values())


def takes_argument(cls: type, name: str) -> bool:
    """Whether ``cls``'s constructor takes the keyword argument ``name`` (by name or through ``**kwargs``)."""
    for parameter in _parameters(cls):
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if parameter.name == name and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY:
            return True
    return False


def check_constructor_params(
    cls: type[SequentialRecommender], params: Mapping[str, Any], prefix: str, label: str
) -> None:
    """Raise ``ValueError`` unless ``cls(num_items, **params)`` is a call its constructor accepts.

    ``prefix`` names the keys in errors (``model.params`` -> ``model.params.hidden_size``); ``label`` names
    the model (``model.target=my_srm.TinyRec``). The first argument must be ``num_items``; ``max_len`` is the
    run's, passed when the constructor takes it; every other argument without a default must be in
    ``params``, and every key of ``params`` must be an argument (unless the constructor takes ``**kwargs``).
    """
    kinds = inspect.Parameter
    parameters = _parameters(cls)
    positional = (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    if not parameters or parameters[0].name != "num_items" or parameters[0].kind not in positional:
        raise ValueError(
            f"{label}: the constructor's first argument must be num_items (the catalogue's size), got "
            f"{cls.__name__}{inspect.signature(cls)}"
        )
    rest = parameters[1:]
    only_positional = [p.name for p in rest if p.kind is kinds.POSITIONAL_ONLY]
    if only_positional:
        raise ValueError(
            f"{label}: the constructor's arguments after num_items must be keyword arguments, not "
            f"positional-only ({', '.join(only_positional)})"
        )
    for name in RESERVED_ARGUMENTS:
        if name in params:
            source = "the catalogue's size" if name == "num_items" else "the run's data.max_len"
            raise ValueError(f"{prefix}.{name}: {name} is {source}, passed by the run; remove the key")
    # The arguments a config key can set: max_len comes from the run, *args from nowhere.
    named = [p for p in rest if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    accepted = [p.name for p in named if p.name != "max_len"]
    takes_any = any(p.kind is kinds.VAR_KEYWORD for p in rest)
    unknown = sorted(k for k in params if k not in accepted)
    if unknown and not takes_any:
        raise ValueError(
            f"unknown key {prefix}.{unknown[0]} for {label} (its constructor takes: "
            f"{', '.join(accepted) or 'nothing but num_items'})"
        )
    required = [p.name for p in named if p.default is kinds.empty and p.name not in params]
    required = [name for name in required if name != "max_len"]
    if required:
        raise ValueError(f"missing key {prefix}.{required[0]}: {label} requires it (it has no default)")


def overrides_scoring(cls: type[SequentialRecommender]) -> list[str]:
    """The scoring methods of :data:`SCORING_METHODS` ``cls`` overrides (a model that is not a plain
    sequence encoder scored against its item table, as DIN)."""
    return [
        name for name in SCORING_METHODS if getattr(cls, name) is not getattr(SequentialRecommender, name)
    ]


def check_built_model(model: SequentialRecommender, num_items: int, label: str) -> None:
    """Raise ``ValueError`` unless ``model`` (just built) has the shape the rest of the system relies on.

    The base class's constructor made ``item_embedding`` (row i = item i, federated row weighting and
    MergeNet key on it) and set ``num_items`` / ``hidden_size``; a model that skipped it or replaced the table
    would fail later, far from its cause. A model claiming streaming must have the streaming methods.
    """
    if getattr(model, "num_items", None) != int(num_items):
        raise ValueError(
            f"{label}: the built model has num_items={getattr(model, 'num_items', None)!r}, expected "
            f"{num_items}; call super().__init__(num_items, hidden_size) in its constructor"
        )
    table = getattr(model, "item_embedding", None)
    expected = (int(num_items) + 1, int(model.hidden_size))
    if not isinstance(table, nn.Embedding) or tuple(table.weight.shape) != expected:
        raise ValueError(
            f"{label}: item_embedding must be the nn.Embedding of shape {expected} that "
            "SequentialRecommender.__init__ makes (row i = item i, row 0 padding); do not replace it"
        )
    if model.supports_streaming:
        missing = [
            name for name in ("prefill", "step", "score_hidden") if not callable(getattr(model, name, None))
        ]
        if missing:
            raise ValueError(f"{label}: supports_streaming is True but it has no {', '.join(missing)}")
