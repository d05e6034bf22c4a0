"""A flag that neither the command nor Beam understands is an error naming it, never a silent default."""
import pytest

from benchmark_builder.__main__ import main as builder_main
from pipelines.__main__ import main as pipelines_main
from pipelines.options import unknown_flags


def test_beam_options_pass_and_typos_do_not():
    ok = ["--direct_running_mode=multi_processing", "--direct_num_workers", "2", "--dry_run=True",
          "--project", "p", "--temp_location=gs://b/tmp", "--environment_type=EXTERNAL"]
    assert unknown_flags(ok) == []
    assert unknown_flags(["--direct_num_workrs=2"]) == ["--direct_num_workrs (did you mean --direct_num_workers?)"]
    assert unknown_flags(["--thread-cout", "5"], own_flags=["--thread-count"]) == ["--thread-cout (did you mean --thread-count?)"]


@pytest.mark.parametrize("main,argv,needle", [
    (builder_main, ["build", "tic-datacomp", "--year", "2019", "--thread-cout", "5"], "--thread-cout (did you mean --thread-count?)"),
    (builder_main, ["sql", "--foo", "select 1"], "--foo"),
    (pipelines_main, ["crawl", "--input", "x", "--output", "y", "--direct_num_workrs=2"], "--direct_num_workrs"),
])
def test_cli_refuses_unknown_flags_before_any_work(tmp_path, capsys, main, argv, needle):
    with pytest.raises(SystemExit) as e:
        main([*argv, *(["--data-dir", str(tmp_path)] if main is builder_main and argv[0] == "build" else [])])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "error:" in err
    assert not any(tmp_path.iterdir())  # nothing was built
