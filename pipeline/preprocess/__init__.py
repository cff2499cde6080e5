"""How any image becomes an MNIST-style 28x28 input: the only preprocessing code in the project.

Training, export, verify, evaluate and classify all prepare images here, so they cannot drift
apart. It owns three things, one module each:

- `decode`: a file to an 8-bit grayscale array (regular files only, decompression-bomb guard from
  the header, EXIF orientation, every PIL mode), a large one at reduced size (`reduction`);
- `normalize`: polarity, paper level, ink stretch, crop, 20x20 fit, centre of mass, optional
  deskew (`to_mnist`), and data set batches to model input (`model_input`, `scale`);
- `forms`: printed form lines found and erased before the digit is located.

It may import `pipeline.defaults`, `pipeline.errors`, numpy, PIL and OpenCV, nothing heavier:
classify's worker processes import it. PIL is imported where a file or a step first needs it
(most scans never do: OpenCV reads them). The scan path's pixel loops (`kernels`) are C built with
the package (`_loops.c`): nothing to load or compile at run time.
"""

from pipeline.preprocess.decode import open_image, to_gray
from pipeline.preprocess.forms import erase_form_lines
from pipeline.preprocess.masks import stroke_width
from pipeline.preprocess.normalize import (
    PREPROCESSING_DESCRIPTION,
    deskew,
    deskew_batch,
    load_digit,
    model_input,
    scale,
    to_mnist,
)

__all__ = [
    "PREPROCESSING_DESCRIPTION",
    "deskew",
    "deskew_batch",
    "erase_form_lines",
    "load_digit",
    "model_input",
    "open_image",
    "scale",
    "stroke_width",
    "to_gray",
    "to_mnist",
]
