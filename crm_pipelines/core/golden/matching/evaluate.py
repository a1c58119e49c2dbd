"""Pairwise precision, recall and F1 of a clustering against ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PairScores:
    precision: float
    recall: float
    f1: float
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    records: int


def _pairs(counts: pd.Series) -> int:
    c = counts.to_numpy(dtype=np.int64)
    return int((c * (c - 1) // 2).sum())


def pairwise_scores(predicted: pd.Series, truth: pd.Series) -> PairScores:
    """``predicted`` and ``truth`` are cluster labels indexed by record; records missing from either are ignored."""
    frame = pd.DataFrame({"p": predicted, "t": truth}).dropna()
    frame = frame[(frame["p"] != "") & (frame["t"] != "")]
    correct = _pairs(frame.groupby(["p", "t"]).size())
    predicted_pairs = _pairs(frame.groupby("p").size())
    true_pairs = _pairs(frame.groupby("t").size())
    precision = correct / predicted_pairs if predicted_pairs else 1.0
    recall = correct / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairScores(precision, recall, f1, true_pairs, predicted_pairs, correct, len(frame))


def load_truth(path) -> pd.DataFrame:
    """The generator's ground truth with record keys as the matching layer writes them."""
    truth = pd.read_csv(path, dtype=str, keep_default_na=False)
    truth["record_key"] = truth["source"] + ":" + truth["source_record_id"]
    return truth
