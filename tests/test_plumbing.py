"""Plumbing that never surprises (issue 7): every instance the issue names is a test here,
named after it, next to tests of the kind it stands for.

CLI: every user mistake ends in exactly one `numbacnn: error:` line and exit code 2, before
any work starts (no data loaded, no directory created)."""

import os

import pytest

from numbacnn.cli import main


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    return str(path)


def _one_line_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert err.startswith("numbacnn: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


BAD_TRAIN_OPTIONS = [
    ("--model", "nonet"),
    ("--dataset", "cifar10"),
    ("--epochs", "0"),
    ("--epochs", "three"),
    ("--batch-size", "0"),
    ("--batch-size", "1.5"),
    ("--eval-batch-size", "-1"),
    ("--lr", "-1"),
    ("--lr", "nan"),
    ("--lr", "inf"),
    ("--momentum", "fast"),
    ("--weight-decay", "-0.1"),
    ("--schedule", "cubic"),
    ("--step-size", "0"),
    ("--gamma", "-1"),
    ("--augment", "rotate"),
    ("--seed", "-1"),
    ("--seed", "1.5"),
    ("--out", "{file}"),
    ("--out", ""),
    ("--out", "{file}/below_a_file"),
    ("--limit-train", "0"),
    ("--limit-test", "x"),
    ("--cache-dir", "{file}"),
    ("--bogus", "1"),
]


@pytest.mark.parametrize("option,value", BAD_TRAIN_OPTIONS, ids=[f"{o}={v}" for o, v in BAD_TRAIN_OPTIONS])
def test_every_train_option_rejects_a_bad_value_in_one_line(option, value, a_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--no-progress", option, value.replace("{file}", a_file)]
    if option == "--out":
        argv = ["train", "--no-progress", option, value.replace("{file}", a_file)]
    err = _one_line_error(argv, capsys)
    assert option.lstrip("-") in err or option in err
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate"],
        ["evaluate", "--checkpoint", "{tmp}/missing.npz"],
        ["evaluate", "--checkpoint", "{tmp}"],
        ["evaluate", "--checkpoint", "{file}", "--model", "nonet"],
        ["evaluate", "--checkpoint", "{file}", "--batch-size", "0"],
        ["evaluate", "--checkpoint", "{file}", "--limit-test", "-3"],
        ["evaluate", "--checkpoint", "{file}", "--cache-dir", "{file}"],
        ["summary", "lenet7"],
        ["summary", "lenet5", "--input-shape", "1", "32"],
        ["summary", "lenet5", "--input-shape", "0", "32", "32"],
        ["summary", "lenet5", "--num-classes", "0"],
        [],
        ["fly"],
        ["train", "--nesterov", "--momentum", "0", "--out", "{tmp}/run"],
    ],
)
def test_evaluate_summary_and_bare_mistakes_are_one_line(argv, a_file, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{file}", a_file) for a in argv]
    _one_line_error(argv, capsys)
    assert not os.path.exists(tmp_path / "run")


def test_out_that_is_an_existing_file_fails_before_the_data_loads(a_file, capsys, monkeypatch):
    """Issue 7, item 5: `--out FILE` and `--out ""` used to end in FileExistsError /
    FileNotFoundError tracebacks after MNIST had loaded."""
    from numbacnn.data import mnist

    def no_data(**kwargs):
        raise AssertionError("the data must not be loaded for a bad --out")

    monkeypatch.setattr(mnist, "load_mnist", no_data)
    assert "is an existing file" in _one_line_error(["train", "--out", a_file], capsys)
    assert "empty path" in _one_line_error(["train", "--out", ""], capsys)


def test_help_shows_every_default_and_the_model_names(capsys):
    from numbacnn.cli import build_parser
    from numbacnn.models import MODELS

    for command in ("train", "evaluate", "summary"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        if command == "train":
            for option in ("--epochs", "--batch-size", "--lr", "--momentum", "--seed", "--schedule"):
                section = text.split(option, 2)[-1][:400]
                assert "(default:" in section, (option, section)
        if command != "evaluate":
            assert all(name in text for name in MODELS)
