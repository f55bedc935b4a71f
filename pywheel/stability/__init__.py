"""stability: study and prevent LLM training instability, from Python.

The same C++ core as the `stability` command line (bundled in this wheel as
``stability.cli_path()``), with numpy in and out::

    import stability as st
    cfg = st.Config(preset="tiny", variant="qk_norm", lr=1e-2, steps=200, out="runs/qk")
    run = st.train(cfg, callback=lambda row: row["loss"] < 20)   # False stops the run
    run.metrics["h.0.fc2.out_norm"]                              # numpy array per step

    model = st.Model(cfg, seed=1)
    out = model.forward(ids, targets)       # loss, logits [B, T, V], telemetry
    grads = model.backward()                # {parameter name: numpy array}

Errors from the core raise ValueError, FileNotFoundError, FileExistsError or
PermissionError with the core's message.
"""
from ._config import Config, size_presets, variant_presets
from ._data import Tokenizer, load_tokenizer, prepare
from ._model import ForwardResult, Model
from ._runs import Run, Sweep, cli_path, load_run, load_sweep, sweep, train

from . import _stability

__version__: str = _stability.__version__

__all__ = [
    "Config", "ForwardResult", "Model", "Run", "Sweep", "Tokenizer", "cli_path", "load_run", "load_sweep",
    "load_tokenizer", "prepare", "size_presets", "sweep", "train", "variant_presets", "__version__",
]
