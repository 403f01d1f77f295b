"""The scenario's `actions:` section and the CLI's `replay` / `view` refusals (issue 18): checked
before Genesis or a model loads, one line naming the bad value."""

from __future__ import annotations

import pytest

from hybridsim.scenario.spec import Scenario, SpecError


def _franka(actions: dict) -> Scenario:
    from hybridsim.config import compose

    data = compose(["scenario=franka_push"]).scenario.to_dict()
    data["actions"] = actions
    return Scenario.from_dict(data)


def test_actions_round_trip_and_default_controls():
    from hybridsim.interactive.controls import default_controls

    s = _franka({"arm": {"kind": "joint_targets", "entity": "franka", "joints": ["joint1"], "low": [-1.0],
                         "high": [1.0]},
                 "nudge": {"kind": "impulse", "entity": "box", "limit": 0.1},
                 "orbit": {"kind": "move_camera", "camera": "top", "limit": 0.05}})
    assert [c.name for c in s.actions] == ["arm", "nudge", "orbit"]
    again = Scenario.from_dict(s.to_dict())
    assert again.actions == s.actions
    assert s.to_dict()["actions"]["nudge"] == {"kind": "impulse", "entity": "box", "limit": 0.1}
    plain = _franka({})
    assert "actions" not in plain.to_dict()
    assert [(c.kind, c.entity) for c in default_controls(plain)] == [("joint_targets", "franka"), ("impulse", "box")]


@pytest.mark.parametrize("actions, where, message", [
    ({"p": {"kind": "impulse", "entity": "franka", "limit": 1}}, "actions.p.entity", "not a free rigid body"),
    ({"p": {"kind": "impulse", "entity": "box"}}, "actions.p.limit", "needs a limit > 0"),
    ({"p": {"kind": "force", "entity": "box", "limit": -2}}, "actions.p.limit", "needs a limit > 0"),
    ({"p": {"kind": "joint_targets", "entity": "box"}}, "actions.p.entity", "not a robot"),
    ({"p": {"kind": "kick", "entity": "box"}}, "actions.p.kind", "is not one of"),
    ({"p": {"kind": "impulse", "entity": "ghost", "limit": 1}}, "actions.p.entity", "unknown entity 'ghost'"),
    ({"p": {"kind": "move_camera", "camera": "side", "limit": 1}}, "actions.p.camera", "unknown camera 'side'"),
    ({"p": {"kind": "joint_targets", "entity": "franka", "low": [0.0]}}, "actions.p.low", "one value per joint"),
    ({"p": {"kind": "joint_targets", "entity": "franka", "joints": ["joint1"], "low": [1.0], "high": [0.0]}},
     "actions.p.low", "must be < high"),
    ({"p": {"kind": "joint_targets", "entity": "franka", "joints": ["joint1", "joint1"]}}, "actions.p.joints",
     "listed twice"),
    ({"p": {"kind": "impulse", "entity": "box", "limit": {"uniform": [0.1, 1.0]}}}, "actions.p.limit",
     "not a distribution"),
    ({"p": {"kind": "impulse", "entity": "box", "limit": 1, "camera": "top"}}, "actions.p.camera", "not used by"),
    ({"p": {"kind": "impulse", "entity": "box", "limit": 1}, "q": {"kind": "impulse", "entity": "box", "limit": 2}},
     "actions.q", "already commands impulse"),
])
def test_actions_are_validated_with_their_path(actions, where, message):
    with pytest.raises(SpecError) as err:
        _franka(actions)
    assert f"scenario.{where}" in str(err.value) and message in str(err.value)


def test_cli_replay_and_view_refuse_bad_input_in_one_line(tmp_path, capsys):
    from hybridsim.cli import main

    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 2
    assert "is not a file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something else"}\n')
    assert main(["replay", str(bad)]) == 2
    assert "not a hybridsim-session v1 recording" in capsys.readouterr().err
    assert main(["replay", str(bad), "speed=2"]) == 2
    assert "unknown replay option" in capsys.readouterr().err
    assert main(["view", "port=99999"]) == 2
    assert "is not a TCP port" in capsys.readouterr().err
