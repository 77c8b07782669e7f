"""The default speaker-count estimator (NME-SC, asr_mesh/services/diarization/clustering.py), pure.

Synthetic embeddings only (no models): k speakers recovered for k = 1..6, the caller's
num/min/max honoured, degenerate inputs, the shared-signal mask, determinism.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_diarization_core import voices

from asr_mesh.services.diarization.clustering import (
    ClusteringOptions,
    binarise,
    cluster_embeddings,
    kmeans,
    nme_spectral,
)


def speakers(counts, spread=0.6, dim=64, seed=0):
    """`counts[i]` noisy samples around speaker i's direction (within-speaker cosine ~0.75)."""
    return voices(counts, spread=spread, dim=dim, seed=seed)


def conversation(counts, turns_per_speaker=4, windows_per_turn=6, seed=0):
    """Speakers taking turns; each turn is one region of near-copies of one noisy window, as the
    overlapping, smoothed windows of one speech region are. Returns (x, truth, region)."""
    rng = np.random.default_rng(seed)
    base, truth_base = speakers([turns_per_speaker] * counts, seed=seed)
    order = rng.permutation(len(base))
    x, truth, region = [], [], []
    for r, i in enumerate(order):
        x.append(base[i] + 0.02 * rng.standard_normal((windows_per_turn, base.shape[1])))
        truth += [truth_base[i]] * windows_per_turn
        region += [r] * windows_per_turn
    return np.concatenate(x), np.array(truth), np.array(region)


def same_partition(a, b) -> bool:
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_k_speakers_are_recovered(k):
    """With the one-speaker guard on (`min_gap`, off by default: see its docstring)."""
    x, truth = speakers([25 + 5 * i for i in range(k)], seed=k)
    labels = cluster_embeddings(x, 1, 10, ClusteringOptions(min_gap=0.075))
    assert labels.max() + 1 == k
    assert same_partition(labels, truth)
    assert labels[0] == 0 and set(labels.tolist()) == set(range(k))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_count_is_of_speakers_not_of_regions(k):
    """Windows of one region are near-copies: unmasked, a sparse graph counts regions."""
    x, truth, region = conversation(k, seed=k)
    labels = cluster_embeddings(x, 1, 10, groups=region)
    assert labels.max() + 1 == k
    assert same_partition(labels, truth)


def test_a_long_region_is_masked_only_near_each_window():
    """Babble can make a whole file one speech region: with a radius, windows far apart in it
    are still each other's neighbours, so the speakers inside it are found."""
    x, truth, _ = conversation(3, seed=7)
    one_region = np.zeros(len(x), dtype=np.int64)
    labels = cluster_embeddings(x, 1, 10, groups=one_region, radius=6)
    assert labels.max() + 1 == 3 and same_partition(labels, truth)


def test_a_lone_speaker_split_by_the_spectral_count_is_merged_back():
    """NME-SC alone over-splits one voice (a largest eigengap always exists); the centroid merge
    and the small-cluster rule of the default put it back together."""
    x, _ = speakers([25], seed=1)
    bare = ClusteringOptions(merge_similarity=0.0, nme_min_fraction=0.0)
    assert cluster_embeddings(x, 1, 10, bare).max() + 1 > 1
    assert cluster_embeddings(x, 1, 10).max() + 1 == 1
    assert cluster_embeddings(x, 1, 10, ClusteringOptions(min_gap=0.075)).max() + 1 == 1


def test_num_min_max_are_honoured():
    x, _ = speakers([30, 30, 30, 30], seed=4)
    assert cluster_embeddings(x, 2, 2).max() + 1 == 2
    assert cluster_embeddings(x, 6, 6).max() + 1 == 6
    assert cluster_embeddings(x, 1, 3).max() + 1 == 3, "four clear groups, at most 3: 3"
    assert cluster_embeddings(x, 5, 8).max() + 1 == 5, "four clear groups, at least 5: 5"
    one, _ = speakers([40], seed=5)
    assert cluster_embeddings(one, 2, 10).max() + 1 == 2
    assert cluster_embeddings(one, 1, 1).max() + 1 == 1


@pytest.mark.parametrize("method", ["nme-sc", "threshold"])
def test_degenerate_inputs(method):
    options = ClusteringOptions(method=method)
    assert cluster_embeddings(np.zeros((0, 8)), 1, 10, options).shape == (0,)
    one = np.ones((1, 8))
    assert cluster_embeddings(one, 1, 10, options).tolist() == [0]
    assert cluster_embeddings(one, 3, 3, options).tolist() == [0], "one window is one speaker"
    same = np.tile(np.arange(1.0, 9.0), (12, 1))
    assert cluster_embeddings(same, 1, 10, options).tolist() == [0] * 12
    two = np.eye(8)[:2]
    assert cluster_embeddings(two, 1, 10, options).max() + 1 in (1, 2)
    assert cluster_embeddings(two, 2, 2, options).tolist() == [0, 1]
    assert cluster_embeddings(two, 1, 1, options).tolist() == [0, 0]


def test_deterministic():
    x, _, region = conversation(4, seed=11)
    first = cluster_embeddings(x, 1, 10, groups=region)
    assert np.array_equal(first, cluster_embeddings(x.copy(), 1, 10, groups=region.copy()))
    assert np.array_equal(kmeans(x, 4), kmeans(x.copy(), 4))


def test_long_inputs_are_estimated_on_a_subsample():
    x, truth = speakers([300, 200, 250], seed=2)
    labels = cluster_embeddings(x, 1, 10, ClusteringOptions(spectral_points=150))
    assert labels.max() + 1 == 3 and same_partition(labels, truth)


def test_binarised_graph_is_symmetric_with_p_neighbours_per_row():
    x, _ = speakers([10, 10], seed=3)
    graph = binarise(x @ x.T, 4)
    assert np.allclose(graph, graph.T)
    assert ((graph > 0).sum(axis=1) >= 4).all()
    assert set(np.unique(graph).tolist()) <= {0.0, 0.5, 1.0}


def test_eigengap_count_and_embedding_shape():
    x, truth = speakers([20, 20, 20], seed=6)
    k, embedding = nme_spectral(x, 1, 10, 0.15, 20)
    assert k == 3 and embedding.shape == (60, 3)
    assert same_partition(kmeans(embedding, 3), truth)
