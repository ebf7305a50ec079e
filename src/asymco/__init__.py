"""asymco: train image classifiers on noisily labelled data with Asymmetric Co-Training (ACT)."""

import asymco._clock  # noqa: F401  (first: the clock starts before torch is imported)
from asymco._version import __version__
from asymco.api import RunResult, load_run_config, resolve_config, train, train_pack
from asymco.data.noise import make_noisy_labels, transition_matrix
from asymco.engine.evaluate import selection_scores
from asymco.methods import create_method, list_methods
from asymco.models import create_model, list_models
from asymco.practitioner import FitResult, find_label_issues, fit
from asymco.presets import get_preset, list_presets

__all__ = [
    "FitResult",
    "RunResult",
    "__version__",
    "create_method",
    "create_model",
    "find_label_issues",
    "fit",
    "get_preset",
    "list_methods",
    "list_models",
    "list_presets",
    "load_run_config",
    "make_noisy_labels",
    "resolve_config",
    "selection_scores",
    "train",
    "train_pack",
    "transition_matrix",
]
