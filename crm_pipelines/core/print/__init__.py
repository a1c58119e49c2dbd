"""Variable-data print lists: campaign rules, eligibility, the CSV a print shop runs, manifest, proof, release."""
