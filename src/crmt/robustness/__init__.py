"""Robustness of multi-modal models: attacks, Lipschitz estimates and bounds, certified radii.

- ``attacks``: FGM and l2-PGD over all modalities jointly or one modality, missing modality.
- ``lipschitz``: input-gradient norms and Gram matrices of the uni-modal scores.
- ``certify``: pair Lipschitz tables and certified radii (method.md §1-§2), certified accuracy.
- ``certificates``: the one tau~ estimator (training and evaluation) and pair Lipschitz tables of
  a trained model, estimated or sound (encoders' bounds: ``crmt.models.layer_bounds``).
- ``audit``: l2-PGD inside each sample's radius, the honest check of a certificate.
- ``threats``: ``Threat`` (kind, attacked modalities, budget) and ``Scope``, the keys of every result.
- ``settings``: ``RobustnessSettings``, what to evaluate, and the Table 2 columns it implies.
- ``evaluation``: every attack and certificate over a data set, as per-sample records.
- ``results``: the typed metrics (accuracies, curves, certificates, eta ratio, audit), one ``to_json``
  and ``from_json`` each.
- ``report`` / ``figures``: the paper's Table 2 layout, metrics.json and PNG figures.
"""
