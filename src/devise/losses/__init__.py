"""Training losses."""

from devise.losses.hinge_rank import HingeRankLoss

__all__ = ["HingeRankLoss"]
