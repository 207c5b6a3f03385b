"""The gradient-processing core: one ``(init, update)`` protocol for client and server optimizers.

Why this package exists: optimizers, server optimizers, clipping and DP noise are all small transforms of an
ordered map name -> tensor, composed with ``chain``; see ``fedsim.gradcore.base`` for the contract (updates are
added to the parameters, states are immutable ``<Name>State`` tuples of tensors, a leading client dimension is
allowed everywhere). This package imports only torch.
"""

from fedsim.gradcore.adaptive import ScaleByAdamState, ScaleByYogiState, scale_by_adam, scale_by_yogi
from fedsim.gradcore.base import (
    ChainState,
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    Schedule,
    Updates,
    apply_updates,
    chain,
    identity,
    is_identity,
    stateless,
    tree_map,
)
from fedsim.gradcore.clipping import clip_by_global_norm, global_norm
from fedsim.gradcore.compose import repeat, reset_every
from fedsim.gradcore.dp import (
    GaussianNoiseState,
    add_gaussian_noise,
    clip_layers_independent,
    clip_layers_pelikan,
    normalize_layers,
    secure_generator,
    seeded_generator,
)
from fedsim.gradcore.layers import clip_per_layer, scale_by_trust_ratio, tensor_norm
from fedsim.gradcore.momentum import TraceState, trace
from fedsim.gradcore.partition import masked, param_roles, partition
from fedsim.gradcore.quantize import QuantizedState, quantized_state
from fedsim.gradcore.scaling import (
    ScaleByScheduleState,
    add_decayed_weights,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)

__all__ = [
    "ChainState",
    "EmptyState",
    "GaussianNoiseState",
    "GradientTransformation",
    "OptState",
    "Params",
    "QuantizedState",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "ScaleByYogiState",
    "Schedule",
    "TraceState",
    "Updates",
    "add_decayed_weights",
    "add_gaussian_noise",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "clip_layers_independent",
    "clip_layers_pelikan",
    "clip_per_layer",
    "global_norm",
    "identity",
    "is_identity",
    "masked",
    "normalize_layers",
    "param_roles",
    "partition",
    "quantized_state",
    "repeat",
    "reset_every",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "secure_generator",
    "seeded_generator",
    "stateless",
    "trace",
    "tensor_norm",
    "tree_map",
]
