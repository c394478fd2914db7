"""Two small models that train in seconds on a laptop CPU (lesson 01)."""

from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    """Flat 64-pixel digits in, class logits out."""

    def __init__(self, in_features: int = 64, hidden: int = 128, num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """(N, 1, 8, 8) digit images in, class logits out; optional BatchNorm (lessons 03 and 08)."""

    def __init__(self, num_classes: int = 10, channels: int = 16, batch_norm: bool = False,
                 dropout: float = 0.0):
        super().__init__()

        def block(c_in, c_out):
            layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            return layers

        self.features = nn.Sequential(*block(1, channels), *block(channels, 2 * channels))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * channels * 2 * 2, num_classes),
        )

    def forward(self, x):
        if x.dim() == 2:  # accept flat digits too
            x = x.view(-1, 1, 8, 8)
        return self.head(self.features(x))
