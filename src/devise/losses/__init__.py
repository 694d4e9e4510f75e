"""Training losses."""

from devise.losses.global_batch import GlobalBatch, gather_global_batch
from devise.losses.hinge_rank import HingeRankLoss

__all__ = ["GlobalBatch", "HingeRankLoss", "gather_global_batch"]
