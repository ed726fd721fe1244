"""The sweep file's ``sampler`` and ``pruner``: a fixed mapping from a name to an Optuna class
(the file never names code to import), options checked against the class's signature.

    sampler: {name: tpe, n_startup_trials: 4}           # tpe | random | gp | cmaes | qmc
    pruner: {name: hyperband, reduction_factor: 3}      # median | percentile |
                                                        # successive_halving | hyperband | threshold | none

``type:`` is the older spelling of ``name:`` and still read. An unknown name or option, or a
value the class refuses, is one line before anything is written; a sampler whose optional
package is missing (GP: torch and scipy, CMA-ES: cmaes, QMC: scipy) names the pip package.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from typing import Any

from apm_lightning.core.errors import APMError

# name -> (class in optuna.samplers, (module, pip package) the sampler imports when it samples)
SAMPLERS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "tpe": ("TPESampler", ()),
    "random": ("RandomSampler", ()),
    "gp": ("GPSampler", (("torch", "torch"), ("scipy", "scipy"))),
    "cmaes": ("CmaEsSampler", (("cmaes", "cmaes"),)),
    "qmc": ("QMCSampler", (("scipy", "scipy"),)),
}
PRUNERS: dict[str, str] = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
    "none": "NopPruner",
}
# Constructor arguments that take Python objects (functions, samplers, trials), not YAML values.
NOT_FROM_YAML = {"gamma", "weights", "constraints_func", "independent_sampler", "source_trials"}
# TPE defaults apm sets (Optuna 4 defaults both to False, Optuna 5 constant_liar to True): a
# study may be joined by more workers at any time (the same command again, other machines), so
# running trials always count, as the worst value, when TPE proposes the next point ("constant
# liar": workers running at once spread out instead of proposing the same values; with one
# worker there is no other running trial and nothing changes). Multivariate TPE models the
# parameters jointly (learning rate and batch size interact).
TPE_DEFAULTS = {"constant_liar": True, "multivariate": True}


def _optuna_class(module: str, class_name: str, kind: str, name: str, where: str) -> type:
    import optuna

    cls = getattr(getattr(optuna, module), class_name, None)
    if cls is None:
        raise APMError(f"{where}: {kind} {name} needs a newer optuna ({class_name}): pip install -U optuna")
    return cls


def _options(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in plain and p.name != "self" and p.name not in NOT_FROM_YAML]


def _settings(raw: Any, where: str, kind: str, choices: list[str], default: str) -> dict[str, Any]:
    """``{name: ..., **options}`` from the sweep file's mapping (``type`` read as ``name``)."""
    if not isinstance(raw, dict):
        raise APMError(f"{where}: {kind} must be a mapping such as {{name: {default}}}, not {raw!r}")
    options = dict(raw)
    if "name" in options and "type" in options:
        raise APMError(f"{where}: {kind}: give 'name' only ('type' is its older spelling)")
    name = options.pop("name", options.pop("type", default))
    if name not in choices:
        raise APMError(f"{where}: unknown {kind} {name!r} (choose one of {', '.join(choices)})")
    return {"name": name, **options}


def _check_options(cls: type, settings: dict[str, Any], where: str, kind: str) -> dict[str, Any]:
    options = {k: v for k, v in settings.items() if k != "name"}
    known = _options(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        has = ", ".join(known) if known else "none"
        raise APMError(
            f"{where}: {kind} {settings['name']} has no option {', '.join(unknown)} (options: {has})"
        )
    return options


def _construct(cls: type, options: dict[str, Any], where: str, what: str) -> Any:
    import optuna

    with warnings.catch_warnings():  # "experimental" arguments (multivariate TPE in Optuna 4)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return cls(**options)
        except (TypeError, ValueError) as err:
            raise APMError(f"{where}: {what}: {err}") from None


def sampler_options(settings: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    """The arguments the sampler class gets: the file's options, apm's TPE defaults, the seed
    (``--sampler-seed`` over the file's ``seed``)."""
    options = {k: v for k, v in settings.items() if k != "name"}
    if settings["name"] == "tpe":
        options = {**TPE_DEFAULTS, **options}
    if seed is not None:
        options["seed"] = seed
    return options


def check_sampler(raw: Any, where: str = "sweep file") -> dict[str, Any]:
    """The sweep file's sampler, checked (name, options, values); the optional package is
    checked when a study is opened (``build_sampler``), not for a W&B sweep file."""
    settings = _settings(raw, where, "sampler", list(SAMPLERS), "tpe")
    cls = _optuna_class("samplers", SAMPLERS[settings["name"]][0], "sampler", settings["name"], where)
    _check_options(cls, settings, where, "sampler")
    _construct(cls, sampler_options(settings), where, f"sampler {settings['name']}")
    return settings


def check_pruner(raw: Any, where: str = "sweep file") -> dict[str, Any]:
    settings = _settings(raw, where, "pruner", list(PRUNERS), "median")
    cls = _optuna_class("pruners", PRUNERS[settings["name"]], "pruner", settings["name"], where)
    _construct(cls, _check_options(cls, settings, where, "pruner"), where, f"pruner {settings['name']}")
    return settings


def build_sampler(settings: dict[str, Any], seed: int | None = None):
    """The Optuna sampler of the sweep file's ``sampler`` (checked again: callers may pass
    their own mapping)."""
    settings = check_sampler(settings)
    name = settings["name"]
    class_name, needs = SAMPLERS[name]
    for module, package in needs:
        if importlib.util.find_spec(module) is None:
            raise APMError(f"sampler {name} needs the {package} package: pip install {package}")
    cls = _optuna_class("samplers", class_name, "sampler", name, "sweep file")
    return _construct(cls, sampler_options(settings, seed), "sweep file", f"sampler {name}")


def build_pruner(settings: dict[str, Any] | None):
    """The Optuna pruner of the sweep file's ``pruner`` (None: no pruning)."""
    settings = check_pruner(settings if settings is not None else {"name": "none"})
    name = settings["name"]
    cls = _optuna_class("pruners", PRUNERS[name], "pruner", name, "sweep file")
    return _construct(cls, {k: v for k, v in settings.items() if k != "name"}, "sweep file", f"pruner {name}")
