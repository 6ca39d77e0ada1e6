"""The model protocols are checked by member lookup that sees an nn.Module's parameters and submodules."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from crmt.models.heads import ConcatFusion, OrthogonalFusion
from crmt.models.protocol import LinearFusionHead, conforms, is_certifiable, protocol_members


def test_protocol_members_are_the_declared_names():
    assert protocol_members(LinearFusionHead) == {"bias", "modality_weights", "integration_weights", "per_class_certificate"}


@pytest.mark.parametrize("head_class", [ConcatFusion, OrthogonalFusion])
def test_heads_conform_although_static_lookup_misses_their_parameters(head_class):
    head = head_class([16, 16], 4)
    assert conforms(head, LinearFusionHead)
    if head_class is OrthogonalFusion:  # bias is an nn.Parameter: Python 3.12's isinstance(head, protocol) misses it
        with pytest.raises(AttributeError):
            inspect.getattr_static(head, "bias")


def test_a_head_without_a_member_does_not_conform_and_its_model_is_not_certifiable():
    class NoBias(nn.Module):
        per_class_certificate = True

        def modality_weights(self) -> list[torch.Tensor]:
            return []

        def integration_weights(self) -> torch.Tensor:
            return torch.ones(2, 4)

    model = nn.Module()
    model.certifiable = True
    model.head = NoBias()
    assert not conforms(model.head, LinearFusionHead) and not is_certifiable(model)
    model.head.bias = nn.Parameter(torch.zeros(4))
    assert is_certifiable(model)
