"""The consumer side of lora_repro: reads run directories (adapters, records) and computes the paper's
§7 analyses — subspace similarity φ, ΔW spectra and effective rank, ΔW-vs-W amplification (Table 7) —
as CSV, figures and Markdown. Never trains; lora_repro imports it only at the `analyze` CLI seam."""
