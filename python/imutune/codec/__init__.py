"""Compression-aware upload: a learned sensor codec (analysis/synthesis transforms, factorized prior),
real range-coded bitstreams in ``.imz`` containers, three training modes, classic baselines and
encoder export (issue 10). See :mod:`imutune.codec.model`, :mod:`imutune.codec.bitstream`,
:mod:`imutune.codec.train`, :mod:`imutune.codec.classic`, :mod:`imutune.codec.export`.
"""
