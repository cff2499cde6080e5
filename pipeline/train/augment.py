"""Training augmentation: the recipe's ranges and the warp arithmetic, for numpy on the host and
jax.numpy on the device (`pipeline train --fast`), so both see the same distortions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """The random distortions training applies, and their ranges: one source for the host-side
    augmentation (`augment`, numpy) and the on-device one of `pipeline train --fast` (JAX).

    Each image gets a rotation, a scale, a shear and a shift drawn uniformly from +/- these
    ranges, then an elastic distortion (Simard et al., 2003): a random displacement field,
    Gaussian-smoothed with `elastic_sigma` pixels and scaled to at most `elastic_alpha / 10` pixels.
    """

    rotation_deg: float = 10.0  # handwriting leans a few degrees either way; 10 keeps a 6 a 6
    shift: float = 2.0  # pixels: MNIST centres by mass, real crops are off by a pixel or two
    scale_range: float = 0.1  # +/- 10% size: the 20 px box is a convention, pens vary more
    shear: float = 0.15  # slant, beyond what rotation covers
    elastic_alpha: float = 12.0  # at most 1.2 px of local displacement: stroke wobble, not a new digit
    elastic_sigma: float = 4.0  # smoothness of that displacement, in pixels

    def draw(self, uniform: Callable[[float, float, tuple[int, ...]], Any], n: int, h: int, w: int) -> Warp:
        """This augmentation's random numbers for n images of h x w, from `uniform(low, high,
        shape)`: numpy's `Generator.uniform` on the host, a keyed `jax.random.uniform` on a device.
        The draw order is fixed, so a seeded generator gives the same images every time."""
        rotation = uniform(-self.rotation_deg, self.rotation_deg, (n,))
        zoom = uniform(1 - self.scale_range, 1 + self.scale_range, (n,))
        shear = uniform(-self.shear, self.shear, (n,))
        shift = uniform(-self.shift, self.shift, (2, n))
        noise = uniform(-1.0, 1.0, (2, n, h, w)) if self.elastic_alpha > 0 else None
        return Warp(rotation, zoom, shear, shift, noise, self.elastic_alpha, self.elastic_sigma)


@dataclass(frozen=True)
class Warp:
    """One batch's drawn distortion: per-image rotation (degrees), zoom, shear, shift (x and y
    rows), the elastic noise (x and y fields, or None) and the elastic settings."""

    rotation: Any
    zoom: Any
    shear: Any
    shift: Any
    noise: Any
    elastic_alpha: float
    elastic_sigma: float


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float = Augmentation.rotation_deg,
    shift: float = Augmentation.shift,
    scale_range: float = Augmentation.scale_range,
    shear: float = Augmentation.shear,
    elastic_alpha: float = Augmentation.elastic_alpha,
    elastic_sigma: float = Augmentation.elastic_sigma,
) -> np.ndarray:
    """Randomly rotate, shift, scale, shear and elastically distort float images [N, 28, 28, 1].

    Pure numpy on the host, so it works with every Keras backend and never runs inside a compiled
    Keras step: Keras' random image layers inside a jit-compiled JAX model were pathologically
    slow on the GPU machine. It must also keep up with the GPU (tens of thousands of images a
    second), so the whole batch is one float32 bilinear gather (see `warp`).
    """
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    recipe = Augmentation(rotation_deg, shift, scale_range, shear, elastic_alpha, elastic_sigma)
    return warp(np, images, recipe.draw(rng.uniform, n, h, w))


def warp(xp: Any, images: Any, drawn: Warp) -> Any:
    """Apply a drawn distortion to images [N, H, W, 1] with array module `xp` (numpy, or
    jax.numpy inside a compiled training step): the same arithmetic on the host and the device.

    Each output pixel reads the input at its inverse-mapped position (about the field's centre),
    displaced by the elastic field, with bilinear weights. The elastic field is the noise smoothed
    by a truncated Fourier transform done as two small real matrix products (`_smooth_field`):
    the Gaussian leaves nothing above 5 cycles per image.
    """
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    src = images.reshape(n, h, w)
    theta = xp.deg2rad(drawn.rotation)
    cos, sin = xp.cos(theta) / drawn.zoom, xp.sin(theta) / drawn.zoom
    sh, tx, ty = drawn.shear, drawn.shift[0], drawn.shift[1]
    # Inverse map (output pixel -> input position) about the field's centre, per image.
    a, b = cos, -sin + sh * cos
    c, d = sin, cos + sh * sin
    cy, cx = (h - 1) / 2, (w - 1) / 2
    col = lambda v: v.astype(xp.float32)[:, None, None]  # noqa: E731
    ys = (xp.arange(h, dtype=xp.float32) - xp.float32(cy))[:, None]
    xs = (xp.arange(w, dtype=xp.float32) - xp.float32(cx))[None, :]
    sx = col(a) * xs + col(b) * ys + col(cx - tx)
    sy = col(c) * xs + col(d) * ys + col(cy - ty)
    if drawn.noise is not None and drawn.elastic_alpha > 0:
        fields = []
        for noise in (drawn.noise[0], drawn.noise[1]):
            field = _smooth_field(noise, drawn.elastic_sigma, xp)
            fields.append(field / (xp.abs(field).max(axis=(1, 2), keepdims=True) + xp.float32(1e-8)))
        # at most alpha/10 pixels of displacement
        sx = sx + xp.float32(drawn.elastic_alpha / 10) * fields[0]
        sy = sy + xp.float32(drawn.elastic_alpha / 10) * fields[1]
    return _bilinear(src, sx, sy, xp)[..., None]


_FIELD_CYCLES = 5  # highest frequency kept: exp(-2 (pi sigma k / 28)^2) < 1e-6 beyond it at sigma 4


def _smooth_field(noise: Any, sigma: float, xp: Any = np) -> Any:
    """Gaussian-smooth noise [N, H, W] with a periodic boundary, as an FFT would.

    A Gaussian is separable and the noise is real, so keeping the low frequencies of the Fourier
    transform, weighting them by the Gaussian's transform and transforming back is one real
    matrix for the rows and one for the columns: two small float32 products, fast on a CPU and a
    GPU, with no complex arithmetic."""
    rows, cols = _smoothing_matrices(noise.shape[1], noise.shape[2], sigma)
    return (xp.asarray(rows) @ noise.astype(xp.float32) @ xp.asarray(cols)).astype(xp.float32)


@functools.lru_cache(maxsize=8)
def _smoothing_matrices(h: int, w: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """For each axis of length n, the symmetric matrix K[i, j] = sum over |f| <= k of
    g(f) cos(2 pi (i - j) f / n) / n: the truncated inverse transform of the Gaussian's transform
    g(f) = exp(-2 (pi sigma f / n)^2) applied to the forward transform."""

    def axis(n: int) -> np.ndarray:
        f = np.arange(-min(_FIELD_CYCLES, n // 2 - 1), min(_FIELD_CYCLES, n // 2 - 1) + 1)
        gauss = np.exp(-2 * (np.pi * sigma * f / n) ** 2)
        offset = np.subtract.outer(np.arange(n), np.arange(n))[..., None]
        return (np.cos(2 * np.pi * offset * f / n) @ gauss / n).astype(np.float32)

    return axis(h), axis(w)


def _bilinear(src: Any, sx: Any, sy: Any, xp: Any = np) -> Any:
    """Sample src [N, H, W] at (sy, sx) with bilinear weights in float32; outside reads 0."""
    n, h, w = src.shape
    stride = w + 2
    padded = xp.pad(src.astype(xp.float32), ((0, 0), (1, 1), (1, 1)))
    sx = xp.clip(sx + xp.float32(1), 0, w + 0.999).astype(xp.float32)
    sy = xp.clip(sy + xp.float32(1), 0, h + 0.999).astype(xp.float32)
    x0, y0 = xp.floor(sx), xp.floor(sy)
    wx, wy = sx - x0, sy - y0
    # x0 <= w and y0 <= h after the clip, so the +1 neighbours stay inside the padded field.
    base = (xp.arange(n, dtype=xp.int32) * (h + 2) * stride)[:, None, None]
    idx = y0.astype(xp.int32) * stride + x0.astype(xp.int32) + base
    flat = padded.reshape(-1)
    top_left, top_right = xp.take(flat, idx), xp.take(flat, idx + 1)
    bottom_left, bottom_right = xp.take(flat, idx + stride), xp.take(flat, idx + stride + 1)
    top = top_left + (top_right - top_left) * wx
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    return top + (bottom - top) * wy
