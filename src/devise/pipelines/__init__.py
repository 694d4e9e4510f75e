"""Pipelines on distributed engines: feature extraction on Apache Beam (extra ``beam``).

Import :mod:`devise.pipelines.beam_extract` itself; this package imports
nothing, so ``import devise.pipelines`` works without Apache Beam installed.
"""
