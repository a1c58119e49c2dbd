"""Lead scoring: the rules (``rules``), scoring contacts in the warehouse (``leads``), handing hot
leads to sales (``handoff``, ``tasks``); the funnel is in ``core/reporting``."""
