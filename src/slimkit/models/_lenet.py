"""LeNet-300-100 and LeNet-5 (the Caffe variant used by Han et al. 2016), and Hinton et al.'s MNIST MLPs."""

from __future__ import annotations

from torch import nn

from slimkit.models._registry import register_model


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv20 5×5 → maxpool 2 → conv50 5×5 → maxpool 2 → fc500 → ReLU → fc10 (431,080 params).

    As in Caffe's ``lenet_train_test.prototxt`` there is no nonlinearity after the convolutions (max pooling is
    the nonlinearity there); ``conv_relu=True`` adds ReLUs, which changes no count.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, conv_relu: bool = False) -> None:
        super().__init__()
        act = nn.ReLU if conv_relu else nn.Identity
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.act1 = act()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.act2 = act()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class MLP(nn.Module):
    """A fully-connected net ``in → hidden... → classes`` with ReLU and optional dropout (input and hidden)."""

    def __init__(
        self,
        hidden: tuple[int, ...] | list[int],
        num_classes: int = 10,
        in_features: int = 784,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


@register_model("lenet5", input_shape=(1, 28, 28), paper="LeCun et al. 1998 (Caffe variant)")
def lenet5(num_classes: int = 10, in_channels: int = 1, conv_relu: bool = False) -> LeNet5:
    """LeNet-5, Caffe variant: 431,080 parameters and 2,293,000 MACs on 1×28×28."""
    return LeNet5(num_classes, in_channels, conv_relu)


@register_model("lenet300", input_shape=(1, 28, 28), paper="LeCun et al. 1998")
def lenet300(num_classes: int = 10) -> MLP:
    """LeNet-300-100: 784-300-100-10, 266,610 parameters, 266,200 MACs."""
    return MLP((300, 100), num_classes)


@register_model("mlp1200", input_shape=(1, 28, 28), paper="Hinton et al. 2015 (teacher)")
def mlp1200(num_classes: int = 10, dropout: float = 0.5, input_dropout: float = 0.2) -> MLP:
    """Hinton et al.'s MNIST teacher: 784-1200-1200-10, ReLU, dropout 0.2 on inputs and 0.5 on hidden units."""
    return MLP((1200, 1200), num_classes, dropout=dropout, input_dropout=input_dropout)


@register_model("mlp800", input_shape=(1, 28, 28), paper="Hinton et al. 2015 (student)")
def mlp800(num_classes: int = 10, dropout: float = 0.0, input_dropout: float = 0.0) -> MLP:
    """Hinton et al.'s MNIST student: 784-800-800-10, ReLU, no regularisation by default."""
    return MLP((800, 800), num_classes, dropout=dropout, input_dropout=input_dropout)
