"""LeNet-5 (LeCun et al., 1998), two variants on the same 32x32 geometry:

  classic  as published: tanh units, average-pool subsampling (sigmoid with `activation: sigmoid`)
  modern   the usual re-reading: ReLU units and max pooling

  input 1x32x32 -> C1 conv 6@5x5 -> 6x28x28 -> S2 pool 2 -> 6x14x14 -> C3 conv 16@5x5 -> 16x10x10
  -> S4 pool 2 -> 16x5x5 -> C5 conv 120@5x5 -> 120x1x1 -> F6 dense 84 -> output dense classes

MNIST's 28x28 digits are zero-padded to 32x32 on the device (the paper did the same), so that
strokes reach the centre of C5's receptive fields. Simplifications, as everywhere today: C3 sees
all six S2 maps (no connection table), subsampling has no trainable coefficient, and the output
is logits (softmax is in the loss) instead of Euclidean RBF units. `input_size` is what C1 sees
(28 without padding leaves C5 a 4x4 map, smaller than its 5x5 kernel: a ConfigError).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from nnlab.models.init import Initializer, init_module
from nnlab.models.layers import ActivationName, InputAdapter, trace_shapes
from nnlab.models.layers import activation as make_activation
from nnlab.schema import PositiveInt

VARIANTS = {"classic": ("tanh", nn.AvgPool2d), "modern": ("relu", nn.MaxPool2d)}


class LeNet5(nn.Module):
    def __init__(
        self,
        num_classes: PositiveInt = 10,
        variant: Literal["classic", "modern"] = "modern",
        in_channels: PositiveInt = 1,
        in_size: PositiveInt = 28,
        activation: ActivationName | None = None,
        input_size: PositiveInt = 32,
        init: Initializer = "torch",
    ):
        super().__init__()
        default_activation, pool = VARIANTS[variant]
        act = activation or default_activation

        def a() -> nn.Module:
            return make_activation(act)

        self.features = nn.Sequential(
            OrderedDict(
                input=InputAdapter(in_channels, in_size, 1, input_size, mode="pad"),
                c1=nn.Conv2d(1, 6, kernel_size=5),
                act1=a(),
                s2=pool(kernel_size=2, stride=2),
                c3=nn.Conv2d(6, 16, kernel_size=5),
                act3=a(),
                s4=pool(kernel_size=2, stride=2),
                c5=nn.Conv2d(16, 120, kernel_size=5),
                act5=a(),
                flatten=nn.Flatten(),
            )
        )
        self.shapes = trace_shapes(
            self.features, in_channels, in_size, key=lambda layer: "model.input_size"
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                f6=nn.Linear(self.shapes[-1][1][0], 84),
                act6=a(),
                output=nn.Linear(84, num_classes),
            )
        )
        init_module(self, init)  # Keras' initialiser of every conv and dense layer; biases zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
