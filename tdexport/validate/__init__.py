"""Validation of a compressed model against its original: accuracy, output parity, latency, gates and reports.

Submodules (imported on use; this package imports nothing eagerly so ``tdexport --help`` stays fast):

- `tdexport.validate.accuracy`: top-1 / top-5 of a runner over a data loader (optionally over a class subset).
- `tdexport.validate.parity`: output agreement between two runners (max abs, rel L2, cosine, top-1 agreement).
- `tdexport.validate.latency`: paired latency of two runners in ABBA-ordered rounds (host, and device time on GPUs).
- `tdexport.validate.latency_stats`: latency statistics (p50 … p99, throughput) and ratio summaries.
- `tdexport.validate.reduced`: fp16 / int8 ONNX of both models judged against their fp32 selves.
- `tdexport.validate.gates`: pass/fail thresholds (accuracy drop, speedup, parity error) and `GateFailed`.
- `tdexport.validate.environment`: versions, hardware and the device/providers each backend really used.
- `tdexport.validate.report`: report.json (`build_report`, `write_report`) and the headline values.
- `tdexport.validate.markdown`: report.md and the terminal headline table.
- `tdexport.validate.plots`: the two PNG plots.
"""
