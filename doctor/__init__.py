"""The plateau doctor: names why a model stalls — before a sweep, per trial, across a study.

A package of its own (not under ``sweeps/``): its checks read data, models and curves, and
are run by the trial runner, the sweeper and by hand alike.
"""
