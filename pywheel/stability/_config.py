"""Config: a run's model switches and training fields, validated by the C++ core."""
from __future__ import annotations

import json
from typing import Any, Dict, List

from . import _stability


def size_presets() -> List[str]:
    """Names of the size presets (tiny, small, mid, gpt2_124m, paper_830m)."""
    return list(_stability.size_presets())


def variant_presets() -> List[str]:
    """Names of the stability-method presets (baseline, qk_norm, qkv_norm, ...)."""
    return list(_stability.variant_presets())


_MODEL_FIELDS = [f for f in _stability.model_field_names() if f not in ("size", "variant")]
_TRAIN_FIELDS = list(_stability.train_field_names())


class Config:
    """A run configuration: a size preset, a variant preset and any switch or training field.

    ``Config(preset="tiny", variant="qk_norm", norm="rmsnorm", lr=1e-2, steps=200)``.
    Every model switch (README: Switches) and training field (README: Training) is a
    keyword; an unknown keyword or an invalid value raises ValueError naming the field.
    Attributes read the resolved values: ``cfg.qk_norm``, ``cfg.lr``.
    """

    def __init__(self, preset: str = "tiny", variant: str = "baseline", **fields: Any) -> None:
        model: Dict[str, Any] = {}
        train: Dict[str, Any] = {}
        for name, value in fields.items():
            if name in _MODEL_FIELDS:
                model[name] = value
            elif name in _TRAIN_FIELDS:
                train[name] = value
            else:
                raise ValueError(f'unknown config field "{name}"; model switches: {", ".join(_MODEL_FIELDS)}; '
                                 f'training fields: {", ".join(_TRAIN_FIELDS)}')
        self._preset, self._variant = preset, variant
        self._given = dict(fields)
        self._resolved = json.loads(_stability.make_run_config(preset, variant, json.dumps(model), json.dumps(train)))

    # -- conversions -------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        """The full configuration: {"model": {...every switch}, "train": {...every field}}."""
        return json.loads(json.dumps(self._resolved))

    def to_json(self) -> str:
        """``to_dict()`` as JSON: the format of a run's config.json and `stability train --config`."""
        return json.dumps(self._resolved, indent=2)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Config":
        """From {"model": {...}, "train": {...}} (e.g. a run's config.json), validated."""
        resolved = json.loads(_stability.validate_run_config(json.dumps(d)))
        model, train = resolved["model"], resolved["train"]
        fields = {k: v for k, v in model.items() if k not in ("size", "variant")}
        fields.update(train)
        return cls(model["size"], model["variant"], **fields)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        """From the JSON text of ``to_json()`` or a run's config.json."""
        return cls.from_dict(json.loads(text))

    def replace(self, **fields: Any) -> "Config":
        """A copy with some fields changed (presets included: ``cfg.replace(variant="qkv_norm")``)."""
        given = dict(self._given)
        preset = fields.pop("preset", self._preset)
        variant = fields.pop("variant", self._variant)
        given.update(fields)
        return Config(preset, variant, **given)

    # -- access ------------------------------------------------------------------------
    @property
    def preset(self) -> str:
        """The size preset."""
        return self._preset

    @property
    def variant(self) -> str:
        """The stability-method preset."""
        return self._variant

    @property
    def parameter_count(self) -> int:
        """Trainable parameters of the model."""
        return int(_stability.parameter_count(json.dumps(self._resolved)))

    def __getattr__(self, name: str) -> Any:
        resolved = self.__dict__.get("_resolved")
        if resolved is not None:
            if name in resolved["model"]:
                return resolved["model"][name]
            if name in resolved["train"]:
                return resolved["train"][name]
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._resolved == other._resolved

    def __repr__(self) -> str:
        args = [f"preset={self._preset!r}", f"variant={self._variant!r}"]
        args += [f"{k}={v!r}" for k, v in sorted(self._given.items())]
        return f"Config({', '.join(args)})"
