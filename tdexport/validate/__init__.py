"""Validation of a compressed model against its original: accuracy, output parity, latency, gates and reports.

Submodules (imported on use; this package imports nothing eagerly so ``tdexport --help`` stays fast):

- `tdexport.validate.accuracy`: top-1 / top-5 of a runner over a data loader.
- `tdexport.validate.parity`: output agreement between two runners (max abs, rel L2, cosine, top-1 agreement).
- `tdexport.validate.latency`: paired, interleaved latency measurement of two runners and its statistics.
- `tdexport.validate.gates`: pass/fail thresholds (accuracy drop, speedup, parity error) and `GateFailed`.
- `tdexport.validate.report`: report.json, report.md, plots and the terminal headline table.
"""
