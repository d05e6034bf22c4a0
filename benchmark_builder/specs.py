"""What a benchmark is: its years, how years group into time steps, its default filter, its
source (the input format its published inputs come in) and its evaluation recipe. ``SPECS`` is
the one registry: TiC-DataComp (WARC crawls), TiC-YFCC (YFCC15M's CSV), TiC-RedCaps (RedCaps'
annotation files); a plain URL list (``--input-format url-list``) builds any of them.

TiC-DataComp groups 2014-2016 into the first time step and then one step per year up to 2022.
A time step may also be a set of months (monthly granularity): ``TimeStep("2019-01", (2019,), (1,))``.

Years come from the user: ``--years FIRST-LAST`` gives a benchmark any range of years (a new
crawl's 2023 and 2024 included) and ``--time-steps`` groups them (``parse_time_steps``). A
data dir records its range and steps in ``manifest.json``; every command that reads it takes
them from there (``resolve_spec``), and refuses a range that conflicts with the recorded one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from benchmark_builder.layout import Layout
from pipelines import io as pio


@dataclass(frozen=True)
class TimeStep:
    name: str
    years: tuple[int, ...]
    months: tuple[int, ...] | None = None  # None: whole years

    def contains(self, year: int, month: int | None = None) -> bool:
        if year not in self.years:
            return False
        return self.months is None or month in self.months


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    years: tuple[int, ...]
    time_steps: tuple[TimeStep, ...]
    default_variant: str = "basic"
    variants: tuple[str, ...] = ("none", "basic")
    description: str = ""
    source: str = "warc"  # default --input-format (pipelines.transforms.crawl.INPUT_FORMATS)
    eval_recipe: str = "per year: 1000 held-out retrieval pairs, 500 held-out classification images"
    eval_retrieval_fraction: float | None = None  # held-out share of each year's eligible samples; None: fixed sizes
    eval_classification: bool = True  # a held-out classification set per year
    eval_step_gallery: bool = False  # retrieval of a step: True: its years' held-out pairs as one gallery; False: the mean over its years
    fixture_pairs_per_year: int = 4000  # size of the embedded synthetic web per year (its default input)

    def step_of(self, year: int, month: int | None = None) -> TimeStep:
        for s in self.time_steps:
            if s.contains(year, month):
                return s
        raise KeyError(f"{self.name}: year {year} is in no time step")

    def steps_up_to(self, year: int) -> tuple[TimeStep, ...]:
        return tuple(s for s in self.time_steps if max(s.years) <= year)

    @property
    def year_range(self) -> str:
        return format_years(self.years)

    def with_years(self, years: tuple[int, ...], time_steps: str = "") -> "BenchmarkSpec":
        """This benchmark over ``years``: steps as ``time_steps`` says, or the spec's own steps
        that lie inside the range and one step per remaining year."""
        years = tuple(years)
        if time_steps.strip():
            steps = parse_time_steps(time_steps, years=years)
        else:
            steps = [s for s in self.time_steps if set(s.years) <= set(years)]
            covered = {y for s in steps for y in s.years}
            steps = sorted(steps + [TimeStep(str(y), (y,)) for y in years if y not in covered], key=lambda s: min(s.years))
        outside = sorted({y for s in steps for y in s.years} - set(years))
        if outside:
            raise ValueError(f"--time-steps {time_steps!r} names years {outside} outside the benchmark's years {format_years(years)}")
        return replace(self, years=years, time_steps=tuple(steps))

    def time_steps_text(self) -> str:
        """The steps in ``parse_time_steps``'s grammar (what a manifest records)."""
        if self.time_steps and all(s.months is not None for s in self.time_steps):
            ys = sorted({y for s in self.time_steps for y in s.years})
            return f"monthly:{ys[0]}-{ys[-1]}"
        return ",".join(format_years(s.years) for s in self.time_steps)


def yearly_steps(years, first_group: tuple[int, ...] = ()) -> tuple[TimeStep, ...]:
    steps = []
    if first_group:
        steps.append(TimeStep(f"{first_group[0]}-{first_group[-1]}", tuple(first_group)))
    steps += [TimeStep(str(y), (y,)) for y in years if y not in first_group]
    return tuple(steps)


def monthly_steps(year: int) -> tuple[TimeStep, ...]:
    return tuple(TimeStep(f"{year}-{m:02d}", (year,), (m,)) for m in range(1, 13))


_YEARS = tuple(range(2014, 2023))
_YFCC_STEPS = ((2004, 2005, 2006, 2007, 2008), (2009, 2010), (2011, 2012), (2013, 2014))
# TiC-CLIP's recipe for its table-sourced benchmarks (TiC-YFCC, TiC-RedCaps): 1% of each year held
# out for retrieval, no classification set, a step's held-out pairs one gallery; small embedded fixtures
_TABLE_SOURCE_RECIPE = dict(
    eval_recipe=("per year: 1% of the eligible pairs held out for retrieval (TiC-CLIP's test_size=0.01), no classification "
                 "set; a step's held-out pairs are evaluated as one gallery (TiC-CLIP's one test file per step)"),
    eval_retrieval_fraction=0.01, eval_classification=False, eval_step_gallery=True, fixture_pairs_per_year=500)

SPECS: dict[str, BenchmarkSpec] = {
    "tic-datacomp": BenchmarkSpec(
        "tic-datacomp",
        years=_YEARS,
        time_steps=yearly_steps(_YEARS, first_group=(2014, 2015, 2016)),
        description="TiC-DataComp: web image-text pairs by first-seen year, steps {2014-2016}, 2017, ..., 2022",
    ),
    "tic-yfcc": BenchmarkSpec(
        "tic-yfcc",
        years=tuple(range(2004, 2015)),
        time_steps=tuple(TimeStep(f"{g[0]}-{g[-1]}", g) for g in _YFCC_STEPS),
        description="TiC-YFCC: YFCC15M photos by upload date, steps {2004-2008}, {2009-2010}, {2011-2012}, {2013-2014}",
        source="yfcc",
        **_TABLE_SOURCE_RECIPE,
    ),
    "tic-redcaps": BenchmarkSpec(
        "tic-redcaps",
        years=(2017, 2018, 2019, 2020),
        time_steps=yearly_steps((2017, 2018, 2019, 2020)),
        description="TiC-RedCaps: RedCaps' Reddit image-text pairs by post date, steps 2017, 2018, 2019, 2020",
        source="redcaps",
        **_TABLE_SOURCE_RECIPE,
    ),
}


def parse_years(text: str) -> tuple[int, ...]:
    """``FIRST-LAST`` (or one ``YEAR``) -> the years, inclusive."""
    lo, sep, hi = str(text).strip().partition("-")
    try:
        first, last = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise ValueError(f"bad --years {text!r}: FIRST-LAST, e.g. 2014-2022") from None
    if not 1900 <= first <= last <= 2999:
        raise ValueError(f"bad --years {text!r}: FIRST-LAST with FIRST <= LAST, four-digit years")
    return tuple(range(first, last + 1))


def format_years(years) -> str:
    years = sorted(years)
    return f"{years[0]}-{years[-1]}" if len(years) > 1 else str(years[0])


def year_list(values) -> list[int]:
    """Year arguments of the commands that process some years (``--years 2016 2018-2020``) -> years."""
    return sorted({y for v in values or [] for y in parse_years(v)})


def parse_time_steps(text: str, benchmark: str = "tic-datacomp", years: tuple[int, ...] | None = None) -> tuple[TimeStep, ...]:
    """``""``: the benchmark spec's steps (over ``years`` when given); ``monthly:2019``: the 12
    months of 2019 (or ``monthly:2019-2020``); ``2014-2016,2017,2018``: years grouped as written."""
    text = (text or "").strip()
    if not text:
        spec = get_spec(benchmark)
        return spec.with_years(years).time_steps if years else spec.time_steps
    if text.startswith("monthly:"):
        lo, _, hi = text[len("monthly:"):].partition("-")
        try:
            ys = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise ValueError(f"bad --time-steps {text!r}: monthly:YEAR or monthly:YEAR-YEAR") from None
        return tuple(s for y in ys for s in monthly_steps(y))
    steps = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            ys = tuple(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"bad --time-steps {text!r}: comma-separated years or year ranges") from None
        if not ys:
            raise ValueError(f"bad --time-steps {text!r}: {part.strip()!r} holds no year")
        steps.append(TimeStep(part.strip(), ys))
    return tuple(steps)


def recorded_years(data_dir: str, benchmark: str = "tic-datacomp") -> tuple[tuple[int, ...], str] | None:
    """(years, time steps) recorded in a built data dir's manifest; None if nothing is built.
    A manifest from before ranges were recorded holds the spec's default range."""
    path = Layout(data_dir, benchmark).manifest
    if not pio.exists(path):
        return None
    m = pio.read_json(path)
    if "year_range" not in m:
        spec = get_spec(benchmark)
        return spec.years, spec.time_steps_text()
    return parse_years(m["year_range"]), m.get("time_steps", "")


def resolve_spec(benchmark: str = "tic-datacomp", years: str = "", time_steps: str = "", data_dir: str | None = None,
                 extend: bool = False) -> BenchmarkSpec:
    """The benchmark as a command sees it: the spec, over the years and steps the data dir
    recorded, over ``years``/``time_steps`` when given. A ``years`` range that conflicts with
    the recorded one raises ValueError naming both; with ``extend`` (a build), a range with the
    same first year that still holds every built year is not a conflict (appending a year)."""
    spec = get_spec(benchmark)
    rec = recorded_years(data_dir, benchmark) if data_dir else None
    if years:
        want = parse_years(years)
        if rec and tuple(want) != tuple(rec[0]):
            ok = extend and want[0] == rec[0][0] and set(Layout(data_dir, benchmark).built_years()) <= set(want)
            if not ok:
                raise ValueError(f"{Layout(data_dir, benchmark).root} was built for years {format_years(rec[0])}; "
                                 f"--years {format_years(want)} conflicts with it (use another --data-dir)")
        return spec.with_years(want, time_steps or ("" if not rec or tuple(want) != tuple(rec[0]) else rec[1]))
    if rec:
        return spec.with_years(rec[0], time_steps or rec[1])
    return spec.with_years(spec.years, time_steps) if time_steps else spec


def get_spec(name: str) -> BenchmarkSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(SPECS))}") from None
