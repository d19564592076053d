"""The publish gate's verdict: the minimum test accuracy, then ifBetter's comparison on the same images."""

from __future__ import annotations

from typing import Any

import pytest

from kubegraft.runtime import NoticeReason
from kubegraft.spec import OutputSpec
from kubegraft_trainer.gate import Comparison, decide


def _output(**fields: Any) -> OutputSpec:
    return OutputSpec.model_validate({"uri": "s3://models/cars", **fields})


def _compared(new: float, published: float, images: int = 100) -> Comparison:
    return Comparison(version=3, published_accuracy=published, new_accuracy=new, images=images)


def test_always_publishes_even_when_the_published_version_scores_higher() -> None:
    decision = decide(_output(), 0.5, _compared(0.5, 0.9))
    assert decision.publish and decision.reason == ""
    assert decision.record["policy"] == "always"


def test_if_better_publishes_the_first_version_when_nothing_is_published() -> None:
    decision = decide(_output(publishPolicy="ifBetter"), 0.4, None)
    assert decision.publish
    assert "no published version" in decision.message


def test_if_better_publishes_a_model_that_scores_strictly_higher_on_the_same_images() -> None:
    decision = decide(_output(publishPolicy="ifBetter"), 0.81, _compared(0.81, 0.80))
    assert decision.publish
    assert decision.record["comparedWith"] == {
        "version": 3,
        "images": 100,
        "publishedAccuracy": 0.80,
        "newAccuracy": 0.81,
    }


@pytest.mark.parametrize("new", [0.80, 0.70])
def test_if_better_keeps_back_a_model_that_ties_or_scores_lower(new: float) -> None:
    decision = decide(_output(publishPolicy="ifBetter"), new, _compared(new, 0.80))
    assert not decision.publish
    assert decision.reason == NoticeReason.NOT_BETTER
    assert "does not beat version 3" in decision.message and "same 100 test images" in decision.message
    assert decision.record["published"] is False and decision.record["reason"] == "NotBetter"


def test_if_better_keeps_the_model_back_when_no_test_image_could_be_compared() -> None:
    decision = decide(_output(publishPolicy="ifBetter"), None, _compared(0.0, 0.0, images=0))
    assert not decision.publish and decision.reason == NoticeReason.NOT_BETTER


def test_a_test_accuracy_below_the_minimum_is_never_published_whatever_the_policy() -> None:
    for policy in ("always", "ifBetter"):
        decision = decide(_output(publishPolicy=policy, minTestAccuracy=0.9), 0.85, None)
        assert not decision.publish
        assert decision.reason == NoticeReason.BELOW_MINIMUM
        assert "0.8500" in decision.message and "0.9" in decision.message


def test_the_minimum_itself_is_enough_and_no_test_images_are_below_any_minimum() -> None:
    assert decide(_output(minTestAccuracy=0.85), 0.85, None).publish
    assert decide(_output(minTestAccuracy=0.0), None, None).reason == NoticeReason.BELOW_MINIMUM


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_minimum_outside_zero_to_one_is_rejected_naming_the_field(value: float) -> None:
    with pytest.raises(ValueError, match="minTestAccuracy"):
        _output(minTestAccuracy=value)


def test_an_unknown_policy_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match="publishPolicy"):
        _output(publishPolicy="sometimes")
