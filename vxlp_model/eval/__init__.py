"""Evaluation (SPEC §7): needle in a video haystack, official benchmark scorers (``vxlp score``), the benchmark
runner ``vxlp eval`` (annotation readers, resumable sharded answering), the offline VNBench-style generator and
the lmms-eval plugin. See docs/scoring.md and docs/eval.md."""
