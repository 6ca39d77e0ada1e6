"""crmt: certifiable robust multi-modal training (CRMT, ICLR 2024) on PyTorch Lightning.

Data flow: ``data_modules`` (clips -> tensors) -> ``crmt.models.encoders`` (ResNet18 per
modality) -> ``crmt.models.heads`` (concatenation or orthogonal fusion) ->
``crmt.strategies`` (one LightningModule per training strategy) -> ``crmt.robustness``
(attacks, tau~ estimation, certified radii), which sees a model only through
``crmt.models.protocol`` -> ``crmt.callbacks`` (the monitor and the report).
"""

__version__ = "0.1.0"
