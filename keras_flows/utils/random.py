"""Seeds."""

import keras


def seed_generator(seed):
    """A `SeedGenerator` from an int, None, or an existing generator."""
    if isinstance(seed, keras.random.SeedGenerator):
        return seed
    return keras.random.SeedGenerator(seed)
