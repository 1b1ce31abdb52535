"""World models: the S3M of R2I and the RSSM of DreamerV3, behind one interface (world_model.base)."""

from world_model.base import WorldModel, to_tensors
from world_model.rssm import RSSM
from world_model.s3m import S3M

__all__ = ["RSSM", "S3M", "WorldModel", "to_tensors"]
