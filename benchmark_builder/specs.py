"""What a benchmark is: its years, how years group into time steps, its default filter.

TiC-DataComp groups 2014-2016 into the first time step and then one step per year up to 2022.
A time step may also be a set of months (monthly granularity): ``TimeStep("2019-01", (2019,), (1,))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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

    def step_of(self, year: int, month: int | None = None) -> TimeStep:
        for s in self.time_steps:
            if s.contains(year, month):
                return s
        raise KeyError(f"{self.name}: year {year} is in no time step")

    def steps_up_to(self, year: int) -> tuple[TimeStep, ...]:
        return tuple(s for s in self.time_steps if max(s.years) <= year)


def yearly_steps(years, first_group: tuple[int, ...] = ()) -> tuple[TimeStep, ...]:
    steps = []
    if first_group:
        steps.append(TimeStep(f"{first_group[0]}-{first_group[-1]}", tuple(first_group)))
    steps += [TimeStep(str(y), (y,)) for y in years if y not in first_group]
    return tuple(steps)


def monthly_steps(year: int) -> tuple[TimeStep, ...]:
    return tuple(TimeStep(f"{year}-{m:02d}", (year,), (m,)) for m in range(1, 13))


_YEARS = tuple(range(2014, 2023))

SPECS: dict[str, BenchmarkSpec] = {
    "tic-datacomp": BenchmarkSpec(
        "tic-datacomp",
        years=_YEARS,
        time_steps=yearly_steps(_YEARS, first_group=(2014, 2015, 2016)),
        description="TiC-DataComp: web image-text pairs by first-seen year, steps {2014-2016}, 2017, ..., 2022",
    ),
}


def get_spec(name: str) -> BenchmarkSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(SPECS))}") from None
