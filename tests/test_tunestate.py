import json

import pytest

from evolve.search.tunestate import match, trials_run_again

pytestmark = pytest.mark.unit


def test_match_adopts_what_tune_runs_and_loses_what_it_never_saved():
    def child(v):
        return {"variant_id": v, "confirm": False, "seed": 0}

    again = {"t1": child("a"), "t4": child("d"),  # t4: saved by Tune after the searcher
             "t5": child("e"),  # recorded already: its run reports that and ends
             "c1": {"variant_id": "a", "confirm": True, "seed": 2}, "c2": {"variant_id": "s", "confirm": True, "seed": 3}}
    live = {"t1": "a", "t2": "b", "t3": "d"}  # t2 never saved by Tune; t3's variant runs as t4
    m = match(live, {"c1": ("a", 2), "c9": ("s", 1)}, again, recorded={"e"})
    assert m.adopt == {"t4": "d"} and m.lose == {"t2": "b"}
    assert m.adopt_reruns == {"c2": ("s", 3)} and m.lose_reruns == {"c9": ("s", 1)}


def test_trials_run_again_reads_the_newest_state_as_tune_does(tmp_path):
    def state(name, trials):
        data = [[json.dumps({"trial_id": t, "status": st, "config": {"variant_id": t.upper()}}), "{}"]
                for t, st in trials]
        (tmp_path / f"experiment_state-{name}.json").write_text(json.dumps({"trial_data": data}))

    assert trials_run_again(tmp_path) is None
    state("2026-12-07_10-00-05", [("a", "RUNNING")])
    state("2026-12-07_10-09-00", [("a", "TERMINATED"), ("b", "PENDING"), ("c", "ERROR"), ("d", "PAUSED")])
    assert trials_run_again(tmp_path) == {t: {"variant_id": t.upper(), "confirm": False, "seed": 0} for t in "bcd"}
    (tmp_path / "experiment_state-2026-12-07_11-00-00.json").write_text('{"trial_data": [["{}", "{}"]]}')
    with pytest.raises(ValueError, match=r"^experiment_state-2026-12-07_11-00-00.json: KeyError"):
        trials_run_again(tmp_path)
    bad = [[json.dumps({"trial_id": "x", "status": "RUNNING", "config": {"variant_id": "X", "seed": "one"}}), "{}"]]
    (tmp_path / "experiment_state-2026-12-07_12-00-00.json").write_text(json.dumps({"trial_data": bad}))
    with pytest.raises(ValueError, match=r"^experiment_state-2026-12-07_12-00-00.json: ValueError: invalid literal"):
        trials_run_again(tmp_path)
