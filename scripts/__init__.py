"""Operator scripts run from the checkout as modules (python -m scripts.<name>)."""
