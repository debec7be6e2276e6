"""A reward with variance on a random tiny model (which never answers correctly), so tests see real gradients.
Used as `module:function` from recipes in tests: `--reward_funcs tests.reward_stubs:digit_count`."""


def digit_count(completions, **kwargs):
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(sum(ch.isdigit() for ch in t)) / 8.0 for t in texts]
