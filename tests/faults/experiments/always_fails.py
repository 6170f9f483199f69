"""Every attempt of every trial raises: a run in which no trial can complete (issue 20, item 5)."""

from _common import make_experiment

experiment = make_experiment("always_fails")


def _broken(ctx):
    raise RuntimeError(f"always_fails: trial {ctx.trial_id} attempt {ctx.attempt} cannot train")


def train(ctx):
    _broken(ctx)
