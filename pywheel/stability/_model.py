"""Model: the GPT of a Config, forward and backward on numpy arrays."""
from __future__ import annotations

import json
from typing import Dict, NamedTuple, Union

import numpy as np

from . import _stability
from ._config import Config


class ForwardResult(NamedTuple):
    """What ``Model.forward`` returns."""
    loss: float
    logits: np.ndarray       # float32 [batch, seq, vocab] (bf16 values where the precision is bf16)
    telemetry: Dict[str, float]  # the fixed telemetry names (README: Telemetry)


class Model:
    """The model of ``config`` with parameters initialised from ``seed`` (GPT-2 init), on the
    config's ``device`` ("auto": a GPU when one is visible, else the CPU; "cpu"; "cuda[:N]")
    with its ``precision`` and ``attention``, as ``stability train`` runs it.

    Forward and backward release the GIL. Arrays in and out are numpy on the host (copied to
    and from the device); ``parameters`` returns copies; write with ``set_parameters``.
    """

    def __init__(self, config: Union[Config, dict], seed: int = 1) -> None:
        cfg = config if isinstance(config, Config) else Config.from_dict(config)
        self.config = cfg
        self._m = _stability.Model(cfg.to_json(), int(seed))

    @property
    def device(self) -> str:
        """Where the model computes: "cpu" or "cuda:N"."""
        return str(self._m.device)

    def forward(self, ids: np.ndarray, targets: np.ndarray) -> ForwardResult:
        """Loss, logits and telemetry for int token ids and targets of shape [batch, seq]."""
        loss, logits, telemetry = self._m.forward(np.asarray(ids), np.asarray(targets))
        return ForwardResult(float(loss), logits, dict(telemetry))

    def backward(self, dloss: float = 1.0) -> Dict[str, np.ndarray]:
        """Gradients of the last forward's loss (times dloss), by parameter name; one backward
        per forward (ValueError otherwise)."""
        return dict(self._m.backward(float(dloss)))

    @property
    def parameters(self) -> Dict[str, np.ndarray]:
        """Copies of every parameter, by the names of the README's parameter table."""
        return dict(self._m.parameters())

    @property
    def buffers(self) -> Dict[str, np.ndarray]:
        """Non-trainable state (σ-reparam power-iteration vectors)."""
        return dict(self._m.buffers())

    def set_parameters(self, values: Dict[str, np.ndarray]) -> None:
        """Overwrites the named parameters (shapes must match; KeyError for unknown names)."""
        for name, value in values.items():
            self._m.set_parameter(name, np.asarray(value, dtype=np.float32))

    @property
    def parameter_names(self) -> list:
        """Parameter names in initialisation order."""
        return list(self._m.parameter_names())

    def train_mode(self, on: bool = True) -> None:
        """In training mode (the default) each forward advances σ-reparam's power iteration."""
        self._m.set_training(bool(on))
