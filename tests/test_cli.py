"""The CLI's contract: every user error exits 2 with one line naming what is wrong, before anything is
written; absl conventions (--flagfile, --helpfull, --jax_*); real bugs keep their traceback.

In-process (`jaxgen.run.main(argv)`) except for the one test where the process boundary is the point.
"""

import os
import subprocess
import sys

import jax
import pytest

from jaxgen import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "configs/ddpm_toy2d.py:smoke")
QUICK = os.path.join(ROOT, "configs/quickstart.py:smoke")

# Config files that fail in each way a user's file can (written once per module).
BAD_FILES = {
    "syntax.py": "def get_config(:\n    pass\n",
    "imports.py": "import jaxgen_no_such_module\n\ndef get_config(arg=None):\n    return None\n",
    "raises.py": "def get_config(arg=None):\n    raise RuntimeError('boom in get_config')\n",
    "returns_none.py": "def get_config(arg=None):\n    x = 1\n",
    "no_get_config.py": "X = 1\n",
}


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_configs")
    for name, text in BAD_FILES.items():
        (d / name).write_text(text)
    (d / "a_file").write_text("not a directory")
    return d


# (argv with {bad} for the bad-config dir and {wd} for a fresh workdir, expected exit code, key words).
CASES = [
    ("typo", ["--config", TOY, "--config.train.num_stepz=3"], ["config.train.num_stepz", "did you mean 'config.train.num_steps'"]),
    ("typo_group", ["--config", TOY, "--config.optimiser.name=adam"], ["config.optimiser.name", "did you mean 'config.optimizer.name'"]),
    ("negative_batch", ["--config", TOY, "--config.train.batch_size=-1"], ["config.train.batch_size", "positive integer"]),
    ("int_not_int", ["--config", TOY, "--config.train.num_steps=abc"], ["config.train.num_steps", "integer", "'abc'"]),
    ("ema", ["--config", TOY, "--config.ema_decay=1.5"], ["config.ema_decay", "[0, 1)"]),
    ("group_set", ["--config", TOY, "--config.train=3"], ["config.train is a group of keys"]),
    ("bool", ["--config", TOY, "--config.train.resume_changed=maybe"], ["config.train.resume_changed", "bool"]),
    ("missing_file", ["--config", "configs/missing.py"], ["config file not found", "configs/missing.py"]),
    ("syntax_error", ["--config", "{bad}/syntax.py"], ["syntax.py", "syntax error at line 1"]),
    ("import_error", ["--config", "{bad}/imports.py"], ["imports.py", "failed to import", "ModuleNotFoundError", "jaxgen_no_such_module"]),
    ("get_config_raises", ["--config", "{bad}/raises.py"], ["raises.py", "get_config() raised RuntimeError", "boom"]),
    ("get_config_none", ["--config", "{bad}/returns_none.py"], ["returns_none.py", "returned NoneType", "ConfigDict"]),
    ("no_get_config", ["--config", "{bad}/no_get_config.py"], ["no_get_config.py", "defines no get_config"]),
    ("unknown_variant", ["--config", TOY.replace(":smoke", ":nope")], ["unknown variant 'nope'", "accepted"]),
    ("optimizer_name", ["--config", TOY, "--config.optimizer.name=sgdd"], ["config.optimizer.name", "'sgdd'", "adamw"]),
    ("schedule", ["--config", TOY, "--config.optimizer.schedule=nonsense"], ["config.optimizer.schedule", "'nonsense'", "cosine"]),
    ("param_groups_arity", ["--config", TOY, "--config.optimizer.param_groups=(('kernel', 0.1),)"], ["config.optimizer.param_groups", "(regex, lr_mult >= 0, wd_mult >= 0)"]),
    ("param_groups_regex", ["--config", TOY, "--config.optimizer.param_groups=(('(', 0.1, 0.0),)"], ["config.optimizer.param_groups", "regex '('", "invalid"]),
    ("param_groups_syntax", ["--config", TOY, "--config.optimizer.param_groups=(('a', 0.1, 0.0)"], ["config.optimizer.param_groups", "literal"]),
    ("lion_b1", ["--config", TOY, "--config.optimizer.name=lion", "--config.optimizer.b1=1.5"], ["config.optimizer.b1", "[0, 1)", "1.5"]),
    ("adamw_b2", ["--config", TOY, "--config.optimizer.b2=1.5"], ["config.optimizer.b2", "[0, 1)"]),
    ("lr_nan", ["--config", TOY, "--config.optimizer.learning_rate=nan"], ["config.optimizer.learning_rate", "finite"]),
    ("unet_ch", ["--config", QUICK, "--config.model.ch=-8"], ["config.model", "ch must be >= 1", "-8"]),
    ("ch_mult_syntax", ["--config", QUICK, "--config.model.ch_mult=(1,"], ["config.model.ch_mult", "literal", "'(1,'"]),
    ("mlp_hidden", ["--config", TOY, "--config.model.hidden=0"], ["config.model", "hidden must be >= 1"]),
    ("model_name", ["--config", TOY, "--config.model.name=resnet"], ["config.model.name must be one of"]),
    ("mesh", ["--config", TOY, "--config.mesh.data=0"], ["config.mesh.data", ">= 1"]),
    ("unknown_flag", ["--config", TOY, "--wrkdir=x"], ["Unknown command line flag 'wrkdir'", "workdir"]),
    ("positional", ["--config", TOY, "extra"], ["unexpected argument 'extra'"]),
    ("override_no_value", ["--config", TOY, "--config.train.num_steps"], ["--config.train.num_steps needs a value"]),
    ("no_config", [], ["--config is required"]),
    ("no_workdir", ["--config", TOY, "--workdir=NONE"], ["--workdir is required"]),
    ("empty_workdir", ["--config", TOY, "--workdir="], ["--workdir must be a non-empty path"]),
    ("workdir_is_file", ["--config", TOY, "--workdir={bad}/a_file"], ["workdir", "a_file", "not a directory"]),
    ("workdir_under_file", ["--config", TOY, "--workdir={bad}/a_file/run"], ["workdir", "a_file/run", "not a directory"]),
    ("workdir_unwritable", ["--config", TOY, "--workdir=/proc/jaxgen_no_such/run"], ["workdir", "/proc/jaxgen_no_such/run", "cannot be written"]),
    ("batch_vs_devices", ["--config", TOY, "--config.train.batch_size=12"], ["config.train.batch_size=12", "divisible", "8 devices"]),
    ("missing_flagfile", ["--flagfile={bad}/no_such_flags.txt", "--config", TOY], ["no_such_flags.txt"]),
]


@pytest.mark.parametrize("name,argv,words", CASES, ids=[c[0] for c in CASES])
def test_user_error_exits_2_with_one_line(name, argv, words, bad_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = [a.replace("{bad}", str(bad_dir)) for a in argv]
    if not any(a.startswith("--workdir") for a in argv):
        argv += ["--workdir", str(workdir)]
    argv = [a for a in argv if a != "--workdir=NONE"]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for w in words:
        assert w.lower() in errors[0].lower(), (w, errors[0])
    assert "Traceback" not in err
    # Nothing written: the workdir does not exist, or (found only once devices are known) holds nothing.
    assert not workdir.exists() or not any(workdir.iterdir()), sorted(os.listdir(workdir))


def test_process_boundary_exit_2_one_line_stderr(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "jaxgen.run", "--config", "configs/ddpm_toy2d.py:smoke",
                        "--config.optimizer.name=sgdd", "--workdir", str(workdir)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "config.optimizer.name" in lines[0] and "sgdd" in lines[0], r.stderr
    assert not workdir.exists()


def test_real_bug_keeps_its_traceback(monkeypatch, tmp_path):
    from jaxgen import tasks

    def broken(config):
        raise ZeroDivisionError("a bug, not a user error")

    monkeypatch.setattr(tasks, "build", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        run.main(["--config", TOY, "--workdir", str(tmp_path / "run")])


def test_flagfile_overrides_and_dry_run(tmp_path, capsys):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(f"--config={TOY}\n--config.train.num_steps=77\n--config.optimizer.b1=0.95\n")
    assert run.main([f"--flagfile={flagfile}", "--config.eval.clip_x0", "None", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "num_steps: 77" in out and "b1: 0.95" in out and "clip_x0: null" in out


def test_helpfull_lists_jax_flags_and_jax_flag_applies(capsys):
    assert run.main(["--helpfull"]) == 0
    out = capsys.readouterr().out
    assert "--workdir" in out and "--jax_log_compiles" in out and "--config.key=value" in out
    try:
        assert run.main(["--config", TOY, "--jax_log_compiles", "--dry_run"]) == 0
        assert jax.config.jax_log_compiles is True
    finally:
        jax.config.update("jax_log_compiles", False)
    assert run.main(["--config", TOY, "--dry_run"]) == 0  # flags do not leak into the next call
    assert jax.config.jax_log_compiles is False
