"""Models shipped with dfd (``bundled``): the default when no model is named."""
from dfdcore.models.bundled import DEFAULT_MODEL, BundledModel, BundledModelError, bundled_model

__all__ = ["DEFAULT_MODEL", "BundledModel", "BundledModelError", "bundled_model"]
