"""Distributions in scenarios: they sample as declared, deterministically, and the layout key (no Genesis)."""

import dataclasses
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from hybridsim.config import compose, scenario_names
from hybridsim.scenario.distributions import Choice, LogUniform, Normal, Param, RandInt, Uniform
from hybridsim.scenario.sampling import has_distributions, layout_key, sample_scenario
from hybridsim.scenario.spec import Entity, Scenario

RARE = ["glass_table_edge", "ramp_slip", "thrown_collision", "stack_topple_rare", "robot_knock", "heavy_on_light"]

SCENE = yaml.safe_load("""
name: dists
params:
  shared: {uniform: [1.0, 3.0]}
  colour: {choice: [red, green, blue], weights: [1, 2, 7]}
templates:
  pebble: {type: sphere, radius: 0.02, capacity: 6}
entities:
  ground: {type: plane}
  a: {type: box, size: [0.1, 0.1, 0.1], pos: ["$shared", {normal: [0.0, 0.5]}, {normal: [2.0, 1.0], clip: [1.5, 3.0]}],
      mass: {loguniform: [0.1, 10.0]}, friction: "$shared", semantic_class: "$colour"}
  b: {type: sphere, radius: 0.1, pos: {uniform: [[0, 0, 1], [1, 2, 1]]}}
cameras:
  c: {pos: [3, 0, 1]}
events:
  - {at: {uniform: [0.0, 1.0]}, actions: [{kind: spawn, template: pebble, count: {randint: [1, 6]}, pos: [0, 0, 1]}]}
""")
N = 1000


@pytest.fixture(scope="module")
def samples():
    s = Scenario.from_dict(SCENE)
    return s, [sample_scenario(s, seed) for seed in range(N)]


def test_distributions_sample_as_declared(samples):
    _, out = samples
    a = [s.entity("a") for s in out]
    x = np.array([e.pos[0] for e in a])
    assert stats.kstest(x, stats.uniform(1.0, 2.0).cdf).pvalue > 1e-3
    y = np.array([e.pos[1] for e in a])
    assert stats.kstest(y, stats.norm(0.0, 0.5).cdf).pvalue > 1e-3
    z = np.array([e.pos[2] for e in a])  # clipped normal: mass piles up at the clip bounds
    assert z.min() == 1.5 and z.max() == 3.0
    assert abs(np.mean(z == 1.5) - stats.norm(2.0, 1.0).cdf(1.5)) < 0.03
    assert abs(np.mean(z == 3.0) - stats.norm(2.0, 1.0).sf(3.0)) < 0.03
    m = np.log([e.mass for e in a])
    assert stats.kstest(m, stats.uniform(math.log(0.1), math.log(100.0)).cdf).pvalue > 1e-3
    counts = [sum(e.semantic_class == c for e in a) for c in ("red", "green", "blue")]
    assert stats.chisquare(counts, np.array([0.1, 0.2, 0.7]) * N).pvalue > 1e-3
    n = np.array([s.events[0].actions[0].count for s in out])
    assert set(n) == set(range(1, 7)) and stats.chisquare(np.bincount(n)[1:]).pvalue > 1e-3
    bpos = np.array([s.entity("b").pos for s in out])  # vector bounds: each component on its own
    assert (bpos[:, 2] == 1.0).all() and stats.kstest(bpos[:, 1], stats.uniform(0, 2).cdf).pvalue > 1e-3


def test_params_are_shared_and_values_independent(samples):
    _, out = samples
    for s in out[:50]:
        e = s.entity("a")
        assert e.friction == e.pos[0] == s.params["shared"]  # one draw per episode for "$shared"
    x = np.array([s.entity("a").pos[0] for s in out])
    y = np.array([s.entity("a").pos[1] for s in out])
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.1  # separate streams per value


def test_sampling_is_deterministic_and_concrete(samples):
    s, out = samples
    again = sample_scenario(s, 7)
    assert again == out[7] and again != out[8]
    assert not has_distributions(again) and has_distributions(s)
    assert isinstance(again.entity("a").mass, float) and isinstance(again.events[0].actions[0].count, int)
    # adding a distribution elsewhere leaves the existing draws alone (one stream per YAML path)
    more = dataclasses.replace(s, gravity=(0.0, 0.0, Uniform(-10.0, -9.0)))
    assert sample_scenario(more, 7).entity("a").pos == out[7].entity("a").pos
    assert s.entity("a").mass == LogUniform(0.1, 10.0)  # the template is left untouched


def test_no_distributions_is_identity():
    s = compose(["scenario=default"]).scenario
    s = dataclasses.replace(s, entities=[dataclasses.replace(e, pos_jitter=0.0) for e in s.entities])
    assert not has_distributions(s)
    assert sample_scenario(s, 123) == s


def test_pos_jitter_resolves_like_v1():
    from hybridsim.scenario.sampling import initial_offsets

    s = compose(["scenario=default"]).scenario
    out = sample_scenario(s, 99)
    off = initial_offsets(s, [99])
    for name, d in off.items():
        np.testing.assert_allclose(out.entity(name).pos, np.asarray(s.entity(name).pos) + d[0])
        assert out.entity(name).pos_jitter == 0.0


def test_python_api_equals_yaml():
    from hybridsim.scenario.spec import Camera, Event

    py = Scenario(
        name="py", params={"t": Uniform(0.1, 0.5)},
        entities=[Entity("ground", "plane"), Entity("box", "box", size=(0.1, 0.1, 0.1), mass=Normal(1.0, 0.1, (0.5, 2.0)),
                                                    pos=(Uniform(-1.0, 1.0), 0.0, 1.0))],
        cameras=[Camera("c", pos=(2.0, 0.0, 1.0))],
        events=[Event(at=Param("t"), kind="impulse", entity="box", vector=(Choice((1.0, 2.0)), 0.0, RandInt(0, 3)))],
    )
    data = yaml.safe_load(yaml.safe_dump(py.to_dict(), sort_keys=False))
    assert data["entities"]["box"]["mass"] == {"normal": [1.0, 0.1], "clip": [0.5, 2.0]}
    assert data["events"][0]["at"] == "$t"
    back = Scenario.from_dict(data)
    assert back == py
    assert sample_scenario(back, 4) == sample_scenario(py, 4)


def test_layout_key():
    s = compose(["scenario=heavy_on_light"]).scenario
    a, b = sample_scenario(s, 1), sample_scenario(s, 2)
    assert a.entity("heavy").mass != b.entity("heavy").mass
    assert layout_key(a) == layout_key(b)  # masses, poses, times: per environment, same build
    bigger = dataclasses.replace(a, entities=[dataclasses.replace(e, size=(0.2, 0.2, 0.2)) if e.name == "heavy" else e
                                              for e in a.entities])
    assert layout_key(bigger) != layout_key(a)
    more = dataclasses.replace(a, templates=[dataclasses.replace(a.templates[0], capacity=4)])
    assert layout_key(more) != layout_key(a)
    with pytest.raises(ValueError, match="concrete"):
        layout_key(s)


@pytest.mark.parametrize("name", RARE)
def test_rare_scenarios_use_the_language(name):
    assert name in scenario_names()
    s = compose([f"scenario={name}"]).scenario
    assert has_distributions(s) and s.require and s.terminate is not None
    assert any(ev.when is not None for ev in s.events)
    assert s.timing.duration <= 3.0 and all(tuple(c.res) == (128, 128) for c in s.cameras)
    keys = {layout_key(sample_scenario(s, seed)) for seed in range(5)}
    assert len(keys) == 1  # every episode fits one batched build


def test_hydra_overrides_still_work():
    cfg = compose(["scenario=glass_table_edge", "scenario.params.push={uniform:[0.2,0.3]}",
                   "scenario.entities.glass.mass=0.3"])
    s = cfg.scenario
    assert s.params["push"] == Uniform(0.2, 0.3) and s.entity("glass").mass == 0.3
    out = sample_scenario(s, 0)
    assert 0.2 <= out.events[0].actions[0].vector[0] <= 0.3
