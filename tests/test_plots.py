import numpy as np
import pandas as pd
import pytest

from medzoo.benchmarks import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Four entries: validation ranks 1, 2, 3, 4; test AUCs .88 .89 .75 .78 give test ranks 2, 1, 4, 3.
# d = -1, 1, -1, 1, so Spearman rho = 1 - 6 * 4 / (4 * (16 - 1)) = 0.6.
FOUR = pd.DataFrame({"entry": ["mean", "vote", "resnet", "densenet"],
                     "kind": ["ensemble", "ensemble", "member", "member"],
                     "val_auc": [0.90, 0.85, 0.80, 0.70], "test_auc": [0.88, 0.89, 0.75, 0.78]})


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def _spread_frame(entries: int = 20, seeds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"entry": f"entry_{i:02d}_with_a_longish_name", "kind": "ensemble" if i % 3 else "member",
             "replicate": f"seed {r}", "val_auc": 0.9 - 0.005 * i + rng.normal(0, 0.01),
             "test_auc": 0.88 - 0.004 * i + rng.normal(0, 0.015)} for i in range(entries) for r in range(seeds)]
    return pd.DataFrame(rows)


def test_rank_agreement_of_four_entries_by_hand(tmp_path):
    path = tmp_path / "ranks.png"
    assert plots.plot_rank_agreement(FOUR, path, "rank agreement") == pytest.approx(0.6)
    assert _is_png(path)
    ranked, rho = plots.rank_agreement(FOUR)
    assert ranked["val_rank"].tolist() == [1, 2, 3, 4]
    assert ranked["test_rank"].tolist() == [2, 1, 4, 3]
    assert rho == {"": pytest.approx(0.6)}


def test_rank_agreement_ranks_within_each_replicate_and_averages_rho(tmp_path):
    # seed 0 is the example above (0.6); seed 1 ranks test as validation (1.0); a NaN test row is dropped.
    # The tie at .80 on validation in seed 1 shares ranks 3 and 4: 3.5 each.
    seed1 = FOUR.assign(val_auc=[0.91, 0.86, 0.80, 0.80], test_auc=[0.9, 0.8, 0.7, 0.6])
    withheld = FOUR.iloc[:1].assign(test_auc=np.nan, replicate="seed 2")
    frame = pd.concat([FOUR.assign(replicate="seed 0"), seed1.assign(replicate="seed 1"), withheld])
    ranked, rho = plots.rank_agreement(frame)
    assert ranked.loc[ranked["replicate"] == "seed 1", "val_rank"].tolist() == [1, 2, 3.5, 3.5]
    # seed 1 by hand: val ranks 1, 2, 3.5, 3.5 against 1, 2, 3, 4; centred (-1.5, -.5, 1, 1) . (-1.5, -.5, .5, 1.5)
    # = 2.25 + .25 + .5 + 1.5 = 4.5, over sqrt(4.5 * 5).
    assert rho == {"seed 0": pytest.approx(0.6), "seed 1": pytest.approx(np.sqrt(0.9))}
    path = tmp_path / "ranks.png"
    assert plots.plot_rank_agreement(frame, path, "t") == pytest.approx((0.6 + np.sqrt(0.9)) / 2)
    assert _is_png(path)


def test_spread_plot_is_a_png_with_nan_test_values(tmp_path):
    frame = _spread_frame()
    frame.loc[frame["entry"].str.startswith("entry_05"), "test_auc"] = np.nan
    path = tmp_path / "spread.png"
    assert plots.plot_spread(frame, path, "AUC over 3 seeds") == path
    assert _is_png(path)
    only_val = tmp_path / "val.png"
    plots.plot_spread(frame.assign(test_auc=np.nan, replicate="fold 1"), only_val, "withheld test")
    assert _is_png(only_val)


@pytest.mark.parametrize("fn", [plots.plot_spread, plots.plot_rank_agreement])
def test_plots_name_the_missing_columns(fn, tmp_path):
    with pytest.raises(ValueError, match=r"lacks columns \['test_auc'\]"):
        fn(FOUR.drop(columns="test_auc").assign(replicate="seed 0"), tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


def test_rank_agreement_needs_a_row_with_both_aucs(tmp_path):
    with pytest.raises(ValueError, match="none of the 4 rows has both val_auc and test_auc"):
        plots.plot_rank_agreement(FOUR.assign(test_auc=np.nan), tmp_path / "x.png", "t")


def test_reliability_diagram_is_a_png(tmp_path):
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([.9, .8, .75, .3, .2, .1])
    path = tmp_path / "calibration.png"
    assert plots.plot_reliability([("a", y == 1, p), ("b", y == 1, 1 - p)], "reliability", path, n_bins=2) == path
    assert _is_png(path)
    with pytest.raises(ValueError, match="no curves to draw"):
        plots.plot_reliability([], "t", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
