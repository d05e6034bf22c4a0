"""User errors on the command lines end as one line ``error: ...`` and exit status 2, never a
traceback; old flag spellings still work; ``--help`` shows an example; the console scripts of
pyproject.toml name functions that exist. Every case runs the real command in a subprocess."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": REPO, "NO_GCE_CHECK": "true"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc, *fragments: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def empty_index(tmp_path_factory):
    """A data dir whose benchmark root exists but holds nothing built: ``index`` writes an index of empty views."""
    data = tmp_path_factory.mktemp("cli") / "data"
    (data / "tic-datacomp").mkdir(parents=True)
    proc = _run("benchmark_builder", "index", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(data / "tic-datacomp" / "index.duckdb")
    return data


@pytest.mark.parametrize("args, fragments", [
    (["build", "--year", "abc"], ["--year", "'abc'"]),  # bad flag value
    (["build", "--year", "2016", "--filter", "basic,sharpest"], ["sharpest"]),  # unknown variant
    (["build", "--year", "2016", "--input", "{tmp}/nothing-*.warc.gz"], ["--input matched no files"]),  # no input files
    (["build", "--year", "1999"], ["1999", "2014-2022"]),  # a year outside the benchmark
    (["sql", "select 1"], ["{tmp}/tic-datacomp/index.duckdb", "does not exist"]),  # a missing index
    (["filter", "--variants", "clip_score,sharpest"], ["sharpest"]),
    # CLIP variants without --model and no trained default: the builder names the trainer's job, never runs it
    (["filter"], ["no filter model", "python -m training filter-model --data-dir {tmp}"]),
    (["build", "--year", "2016", "--filter", "basic,bestpool"], ["no filter model", "python -m training filter-model"]),
])
def test_builder_user_errors_are_one_line(tmp_path, args, fragments):
    tmp = str(tmp_path)
    proc = _run("benchmark_builder", *[a.format(tmp=tmp) for a in args], "--data-dir", tmp)
    _one_line_error(proc, *[f.format(tmp=tmp) for f in fragments])
    assert not os.path.exists(os.path.join(tmp, "tic-datacomp", "candidates")), "refused input must not start a build"


def test_bad_sql_is_one_line_for_sql_and_reshard(empty_index):
    _one_line_error(_run("benchmark_builder", "sql", "--data-dir", str(empty_index), "selec 1"), "sql:", "selec")
    _one_line_error(_run("benchmark_builder", "sql", "--data-dir", str(empty_index), "select nope from metadata"),
                    "sql:", "nope")
    _one_line_error(_run("benchmark_builder", "reshard", "--data-dir", str(empty_index), "--name", "x", "--where", "width >>> 3"),
                    "sql:")
    ok = _run("benchmark_builder", "sql", "--data-dir", str(empty_index), "--json", "select 6 * 7 as answer")
    assert ok.returncode == 0 and ok.stdout.strip() == '{"answer": 42}', ok.stderr


def test_years_outside_the_data_dir_are_refused_before_the_query(empty_index):
    proc = _run("benchmark_builder", "reshard", "--data-dir", str(empty_index), "--name", "x", "--where", "true",
                "--years", "1999-2000")
    _one_line_error(proc, "1999", "2014-2022")


def test_deprecated_model_spelling_still_works_and_says_so(tmp_path):
    absent = f"tic-tiny-32:{tmp_path}/absent.pt"
    for flag in ("--model", "--filter-model"):
        proc = _run("benchmark_builder", "filter", "--data-dir", str(tmp_path), flag, absent)
        _one_line_error(proc, "no built years")
        assert ("--filter-model is deprecated; use --model" in proc.stderr) == (flag == "--filter-model"), proc.stderr
    from benchmark_builder.__main__ import _build_parser

    for cmd, flag in (("filter", "--model"), ("filter", "--filter-model"), ("build", "--filter-model"), ("caption", "--captioner")):
        args, _ = _build_parser().parse_known_args([cmd, flag, absent] + (["--year", "2014"] if cmd == "build" else []))
        assert args.model == absent, (cmd, flag)


def test_filter_and_caption_devices_default_to_auto():
    from benchmark_builder.__main__ import _build_parser

    for cmd in ("filter", "caption"):
        args, _ = _build_parser().parse_known_args([cmd])
        assert args.device == "auto"


def test_other_entry_points_refuse_in_one_line(tmp_path):
    _one_line_error(_run("pipelines", "crawl", "--input", f"{tmp_path}/none-*.warc.gz", "--output", str(tmp_path / "out")),
                    "--input matched no files")
    _one_line_error(_run("bench", "fastest"), "fastest")


@pytest.mark.parametrize("cmd", [
    ["benchmark_builder"], ["benchmark_builder", "build"], ["benchmark_builder", "reshard"], ["benchmark_builder", "filter"],
    ["benchmark_builder", "caption"], ["benchmark_builder", "sql"], ["benchmark_builder", "index"],
    ["pipelines", "crawl"], ["bench"],
])
def test_help_shows_an_example(cmd):
    proc = _run(*cmd, "--help")
    assert proc.returncode == 0, proc.stderr
    example = proc.stdout.split("example:", 1)[1]
    assert f"python -m {cmd[0]} {' '.join(cmd[1:])}".strip() in example, proc.stdout


def test_console_scripts_name_callable_entry_points():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert {"tic-build", "tic-train", "tic-eval"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        main = getattr(importlib.import_module(module), func)
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0, name
