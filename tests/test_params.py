"""params.yaml is parsed into a typed, validated object; every mistake is named before any work."""


import pytest
import yaml
from project_repo import committed_params_text

from anime_dcgan.params import Params, ParamsError, load_params, parse_params


def test_the_project_params_file_is_the_documented_defaults_with_a_reason_for_each_value(tmp_path):
    committed = tmp_path / "params.yaml"  # as committed: an experiment applied to the workspace may change it
    committed.write_text(committed_params_text())
    assert load_params(committed) == Params()
    for line in committed.read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"params.yaml line without a comment saying why: {line!r}"


@pytest.mark.parametrize(("written", "key", "expected"), [
    ("lr: 2e-4", "lr", 0.0002),            # PyYAML reads 2e-4 as a string
    ("lr: 2.0e-4", "lr", 0.0002),
    ("lr: '0.0002'", "lr", 0.0002),
    ("steps: 1_000", "steps", 1000),
    ("steps: 1000.0", "steps", 1000),
    ("compile: false", "compile", False),
    ("compile: auto", "compile", "auto"),
    ("lr_g_scale: 1", "lr_g_scale", 1.0),
    ("devices: 2", "devices", 2),
    ("devices: auto", "devices", "auto"),
])
def test_accepts_the_forms_users_write(written, key, expected):
    params = parse_params(yaml.safe_load(written))
    assert getattr(params, key) == expected and type(getattr(params, key)) is type(expected)


@pytest.mark.parametrize(("raw", "message"), [
    ({"lrr": 0.1}, "lrr: unknown key (value 0.1); did you mean 'lr'?"),
    ({"data": {"sourc": "x"}}, "data.sourc: unknown key (value 'x'); did you mean 'source'?"),
    ({"lr": -1}, "lr: Input should be greater than 0 (got -1)"),
    ({"lr": "fast"}, "lr: Input should be a valid number, unable to parse string as a number (got 'fast')"),
    ({"lr": True}, "lr: must be a number, not true/false (got True)"),
    ({"steps": -5}, "steps: Input should be greater than or equal to 1 (got -5)"),
    ({"steps": 2.5}, "steps: Input should be a valid integer, got a number with a fractional part (got 2.5)"),
    ({"data": {"image_size": 48}}, "data.image_size: must be a power of two (16, 32, 64, 128 or 256) (got 48)"),
    ({"data": {"synthetic_count": 0}}, "data.synthetic_count: Input should be greater than or equal to 1 (got 0)"),
    ({"data": {"sha256": "abc"}}, "data.sha256: String should match pattern"),
    ({"arch": "resnet"}, "arch: Input should be 'article' or 'dcgan' (got 'resnet')"),
    ({"lr_d": 0.0001}, "lr_d: no longer a parameter: lr is now the learning rate of both networks and lr_g_scale"),
    ({"label_noise": 0.7}, "label_noise: Input should be less than 0.5 (got 0.7)"),
    ({"n_samples": 10, "fid_samples": 100}, "fid_samples: must not exceed n_samples (10)"),
    ({"fid_samples": 3}, "fid_samples: must be at least 4: precision and recall (k = 3 nearest neighbours)"),
    ({"data": 5}, "data: Input should be a valid dictionary"),
    ({"devices": 0}, "devices: must be auto or a whole number of devices from 1 to 1024 (got 0)"),
    ({"devices": True}, "devices: must be auto or a whole number of devices from 1 to 1024 (got True)"),
    ({"augment": "ada"}, "augment: Input should be 'none' or 'diffaugment' (got 'ada')"),
    ({"augment_p": 1.5}, "augment_p: Input should be less than or equal to 1 (got 1.5)"),
])
def test_a_mistake_names_the_key_the_value_and_what_is_allowed(raw, message):
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert message in str(caught.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ParamsError) as caught:
        parse_params({"lr": -1, "batch_size": 0, "oops": 1})
    text = str(caught.value)
    assert text.startswith("params.yaml is invalid:")
    assert all(f"  - {key}:" in text for key in ("lr", "batch_size", "oops"))


def test_unreadable_files_say_what_is_wrong(tmp_path):
    with pytest.raises(ParamsError, match="not found: run the stages from the repository root"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("lr: [0.1\n")
    with pytest.raises(ParamsError, match="is not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- lr\n- steps\n")
    with pytest.raises(ParamsError, match="expected a mapping of keys to values, got list"):
        load_params(tmp_path / "params.yaml")


def test_an_empty_file_means_all_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("# nothing set\n")
    assert load_params(tmp_path / "params.yaml") == Params()


def test_lr_moves_both_networks_and_the_generator_learns_at_lr_g_scale_times_it():
    default = parse_params({}).optim
    # the default recipe's rates: the discriminator at the article's 0.00015, the generator at 2x
    assert (default.lr_d, default.lr_g) == (0.00015, 0.0003)
    changed = parse_params({"lr": 0.0002}).optim
    assert (changed.lr_d, changed.lr_g) == (0.0002, 0.0004)
    assert parse_params({"lr": 0.0002, "lr_g_scale": 1}).optim.lr_g == 0.0002


def test_the_old_architecture_name_is_accepted_with_a_message_naming_the_new_one(capsys):
    assert parse_params({"arch": "seed"}).arch == "article"
    assert "arch: 'seed' is the old name of 'article'; write arch: article" in capsys.readouterr().err


def test_each_section_is_a_typed_config_holding_exactly_its_keys():
    from anime_dcgan.params import EvaluationParams, LoopParams, ModelParams, OptimParams, RuntimeParams

    params = parse_params({"ngf": 32, "steps": 7, "lr": 0.001, "device": "cpu", "n_samples": 9, "fid_samples": 9})
    sections = [params.model, params.optim, params.loop, params.runtime, params.evaluation]
    assert [type(s) for s in sections] == [ModelParams, OptimParams, LoopParams, RuntimeParams, EvaluationParams]
    assert (params.model.ngf, params.loop.steps, params.optim.lr, params.runtime.device,
            params.evaluation.n_samples) == (32, 7, 0.001, "cpu", 9)
    keys = [key for section in sections for key in type(section).model_fields]
    assert len(keys) == len(set(keys)) and set(keys) | {"seed", "data"} == set(Params.model_fields)
