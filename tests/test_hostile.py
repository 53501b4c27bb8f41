"""Hostile input (issue 20): each probe fails at once with one line that names what and where, and nothing outside
a run's own folder, nor the input of `selfimprove grade`, is deleted or overwritten. docs/faults.md lists them."""


import pytest

from selfimprove import cli, config, pipeline


def _quiet(*args):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """A run that gets past its checks fails at once instead of building an organism."""
    def prepare(*args, **kwargs):
        raise RuntimeError("the run went on past its checks")

    monkeypatch.setattr(pipeline, "prepare", prepare)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---- numbers in configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("sample.temperature=.nan", r"section 'sample': 'temperature' must be a finite number, got nan"),
    ("sample.top_p=.inf", r"'top_p' must be a finite number, got inf"),
    ("train.learning_rate=-.inf", r"section 'train': 'learning_rate' must be a finite number, got -inf"),
    ("train.beta=.NaN", r"'beta' must be a finite number"),
    ("train.epochs=.inf", r"'epochs' must be a finite number"),
    ("train.loss_weights=[1.0, .nan]", r"'loss_weights' must be a finite number, got nan"),
    ("verify.timeout_s=.inf", r"section 'verify': 'timeout_s' must be a finite number, got inf"),
    ("verdict.ood_drop=.nan", r"section 'verdict': 'ood_drop' must be a finite number"),
    ("organism.learning_rate=.nan", r"section 'organism': 'learning_rate' must be a finite number"),
    ("sample.temperature=nan", r"'temperature' must be float, got 'nan' \(str\)"),
    ("sample.temperature=inf", r"'temperature' must be float, got 'inf' \(str\)"),
    ("sample.n_samples=true", r"'n_samples' must be int, got True \(bool\)"),
])
def test_nan_inf_and_booleans_are_refused_in_number_fields(override, message):
    with pytest.raises(config.RecipeError, match=message):
        config.load_recipe(pipeline.RECIPES / "tiny.yaml", [override])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_grade_refuses_a_timeout_that_is_not_finite(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["grade", "--task", "gsm8k", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                  f"--timeout-s={value}"])
    assert exit_.value.code == 2 and "argument --timeout-s: must be a finite number" in capsys.readouterr().err
