"""Deployment code: `flywheel deploy`, the MLflow webhook endpoint, and work-pool templates."""
