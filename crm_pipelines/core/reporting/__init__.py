"""Reporting: the closed loop from touches to revenue (attribution, and next deals, funnel, campaign economics)."""
