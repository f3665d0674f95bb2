"""Rigs for the demo, the tests and the benchmarks: a real S3 endpoint on loopback and
sample lakes (real CC0 photos plus generated messy files with known outcomes)."""
