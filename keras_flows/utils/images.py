"""Image grids for samples and reconstructions, written as PNG with Pillow."""

import math
import pathlib

import numpy as np

__all__ = ["save_image_grid"]

PADDING = 2


def _to_numpy(x):
    """numpy from a numpy array, a TensorFlow, JAX or PyTorch tensor, or a list."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy"):  # tf eager tensors
        return x.numpy()
    return np.asarray(x)  # jax arrays, lists


def save_image_grid(images, path, nrow=None):
    """Tiles images into a grid and writes it as a PNG.

    Args:
        images: (N, H, W, C) with C in (1, 3), or (N, H, W); values on the
            [0, 255] scale, float or integer, as numpy or any backend's tensor.
            Values are clipped to [0, 255] and rounded (NaN becomes 0).
        path: where to write the PNG (parent folders are created).
        nrow: images per row (at most N); default `ceil(sqrt(N))`, a
            near-square grid.

    Returns:
        The grid as a uint8 array of shape (rows * (H + 2) + 2, cols * (W + 2) + 2, C),
        C = 1 for (N, H, W) input: tiles separated and framed by 2 black pixels;
        image `i` starts at row `2 + (i // cols) * (H + 2)`, column
        `2 + (i % cols) * (W + 2)`, where `cols` is the number per row.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("save_image_grid needs Pillow: pip install pillow") from err

    x = np.asarray(_to_numpy(images))
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"`images` must have shape (N, H, W, C) or (N, H, W); got {x.shape}.")
    n, h, w, c = x.shape
    if c not in (1, 3):
        raise ValueError(f"`images` must have 1 or 3 channels (last axis); got shape {x.shape}.")
    if n == 0:
        raise ValueError("`images` is empty.")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"`images` must be numeric; got dtype {x.dtype}.")
    if x.dtype != np.uint8:
        x = np.nan_to_num(x.astype(np.float64), nan=0.0)
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)

    cols = int(math.ceil(math.sqrt(n))) if nrow is None else int(nrow)
    if cols < 1:
        raise ValueError(f"`nrow` must be a positive integer; got {nrow}.")
    cols = min(cols, n)
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * (h + PADDING) + PADDING, cols * (w + PADDING) + PADDING, c), np.uint8)
    for i in range(n):
        top = PADDING + (i // cols) * (h + PADDING)
        left = PADDING + (i % cols) * (w + PADDING)
        grid[top:top + h, left:left + w] = x[i]

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path, format="PNG")
    return grid
