"""A method's own settings are checked by its own `validate` (plan.py's generic checks name no method), and the files
a method's settings name are digested through its registry record (inputs.py names no method)."""

from __future__ import annotations

import pytest

from circuitlab import inputs, plan
from circuitlab.compose import compose_config
from circuitlab.errors import ConfigError
from circuitlab.methods import registry

QUIET = ["progress=false", "figures=false", "task.n_prompts=8"]
# (method and what it plans with, a bad setting of its own, the one line that refuses it)
OWN_SETTINGS = [
    (["method=das", "task=ioi_counterfactual", "sweep=named_positions"], "method.lr=0", "method.lr=0.0 is not allowed; allowed: a finite number > 0"),
    (["method=das", "task=ioi_counterfactual", "sweep=named_positions"], "method.lr_end_factor=2", "method.lr_end_factor=2.0 is not allowed; allowed: a finite number >= 0 <= 1"),
    (["method=path_patching", "sweep=senders"], "method.begin_layer=-1", "method.begin_layer=-1 is not allowed; allowed: an integer >= 0"),
    (["method=path_patching", "sweep=senders"], "method.thresholds=[0.1,-0.2]", "method.thresholds=-0.2 is not allowed; allowed: a finite number >= 0"),
    (["method=direct_attribution"], "method.analyses=[]", "method.analyses=[] is not allowed; allowed: one or more values, e.g. [logit_lens, layers, heads]"),
]


@pytest.mark.parametrize("settings, bad, message", OWN_SETTINGS, ids=[bad for _, bad, _ in OWN_SETTINGS])
def test_a_methods_own_settings_are_refused_by_its_validate(settings, bad, message):
    cfg = compose_config([*settings, bad, *QUIET])
    plan.check_values(cfg)  # the generic checks do not know the method's settings
    with pytest.raises(ConfigError) as refused:
        registry.get(cfg.method.name).hooks.validate(cfg)
    assert str(refused.value) == message
    with pytest.raises(ConfigError) as in_the_plan:
        plan.validate_static(cfg)
    assert str(in_the_plan.value) == message
    registry.get(cfg.method.name).hooks.validate(compose_config([*settings, *QUIET]))  # the preset's own values pass


def test_the_files_a_method_reads_come_from_its_record(tmp_path, monkeypatch):
    """DAS's `load` (a run dir: its interventions.pt; or the file), and a method registered only here, whose record
    names a file of its own: both digested; a method whose record names none adds nothing."""
    saved = tmp_path / "run" / "interventions.pt"
    saved.parent.mkdir()
    saved.write_bytes(b"saved")
    model = {"source": "embedded", "name": "positional-ioi"}
    for load in (saved.parent, saved):
        files, _ = inputs.input_files({"method": {"name": "das", "load": str(load)}, "task": {}, "model": model})
        assert files["method.load"] == saved
    files, _ = inputs.input_files({"method": {"name": "das", "load": None}, "task": {}, "model": model})
    assert not [label for label in files if not label.startswith("model/")]

    table = tmp_path / "table.csv"
    table.write_text("a,b\n")
    extra = registry.Method("made_up", registry.METHODS["eap"].schema, "circuitlab.methods.eap.method",
                            input_files=lambda method: {"method.table": tmp_path / method.get("table")})
    monkeypatch.setitem(registry.METHODS, extra.name, extra)
    cfg = {"method": {"name": "made_up", "table": "table.csv"}, "task": {}, "model": model}
    digests = inputs.digests(cfg)
    assert digests["method.table"]["path"] == str(table) and digests["method.table"]["size"] == 4
    cfg["method"]["name"] = "activation_patching"
    assert "method.table" not in inputs.digests(cfg)
