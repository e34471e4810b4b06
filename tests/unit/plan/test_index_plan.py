"""Index planning as plain functions: metric, parameters, when to build, retrain or fold rows in."""

from __future__ import annotations

import math

import pytest

from pipeline.errors import ConfigError
from pipeline.plan.index import (
    PQ_TRAINING_ROWS,
    ExistingAnn,
    ivf_partitions,
    plan_ann,
    plan_other_indexes,
    pq_sub_vectors,
    similarity_score,
    vector_metric,
)
from pipeline.settings import IndexSettings, load_settings

pytestmark = pytest.mark.unit

SETTINGS = IndexSettings(ann_min_rows=10_000)


@pytest.mark.parametrize(
    ("normalized", "similarity", "metric"),
    [
        (True, None, "dot"),
        (True, "cosine", "dot"),
        (True, "euclidean", "dot"),
        (False, None, "cosine"),
        (False, "cosine", "cosine"),
        (False, "dot", "dot"),
        (False, "euclidean", "l2"),
        (False, "manhattan", "cosine"),
    ],
)
def test_metric_follows_normalization_then_the_models_similarity(normalized, similarity, metric):
    assert vector_metric(normalized, similarity) == metric


def test_scores_are_higher_for_closer_vectors():
    assert similarity_score("dot", 0.25) == pytest.approx(0.75)
    assert similarity_score("cosine", 0.0) == 1.0
    assert similarity_score("l2", 0.5) > similarity_score("l2", 2.0)


def test_partitions_and_sub_vectors():
    assert ivf_partitions(1_000_000, "IVF_PQ") == 1000
    assert ivf_partitions(300, "IVF_PQ") == round(math.sqrt(300))
    assert ivf_partitions(300, "IVF_HNSW_SQ") == 1
    assert ivf_partitions(5_000_000, "IVF_HNSW_SQ") == 5
    assert pq_sub_vectors(384) == 24
    assert pq_sub_vectors(1000) == 125  # not divisible by 16: 8 dimensions each
    assert pq_sub_vectors(100) == 1


def test_no_ann_index_below_the_threshold_unless_forced():
    small = plan_ann(5_000, 384, "dot", SETTINGS, None)
    assert small.action == "skip" and "index.ann_min_rows=10,000" in small.reason
    forced = plan_ann(5_000, 384, "dot", SETTINGS, None, force=True)
    assert forced.action == "create"
    assert forced.params == {
        "index_type": "IVF_PQ",
        "metric": "dot",
        "num_partitions": 71,
        "num_sub_vectors": 24,
        "trained_rows": 5_000,
    }
    tiny = plan_ann(PQ_TRAINING_ROWS - 1, 384, "dot", SETTINGS, None, force=True)
    assert tiny.action == "skip" and "at least 256" in tiny.reason


def test_existing_index_is_updated_until_the_table_outgrows_it():
    existing = ExistingAnn("IVF_PQ", "dot", trained_rows=20_000)
    assert plan_ann(39_999, 384, "dot", SETTINGS, existing).action == "update"
    grown = plan_ann(40_000, 384, "dot", SETTINGS, existing)
    assert grown.action == "retrain" and "2.0x the 20,000" in grown.reason
    assert grown.params["num_partitions"] == 200
    unknown = plan_ann(10**6, 384, "dot", SETTINGS, ExistingAnn("IVF_PQ", "dot", None))
    assert unknown.action == "update"


def test_index_of_another_metric_or_type_is_retrained():
    assert plan_ann(20_000, 384, "dot", SETTINGS, ExistingAnn("IVF_PQ", "l2", 20_000)).action == "retrain"
    hnsw = IndexSettings(ann_min_rows=10_000, ann_type="IVF_HNSW_SQ")
    action = plan_ann(20_000, 384, "dot", hnsw, ExistingAnn("IVF_PQ", "dot", 20_000))
    assert action.action == "retrain" and "num_sub_vectors" not in action.params


def test_full_text_and_scalar_indexes():
    actions = plan_other_indexes(500, {"doc_id": object()}, IndexSettings())
    assert [(a.column, a.kind, a.action) for a in actions] == [
        ("text", "fts", "create"),
        ("doc_id", "btree", "update"),
        ("chunk_id", "btree", "create"),
        ("source", "btree", "create"),
    ]
    assert {a.action for a in plan_other_indexes(0, {}, IndexSettings())} == {"skip"}
    no_fts = plan_other_indexes(500, {}, IndexSettings(full_text=False, scalar_columns=["doc_id"]))
    assert [a.column for a in no_fts] == ["doc_id"]


def test_unknown_scalar_column_is_refused_at_start_up():
    with pytest.raises(ConfigError, match=r"index.scalar_columns has \['body'\].*choose from"):
        load_settings(model={"path": "x"}, index={"scalar_columns": ["doc_id", "body"]})
