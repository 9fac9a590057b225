"""The consumer side: reads what training wrote (run folders, records, results/*.jsonl) and computes
the paper's tables and §7 analyses (subspace similarity φ, ΔW spectra and effective rank, ΔW-vs-W
amplification, Table 7) as CSV, figures and Markdown. Never trains; within the package only cli.py
imports it (tests/test_architecture.py holds that)."""
