"""Evaluation protocols (SPEC §7): needle in a video haystack, multiple-choice answer parsing."""
