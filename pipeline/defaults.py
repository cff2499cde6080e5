"""Every default value of the pipeline, each with the reason it has that value.

Other modules import from here instead of repeating a literal, so a default changes in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

# --- data -------------------------------------------------------------------------------------

# The dataset every stage uses unless told otherwise: the seed project's data.
DATASET = "mnist"
# Environment variable a user or CI sets to point at a folder holding <name>/ subfolders or the files.
DATA_DIR_ENV = "PIPELINE_DATA_DIR"
# Set to 1 to never download (air-gapped machines, tests): a missing dataset fails at once
# instead of waiting on a network that is not there.
NO_DOWNLOAD_ENV = "PIPELINE_NO_DOWNLOAD"
# Folders searched in order after --data-dir and $PIPELINE_DATA_DIR (each also with /<dataset>
# appended), before Keras' own cache: a copy in the working directory, then the system's data folders
# (Debian's dataset packages install under /usr/share/datasets).
DATA_SEARCH_ROOTS: tuple[Path, ...] = (
    Path("data"),
    Path("/usr/local/share/datasets"),
    Path("/usr/share/datasets"),
)
# Pixel count guard for IDX files: MNIST-like images are 28x28; anything far larger is corrupt.
IDX_MAX_IMAGE_SIDE = 512

# --- preprocessing ----------------------------------------------------------------------------

# MNIST geometry (LeCun et al.): the digit is fit into a 20x20 box, then centred by its centre of
# mass in a 28x28 field. Changing these breaks parity with the training data.
FIELD_SIZE = 28
BOX_SIZE = 20
# Ink below this fraction of full scale (after polarity normalisation and background removal) is
# treated as paper noise when finding the bounding box; 0.25 ignores JPEG ringing and faint borders.
INK_THRESHOLD = 0.25
# An image whose strongest ink is below this (on 0..255, after background removal) is blank.
BLANK_MAX_INK = 40
# Form lines (boxes, underlines, comb fields) printed around a handwritten digit are erased before
# the digit is located (preprocess.erase_form_lines). A line is a straight band of ink at least this
# fraction of the ink's larger side long: box sides and underlines span the field, while a digit's
# strokes only pass it where they span the digit (a 1's stem, a 7's bar), and those are then tested.
FORM_LINE_MIN_LENGTH = 0.5
# Scanned forms lie up to this many degrees askew; a line tilted more is not found as one.
FORM_LINE_MAX_TILT_DEGREES = 3.0
# A printed line's ink stays within this RMS distance (pixels) of a straight line fitted to it
# (synthetic form scans: 0.47 px at the 95th percentile, 1.26 at the 99th); a digit's long flat
# strokes wander more (median 0.69 px) and past this are not taken for lines at all. 1.5 let a
# square-drawn 0 pass for a box on plain scans; 1.0 costs no measurable form accuracy.
FORM_LINE_MAX_WOBBLE = 1.0
# Four lines closing a box around a digit that touches it are taken for a box when all four are
# this straight (printed lines: 0.40 px at the 90th percentile; a square-drawn 0's sides 0.65-0.93).
FORM_BOX_MAX_WOBBLE = 0.6
# At most this share of the digit's ink may lie beyond a line (the side away from the digit), not
# counting strokes that cross it by FORM_LINE_CROSSING of the digit's height: people write through
# box lines; a 4's crossbar has a whole stem's worth of ink on each side.
FORM_LINE_FAR_INK = 0.03
FORM_LINE_CROSSING = 0.1
# A flat line with more of the digit beyond it than that is still the form's when the digit was
# written through it: a descender (a 7's or 9's tail below an underline or a comb) leaves at most
# this share of the digit beyond (3-16% on development forms, test digits 0-5999), and the line
# runs past the digit at both ends. A digit's own crossbar (a 7's, a 4's) has a third or more on
# each side (36-39% on plain scans) and does not pass the digit's other strokes at both ends.
FORM_LINE_THROUGH_INK = 0.2
# A form line passes the digit at each free end by at least this fraction of the digit's extent
# along it and this many of its stroke widths, with no ink near its last tenth: a 7's bar or a 2's
# base meets the rest of its digit at one end, or overshoots it by about a stroke. Chosen on
# synthetic forms (test digits 0-999 in boxes, on underlines and comb fields; then 5000-6999 of
# `samples.render_form`) against 6,000 clean scans and tight crops that must lose nothing: one
# stroke width erased strokes of 3 of them, 1.5 of 1 in 3,000 (a 2's base reaching far right).
FORM_LINE_OVERHANG = 0.05
FORM_LINE_OVERHANG_STROKES = 1.5
# When lines leave less than this share of the ink, the lines are the digit (a tight crop of a 4 or
# a 7 is two or three straight strokes): nothing is erased.
FORM_LINE_MIN_DIGIT = 0.03

# --- training ---------------------------------------------------------------------------------

# The seed trained both models for 100 epochs; kept so `pipeline train` reproduces the seed.
EPOCHS = 100
# 128 keeps a CPU epoch short and is a common sweet spot for MNIST-sized CNNs on a GPU as well.
BATCH_SIZE = 128
# Adam's usual default; the seed models train stably with it.
LEARNING_RATE = 1e-3
# Explicit seed so a run with the same seed and backend reproduces its numbers.
SEED = 1234
# 10% of the training images (the last 6,000 after a seeded shuffle) choose epochs and
# checkpoints; the test set is only ever used for the final report.
VALIDATION_SPLIT = 0.1
# Training precision: `auto` is mixed bfloat16 on a GPU and float32 on a CPU (train.resolve_precision).
PRECISION = "auto"
# Threads that augment batches ahead of the training step. Half the cores: the other half run the
# model on a CPU-only machine; on the GPU machine (16 cores) 8 threads outrun the GPU. With one
# (2-core CI) batches are made in the training loop itself, as Keras does without workers.
# PIPELINE_AUGMENT_WORKERS overrides it where several runs share one machine (the device scripts
# train four at once on one GPU, so each gets a quarter of the cores, not half).
# A value that is not a positive whole number is ignored (this module is read by every command,
# classify included, so it must not fail on import).
_HALF_THE_CORES = max(1, min(8, (os.cpu_count() or 2) // 2))
_WORKERS_ENV = os.environ.get("PIPELINE_AUGMENT_WORKERS", "").strip()
AUGMENT_WORKERS = int(_WORKERS_ENV) if _WORKERS_ENV.isdigit() and int(_WORKERS_ENV) > 0 else _HALF_THE_CORES
# train --teacher (knowledge distillation, Hinton et al. 2015): the teacher's averaged probabilities
# are softened at this temperature before the student matches them, so its second and third
# choices (which digit a 7 could also be) carry weight; 4 is the usual middle of the 2-10 that
# papers report working for small image classifiers.
DISTIL_TEMPERATURE = 4.0
# The share of the loss that matches the teacher (times the temperature squared, which keeps its
# gradients the size of the labels' loss); the rest is the labels' own loss. 0.9: the teacher's
# answers are right on 99.7% of MNIST and say more than the labels, which still anchor the rest.
DISTIL_WEIGHT = 0.9
# Where `pipeline train` puts run folders.
RUNS_DIR = Path("runs")
# Default model architecture: the seed's CNN.
MODEL = "conv2d"

# --- export -----------------------------------------------------------------------------------

# Where a user's own exports and their manifest go: the working directory, never the shipped release
# (which lives inside the package; see pipeline.manifest.release_dir).
EXPORT_DIR = Path("exports")
# Where reports about the shipped release go (verify's parity files, evaluate's figures), so that
# checking the release never rewrites its committed or installed files.
RELEASE_REPORT_DIR = Path("release-reports")
MANIFEST_NAME = "manifest.json"
# ONNX opset 17 is supported by every onnxruntime since 1.11 and by tf2onnx; the issue asks >= 17.
ONNX_OPSET = 17
# Training images used to calibrate int8 quantization: 500 covers every class about 50 times,
# which is where accuracy stops improving for MNIST while keeping export under a minute on a CPU.
CALIBRATION_SAMPLES = 500
# Names of the model's input and output in every artifact.
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# The second output of models that have one: their penultimate features, which the review's
# "not a digit" evidence measures (pipeline.review). bncnn's last block (the layer named here,
# 4x4x128) averaged over its positions; an ensemble's members' side by side (4 x 128 for
# bncnn-x4); micro's global average pooling (the layer named POOLED_FEATURE_LAYER, 48 values),
# which the screen in front of the default model judges by (pipeline.classify.screen). conv2d
# and flat have no features output.
FEATURES_NAME = "features"
FEATURE_LAYER = "head_relu"
POOLED_FEATURE_LAYER = "pool"

# --- evaluate ---------------------------------------------------------------------------------
# calibrate: the fewest held-out images a temperature is fitted on. A 99.6% model makes about
# 4 errors per 1,000 images, and the fit needs a few dozen errors to see the confidence they get.
TEMPERATURE_MIN_IMAGES = 2000
# Golden-section search stops when the bracket on log T is this narrow (T known within 0.2%).
TEMPERATURE_TOLERANCE = 0.002
# The folded model must reproduce the fit's numpy head to this (float32 against float64), on
# this many test images (the check is of arithmetic, not accuracy: a few batches show a mismatch).
TEMPERATURE_FOLD_ATOL = 1e-4
TEMPERATURE_FOLD_CHECK = 1000
# Equal-width confidence bins of the expected calibration error and the reliability diagram: 15,
# as Guo et al. (2017) and the numbers issue #16 compares against.
ECE_BINS = 15

# Confidence thresholds `evaluate` reports for a manual-review rule ("check every row below t"):
# label-smoothed models top out near 0.9, the seed's sigmoid near 1.0, so the grid spans both.
REVIEW_THRESHOLDS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)

# --- verify -----------------------------------------------------------------------------------

# Float artifacts must classify like Keras: top-1 agreement of at least 99.9% ...
FLOAT_MIN_AGREEMENT = 0.999
# ... and an accuracy within 0.05 percentage points of Keras on the test set.
FLOAT_MAX_ACCURACY_DELTA = 0.05
# Quantized (dynamic range, int8) artifacts may lose up to 0.3 points of accuracy.
QUANT_MAX_ACCURACY_DELTA = 0.3
# Batch sizes at which verify reports latency: one image (interactive) and a bulk batch.
LATENCY_BATCH_SIZES = (1, 256)
# Batches timed per batch size; the median is reported.
LATENCY_REPEATS = 20

# Rounds of the classify benchmarks (`bench classify`, `bench scans`): each round times the
# decode-only ceiling and then classify, and the round with the median share is reported. This
# machine's speed drifts by a third within minutes, so one pair's share moved by as much as the
# changes it was meant to show; three pairs cost three times the runs and give a middle one.
BENCH_ROUNDS = 3

# --- classify ---------------------------------------------------------------------------------

# Extensions classify picks up (case-insensitive): what scanners and phones write.
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp")
# Images per model call in classify (a chunk is predicted in slices this size). The session's
# memory grows with the batch, its speed does not: bncnn-x4 int8 on one thread took 796/838/846 us
# per image at 64/128/256, its session and activations 50 against 136 MiB at 256, and each
# classify worker holds one. Past 32 the activations of conv2d's first block (100 KB an image in
# float) leave this core's 1 MB L2 cache: conv2d int8 59.2 us an image at 32 against 68.3 at 64,
# micro 39.8 against 42.4; bncnn-x4 767 against 785 (medians of 11 in turns, one thread).
CLASSIFY_INFERENCE_BATCH = 32
# Files handed to a worker process at once: amortises inter-process overhead on 28x28 PNGs.
CLASSIFY_CHUNK_SIZE = 256
# The fewest files in one of the shrinking chunks a run ends with (`local._chunks`): a chunk of
# 256 scans is ~0.1 s of one worker, which the other workers would otherwise wait out at the end;
# under 16 files a chunk costs more in its hand-over than the wait it saves.
CLASSIFY_TAIL_CHUNK_MIN = 16
# Chunks classify times with a one-thread inference session (after the first, which warms the
# session up) before it sizes the inference thread pool: about a second of work, enough to average
# out one slow file.
CLASSIFY_PROBE_CHUNKS = 4
# Refuse to decode images above this many pixels (decompression bombs): 64 megapixels is far
# above any page scan at 600 dpi (A4 = 35 Mpx) and far below what would exhaust memory.
MAX_IMAGE_PIXELS = 64_000_000
# Images smaller than this on either side cannot hold a legible digit.
MIN_IMAGE_SIDE = 2
# Large images are worked on at 1/2, 1/4 or 1/8 of their size (JPEGs decoded so, by DCT scaling;
# other formats averaged in blocks), the smallest that keeps the shorter side at least this long:
# a digit filling a quarter of it still has 48 px, over twice the 20 px it ends at, so its strokes
# survive (128 cost a few rendered scans; docs/classify.md has the measurements).
WORK_MIN_SIDE = 192
# The largest reduction: JPEG's DCT scaling stops at 1/8.
WORK_MAX_REDUCTION = 8
# A digit found smaller than this (longer side, px) at the reduced size, or with every stroke
# under 3 px there, is worked on again at full size: a small digit on a large page keeps its
# strokes. Over twice the 20 px box, so the reduced copy still has more detail than the output.
WORK_MIN_DIGIT = 48
# classify --review-below: rows whose top probability is under this go to review as
# low_confidence. 0.9: a person looks at every answer the model gives at least a 1-in-10 chance of
# being wrong. The release's probabilities are calibrated (pipeline calibrate), so the number
# means what it says (docs/classify.md, "Confidence").
REVIEW_BELOW = 0.9
# classify's screen (pipeline.classify.screen) answers alone where its top probability is at
# least this (and its features are near that digit's). Chosen on development data (held-out
# training digits, 6,000 development form fields, letters and scribbles of another seed than the
# benchmark's): at 0.995 no answer changed but the screen kept 2.2 points of the letters from the
# review; at 0.998 it keeps 0.5 (docs/classify.md, "The screen").
SCREEN_CONFIDENCE = 0.998
# verify: an artifact with features must give the same "not a digit" flag as the Keras model on
# at least this share of the test images. int8 features differ from Keras' by about 1.3% (mean
# relative), which moves only images at the limit's edge across it.
REVIEW_MIN_AGREEMENT = 0.99
# review.html shows at most this many rows, the least confident first (review.csv has them all):
# each row embeds two small PNGs (about 3 KB), so the page stays a few MB and opens at once.
REVIEW_PAGE_ROWS = 500
# The longer side of a file's thumbnail in review.html, px: large enough to read a form field's
# surroundings, small enough for 500 of them in one page.
REVIEW_THUMBNAIL_SIDE = 160
# JPEG quality of those thumbnails: strokes stay sharp enough to judge, at about 4 KB each.
REVIEW_THUMBNAIL_QUALITY = 80
# Rows flushed to the partial CSV at a time; a kill loses at most the unflushed rows, which
# --resume then recomputes.
CLASSIFY_FLUSH_ROWS = 4096
