"""Evaluation: paired test sets, degraded → restored → scored (``pairs``), and the image and face metrics (``metrics``)."""
