"""Models: the study's networks as plain ``nn.Module``s and the LightningModules that
train them (``docs/design.md`` §2).

``nets`` (trunks, comparator), ``rules`` (decision rules), ``scatter`` (the second member)
and ``packed`` (several runs' networks as one) know nothing of Lightning;
``pair_module.PairModule`` is the LightningModule every model shares;
``lightning_modules`` has one thin LightningModule per model. ``MODEL_CLASSES`` names every
LightningModule a checkpoint may hold.
"""

from digitpairs.models.lightning_modules import ConvNetModule, DigitClassifierModule, WSAuxModule, WSModule
from digitpairs.models.pair_module import PairModule

MODEL_CLASSES: dict[str, type[PairModule]] = {
    cls.__name__: cls for cls in (ConvNetModule, WSModule, WSAuxModule, DigitClassifierModule)
}

__all__ = ["MODEL_CLASSES", "ConvNetModule", "DigitClassifierModule", "PairModule", "WSAuxModule", "WSModule"]
