"""Models: the study's networks as plain ``nn.Module``s and the LightningModules that
train them (``docs/design.md`` §2).

``nets`` (trunks, comparator) and ``rules`` (decision rules) know nothing of Lightning;
``base.PairModule`` holds what every model shares; ``modules`` has one thin subclass per
model. ``MODEL_CLASSES`` names every LightningModule a checkpoint may hold.
"""

from digitpairs.models.base import PairModule
from digitpairs.models.modules import ConvNetModule, DigitClassifierModule, WSAuxModule, WSModule

MODEL_CLASSES: dict[str, type[PairModule]] = {
    cls.__name__: cls for cls in (ConvNetModule, WSModule, WSAuxModule, DigitClassifierModule)
}

__all__ = ["MODEL_CLASSES", "ConvNetModule", "DigitClassifierModule", "PairModule", "WSAuxModule", "WSModule"]
