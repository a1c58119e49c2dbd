"""Lead scoring: the rules (``rules``), scoring contacts in the warehouse (``leads``), handing hot
leads to sales (``handoff``, ``tasks``) and the funnel report (``funnel``)."""
