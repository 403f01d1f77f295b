"""Scenario spec: round trips, shipped YAML, and one-line errors for bad input (no Genesis needed)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import hybridsim
from hybridsim.cli import main
from hybridsim.config import compose, config_dir, scenario_names
from hybridsim.scenario.spec import Camera, Entity, Event, Scenario, SpecError, Timing

DATA = Path(__file__).parent / "data"


def _python_scenario() -> Scenario:
    return Scenario(
        name="py",
        seed=3,
        timing=Timing(duration=1.0, fps=10.0, dt=0.01),
        entities=[Entity("ground", "plane"), Entity("b", "box", size=(0.1, 0.2, 0.3), euler=(0, 0, 45), mass=2.0)],
        cameras=[Camera("c", pos=(1.0, 0.0, 1.0), res=(32, 16))],
        events=[Event(at=0.5, kind="impulse", entity="b", vector=(1.0, 0.0, 0.0))],
    )


def test_python_yaml_round_trip(tmp_path):
    s = _python_scenario()
    text = yaml.safe_dump(s.to_dict(), sort_keys=False)
    back = Scenario.from_dict(yaml.safe_load(text))
    assert back == s
    assert back.to_dict() == s.to_dict()


@pytest.mark.parametrize("name", scenario_names())
def test_shipped_scenarios_compose_and_round_trip(name):
    cfg = compose([f"scenario={name}"])
    assert cfg.scenario.name == name
    assert Scenario.from_dict(cfg.scenario.to_dict()) == cfg.scenario
    assert cfg.scenario.timing.n_frames > 0


def test_every_yaml_file_composes():
    files = sorted(config_dir().rglob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        if f.parent.name == "scenario":
            compose([f"scenario={f.stem}"])
        else:
            compose([], config_name=f.stem)


def test_at_least_four_scenarios():
    assert {"default", "stack_topple", "franka_push", "mesh_slope"} <= set(scenario_names())


def test_overrides_and_yaml_path():
    cfg = compose(["scenario=default", "n_envs=3", "scenario.seed=11", "scenario.entities.crate.mass=2.5"])
    assert (cfg.n_envs, cfg.scenario.seed, cfg.scenario.entity("crate").mass) == (3, 11, 2.5)
    cfg = compose([f"scenario={DATA / 'drop.yaml'}", "scenario.timing.duration=0.5"])
    assert cfg.scenario.name == "drop" and cfg.scenario.timing.duration == 0.5
    s = hybridsim.load_scenario("stack_topple", ["seed=5"])
    assert s.seed == 5


def test_run_config_round_trip():
    cfg = compose(["scenario=franka_push"])
    assert hybridsim.RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "override, path",
    [
        ("+scenario.entities.crate.colour=[1,0,0]", "scenario.entities.crate.colour"),  # unknown key
        ("scenario.entities.crate.mass=heavy", "scenario.entities.crate.mass"),  # wrong type
        ("scenario.entities.crate.mass=-1", "scenario.entities.crate.mass"),  # non-positive mass
        ("scenario.events.0.entity=crat", "scenario.events[0].entity"),  # unknown entity
        ("+scenario.entities.crate.file=nope.obj", "scenario.entities.crate.file"),  # missing file
        ("scenario.entities.ball.restitution=1.5", "scenario.entities.ball.restitution"),
        ("scenario.timing.fps=0", "scenario.timing.fps"),
        ("n_envs=0", "n_envs"),
    ],
)
def test_bad_input_one_line_exit_2(override, path, capsys):
    code = main(["run", override, "progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert path in err and "Traceback" not in err


def test_missing_mesh_file_names_fix():
    bad = _python_scenario().to_dict()
    bad["entities"]["m"] = {"type": "mesh", "file": "/no/such/duck.obj"}
    with pytest.raises(SpecError, match=r"scenario.entities.m.file: file not found.*genesis:"):
        Scenario.from_dict(bad)


def test_unknown_scenario_and_bad_override(capsys):
    assert main(["run", "scenario=nosuch"]) == 2
    assert "unknown scenario 'nosuch'" in capsys.readouterr().err
    assert main(["run", "not_an_override"]) == 2
    assert main(["run", "bogus_key=1"]) == 2
    assert "bogus_key" in capsys.readouterr().err


def test_cli_subprocess_error_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "hybridsim.cli", "run", "scenario.entities.crate.mass=0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("hybridsim: error: scenario.entities.crate.mass: must be > 0")
    assert "Traceback" not in r.stderr


def test_spec_dataclasses_are_plain():
    for cls in (Scenario, Entity, Camera, Event, Timing):
        assert dataclasses.is_dataclass(cls)


def test_import_is_quick():
    code = "import time; t=time.perf_counter(); import hybridsim, physics, render, refine; print(time.perf_counter()-t)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    heavy = "import sys, hybridsim, physics; print(any(m in sys.modules for m in ('genesis', 'torch', 'gsplat', 'diffusers')))"
    r = subprocess.run([sys.executable, "-c", heavy], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False"


# ---------------------------------------------------------------- v2: the rare-event language
@pytest.mark.parametrize(
    "override, path, text",
    [
        ("scenario.params.push={uniform:[0.3,0.1]}", "scenario.params.push.uniform", "low 0.3 > high 0.1"),
        ("scenario.entities.glass.mass={normal:[0.2,-0.1],clip:[0.1,0.3]}", "scenario.entities.glass.mass.normal",
         "sigma must be >= 0"),
        ("scenario.entities.glass.mass={normal:[0.2,0.1]}", "scenario.entities.glass.mass", "add clip"),
        ("scenario.entities.glass.semantic_class={choice:[a,b],weights:[1]}",
         "scenario.entities.glass.semantic_class.weights", "one weight per option"),
        ("scenario.entities.glass.mass=$nope", "scenario.entities.glass.mass", "unknown parameter 'nope'"),
        ("scenario.entities.glass.mass={loguniform:[0,1]}", "scenario.entities.glass.mass.loguniform", "0 < low"),
        ("scenario.events.2.when.contact.a=glas", "scenario.events[2].when.contact.a", "unknown entity 'glas'"),
        ("scenario.require.0.event=smash", "scenario.require[0].event", "unknown event 'smash'"),
        ("scenario.terminate.at_rest=-1", "scenario.terminate.at_rest", "must be > 0"),
    ],
)
def test_bad_scenario_language_one_line_exit_2(override, path, text, capsys):
    code = main(["run", "scenario=glass_table_edge", override, "progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{path}: " in err and text in err and "Traceback" not in err


def test_circular_after_names_the_cycle(tmp_path, capsys):
    data = yaml.safe_load((DATA / "drop.yaml").read_text())
    data["events"] = [
        {"name": "a", "after": {"event": "c", "delay": 0.1}},
        {"name": "b", "after": {"event": "a"}},
        {"name": "c", "after": {"event": "b"}, "actions": [{"kind": "impulse", "entity": "box", "vector": [1, 0, 0]}]},
    ]
    bad = tmp_path / "cycle.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["run", f"scenario={bad}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hybridsim: error: scenario.events[0].after.event: circular `after` chain: a -> c -> b -> a; " \
                  "one of them needs `at` or `when`"


@pytest.mark.parametrize(
    "event, path, text",
    [
        ({"at": 1.0, "when": {"time": {"above": 0.5}}}, "scenario.events[0]", "exactly one trigger"),
        ({"when": {"speed": {"entity": "box", "above": 1, "below": 2}}}, "scenario.events[0].when.speed", "one of above"),
        ({"when": {"height": {"entity": "box", "below": 1}, "time": {"above": 1}}}, "scenario.events[0].when",
         "exactly one condition"),
        ({"when": {"at_rest": {"entity": "ball", "for": 0}}}, "scenario.events[0].when.at_rest.for", "must be > 0"),
        ({"at": 0.1, "actions": [{"kind": "impulse", "entity": "ground", "vector": [0, 0, 1]}]},
         "scenario.events[0].actions[0].entity", "not a free rigid body"),
        ({"at": 0.1, "actions": [{"kind": "set_mass", "entity": "box", "vector": [0, 0, 1]}]},
         "scenario.events[0].actions[0].vector", "not used by set_mass"),
        ({"at": 0.1, "actions": [{"kind": "spawn", "template": "rock", "pos": [0, 0, 1]}]},
         "scenario.events[0].actions[0].template", "unknown template 'rock'"),
        ({"at": 0.1, "actions": [{"kind": "move_camera", "camera": "main"}]}, "scenario.events[0].actions[0].pos",
         "pos and/or lookat"),
        ({"at": 0.1, "kind": "impulse", "entity": {"choice": ["box", "bx"]}, "vector": [1, 0, 0]},
         "scenario.events[0].entity", "unknown entity 'bx'"),
    ],
)
def test_bad_events_name_the_path(event, path, text):
    data = yaml.safe_load((DATA / "drop.yaml").read_text())
    data["events"] = [event]
    with pytest.raises(SpecError) as info:
        Scenario.from_dict(data)
    assert info.value.path == path and text in info.value.message, str(info.value)


def test_v2_round_trip_and_v1_events_still_valid():
    for name in ("glass_table_edge", "robot_knock", "heavy_on_light"):
        s = compose([f"scenario={name}"]).scenario
        back = Scenario.from_dict(yaml.safe_load(yaml.safe_dump(s.to_dict(), sort_keys=False)))
        assert back == s
    ev = compose(["scenario=default"]).scenario.events[0]  # v1: a timed event with one inline action
    assert (ev.at, ev.kind, ev.entity, ev.when, ev.actions) == (1.5, "impulse", "crate", None, [])


def test_render_plane_far_must_be_positive():
    assert compose([]).render.plane_far == 20.0  # Genesis' camera far clip: the reference's horizon
    with pytest.raises(SpecError, match="render.plane_far"):
        compose(["render.plane_far=0"])
