"""The search report: readable numbers, integer round ticks, the zoo only beside its own task."""

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from fbnet_zoo.search.config import load_config  # noqa: E402
from fbnet_zoo.search.report import (_plot_pareto, _plot_predicted_vs_measured, collect,  # noqa: E402
                                     zoo_shares_task)
from fbnet_zoo.search.runner import SearchRun, run_search  # noqa: E402

TINY = ["executor.kind=oracle", "family.enabled=false", "stage2.rounds=3", "stage2.m=4", "pool.n=128",
        "predictor.pretrain_epochs=2", "predictor.refit_frozen_epochs=2", "predictor.refit_full_epochs=2",
        "stage3.population=8", "stage3.top_k=4", "stage3.max_generations=2"]
LONG_FLOAT = re.compile(r"\d\.\d{7,}")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("report") / "run")
    summary = run_search(load_config("default", TINY), run_dir)
    run = SearchRun(None, run_dir, resume=True)
    try:
        yield summary, collect(run)
    finally:
        run.close()


def test_report_markdown_prints_numbers_at_sensible_precision(finished_run):
    summary, data = finished_run
    md = open(summary["report"]["markdown"]).read()
    assert not LONG_FLOAT.findall(md), LONG_FLOAT.findall(md)
    mse = re.search(r"validation MSE (\S+),", md).group(1)
    assert len(mse.replace(".", "").lstrip("0")) <= 3  # 3 significant digits
    assert re.search(r"Spearman \(predicted before training vs measured\): -?\d\.\d{3}\n", md)


def test_round_colour_bar_has_integer_ticks_and_the_title_a_short_number(finished_run):
    _, data = finished_run
    fig = _plot_predicted_vs_measured(data, plt)
    try:
        title = fig.axes[0].get_title()
        assert re.fullmatch(r"predictor, Spearman -?\d\.\d\d", title), title
        ticks = list(fig.axes[1].get_yticks())  # the colour bar
        assert ticks == [2.0, 3.0]  # rounds 2 and 3 carry predictions made before training
    finally:
        plt.close(fig)


def test_pareto_shows_the_zoo_only_for_its_own_task(finished_run):
    _, data = finished_run
    assert data["task"] == {"dataset": "embedded", "train_classes": None, "num_classes": 10, "resolution": 32}
    fig = _plot_pareto(data, plt)
    try:
        assert len(fig.axes) == 1  # no second axis with ImageNet top-1 beside a toy task
        assert all("zoo" not in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    finally:
        plt.close(fig)
    imagenet = {"dataset": "imagefolder", "train_classes": None, "num_classes": 1000, "resolution": 224}
    assert zoo_shares_task(imagenet)
    assert not zoo_shares_task(dict(imagenet, train_classes=200))  # the paper's 200-class proxy task
    assert not zoo_shares_task(dict(imagenet, resolution=32))
    fig = _plot_pareto(dict(data, task=imagenet), plt)
    try:
        assert len(fig.axes) == 1
        assert any("zoo" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    finally:
        plt.close(fig)
