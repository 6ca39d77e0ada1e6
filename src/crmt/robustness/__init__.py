"""Robustness of multi-modal models: attacks, Lipschitz estimates and bounds, certified radii.

- ``attacks``: FGM and l2-PGD over all modalities jointly or one modality, missing modality.
- ``lipschitz``: input-gradient norms and Gram matrices of the uni-modal scores.
- ``certify``: pair Lipschitz tables and certified radii (method.md §1-§2), certified accuracy.
- ``certificates``: pair Lipschitz tables of a trained model, estimated or sound.
- ``sound``: upper bounds of a ResNet18 encoder's Lipschitz constant (spectral norms).
- ``audit``: l2-PGD inside each sample's radius, the honest check of a certificate.
- ``evaluation``: every attack and certificate over a data set, as per-sample records.
- ``report`` / ``figures``: the paper's Table 2 layout, metrics.json and PNG figures.
"""
