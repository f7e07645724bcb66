"""Training data: faceset tables of aligned faces (``faceset``) and the synthetic degradation model (``degrade``)."""
