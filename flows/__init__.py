"""Prefect flows (the user-facing pipelines). They call tasks/ and dfdcore; nothing below imports them."""
