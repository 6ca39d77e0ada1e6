"""Robustness of multi-modal models: attacks, Lipschitz estimates and bounds, certified radii.

- ``ball``: the threat model, each sample's joint l2 ball over its attacked modalities and the pixel range.
- ``attack``: the one call of every attack (``Attack``, ``AttackResult``), the model as a function of
  the attacked inputs, the clean pass; ``attack_losses``: cross-entropy, DLR, targeted DLR and margin.
- ``pgd``: the paper's FGM and l2-PGD; ``apgd``: Auto-PGD; ``square``: the gradient-free Square attack.
- ``suite``: the adaptive evaluation's named suite (APGD-CE, APGD-T, Square), worst case per sample;
  ``sanity``: Carlini's checks of an evaluation, raised or not; ``adaptive``: the suite and the checks
  over a data set.
- ``lipschitz``: input-gradient norms and Gram matrices of the uni-modal scores.
- ``certify``: pair Lipschitz tables and certified radii (method.md §1-§2), certified accuracy.
- ``certificates``: the one tau~ estimator (training and evaluation) and pair Lipschitz tables of
  a trained model, estimated or sound (encoders' bounds: ``crmt.models.layer_bounds``).
- ``audit``: l2-PGD (and the suite) inside each sample's radius, the honest check of a certificate.
- ``threats``: ``Threat`` (kind, attacked modalities, budget) and ``Scope``, the keys of every result.
- ``settings``: ``RobustnessSettings``, what to evaluate, and the Table 2 columns it implies.
- ``batch_attacks``: the paper's protocol on one batch, stacked, and the accuracy-vs-radius curves.
- ``evaluation``: every attack and certificate over a data set; ``records``: its per-sample records
  and gathered results.
- ``results``: the typed metrics (accuracies, curves, certificates, eta ratio, audit, adaptive
  summary), one ``to_json`` and ``from_json`` each.
- ``report`` / ``figures``: the paper's Table 2 layout, metrics.json and PNG figures.
"""
