"""Kubernetes-convention conditions: transition times only on flips, generation on each, stable order."""

from __future__ import annotations

from kubegraft_operator.conditions import DesiredCondition, find, is_true, merge


def test_a_new_condition_gets_the_observation_time() -> None:
    (condition,) = merge(
        [], [DesiredCondition("Ready", False, "Pending", "Waiting.")], generation=2, now="T1"
    )
    assert condition == {
        "type": "Ready",
        "status": "False",
        "reason": "Pending",
        "message": "Waiting.",
        "lastTransitionTime": "T1",
        "observedGeneration": 2,
    }


def test_reason_and_message_changes_do_not_move_the_transition_time() -> None:
    before = merge([], [DesiredCondition("Ready", False, "Pending")], generation=1, now="T1")
    after = merge(before, [DesiredCondition("Ready", False, "Training", "Epoch 3.")], generation=2, now="T2")
    assert after[0]["lastTransitionTime"] == "T1"
    assert (after[0]["reason"], after[0]["observedGeneration"]) == ("Training", 2)


def test_a_flip_moves_the_transition_time() -> None:
    before = merge([], [DesiredCondition("Ready", False, "Pending")], generation=1, now="T1")
    after = merge(before, [DesiredCondition("Ready", True, "Succeeded")], generation=1, now="T2")
    assert after[0]["lastTransitionTime"] == "T2"
    assert is_true(after, "Ready")


def test_conditions_come_in_the_kstatus_order() -> None:
    desired = [
        DesiredCondition(t, False, "R") for t in ("Suspended", "Failed", "Ready", "Stalled", "Reconciling")
    ]
    assert [c["type"] for c in merge([], desired, generation=1, now="T")] == [
        "Ready",
        "Reconciling",
        "Stalled",
        "Failed",
        "Suspended",
    ]
    assert find([], "Ready") is None
