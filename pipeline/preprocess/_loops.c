/* The scan path's pixel loops in C: form-line search and tracing, ink stretch, PIL's resampling
 * and Gaussian blur, the border's levels; JPEG and PNG headers, and a plain gray PNG's rows.
 *
 * `pipeline.preprocess.kernels` is the Python side: it allocates every array, calls these
 * functions with numpy arrays (any strides: the vertical lines are transposed views), and
 * documents what each loop is for. Here is only the arithmetic, in the order the rules in
 * `forms` and `normalize` were measured with: the same integer counts, the same float64 sums in
 * the same order (so no FMA contraction: see the build flags in setup.py), and PIL's own fixed
 * point where its pixels are reproduced.
 *
 * Integer loops give the same results in any order, so the wide ones are vectorised: SSE2 (the
 * x86-64 baseline: by the compiler, or by hand where it would not), and AVX2 where the processor
 * has it (functions built with target("avx2"), chosen at run time by avx2_here()). Float loops
 * keep their order.
 *
 * Built with the package (setup.py); a plain CPython extension that reads arrays through the
 * buffer protocol, so it needs neither numpy's headers nor anything at run time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* One row of long_bands' result (kernels.LO ... kernels.WOBBLE). */
enum { LO, HI, START, END, INTERCEPT, SLOPE, THICKNESS, WOBBLE, ROW };

/* A 2-D array of one-byte items (bool or uint8), with strides in bytes (= items). */
typedef struct {
    Py_buffer view;
    char *data;
    Py_ssize_t h, w, s0, s1;
} grid;

#define AT(g, r, c) ((g)->data[(r) * (g)->s0 + (c) * (g)->s1])

static int get_grid(PyObject *obj, grid *g, int writable) {
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &g->view, flags) < 0) return -1;
    if (g->view.ndim != 2 || g->view.itemsize != 1) {
        PyBuffer_Release(&g->view);
        PyErr_SetString(PyExc_ValueError, "expected a 2-D array of bool or uint8");
        return -1;
    }
    g->data = (char *)g->view.buf;
    g->h = g->view.shape[0];
    g->w = g->view.shape[1];
    g->s0 = g->view.strides[0];
    g->s1 = g->view.strides[1];
    return 0;
}

/* An input grid and a writable output grid; on failure neither is held (the error is set). */
static int in_and_out(PyObject *in_obj, grid *in, PyObject *out_obj, grid *out) {
    if (get_grid(in_obj, in, 0) < 0) return -1;
    if (get_grid(out_obj, out, 1) < 0) {
        PyBuffer_Release(&in->view);
        return -1;
    }
    return 0;
}

/* The one argument of a function that takes only an image, as a grid. */
static int only_grid(PyObject *args, grid *g) {
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "O", &obj)) return -1;
    return get_grid(obj, g, 0);
}

/* A 1-D C-contiguous array of `count` items of `size` bytes. */
static int get_vector(PyObject *obj, Py_buffer *view, Py_ssize_t size, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->itemsize != size) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "array of the wrong item size");
        return -1;
    }
    return 0;
}

/* A grid's pixels as rows of contiguous bytes: the grid's own memory where they already are
 * (rows `*stride` bytes apart, possibly negative), else a packed copy in `*copy`, which the caller
 * frees. 0, or -1 with MemoryError set. */
static int contiguous_rows(const grid *g, const uint8_t **image, Py_ssize_t *stride, uint8_t **copy) {
    *copy = NULL;
    if (g->s1 == 1) {
        *image = (const uint8_t *)g->data;
        *stride = g->s0;
        return 0;
    }
    *copy = malloc((size_t)(g->h * g->w > 0 ? g->h * g->w : 1));
    if (!*copy) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t r = 0; r < g->h; r++)
        for (Py_ssize_t c = 0; c < g->w; c++) (*copy)[r * g->w + c] = (uint8_t)AT(g, r, c);
    *image = *copy;
    *stride = g->w;
    return 0;
}

/* A grid's pixels copied into a new contiguous buffer (NULL, MemoryError set, if out of memory). */
static uint8_t *packed_copy(const grid *g) {
    uint8_t *copy = malloc((size_t)(g->h * g->w > 0 ? g->h * g->w : 1));
    if (!copy) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t r = 0; r < g->h; r++) {
        if (g->s1 == 1)
            memcpy(copy + r * g->w, g->data + r * g->s0, (size_t)g->w);
        else
            for (Py_ssize_t c = 0; c < g->w; c++) copy[r * g->w + c] = (uint8_t)AT(g, r, c);
    }
    return copy;
}

/* A contiguous h x w image into a grid of that shape, a row at a time (the strides held in
 * locals: a byte store may alias them). */
static void unpack_into(const uint8_t *pixels, grid *out) {
    char *to = out->data;
    const Py_ssize_t t0 = out->s0, t1 = out->s1, h = out->h, w = out->w;
    for (Py_ssize_t r = 0; r < h; r++) {
        if (t1 == 1) {
            memcpy(to + r * t0, pixels + r * w, (size_t)w);
        } else {
            for (Py_ssize_t c = 0; c < w; c++) to[r * t0 + c * t1] = (char)pixels[r * w + c];
        }
    }
}

/* Whether the AVX2 loops run: where the processor has them (asked once), unless
 * `use_widest(False)` turned them off (the tests check the loops every x86-64 runs that way). */
static int widest_allowed = 1;

static int avx2_here(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx2") ? 1 : 0;
    return known && widest_allowed;
#else
    return 0;
#endif
}

/* use_widest(flag) -> whether AVX2 loops will run. */
static PyObject *use_widest(PyObject *self, PyObject *args) {
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag)) return NULL;
    widest_allowed = flag;
    return PyBool_FromLong(avx2_here());
}

/* The first byte of n contiguous bytes that is nonzero (`nonzero` 1) or zero (0); n if none:
 * 16 bytes a compare where SSE2 is. */
static Py_ssize_t first_byte(const unsigned char *p, Py_ssize_t n, int nonzero) {
    Py_ssize_t c = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; c + 16 <= n; c += 16) {
        int zeros = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + c)), zero));
        int hits = nonzero ? ~zeros & 0xFFFF : zeros;
        if (hits) return c + __builtin_ctz((unsigned)hits);
    }
#endif
    for (; c < n; c++)
        if ((p[c] != 0) == nonzero) return c;
    return n;
}

static Py_ssize_t first_nonzero(const unsigned char *p, Py_ssize_t n) { return first_byte(p, n, 1); }

static Py_ssize_t first_zero(const unsigned char *p, Py_ssize_t n) { return first_byte(p, n, 0); }

/* The last nonzero byte of n contiguous bytes (-1 if none). */
static Py_ssize_t last_nonzero(const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t c = n;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; c >= 16; c -= 16) {
        int zeros = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + c - 16)), zero));
        if (zeros != 0xFFFF) return c - 16 + 31 - __builtin_clz((unsigned)~zeros & 0xFFFF);
    }
#endif
    for (; c > 0; c--)
        if (p[c - 1]) return c - 1;
    return -1;
}

/* Fit a straight line to the ink of rows lo:hi, columns start:end (kernels: long_bands) of the
 * contiguous 0/1 mask `flat`, its rows `w` bytes apart. */
static int fit(const unsigned char *flat, Py_ssize_t w, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t start,
               Py_ssize_t end, double *row) {
    Py_ssize_t n = end - start, k = 0, used = 0;
    int64_t *counts = malloc(sizeof(int64_t) * 3 * (size_t)(n > 0 ? n : 1));
    double *xs = malloc(sizeof(double) * 2 * (size_t)(n > 0 ? n : 1));
    if (!counts || !xs) {
        free(counts);
        free(xs);
        PyErr_NoMemory();
        return -1;
    }
    int64_t *sums = counts + n, *inked = counts + 2 * n;
    double *ys = xs + n;
    /* Each column's ink and the sum of its rows, a row at a time (contiguous, vectorised). */
    for (Py_ssize_t j = 0; j < n; j++) counts[j] = sums[j] = 0;
    for (Py_ssize_t r = lo; r < hi; r++) {
        const unsigned char *p = flat + r * w + start;
        for (Py_ssize_t j = 0; j < n; j++) {
            counts[j] += p[j];
            sums[j] += p[j] * (int64_t)r;
        }
    }
    for (Py_ssize_t j = 0; j < n; j++)
        if (counts[j] > 0) inked[k++] = counts[j];
    double thickness;
    if (k) {
        /* The median of the inked columns' counts (each 1 .. hi - lo): counted, not sorted. */
        Py_ssize_t levels = hi - lo + 1, seen = 0;
        int64_t *tally = calloc((size_t)levels, sizeof(int64_t)), low = -1, high = -1;
        if (!tally) {
            free(counts);
            free(xs);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t j = 0; j < k; j++) tally[inked[j]]++;
        for (Py_ssize_t v = 0; v < levels && high < 0; v++) {
            seen += tally[v];
            if (low < 0 && seen > (k - 1) / 2) low = v;
            if (seen > k / 2) high = v;
        }
        free(tally);
        thickness = (double)(low + high) / 2;
    } else {
        thickness = (double)(hi - lo);
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        if (counts[j] > 0 && (double)counts[j] <= thickness + 1) {
            xs[used] = (double)(start + j);
            ys[used] = (double)sums[j] / (double)counts[j];
            used++;
        }
    }
    double intercept, slope, wobble;
    if (used >= 3) {
        double x_sum = 0.0, y_sum = 0.0;
        for (Py_ssize_t i = 0; i < used; i++) x_sum += xs[i];
        for (Py_ssize_t i = 0; i < used; i++) y_sum += ys[i];
        double x_mean = x_sum / (double)used, y_mean = y_sum / (double)used;
        double sxy = 0.0, sxx = 0.0;
        for (Py_ssize_t i = 0; i < used; i++) {
            double dx = xs[i] - x_mean;
            sxy += dx * (ys[i] - y_mean);
            sxx += dx * dx;
        }
        slope = sxy / sxx;
        intercept = y_mean - slope * x_mean;
        double sq = 0.0;
        for (Py_ssize_t i = 0; i < used; i++) {
            double res = ys[i] - (intercept + slope * xs[i]);
            sq += res * res;
        }
        wobble = sqrt(sq / (double)used);
    } else {
        slope = 0.0;
        intercept = (double)(lo + hi - 1) / 2;
        wobble = 0.0;
    }
    row[INTERCEPT] = intercept;
    row[SLOPE] = slope;
    row[THICKNESS] = thickness;
    row[WOBBLE] = wobble;
    free(counts);
    free(xs);
    return 0;
}

static void transpose_bytes(const uint8_t *src, Py_ssize_t step, Py_ssize_t h, Py_ssize_t w, uint8_t *dst,
                            Py_ssize_t dst_step);

/* n bytes as 0/1 (any nonzero byte to 1), src to dst (which may be src). */
static void ones_of(const unsigned char *src, unsigned char *dst, Py_ssize_t n) {
    Py_ssize_t c = 0;
#if defined(__SSE2__)
    const __m128i one = _mm_set1_epi8(1);
    for (; n >= 16 && c < n; c += 16) {
        if (c + 16 > n) c = n - 16; /* the end: the last sixteen again, the same bytes */
        _mm_storeu_si128((__m128i *)(dst + c), _mm_min_epu8(_mm_loadu_si128((const __m128i *)(src + c)), one));
    }
#endif
    for (; c < n; c++) dst[c] = src[c] != 0;
}

/* A window's row of column counts moved down a row: `add` (0/1 bytes) counted in, `drop` taken
 * out, and `grown` set to whether each column's count is above zero; returns how many are. */
static Py_ssize_t window_row(uint16_t *count, const unsigned char *add, const unsigned char *drop,
                             unsigned char *grown, Py_ssize_t w) {
    Py_ssize_t c = 0, inked = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128(), one = _mm_set1_epi8(1);
    __m128i sums = zero;
    for (; c + 16 <= w; c += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(add + c)), d = _mm_loadu_si128((const __m128i *)(drop + c));
        __m128i lo = _mm_loadu_si128((const __m128i *)(count + c));
        __m128i hi = _mm_loadu_si128((const __m128i *)(count + c + 8));
        lo = _mm_sub_epi16(_mm_add_epi16(lo, _mm_unpacklo_epi8(a, zero)), _mm_unpacklo_epi8(d, zero));
        hi = _mm_sub_epi16(_mm_add_epi16(hi, _mm_unpackhi_epi8(a, zero)), _mm_unpackhi_epi8(d, zero));
        _mm_storeu_si128((__m128i *)(count + c), lo);
        _mm_storeu_si128((__m128i *)(count + c + 8), hi);
        __m128i empty = _mm_packs_epi16(_mm_cmpeq_epi16(lo, zero), _mm_cmpeq_epi16(hi, zero));
        __m128i on = _mm_andnot_si128(empty, one);
        _mm_storeu_si128((__m128i *)(grown + c), on);
        sums = _mm_add_epi64(sums, _mm_sad_epu8(on, zero));
    }
    inked = (Py_ssize_t)(_mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums)));
#endif
    for (; c < w; c++) {
        uint16_t n = (uint16_t)(count[c] + add[c] - drop[c]);
        count[c] = n;
        grown[c] = n != 0;
        inked += n != 0;
    }
    return inked;
}

/* long_bands(mask, length, reach, thickest, out) -> bands written to out (float64 [h, 8]). */
static PyObject *long_bands(PyObject *self, PyObject *args) {
    PyObject *mask_obj, *out_obj;
    Py_ssize_t length, reach, thickest;
    if (!PyArg_ParseTuple(args, "OnnnO", &mask_obj, &length, &reach, &thickest, &out_obj)) return NULL;
    grid m;
    Py_buffer out;
    if (get_grid(mask_obj, &m, 0) < 0) return NULL;
    if (get_vector(out_obj, &out, sizeof(double), 1) < 0) {
        PyBuffer_Release(&m.view);
        return NULL;
    }
    Py_ssize_t h = m.h, w = m.w, found = 0, runs = 0;
    /* A row holds at most w / length + 1 long runs (length >= 1). */
    Py_ssize_t per_row = w / (length > 0 ? length : 1) + 1;
    Py_ssize_t *run = malloc(sizeof(Py_ssize_t) * 3 * (size_t)(h * per_row + 1));
    if (!run || out.len < (Py_ssize_t)sizeof(double) * ROW * h) {
        free(run);
        PyBuffer_Release(&m.view);
        PyBuffer_Release(&out);
        if (!PyErr_Occurred()) {
            if (out.len < (Py_ssize_t)sizeof(double) * ROW * h)
                PyErr_SetString(PyExc_ValueError, "out holds fewer than h rows");
            else
                PyErr_NoMemory();
        }
        return NULL;
    }
    /* The mask with its pixels contiguous along the rows, as 0/1 bytes (the vertical lines' view
     * is a transposed one: transposed back), each row padded with paper to a multiple of sixteen
     * (`stride`), so that the window moves down in whole blocks. */
    const Py_ssize_t stride = (w + 15) & ~(Py_ssize_t)15;
    unsigned char *flat = malloc((size_t)(h * stride > 0 ? h * stride : 1));
    unsigned char *grown = malloc((size_t)(stride > 0 ? stride : 1));
    unsigned char *zeros = calloc((size_t)(stride > 0 ? stride : 1), 1);
    uint16_t *count = calloc((size_t)(stride > 0 ? stride : 1), sizeof(uint16_t));
    if (!flat || !grown || !count || !zeros) {
        free(flat);
        free(grown);
        free(count);
        free(zeros);
        free(run);
        PyBuffer_Release(&m.view);
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t r = 0; r < h; r++) memset(flat + r * stride + w, 0, (size_t)(stride - w));
    if (m.s1 == 1) {
        for (Py_ssize_t r = 0; r < h; r++)
            ones_of((const unsigned char *)m.data + r * m.s0, flat + r * stride, w);
    } else if (m.s0 == 1) { /* a transposed view: its array's rows transposed back, in blocks */
        transpose_bytes((const uint8_t *)m.data, m.s1, w, h, flat, stride);
        ones_of(flat, flat, h * stride);
    } else {
        for (Py_ssize_t r = 0; r < h; r++)
            for (Py_ssize_t c = 0; c < w; c++) flat[r * stride + c] = m.data[r * m.s0 + c * m.s1] != 0;
    }
    /* Row r grown is any ink in rows r - reach .. r + reach: a count per column over that window,
     * slid down a row at a time. */
    for (Py_ssize_t r = 0; r < (reach + 1 < h ? reach + 1 : h); r++)
        for (Py_ssize_t c = 0; c < stride; c++) count[c] += flat[r * stride + c];
    for (Py_ssize_t r = 0; r < h; r++) {
        /* One pass a row: the row entering the window added, the one leaving it taken away
         * (an all-zero row where there is none), and which columns hold ink. */
        const unsigned char *add = r > 0 && r + reach < h ? flat + (r + reach) * stride : zeros;
        const unsigned char *drop = r > 0 && r - reach - 1 >= 0 ? flat + (r - reach - 1) * stride : zeros;
        if (window_row(count, add, drop, grown, stride) < length) continue; /* too little ink for a long run */
        Py_ssize_t c = first_nonzero(grown, w);
        while (c < w) {
            Py_ssize_t e = c + first_zero(grown + c, w - c);
            if (e - c >= length) {
                run[3 * runs] = r;
                run[3 * runs + 1] = c;
                run[3 * runs + 2] = e;
                runs++;
            }
            c = e >= w ? w : e + first_nonzero(grown + e, w - e);
        }
    }
    free(grown);
    free(count);
    free(zeros);
    double *rows = (double *)out.buf;
    int failed = 0;
    Py_ssize_t i = 0;
    while (i < runs && !failed) {
        Py_ssize_t j = i;
        while (j + 1 < runs && run[3 * (j + 1)] - run[3 * j] <= 1) j++;
        Py_ssize_t lo = run[3 * i], hi = run[3 * j] + 1;
        if (hi - lo <= thickest) {
            Py_ssize_t start = run[3 * i + 1], end = run[3 * i + 2];
            for (Py_ssize_t k = i + 1; k <= j; k++) {
                if (run[3 * k + 1] < start) start = run[3 * k + 1];
                if (run[3 * k + 2] > end) end = run[3 * k + 2];
            }
            double *row = rows + ROW * found;
            row[LO] = (double)lo;
            row[HI] = (double)hi;
            row[START] = (double)start;
            row[END] = (double)end;
            failed = fit(flat, stride, lo, hi, start, end, row) < 0;
            found++;
        }
        i = j + 1;
    }
    free(run);
    free(flat);
    PyBuffer_Release(&m.view);
    PyBuffer_Release(&out);
    if (failed) return NULL;
    return PyLong_FromSsize_t(found);
}

/* First and last-plus-one rows of a line in each of its columns (kernels: strip). */
static void strip_rows(double intercept, double slope, double thickness, Py_ssize_t start, Py_ssize_t end,
                       Py_ssize_t height, int64_t *first, int64_t *last) {
    double half = thickness / 2 + 1.0;
    for (Py_ssize_t j = 0; j < end - start; j++) {
        double centre = intercept + slope * (double)(start + j);
        double fl = floor(centre - half + 0.5), el = floor(centre + half + 0.5);
        int64_t f = fl < 0 ? 0 : (fl > (double)height ? (int64_t)height : (int64_t)fl);
        int64_t e = el < 0 ? 0 : (el > (double)height ? (int64_t)height : (int64_t)el);
        first[j] = f;
        last[j] = e > f + 1 ? e : f + 1;
    }
}

/* strip(intercept, slope, thickness, start, end, height, first, last): int64 [end - start] each. */
static PyObject *strip(PyObject *self, PyObject *args) {
    double intercept, slope, thickness;
    Py_ssize_t start, end, height;
    PyObject *first_obj, *last_obj;
    if (!PyArg_ParseTuple(args, "dddnnnOO", &intercept, &slope, &thickness, &start, &end, &height, &first_obj,
                          &last_obj))
        return NULL;
    Py_buffer first, last;
    if (get_vector(first_obj, &first, sizeof(int64_t), 1) < 0) return NULL;
    if (get_vector(last_obj, &last, sizeof(int64_t), 1) < 0) {
        PyBuffer_Release(&first);
        return NULL;
    }
    Py_ssize_t n = end - start > 0 ? end - start : 0;
    if (first.len < (Py_ssize_t)sizeof(int64_t) * n || last.len < (Py_ssize_t)sizeof(int64_t) * n) {
        PyErr_SetString(PyExc_ValueError, "first and last hold fewer than end - start items");
    } else {
        strip_rows(intercept, slope, thickness, start, end, height, first.buf, last.buf);
    }
    PyBuffer_Release(&first);
    PyBuffer_Release(&last);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* line_pixels(mask, line, extent, out): the line's strip and its ticks, into out (kernels). */
static PyObject *line_pixels(PyObject *self, PyObject *args) {
    PyObject *mask_obj, *line_obj, *out_obj;
    Py_ssize_t extent;
    if (!PyArg_ParseTuple(args, "OOnO", &mask_obj, &line_obj, &extent, &out_obj)) return NULL;
    grid m, out;
    Py_buffer line_view;
    if (get_grid(mask_obj, &m, 0) < 0) return NULL;
    if (get_grid(out_obj, &out, 1) < 0) {
        PyBuffer_Release(&m.view);
        return NULL;
    }
    if (get_vector(line_obj, &line_view, sizeof(double), 0) < 0 || line_view.len < (Py_ssize_t)sizeof(double) * ROW ||
        out.h != m.h || out.w != m.w) {
        if (!PyErr_Occurred()) {
            PyBuffer_Release(&line_view);
            PyErr_SetString(PyExc_ValueError, "a line is 8 float64; out has the mask's shape");
        }
        PyBuffer_Release(&m.view);
        PyBuffer_Release(&out.view);
        return NULL;
    }
    const double *line = line_view.buf;
    Py_ssize_t h = m.h;
    Py_ssize_t lo = (Py_ssize_t)line[LO], hi = (Py_ssize_t)line[HI];
    Py_ssize_t start = (Py_ssize_t)line[START], end = (Py_ssize_t)line[END];
    Py_ssize_t n = end - start > 0 ? end - start : 0;
    int64_t *first = malloc(sizeof(int64_t) * 4 * (size_t)(n > 0 ? n : 1));
    if (!first) {
        PyBuffer_Release(&m.view);
        PyBuffer_Release(&out.view);
        PyBuffer_Release(&line_view);
        return PyErr_NoMemory();
    }
    int64_t *last = first + n, *origin = first + 2 * n, *run = first + 3 * n;
    strip_rows(line[INTERCEPT], line[SLOPE], line[THICKNESS], start, end, h, first, last);
    for (Py_ssize_t j = 0; j < n; j++)
        for (int64_t r = first[j]; r < (last[j] < h ? last[j] : h); r++) AT(&out, r, start + j) = 1;
    Py_ssize_t widest = hi - lo > 3 ? hi - lo : 3, longest = (Py_ssize_t)(0.4 * (double)extent);
    Py_ssize_t reach = longest + 3;
    for (int direction = -1; direction <= 1; direction += 2) {
        for (Py_ssize_t j = 0; j < n; j++) origin[j] = direction < 0 ? first[j] - 1 : last[j];
        /* How many ink pixels leave the strip in a row, at most `reach`. */
        for (Py_ssize_t j = 0; j < n; j++) {
            Py_ssize_t k = 0;
            while (k < reach) {
                int64_t r = origin[j] + direction * k;
                if (r < 0 || r >= h || !AT(&m, r, start + j)) break;
                k++;
            }
            run[j] = k;
        }
        Py_ssize_t j = 0;
        while (j < n) {
            if (run[j] == 0) {
                j++;
                continue;
            }
            Py_ssize_t a = j;
            int64_t height = 0;
            while (j < n && run[j] > 0) {
                if (run[j] > height) height = run[j];
                j++;
            }
            Py_ssize_t b = j, width = b - a;
            if (width > widest || height < 2 * width || height > longest) continue;
            /* A clear ring around the tick's rectangle: 2 px above it, and beside it the second
               column out (the first is erased with it: a tick printed a little askew leans into
               the column beside its foot). */
            int clear = 1;
            for (Py_ssize_t x = a - 2 > 0 ? a - 2 : 0; x < (b + 2 < n ? b + 2 : n) && clear; x++) {
                for (int64_t k = 0; k < height + 2; k++) {
                    if (k < height && a - 1 <= x && x < b + 1) continue;
                    int64_t r = origin[x] + direction * k;
                    if (0 <= r && r < h && AT(&m, r, start + x)) {
                        clear = 0;
                        break;
                    }
                }
            }
            if (!clear) continue;
            /* One pixel wider: its blurred edges. */
            for (Py_ssize_t x = a - 1 > 0 ? a - 1 : 0; x < (b + 1 < n ? b + 1 : n); x++) {
                for (int64_t k = 0; k < height + 1; k++) {
                    int64_t r = origin[x] + direction * k;
                    if (0 <= r && r < h) AT(&out, r, start + x) = 1;
                }
            }
        }
    }
    free(first);
    PyBuffer_Release(&m.view);
    PyBuffer_Release(&out.view);
    PyBuffer_Release(&line_view);
    Py_RETURN_NONE;
}

#if defined(__SSE2__)
/* The largest of sixteen bytes. */
static inline unsigned char largest_byte(__m128i top) {
    top = _mm_max_epu8(top, _mm_srli_si128(top, 8));
    top = _mm_max_epu8(top, _mm_srli_si128(top, 4));
    top = _mm_max_epu8(top, _mm_srli_si128(top, 2));
    top = _mm_max_epu8(top, _mm_srli_si128(top, 1));
    return (unsigned char)_mm_cvtsi128_si32(top);
}
#endif

/* The largest byte of a row of w contiguous bytes, sixteen at a time. */
static inline unsigned char row_max(const unsigned char *p, Py_ssize_t w) {
    unsigned char m = 0;
    Py_ssize_t c = 0;
#if defined(__SSE2__)
    if (w >= 16) {
        __m128i top = _mm_setzero_si128();
        for (; c + 16 <= w; c += 16) top = _mm_max_epu8(top, _mm_loadu_si128((const __m128i *)(p + c)));
        m = largest_byte(top);
    }
#endif
    for (; c < w; c++) m = p[c] > m ? p[c] : m;
    return m;
}

/* Count the bytes of a contiguous row that are at least `first` into counts. Ink is a small part
 * of a scan: a block of 16 bytes with none that high (one compare of the whole block) is
 * skipped; a block with some is counted whole, without a branch per byte (a byte under `first`
 * adds 0), into four tables in turn, so that runs of one level (a stroke's core) do not wait on
 * each other's increments. `counts`: 4 x 256, summed by the caller (counts_total). */
static void count_high(const unsigned char *p, Py_ssize_t w, int first, int64_t (*counts)[256]) {
    Py_ssize_t c = 0;
#if defined(__SSE2__)
    /* Unsigned b >= first exactly when max(b, first) == b. */
    const __m128i low = _mm_set1_epi8((char)first);
    for (; c + 16 <= w; c += 16) {
        __m128i block = _mm_loadu_si128((const __m128i *)(p + c));
        if (!_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(block, low), block))) continue;
        for (int k = 0; k < 16; k += 4) {
            const unsigned char *q = p + c + k;
            counts[0][q[0]] += q[0] >= first;
            counts[1][q[1]] += q[1] >= first;
            counts[2][q[2]] += q[2] >= first;
            counts[3][q[3]] += q[3] >= first;
        }
    }
#endif
    for (; c < w; c++)
        if (p[c] >= first) counts[0][p[c]]++;
}

/* The four tables of count_high, summed into the first. */
static void counts_total(int64_t (*counts)[256]) {
    for (int v = 0; v < 256; v++) counts[0][v] += counts[1][v] + counts[2][v] + counts[3][v];
}

/* The 90th percentile of the levels from `first` up, by their counts (256 if there are none). */
static int levels_above(const int64_t *counts, int first) {
    int64_t total = 0;
    for (int v = first; v < 256; v++) total += counts[v];
    double target = 0.9 * (double)total;
    int64_t running = 0;
    for (int v = first; v < 256; v++) {
        running += counts[v];
        if ((double)running >= target) return v;
    }
    return 256;
}

/* stretch_levels(rounded) -> (top, scale) of an 8-bit ink image (kernels): the strongest level,
 * then the 90th percentile of the levels above half of it (256 if none reach it). Only the
 * counts of those levels are needed, so only those pixels are counted. */
static PyObject *stretch_levels(PyObject *self, PyObject *args) {
    grid g;
    if (only_grid(args, &g) < 0) return NULL;
    const unsigned char *d = (const unsigned char *)g.data;
    int top = 0;
    for (Py_ssize_t r = 0; r < g.h; r++) {
        const unsigned char *p = d + r * g.s0;
        if (g.s1 == 1) {
            unsigned char m = row_max(p, g.w);
            top = m > top ? m : top;
        } else {
            for (Py_ssize_t c = 0; c < g.w; c++) top = p[c * g.s1] > top ? p[c * g.s1] : top;
        }
    }
    int first = top / 2 + 1;
    int64_t counts[4][256];
    memset(counts, 0, sizeof(counts));
    for (Py_ssize_t r = 0; r < g.h; r++) {
        const unsigned char *p = d + r * g.s0;
        if (g.s1 == 1) {
            count_high(p, g.w, first, counts);
        } else {
            for (Py_ssize_t c = 0; c < g.w; c++)
                if (p[c * g.s1] >= first) counts[0][p[c * g.s1]]++;
        }
    }
    counts_total(counts);
    PyBuffer_Release(&g.view);
    return Py_BuildValue("ii", top, levels_above(counts[0], first));
}

/* Grow the box (top, bottom, left, right; inclusive, top -1 when empty) by row r's nonzero
 * bytes (`n` of them contiguous at `p`). */
static inline void box_row(const unsigned char *p, Py_ssize_t n, Py_ssize_t r, Py_ssize_t box[4]) {
    Py_ssize_t first = first_nonzero(p, n);
    if (first == n) return;
    Py_ssize_t last = last_nonzero(p, n);
    if (box[0] < 0) box[0] = r;
    box[1] = r;
    if (first < box[2]) box[2] = first;
    if (last > box[3]) box[3] = last;
}

/* The box of a grid's nonzero pixels as bbox returns it (exclusive ends; None if none). */
static PyObject *box_value(const Py_ssize_t box[4]) {
    if (box[0] < 0) Py_RETURN_NONE;
    return Py_BuildValue("nnnn", box[0], box[1] + 1, box[2], box[3] + 1);
}

/* bbox(mask) -> (top, bottom, left, right) or None (kernels). */
static PyObject *bbox(PyObject *self, PyObject *args) {
    grid g;
    if (only_grid(args, &g) < 0) return NULL;
    Py_ssize_t box[4] = {-1, -1, g.w, -1};
    unsigned char *row = g.s1 == 1 ? NULL : malloc((size_t)(g.w > 0 ? g.w : 1));
    if (g.s1 != 1 && !row) {
        PyBuffer_Release(&g.view);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t r = 0; r < g.h; r++) {
        const unsigned char *p = (const unsigned char *)g.data + r * g.s0;
        if (row) {
            for (Py_ssize_t c = 0; c < g.w; c++) row[c] = p[c * g.s1];
            p = row;
        }
        box_row(p, g.w, r, box);
    }
    free(row);
    PyBuffer_Release(&g.view);
    return box_value(box);
}

/* locate(values, level, mask) -> the box of mask = values > level (kernels). */
/* One contiguous row of the mask p > level, into `out` (0/1 bytes; level < 0: all, >= 255: none). */
static void locate_row(const unsigned char *p, Py_ssize_t w, int level, unsigned char *out) {
    /* p > level as bytes: p >= level + 1, i.e. max(p, level + 1) == p. */
    if (level < 0 || level >= 255) {
        memset(out, level < 0, (size_t)w);
        return;
    }
    const unsigned char floor_level = (unsigned char)(level + 1);
    Py_ssize_t c = 0;
#if defined(__SSE2__)
    const __m128i low = _mm_set1_epi8((char)floor_level), one = _mm_set1_epi8(1);
    for (; c + 16 <= w; c += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(p + c));
        _mm_storeu_si128((__m128i *)(out + c), _mm_and_si128(_mm_cmpeq_epi8(_mm_max_epu8(v, low), v), one));
    }
#endif
    for (; c < w; c++) {
        unsigned char high = p[c] > floor_level ? p[c] : floor_level;
        out[c] = high == p[c];
    }
}

static PyObject *locate(PyObject *self, PyObject *args) {
    PyObject *vobj, *mobj;
    int level;
    if (!PyArg_ParseTuple(args, "OiO", &vobj, &level, &mobj)) return NULL;
    grid v, m;
    if (in_and_out(vobj, &v, mobj, &m) < 0) return NULL;
    PyObject *result = NULL;
    if (m.h != v.h || m.w != v.w || m.s1 != 1) {
        PyErr_SetString(PyExc_ValueError, "the mask must have the image's shape, rows contiguous");
        goto done;
    }
    Py_ssize_t box[4] = {-1, -1, v.w, -1};
    const Py_ssize_t w = v.w, step = v.s1;
    for (Py_ssize_t r = 0; r < v.h; r++) {
        const unsigned char *p = (const unsigned char *)v.data + r * v.s0;
        unsigned char *out = (unsigned char *)m.data + r * m.s0;
        if (step == 1 || level < 0 || level >= 255) {
            locate_row(p, w, level, out);
        } else {
            for (Py_ssize_t c = 0; c < w; c++) out[c] = p[c * step] > level;
        }
        box_row(out, w, r, box);
    }
    result = box_value(box);
done:
    PyBuffer_Release(&v.view);
    PyBuffer_Release(&m.view);
    return result;
}

/* One row's ink (pixels above `threshold`, 0 or 1) and, in `across`, whether each pixel and
 * both its neighbours along the row are ink (the row's ends repeated); returns the ink count. */
static Py_ssize_t ink_across(const char *p, Py_ssize_t w, Py_ssize_t step, int threshold, unsigned char *ink,
                             unsigned char *across) {
    const unsigned char *u = (const unsigned char *)p;
    Py_ssize_t count = 0, c = 0;
#if defined(__SSE2__)
    if (step == 1 && threshold >= 0 && threshold < 255) {
        /* u > threshold: max(u, threshold + 1) == u; as 0/1 bytes, counted sixteen at a time. */
        const __m128i floor_level = _mm_set1_epi8((char)(threshold + 1)), one = _mm_set1_epi8(1);
        __m128i sums = _mm_setzero_si128();
        for (; c + 16 <= w; c += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(u + c));
            __m128i on = _mm_and_si128(_mm_cmpeq_epi8(_mm_max_epu8(v, floor_level), v), one);
            _mm_storeu_si128((__m128i *)(ink + c), on);
            sums = _mm_add_epi64(sums, _mm_sad_epu8(on, _mm_setzero_si128()));
        }
        count = (Py_ssize_t)(_mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums)));
    }
#endif
    if (step == 1) {
        for (; c < w; c++) count += ink[c] = u[c] > threshold;
    } else {
        for (; c < w; c++) count += ink[c] = u[c * step] > threshold;
    }
    if (w == 1) {
        across[0] = ink[0];
        return count;
    }
    across[0] = ink[0] & ink[1];
    c = 1;
#if defined(__SSE2__)
    for (; c + 17 <= w; c += 16) {
        __m128i left = _mm_loadu_si128((const __m128i *)(ink + c - 1)), mid = _mm_loadu_si128((const __m128i *)(ink + c));
        __m128i right = _mm_loadu_si128((const __m128i *)(ink + c + 1));
        _mm_storeu_si128((__m128i *)(across + c), _mm_and_si128(_mm_and_si128(left, mid), right));
    }
#endif
    for (; c + 1 < w; c++) across[c] = ink[c - 1] & ink[c] & ink[c + 1];
    across[w - 1] = ink[w - 2] & ink[w - 1];
    return count;
}

/* The three rows' erosion of one row (0/1 bytes) into `kept`, and how many are 1. */
static Py_ssize_t kept_row(const unsigned char *a, const unsigned char *b, const unsigned char *c, Py_ssize_t w,
                           unsigned char *kept) {
    Py_ssize_t n = 0, x = 0;
#if defined(__SSE2__)
    __m128i sums = _mm_setzero_si128();
    for (; x + 16 <= w; x += 16) {
        __m128i v = _mm_and_si128(_mm_and_si128(_mm_loadu_si128((const __m128i *)(a + x)),
                                                _mm_loadu_si128((const __m128i *)(b + x))),
                                  _mm_loadu_si128((const __m128i *)(c + x)));
        _mm_storeu_si128((__m128i *)(kept + x), v);
        sums = _mm_add_epi64(sums, _mm_sad_epu8(v, _mm_setzero_si128()));
    }
    n = (Py_ssize_t)(_mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums)));
#endif
    for (; x < w; x++) n += kept[x] = a[x] & b[x] & c[x];
    return n;
}

/* The ink of an h x w image (pixels above `threshold`), what a 3x3 erosion with the edges
 * repeated leaves of it, and that box (top, bottom, left, right; -1s when nothing is left):
 * erosion's counts. 0, or -1 with MemoryError set. */
static int erosion_counts(const char *data, Py_ssize_t h, Py_ssize_t w, Py_ssize_t s0, Py_ssize_t s1, int threshold,
                          long long *area_out, long long *eroded_out, Py_ssize_t box[4]) {
    box[0] = box[1] = box[2] = box[3] = -1;
    *area_out = *eroded_out = 0;
    if (h == 0 || w == 0) return 0;
    /* "across" for the rows above, at and below the one being eroded (rows repeated at the
     * edges), made once per row and rotated; then one row of the eroded pixels. */
    unsigned char *buffer = malloc((size_t)(5 * w));
    if (!buffer) {
        PyErr_NoMemory();
        return -1;
    }
    unsigned char *across[3] = {buffer, buffer + w, buffer + 2 * w}, *ink = buffer + 3 * w, *kept = buffer + 4 * w;
    long long area = ink_across(data, w, s1, threshold, ink, across[1]), eroded = 0;
    memcpy(across[0], across[1], (size_t)w); /* above row 0: row 0 again */
    Py_ssize_t top = -1, bottom = -1, left = w, right = -1;
    for (Py_ssize_t r = 0; r < h; r++) {
        if (r + 1 < h)
            area += ink_across(data + (r + 1) * s0, w, s1, threshold, ink, across[2]);
        else
            memcpy(across[2], across[1], (size_t)w); /* below the last row: itself */
        Py_ssize_t n = kept_row(across[0], across[1], across[2], w, kept);
        if (n) {
            eroded += n;
            if (top < 0) top = r;
            bottom = r;
            Py_ssize_t c0 = first_nonzero(kept, w), c1 = last_nonzero(kept, w);
            if (c0 < left) left = c0;
            if (c1 > right) right = c1;
        }
        unsigned char *done = across[0];
        across[0] = across[1];
        across[1] = across[2];
        across[2] = done;
    }
    free(buffer);
    *area_out = area;
    *eroded_out = eroded;
    if (eroded) {
        box[0] = top;
        box[1] = bottom + 1;
        box[2] = left;
        box[3] = right + 1;
    }
    return 0;
}

/* The box of the nonzero pixels of rows t:b, columns l:r of a grid (box_row's inclusive form,
 * box[0] < 0 if none). `row`: scratch for r - l bytes, used where the grid's pixels are strided. */
static void window_box(const grid *g, Py_ssize_t t, Py_ssize_t b, Py_ssize_t l, Py_ssize_t r, unsigned char *row,
                       Py_ssize_t box[4]) {
    box[0] = box[1] = box[3] = -1;
    box[2] = r - l;
    for (Py_ssize_t y = t; y < b; y++) {
        const unsigned char *p = (const unsigned char *)g->data + y * g->s0 + l * g->s1;
        if (g->s1 != 1) {
            for (Py_ssize_t c = 0; c < r - l; c++) row[c] = p[c * g->s1];
            p = row;
        }
        box_row(p, r - l, y - t, box);
    }
}

/* opened_box(mask, top, bottom, left, right) -> ((top, bottom, left, right), thin)
 * (normalize._ink_box): the box of what a 3x3 opening leaves of the ink in the ink's box (two
 * pixels of paper around it), grown back over the ink it touches until it stops changing (eight
 * rounds at most); the ink's own box, and thin, where the opening leaves nothing. */
static PyObject *opened_box(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t full[4];
    if (!PyArg_ParseTuple(args, "Onnnn", &obj, &full[0], &full[1], &full[2], &full[3])) return NULL;
    grid g;
    if (get_grid(obj, &g, 0) < 0) return NULL;
    PyObject *result = NULL;
    const Py_ssize_t h = g.h, w = g.w;
    unsigned char *row = malloc((size_t)(w > 0 ? w : 1));
    if (!row) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(0 <= full[0] && full[0] < full[1] && full[1] <= h && 0 <= full[2] && full[2] < full[3] && full[3] <= w)) {
        PyErr_SetString(PyExc_ValueError, "the ink's box must lie within the mask");
        goto done;
    }
    Py_ssize_t t = full[0] - 2 > 0 ? full[0] - 2 : 0, b = full[1] + 2 < h ? full[1] + 2 : h;
    Py_ssize_t l = full[2] - 2 > 0 ? full[2] - 2 : 0, r = full[3] + 2 < w ? full[3] + 2 : w;
    long long area, eroded;
    Py_ssize_t e[4];
    if (erosion_counts(g.data + t * g.s0 + l * g.s1, b - t, r - l, g.s0, g.s1, 0, &area, &eroded, e) < 0) goto done;
    if (!eroded) {
        result = Py_BuildValue("(nnnn)O", full[0], full[1], full[2], full[3], Py_True);
        goto done;
    }
    /* The opening's dilation grows what the erosion left by a pixel on each side, within the window. */
    Py_ssize_t top = t + (e[0] - 1 > 0 ? e[0] - 1 : 0), bottom = t + (e[1] + 1 < b - t ? e[1] + 1 : b - t);
    Py_ssize_t left = l + (e[2] - 1 > 0 ? e[2] - 1 : 0), right = l + (e[3] + 1 < r - l ? e[3] + 1 : r - l);
    for (int round = 0; round < 8; round++) {
        Py_ssize_t size = bottom - top > right - left ? bottom - top : right - left, pad = 2 + size / 10;
        t = top - pad > 0 ? top - pad : 0;
        b = bottom + pad < h ? bottom + pad : h;
        l = left - pad > 0 ? left - pad : 0;
        r = right + pad < w ? right + pad : w;
        Py_ssize_t inner[4];
        window_box(&g, t, b, l, r, row, inner); /* holds the opened box, which holds ink */
        Py_ssize_t grown[4] = {t + inner[0], t + inner[1] + 1, l + inner[2], l + inner[3] + 1};
        if (grown[0] == top && grown[1] == bottom && grown[2] == left && grown[3] == right) break;
        top = grown[0];
        bottom = grown[1];
        left = grown[2];
        right = grown[3];
    }
    result = Py_BuildValue("(nnnn)O", top, bottom, left, right, Py_False);
done:
    free(row);
    PyBuffer_Release(&g.view);
    return result;
}

/* erosion(image, threshold) -> (area, eroded, top, bottom, left, right) (kernels). */
static PyObject *erosion(PyObject *self, PyObject *args) {
    PyObject *obj;
    int threshold;
    if (!PyArg_ParseTuple(args, "Oi", &obj, &threshold)) return NULL;
    grid g;
    if (get_grid(obj, &g, 0) < 0) return NULL;
    long long area, eroded;
    Py_ssize_t box[4];
    int failed = erosion_counts(g.data, g.h, g.w, g.s0, g.s1, threshold, &area, &eroded, box);
    PyBuffer_Release(&g.view);
    if (failed) return NULL;
    return Py_BuildValue("LLnnnn", area, eroded, box[0], box[1], box[2], box[3]);
}

/* The ink of a mask's lines (`outer` of them, `outer_step` bytes apart, each `inner` contiguous
 * bytes): each line's count into `per_outer`, and each position's count across the lines added to
 * `per_inner` (32 bits: a mask has fewer than 2^31 lines). Both counts in one pass of independent
 * adds, which the compiler vectorises. */
static void line_counts(const unsigned char *base, Py_ssize_t outer, Py_ssize_t outer_step, Py_ssize_t inner,
                        int64_t *per_outer, int32_t *per_inner) {
    for (Py_ssize_t i = 0; i < outer; i++) {
        const unsigned char *p = base + i * outer_step;
        int32_t n = 0;
        for (Py_ssize_t j = 0; j < inner; j++) {
            int32_t on = p[j] != 0;
            n += on;
            per_inner[j] += on;
        }
        per_outer[i] = n;
    }
}

/* Each row's and each column's ink of a mask, into per_row (h) and per_col (w, zeroed here). */
static void mask_counts(const grid *m, int64_t *per_row, int64_t *per_col, int32_t *counts) {
    const Py_ssize_t h = m->h, w = m->w;
    if (m->s1 == 1) {
        line_counts((const unsigned char *)m->data, h, m->s0, w, per_row, counts);
        for (Py_ssize_t c = 0; c < w; c++) per_col[c] = counts[c];
    } else if (m->s0 == 1) { /* a transposed view: its rows are its array's columns */
        line_counts((const unsigned char *)m->data, w, m->s1, h, per_col, counts);
        for (Py_ssize_t r = 0; r < h; r++) per_row[r] = counts[r];
    } else {
        for (Py_ssize_t c = 0; c < w; c++) per_col[c] = 0;
        for (Py_ssize_t r = 0; r < h; r++) {
            int64_t n = 0;
            for (Py_ssize_t c = 0; c < w; c++) {
                int on = m->data[r * m->s0 + c * m->s1] != 0;
                n += on;
                per_col[c] += on;
            }
            per_row[r] = n;
        }
    }
}

/* Along one axis's counts (n of them): the first position by which `enough` ink is reached, and
 * the last position with `enough` ink beyond it, plus two (-1 where there is none). */
static void extent_within(const int64_t *along, Py_ssize_t n, double enough, Py_ssize_t *first, Py_ssize_t *last) {
    int64_t running = 0, beyond = 0;
    *first = *last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        running += along[i];
        if ((double)running >= enough) {
            *first = i;
            break;
        }
    }
    for (Py_ssize_t c = n - 1; c >= 0; c--) { /* beyond: the ink of the positions after c */
        if ((double)beyond >= enough) {
            *last = c + 2;
            break;
        }
        beyond += along[c];
    }
}

/* ink_extents(mask, enough) -> (first row, last row, first column, last column) (kernels). */
static PyObject *ink_extents(PyObject *self, PyObject *args) {
    PyObject *mobj;
    double enough;
    if (!PyArg_ParseTuple(args, "Od", &mobj, &enough)) return NULL;
    grid m;
    if (get_grid(mobj, &m, 0) < 0) return NULL;
    PyObject *result = NULL;
    const Py_ssize_t h = m.h, w = m.w, longer = h > w ? h : w;
    int64_t *per_row = malloc(sizeof(int64_t) * (size_t)(h + w + 1));
    int32_t *counts = calloc((size_t)(longer > 0 ? longer : 1), sizeof(int32_t));
    if (!per_row || !counts) {
        PyErr_NoMemory();
    } else {
        Py_ssize_t rf, rl, cf, cl;
        mask_counts(&m, per_row, per_row + h, counts);
        extent_within(per_row, h, enough, &rf, &rl);
        extent_within(per_row + h, w, enough, &cf, &cl);
        result = Py_BuildValue("nnnn", rf, rl, cf, cl);
    }
    free(per_row);
    free(counts);
    PyBuffer_Release(&m.view);
    return result;
}

/* profile(mask, rows) -> (height, first, last, total) of a bool mask with some ink (kernels):
 * rows[r] is the ink of the rows above r (h + 1 of them). */
static PyObject *profile(PyObject *self, PyObject *args) {
    PyObject *mobj, *robj;
    if (!PyArg_ParseTuple(args, "OO", &mobj, &robj)) return NULL;
    grid m;
    if (get_grid(mobj, &m, 0) < 0) return NULL;
    Py_buffer rows;
    if (get_vector(robj, &rows, sizeof(int64_t), 1) < 0) {
        PyBuffer_Release(&m.view);
        return NULL;
    }
    PyObject *result = NULL;
    const Py_ssize_t h = m.h, w = m.w;
    int64_t *per_row = (int64_t *)rows.buf + 1, *per_col = malloc(sizeof(int64_t) * (size_t)(w > 0 ? w : 1));
    int32_t *counts = calloc((size_t)(h > w ? (h > 0 ? h : 1) : (w > 0 ? w : 1)), sizeof(int32_t));
    if (!per_col || !counts) {
        PyErr_NoMemory();
        goto done;
    }
    if (rows.len != (h + 1) * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "rows must have one int64 per row, and one more");
        goto done;
    }
    mask_counts(&m, per_row, per_col, counts);
    /* The rows' running sums, and the first and last inked rows. */
    int64_t total = 0;
    Py_ssize_t top = -1, bottom = -1;
    per_row[-1] = 0;
    for (Py_ssize_t r = 0; r < h; r++) {
        int64_t n = per_row[r];
        if (n) {
            if (top < 0) top = r;
            bottom = r;
        }
        total += n;
        per_row[r] = total;
    }
    if (total == 0) {
        PyErr_SetString(PyExc_ValueError, "profile of a mask without ink");
        goto done;
    }
    /* The columns where the running share of the ink first reaches 1% and 99%, in float64 as
     * numpy's cumsum / sum gives it (searchsorted: the first at or above). */
    Py_ssize_t first = -1, last = -1;
    int64_t running = 0;
    for (Py_ssize_t c = 0; c < w && last < 0; c++) {
        if (!per_col[c]) continue;
        running += per_col[c];
        double share = (double)running / (double)total;
        if (first < 0 && share >= 0.01) first = c;
        if (share >= 0.99) last = c + 1;
    }
    result = Py_BuildValue("nnnL", bottom - top + 1, first, last, (long long)total);
done:
    free(per_col);
    free(counts);
    PyBuffer_Release(&m.view);
    PyBuffer_Release(&rows);
    return result;
}

/* Round a non-negative float to the nearest integer, ties to even, as OpenCV's saturating casts
 * do (cvRound), and saturate it to 255: adding 2^23 leaves no fraction bits, and the addition
 * rounds in the default mode. */
static inline unsigned char saturate_round(float x) {
    return (unsigned char)(x < 255.0f ? (x + 8388608.0f) - 8388608.0f : 255.0f);
}

/* One row of ink absorbed from the paper, 255 * (paper - pixel) / paper in float32 as OpenCV's
 * divide of 8-bit operands computes it (a * 255, then / b; paper darker than the pixel: 0, paper
 * at least 1), times `alpha`, rounded and saturated as OpenCV's convertScaleAbs does (alpha 1:
 * the product is the value itself). */
static void absorbed_row(const unsigned char *g, const unsigned char *p, Py_ssize_t w, float alpha,
                         unsigned char *out, float *keep) {
    Py_ssize_t c = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128(), one = _mm_set1_epi8(1);
    const __m128 k255 = _mm_set1_ps(255.0f), scale = _mm_set1_ps(alpha);
    for (; w >= 16 && c < w; c += 16) {
        if (c + 16 > w) c = w - 16; /* the row's end: the last sixteen again, the same values */
        __m128i gv = _mm_loadu_si128((const __m128i *)(g + c)), pv = _mm_loadu_si128((const __m128i *)(p + c));
        __m128i a = _mm_subs_epu8(pv, gv), b = _mm_max_epu8(pv, one);
        __m128i a16[2] = {_mm_unpacklo_epi8(a, zero), _mm_unpackhi_epi8(a, zero)};
        __m128i b16[2] = {_mm_unpacklo_epi8(b, zero), _mm_unpackhi_epi8(b, zero)};
        __m128i rounded[4];
        for (int half = 0; half < 2; half++) {
            for (int quarter = 0; quarter < 2; quarter++) {
                __m128i a32 = quarter ? _mm_unpackhi_epi16(a16[half], zero) : _mm_unpacklo_epi16(a16[half], zero);
                __m128i b32 = quarter ? _mm_unpackhi_epi16(b16[half], zero) : _mm_unpacklo_epi16(b16[half], zero);
                __m128 v = _mm_div_ps(_mm_mul_ps(_mm_cvtepi32_ps(a32), k255), _mm_cvtepi32_ps(b32));
                if (keep) _mm_storeu_ps(keep + c + 8 * half + 4 * quarter, v);
                /* Under 65,025 x 255: the conversion (the default rounding, to even) cannot overflow. */
                rounded[2 * half + quarter] = _mm_cvtps_epi32(_mm_mul_ps(v, scale));
            }
        }
        __m128i packed = _mm_packus_epi16(_mm_packs_epi32(rounded[0], rounded[1]), _mm_packs_epi32(rounded[2], rounded[3]));
        _mm_storeu_si128((__m128i *)(out + c), packed);
    }
#endif
    for (; c < w; c++) {
        int a = p[c] > g[c] ? p[c] - g[c] : 0, b = p[c] > 0 ? p[c] : 1;
        float v = ((float)a * 255.0f) / (float)b;
        if (keep) keep[c] = v;
        out[c] = saturate_round(v * alpha);
    }
}

/* A row of kept ink values times `alpha`, rounded and saturated as absorbed_row rounds them. */
static void scaled_row(const float *v, Py_ssize_t w, float alpha, unsigned char *out) {
    Py_ssize_t c = 0;
#if defined(__SSE2__)
    const __m128 scale = _mm_set1_ps(alpha);
    for (; w >= 16 && c < w; c += 16) {
        if (c + 16 > w) c = w - 16; /* the row's end: the last sixteen again, the same values */
        __m128i r0 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + c), scale));
        __m128i r1 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + c + 4), scale));
        __m128i r2 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + c + 8), scale));
        __m128i r3 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + c + 12), scale));
        _mm_storeu_si128((__m128i *)(out + c), _mm_packus_epi16(_mm_packs_epi32(r0, r1), _mm_packs_epi32(r2, r3)));
    }
#endif
    for (; c < w; c++) out[c] = saturate_round(v[c] * alpha);
}

/* The second pass over one row of kept ink values: scaled_row into `out`, the mask of the bytes
 * above `level` (0 <= level < 255) into `inked`, as locate_row makes it, and the row's first and
 * last inked columns into the box as box_row puts them, in one pass of sixteen pixels a step. */
static void finished_row(const float *v, Py_ssize_t w, float alpha, int level, unsigned char *out,
                         unsigned char *inked, Py_ssize_t r, Py_ssize_t box[4]) {
    Py_ssize_t c = 0, first = -1, last = -1;
#if defined(__SSE2__)
    const __m128 scale = _mm_set1_ps(alpha);
    const __m128i low = _mm_set1_epi8((char)(level + 1)), one = _mm_set1_epi8(1);
    for (; w >= 16 && c < w; c += 16) {
        if (c + 16 > w) c = w - 16; /* the row's end: the last sixteen again, the same values */
        __m128i r0 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + c), scale));
        __m128i r1 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + c + 4), scale));
        __m128i r2 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + c + 8), scale));
        __m128i r3 = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + c + 12), scale));
        __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(r0, r1), _mm_packs_epi32(r2, r3));
        _mm_storeu_si128((__m128i *)(out + c), bytes);
        /* above level: max(b, level + 1) == b */
        __m128i above = _mm_cmpeq_epi8(_mm_max_epu8(bytes, low), bytes);
        _mm_storeu_si128((__m128i *)(inked + c), _mm_and_si128(above, one));
        unsigned bits = (unsigned)_mm_movemask_epi8(above);
        if (bits) {
            if (first < 0) first = c + __builtin_ctz(bits);
            last = c + 31 - __builtin_clz(bits);
        }
    }
#endif
    for (; c < w; c++) {
        out[c] = saturate_round(v[c] * alpha);
        inked[c] = out[c] > level;
        if (inked[c]) {
            if (first < 0) first = c;
            last = c;
        }
    }
    if (first < 0) return;
    if (box[0] < 0) box[0] = r;
    box[1] = r;
    if (first < box[2]) box[2] = first;
    if (last > box[3]) box[3] = last;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* absorbed_row with AVX2, eight pixels a division: the same arithmetic, twice the width (the
 * divisions bound the row). Used where the processor has it (absorbed_ink asks). */
__attribute__((target("avx2"))) static void absorbed_row_avx2(const unsigned char *g, const unsigned char *p,
                                                                Py_ssize_t w, float alpha, unsigned char *out,
                                                                float *keep) {
    Py_ssize_t c = 0;
    const __m256 k255 = _mm256_set1_ps(255.0f), scale = _mm256_set1_ps(alpha);
    const __m128i one = _mm_set1_epi8(1);
    for (; w >= 16 && c < w; c += 16) {
        if (c + 16 > w) c = w - 16; /* the row's end: the last sixteen again, the same values */
        __m128i gv = _mm_loadu_si128((const __m128i *)(g + c)), pv = _mm_loadu_si128((const __m128i *)(p + c));
        __m128i a = _mm_subs_epu8(pv, gv), b = _mm_max_epu8(pv, one);
        __m256i a0 = _mm256_cvtepu8_epi32(a), a1 = _mm256_cvtepu8_epi32(_mm_srli_si128(a, 8));
        __m256i b0 = _mm256_cvtepu8_epi32(b), b1 = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
        __m256 v0 = _mm256_div_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a0), k255), _mm256_cvtepi32_ps(b0));
        __m256 v1 = _mm256_div_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a1), k255), _mm256_cvtepi32_ps(b1));
        if (keep) {
            _mm256_storeu_ps(keep + c, v0);
            _mm256_storeu_ps(keep + c + 8, v1);
        }
        __m256i r0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, scale)), r1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, scale));
        __m256i words = _mm256_packs_epi32(r0, r1); /* per 128-bit lane: r0 lo, r1 lo | r0 hi, r1 hi */
        __m128i lo = _mm256_castsi256_si128(words), hi = _mm256_extracti128_si256(words, 1);
        /* lo: pixels 0-3, 8-11; hi: 4-7, 12-15 */
        __m128i first = _mm_unpacklo_epi64(lo, hi), second = _mm_unpackhi_epi64(lo, hi);
        _mm_storeu_si128((__m128i *)(out + c), _mm_packus_epi16(first, second));
    }
    for (; c < w; c++) {
        int a = p[c] > g[c] ? p[c] - g[c] : 0, b = p[c] > 0 ? p[c] : 1;
        float v = ((float)a * 255.0f) / (float)b;
        if (keep) keep[c] = v;
        out[c] = saturate_round(v * alpha);
    }
}
#endif

typedef void (*absorbed_row_fn)(const unsigned char *, const unsigned char *, Py_ssize_t, float, unsigned char *,
                                float *);

/* The most floats absorbed_ink keeps between its passes (16 MB). */
#define KEEP_MAX (4 * 1024 * 1024)

/* A float buffer of at least n, kept by the process and grown as needed (NULL if it cannot
 * grow: the caller divides again). The extension runs under the GIL, so one buffer serves. */
static float *kept_floats(size_t n) {
    static float *buffer = NULL;
    static size_t capacity = 0;
    if (n > capacity) {
        float *grown = realloc(buffer, n * sizeof(float));
        if (!grown) return NULL;
        buffer = grown;
        capacity = n;
    }
    return buffer;
}

/* Bilinear enlargement of the paper level (a small image) to the page's size: each output
 * position's two source positions and their weights, in 11-bit fixed point (a1 rounded to the
 * nearest, a0 = 2048 - a1), the source position of output d being (d + 0.5) * in / out - 0.5
 * (pixel centres aligned, clamped at the edges), as OpenCV's INTER_LINEAR places them; the two
 * passes are exact integer sums, rounded once, to the nearest. */
typedef struct {
    Py_ssize_t lo, hi;
    int32_t a0, a1;
} lerp;

static lerp *lerp_weights(Py_ssize_t in_size, Py_ssize_t out_size) {
    lerp *k = malloc(sizeof(lerp) * (size_t)(out_size > 0 ? out_size : 1));
    if (!k) return NULL;
    double scale = 1.0 / ((double)out_size / (double)in_size);
    for (Py_ssize_t d = 0; d < out_size; d++) {
        float f = (float)(((double)d + 0.5) * scale - 0.5);
        float whole = floorf(f);
        Py_ssize_t at = (Py_ssize_t)whole;
        f -= whole;
        if (at < 0) {
            f = 0.0f;
            at = 0;
        }
        if (at >= in_size - 1) {
            f = 0.0f;
            at = in_size - 1;
        }
        k[d].lo = at;
        k[d].hi = at + 1 < in_size ? at + 1 : in_size - 1;
        k[d].a1 = (int32_t)nearbyintf(f * 2048.0f);
        k[d].a0 = 2048 - k[d].a1;
    }
    return k;
}

/* The horizontal pass of every small row: sh x w sums of two weighted pixels (11 fractional
 * bits), from which each output row is a blend of two (enlarged_row). */
static void across_plain(const uint8_t *small, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t w, const lerp *xs,
                         int32_t *across) {
    for (Py_ssize_t i = 0; i < sh; i++) {
        const uint8_t *row = small + i * sw;
        int32_t *out = across + i * w;
        for (Py_ssize_t c = 0; c < w; c++) out[c] = row[xs[c].lo] * xs[c].a0 + row[xs[c].hi] * xs[c].a1;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* across_plain with AVX2, eight outputs an instruction: their sixteen source pixels (each output's
 * two) picked out of the sixteen bytes from the first one by a byte shuffle, then multiplied by
 * their weights and summed in pairs (madd). Enlarging, eight outputs span at most nine pixels;
 * returns 0, having done nothing, where a block spans more than sixteen (a level shrunk by more
 * than 15/8: never the paper's, but allowed). */
__attribute__((target("avx2"))) static int across_avx2(const uint8_t *small, Py_ssize_t sh, Py_ssize_t sw,
                                                         Py_ssize_t w, const lerp *xs, int32_t *across) {
    Py_ssize_t blocks = w / 8, done = 0;
    Py_ssize_t *base = malloc(sizeof(Py_ssize_t) * (size_t)(blocks > 0 ? blocks : 1));
    uint8_t *picks = malloc((size_t)(16 * (blocks > 0 ? blocks : 1))), *row = malloc((size_t)(sw + 16));
    int16_t *weights = malloc(sizeof(int16_t) * (size_t)(16 * (blocks > 0 ? blocks : 1)));
    if (!base || !picks || !row || !weights) goto out;
    for (Py_ssize_t b = 0; b < blocks; b++) {
        base[b] = xs[8 * b].lo;
        for (int k = 0; k < 8; k++) {
            const lerp *x = xs + 8 * b + k;
            if (x->lo - base[b] > 15 || x->hi - base[b] > 15 || x->lo < base[b]) goto out;
            picks[16 * b + 2 * k] = (uint8_t)(x->lo - base[b]);
            picks[16 * b + 2 * k + 1] = (uint8_t)(x->hi - base[b]);
            weights[16 * b + 2 * k] = (int16_t)x->a0;
            weights[16 * b + 2 * k + 1] = (int16_t)x->a1;
        }
    }
    memset(row + sw, 0, 16); /* the last block's sixteen bytes may reach past the row */
    for (Py_ssize_t i = 0; i < sh; i++) {
        memcpy(row, small + i * sw, (size_t)sw);
        int32_t *out = across + i * w;
        for (Py_ssize_t b = 0; b < blocks; b++) {
            __m128i pixels = _mm_loadu_si128((const __m128i *)(row + base[b]));
            __m128i pairs = _mm_shuffle_epi8(pixels, _mm_loadu_si128((const __m128i *)(picks + 16 * b)));
            __m256i sums = _mm256_madd_epi16(_mm256_cvtepu8_epi16(pairs),
                                             _mm256_loadu_si256((const __m256i *)(weights + 16 * b)));
            _mm256_storeu_si256((__m256i *)(out + 8 * b), sums);
        }
        for (Py_ssize_t c = 8 * blocks; c < w; c++) out[c] = row[xs[c].lo] * xs[c].a0 + row[xs[c].hi] * xs[c].a1;
    }
    done = 1;
out:
    free(base);
    free(picks);
    free(row);
    free(weights);
    return (int)done;
}
#endif

/* across_plain's sums, in a new sh x w buffer (NULL if out of memory). */
static int32_t *enlarged_columns(const uint8_t *small, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t w, const lerp *xs) {
    int32_t *across = malloc(sizeof(int32_t) * (size_t)(sh * w > 0 ? sh * w : 1));
    if (!across) return NULL;
#if defined(__x86_64__) && defined(__GNUC__)
    if (avx2_here() && across_avx2(small, sh, sw, w, xs, across)) return across;
#endif
    across_plain(small, sh, sw, w, xs, across);
    return across;
}

/* One output row: rows r0 and r1 of the horizontal pass blended by (2048 - b1, b1), as
 * r0 * 2048 + (r1 - r0) * b1 (the same integer, one multiplication), rounded, shifted out of the
 * weights' 22 fractional bits: 0..255, the weights summing to 2048 along both axes. */
static void enlarged_row_plain(const int32_t *restrict r0, const int32_t *restrict r1, int32_t b1, Py_ssize_t w,
                               uint8_t *restrict out) {
    for (Py_ssize_t c = 0; c < w; c++) out[c] = (uint8_t)(((r0[c] << 11) + (r1[c] - r0[c]) * b1 + (1 << 21)) >> 22);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* enlarged_row_plain with AVX2, 32 pixels a step: four sets of eight sums packed to bytes, whose
 * lanes the packs interleave and a permutation puts back in order. */
/* Eight outputs of rows r0 and r1 blended by (2048 - b1, b1) as enlarged_row_plain blends them:
 * `half` holds 1 << 21, `weight` b1. */
__attribute__((target("avx2"), always_inline)) static inline __m256i blended_eight(const int32_t *r0,
                                                                                  const int32_t *r1, __m256i half,
                                                                                  __m256i weight) {
    __m256i a = _mm256_loadu_si256((const __m256i *)r0), b = _mm256_loadu_si256((const __m256i *)r1);
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(a, 11), half),
                                   _mm256_mullo_epi32(_mm256_sub_epi32(b, a), weight));
    return _mm256_srai_epi32(sum, 22);
}

__attribute__((target("avx2"))) static void enlarged_row_avx2(const int32_t *r0, const int32_t *r1, int32_t b1,
                                                                Py_ssize_t w, uint8_t *out) {
    const __m256i half = _mm256_set1_epi32(1 << 21), weight = _mm256_set1_epi32(b1);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    Py_ssize_t c = 0;
    for (; c + 32 <= w; c += 32) {
        __m256i v[4];
        for (int j = 0; j < 4; j++) v[j] = blended_eight(r0 + c + 8 * j, r1 + c + 8 * j, half, weight);
        __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(out + c), _mm256_permutevar8x32_epi32(bytes, order));
    }
    for (; c + 8 <= w; c += 8) { /* then eight at a time */
        __m256i v = blended_eight(r0 + c, r1 + c, half, weight);
        __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_storel_epi64((__m128i *)(out + c), _mm_packus_epi16(words, words));
    }
    enlarged_row_plain(r0 + c, r1 + c, b1, w - c, out + c);
}
#endif

/* Output row `y` of the enlarged level (see lerp_weights) from `across` (enlarged_columns). */
static void enlarged_row(const int32_t *across, Py_ssize_t w, const lerp *y, uint8_t *out) {
    const int32_t *r0 = across + y->lo * w, *r1 = across + y->hi * w;
#if defined(__x86_64__) && defined(__GNUC__)
    if (avx2_here()) {
        enlarged_row_avx2(r0, r1, y->a1, w, out);
        return;
    }
#endif
    enlarged_row_plain(r0, r1, y->a1, w, out);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* absorbed_row_avx2 (alpha 1) on a row of the enlarged level made on the way: the paper under
 * each pixel is enlarged_row's integer blend of rows r0 and r1 of the horizontal pass, used as
 * the 32-bit integer it is (0..255) instead of being packed to a byte row and read back; the
 * same divisions and rounding. Returns the row's largest byte. */
__attribute__((target("avx2"))) static unsigned char absorbed_paper_row_avx2(const unsigned char *g,
                                                                           const int32_t *r0, const int32_t *r1,
                                                                           int32_t b1, Py_ssize_t w,
                                                                           unsigned char *out, float *keep) {
    const __m256i half = _mm256_set1_epi32(1 << 21), weight = _mm256_set1_epi32(b1);
    const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
    const __m256 k255 = _mm256_set1_ps(255.0f);
    __m128i top = _mm_setzero_si128();
    Py_ssize_t c = 0;
    for (; w >= 16 && c < w; c += 16) {
        if (c + 16 > w) c = w - 16; /* the row's end: the last sixteen again, the same values */
        __m256i paper[2] = {blended_eight(r0 + c, r1 + c, half, weight),
                            blended_eight(r0 + c + 8, r1 + c + 8, half, weight)};
        __m128i gv = _mm_loadu_si128((const __m128i *)(g + c));
        __m256i g0 = _mm256_cvtepu8_epi32(gv), g1 = _mm256_cvtepu8_epi32(_mm_srli_si128(gv, 8));
        /* paper - pixel (0 where the paper is darker) over the paper (at least 1) */
        __m256i a0 = _mm256_max_epi32(_mm256_sub_epi32(paper[0], g0), zero);
        __m256i a1 = _mm256_max_epi32(_mm256_sub_epi32(paper[1], g1), zero);
        __m256i d0 = _mm256_max_epi32(paper[0], one), d1 = _mm256_max_epi32(paper[1], one);
        __m256 v0 = _mm256_div_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a0), k255), _mm256_cvtepi32_ps(d0));
        __m256 v1 = _mm256_div_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a1), k255), _mm256_cvtepi32_ps(d1));
        if (keep) {
            _mm256_storeu_ps(keep + c, v0);
            _mm256_storeu_ps(keep + c + 8, v1);
        }
        __m256i words = _mm256_packs_epi32(_mm256_cvtps_epi32(v0), _mm256_cvtps_epi32(v1));
        __m128i lo = _mm256_castsi256_si128(words), hi = _mm256_extracti128_si256(words, 1);
        __m128i bytes = _mm_packus_epi16(_mm_unpacklo_epi64(lo, hi), _mm_unpackhi_epi64(lo, hi));
        _mm_storeu_si128((__m128i *)(out + c), bytes);
        top = _mm_max_epu8(top, bytes);
    }
    unsigned char m = largest_byte(top);
    for (; c < w; c++) {
        int p = (int)(((r0[c] << 11) + (r1[c] - r0[c]) * b1 + (1 << 21)) >> 22);
        int a = p > g[c] ? p - g[c] : 0, d = p > 0 ? p : 1;
        float v = ((float)a * 255.0f) / (float)d;
        if (keep) keep[c] = v;
        out[c] = saturate_round(v);
        m = out[c] > m ? out[c] : m;
    }
    return m;
}
#endif

/* A level being enlarged to h x w: its horizontal pass (enlarged_columns), each output row's
 * weights, and a row to make output rows in; the small level's copy and its column weights are
 * freed once the pass is made. */
typedef struct {
    Py_ssize_t w;
    lerp *ys;
    int32_t *across;
    uint8_t *row;
} enlargement;

static void enlargement_end(enlargement *e) {
    free(e->ys);
    free(e->across);
    free(e->row);
    e->ys = NULL;
    e->across = NULL;
    e->row = NULL;
}

/* 0, or -1 with MemoryError set (nothing held). */
static int enlargement_begin(const grid *level, Py_ssize_t h, Py_ssize_t w, enlargement *e) {
    e->w = w;
    e->ys = NULL;
    e->across = NULL;
    e->row = NULL;
    uint8_t *small = packed_copy(level);
    if (!small) return -1;
    lerp *xs = lerp_weights(level->w, w);
    e->ys = lerp_weights(level->h, h);
    e->row = malloc((size_t)w);
    e->across = xs ? enlarged_columns(small, level->h, level->w, w, xs) : NULL;
    free(small);
    free(xs);
    if (!e->ys || !e->row || !e->across) {
        enlargement_end(e);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Output row r of the enlarged level, into `into` (or the enlargement's own row when NULL). */
static const uint8_t *enlargement_row(const enlargement *e, Py_ssize_t r, uint8_t *into) {
    uint8_t *out = into ? into : e->row;
    enlarged_row(e->across, e->w, e->ys + r, out);
    return out;
}

/* enlarge(small, out): the small level bilinearly enlarged to `out`'s size (see lerp_weights). */
static PyObject *enlarge(PyObject *self, PyObject *args) {
    PyObject *in_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OO", &in_obj, &out_obj)) return NULL;
    grid in, out;
    if (in_and_out(in_obj, &in, out_obj, &out) < 0) return NULL;
    PyObject *result = NULL;
    enlargement e;
    if (in.h < 1 || in.w < 1 || out.h < 1 || out.w < 1) {
        PyErr_SetString(PyExc_ValueError, "expected a non-empty image and a non-empty output");
        goto release;
    }
    if (enlargement_begin(&in, out.h, out.w, &e) < 0) goto release;
    for (Py_ssize_t r = 0; r < out.h; r++) {
        char *to = out.data + r * out.s0;
        if (out.s1 == 1) {
            enlargement_row(&e, r, (uint8_t *)to);
        } else {
            const uint8_t *row = enlargement_row(&e, r, NULL);
            const Py_ssize_t step = out.s1, w = out.w;
            for (Py_ssize_t c = 0; c < w; c++) to[c * step] = (char)row[c];
        }
    }
    enlargement_end(&e);
    result = Py_NewRef(Py_None);
release:
    PyBuffer_Release(&in.view);
    PyBuffer_Release(&out.view);
    return result;
}

/* absorbed_ink(gray, level, min_top, out, ink_level, mask) -> (top, scale, box) (kernels):
 * `level` is the paper's level at a small size, enlarged to the page a row at a time
 * (enlarged_row) as the ink is made; the stretched ink's mask (> ink_level) and its box are made
 * with it (locate), when the page is not blank. */
static PyObject *absorbed_ink(PyObject *self, PyObject *args) {
    PyObject *gobj, *pobj, *oobj, *mobj;
    int min_top, level;
    if (!PyArg_ParseTuple(args, "OOiOiO", &gobj, &pobj, &min_top, &oobj, &level, &mobj)) return NULL;
    grid g, p, o, m;
    if (get_grid(gobj, &g, 0) < 0) return NULL;
    if (get_grid(pobj, &p, 0) < 0) {
        PyBuffer_Release(&g.view);
        return NULL;
    }
    if (get_grid(oobj, &o, 1) < 0) {
        PyBuffer_Release(&g.view);
        PyBuffer_Release(&p.view);
        return NULL;
    }
    if (get_grid(mobj, &m, 1) < 0) {
        PyBuffer_Release(&g.view);
        PyBuffer_Release(&p.view);
        PyBuffer_Release(&o.view);
        return NULL;
    }
    PyObject *result = NULL;
    enlargement paper = {0};
    const Py_ssize_t h = g.h, w = g.w;
    if (o.h != h || o.w != w || m.h != h || m.w != w || g.s1 != 1 || o.s1 != 1 || m.s1 != 1 || h < 1 || w < 1 ||
        p.h < 1 || p.w < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "expected a non-empty page, its ink and mask of one shape, rows contiguous, and a level");
        goto done;
    }
    Py_ssize_t box[4] = {-1, -1, w, -1};
    if (enlargement_begin(&p, h, w, &paper) < 0) goto done;
    /* The ink rounded to 8 bits (into `out`, for now), its levels, then the stretched ink. */
    absorbed_row_fn row_of = absorbed_row;
#if defined(__x86_64__) && defined(__GNUC__)
    if (avx2_here()) row_of = absorbed_row_avx2;
#endif
    /* The float ink is kept for the second pass where it is no larger than KEEP_MAX floats (a
     * scan's is far smaller; a larger image divides again instead), in a buffer the process
     * keeps and grows: the divisions bound this loop. */
    float *keep = h * w <= KEEP_MAX ? kept_floats((size_t)(h * w)) : NULL;
    /* The levels are counted as each row is made, from the least that can matter: a page whose
     * strongest level reaches min_top reads its counts from top / 2 + 1 >= min_top / 2 + 1 up
     * (one below min_top is a blank, whose scale nobody reads). */
    int low = (min_top > 0 ? min_top : 0) / 2 + 1, top = 0;
    int64_t counts[4][256];
    memset(counts, 0, sizeof(counts));
    for (Py_ssize_t r = 0; r < h; r++) {
        unsigned char *row = (unsigned char *)o.data + r * o.s0, m;
        const unsigned char *pixels = (const unsigned char *)g.data + r * g.s0;
#if defined(__x86_64__) && defined(__GNUC__)
        if (row_of == absorbed_row_avx2) { /* the paper's row made on the way */
            const lerp *y = paper.ys + r;
            m = absorbed_paper_row_avx2(pixels, paper.across + y->lo * w, paper.across + y->hi * w, y->a1, w, row,
                                        keep ? keep + r * w : NULL);
        } else
#endif
        {
            row_of(pixels, enlargement_row(&paper, r, NULL), w, 1.0f, row, keep ? keep + r * w : NULL);
            m = row_max(row, w);
        }
        top = m > top ? m : top;
        count_high(row, w, low, counts);
    }
    int first = top / 2 + 1;
    counts_total(counts);
    int scale = levels_above(counts[0], first > low ? first : low);
    if (top >= min_top) {
        float alpha = (float)(255.0 / (double)scale); /* what OpenCV multiplies by */
        for (Py_ssize_t r = 0; r < h; r++) {
            unsigned char *row = (unsigned char *)o.data + r * o.s0, *inked = (unsigned char *)m.data + r * m.s0;
            if (keep && level >= 0 && level < 255) {
                finished_row(keep + r * w, w, alpha, level, row, inked, r, box);
                continue;
            }
            if (keep) {
                scaled_row(keep + r * w, w, alpha, row);
            } else {
                row_of((const unsigned char *)g.data + r * g.s0, enlargement_row(&paper, r, NULL), w, alpha, row,
                       NULL);
            }
            locate_row(row, w, level, inked); /* the ink's mask and box while the row is at hand */
            box_row(inked, w, r, box);
        }
    }
    result = Py_BuildValue("iiN", top, scale, box_value(box));
done:
    enlargement_end(&paper);
    PyBuffer_Release(&g.view);
    PyBuffer_Release(&p.view);
    PyBuffer_Release(&o.view);
    PyBuffer_Release(&m.view);
    return result;
}

/* The box radius (with its fraction) of one of `passes` extended-box passes that together blur
 * like a Gaussian of this radius (Gwosdek et al., "Theoretical foundations of Gaussian
 * convolution by extended box filtering", 2011), in float as PIL computes it. */
static float box_radius(float sigma, int passes) {
    float sigma2 = sigma * sigma / (float)passes;
    float length = (float)sqrt(12.0 * (double)sigma2 + 1.0);
    float whole = (float)floor(((double)length - 1.0) / 2.0);
    float part = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2);
    part /= 6 * (sigma2 - (whole + 1) * (whole + 1));
    return whole + part;
}

/* One extended-box pass down the columns of an h x w image (contiguous rows), `in` to `out`:
 * each pixel becomes the mean of the 2r+1 pixels about it in its column plus `fw` of the two
 * beyond, in 8.24 fixed point, the edge pixels repeated outwards, as PIL's box blur rounds it.
 * Every column keeps its own running sum (`sum`, w of them), so the inner loop runs across a
 * row, independent column by column, instead of waiting on one sum pixel after pixel. */
static inline __attribute__((always_inline)) void box_columns_body(const uint8_t *in, uint8_t *out, Py_ssize_t h,
                                                                   Py_ssize_t w, int r, uint32_t ww, uint32_t fw,
                                                                   uint32_t *sum) {
    Py_ssize_t last = h - 1;
    /* The window of row -1: r + 1 copies of the first row, then rows 0 .. r - 1 (those past the
     * end counted as the last). */
    for (Py_ssize_t c = 0; c < w; c++) sum[c] = (uint32_t)in[c] * (uint32_t)(r + 1);
    for (Py_ssize_t i = 0; i < r; i++) {
        const uint8_t *row = in + (i < last ? i : last) * w;
        for (Py_ssize_t c = 0; c < w; c++) sum[c] += row[c];
    }
    for (Py_ssize_t x = 0; x <= last; x++) {
        Py_ssize_t add = x + r < last ? x + r : last, drop = x - r - 1 > 0 ? x - r - 1 : 0;
        Py_ssize_t far = x + r + 1 < last ? x + r + 1 : last;
        const uint8_t *pa = in + add * w, *pd = in + drop * w, *pf = in + far * w;
        uint8_t *po = out + x * w;
        for (Py_ssize_t c = 0; c < w; c++) {
            sum[c] += (uint32_t)pa[c] - (uint32_t)pd[c];
            uint32_t total = sum[c] * ww + ((uint32_t)pd[c] + (uint32_t)pf[c]) * fw;
            po[c] = (uint8_t)((total + (1u << 23)) >> 24);
        }
    }
}

static void box_columns_plain(const uint8_t *in, uint8_t *out, Py_ssize_t h, Py_ssize_t w, int r, uint32_t ww,
                              uint32_t fw, uint32_t *sum) {
    box_columns_body(in, out, h, w, r, ww, fw, sum);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same loop with AVX2 (eight 32-bit products an instruction; SSE2 has no 32-bit multiply),
 * chosen where the processor has it: the window of row -1 as box_columns_body makes it, then
 * eight columns at a time (the bytes widened, the sums kept in `sum`, the result narrowed back),
 * the columns left over one at a time; the same integers, so the same pixels. */
__attribute__((target("avx2"))) static void box_columns_avx2(const uint8_t *in, uint8_t *out, Py_ssize_t h,
                                                               Py_ssize_t w, int r, uint32_t ww, uint32_t fw,
                                                               uint32_t *sum) {
    Py_ssize_t last = h - 1;
    for (Py_ssize_t c = 0; c < w; c++) sum[c] = (uint32_t)in[c] * (uint32_t)(r + 1);
    for (Py_ssize_t i = 0; i < r; i++) {
        const uint8_t *row = in + (i < last ? i : last) * w;
        for (Py_ssize_t c = 0; c < w; c++) sum[c] += row[c];
    }
    const __m256i whole = _mm256_set1_epi32((int)ww), part = _mm256_set1_epi32((int)fw);
    const __m256i half = _mm256_set1_epi32(1 << 23);
    for (Py_ssize_t x = 0; x <= last; x++) {
        Py_ssize_t add = x + r < last ? x + r : last, drop = x - r - 1 > 0 ? x - r - 1 : 0;
        Py_ssize_t far = x + r + 1 < last ? x + r + 1 : last;
        const uint8_t *pa = in + add * w, *pd = in + drop * w, *pf = in + far * w;
        uint8_t *po = out + x * w;
        Py_ssize_t c = 0;
        for (; c + 8 <= w; c += 8) {
            __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(pa + c)));
            __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(pd + c)));
            __m256i f = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(pf + c)));
            __m256i total = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(sum + c)), _mm256_sub_epi32(a, d));
            _mm256_storeu_si256((__m256i *)(sum + c), total);
            __m256i v = _mm256_add_epi32(_mm256_mullo_epi32(total, whole),
                                         _mm256_mullo_epi32(_mm256_add_epi32(d, f), part));
            v = _mm256_srli_epi32(_mm256_add_epi32(v, half), 24);
            __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            _mm_storel_epi64((__m128i *)(po + c), _mm_packus_epi16(words, words));
        }
        for (; c < w; c++) {
            sum[c] += (uint32_t)pa[c] - (uint32_t)pd[c];
            uint32_t total = sum[c] * ww + ((uint32_t)pd[c] + (uint32_t)pf[c]) * fw;
            po[c] = (uint8_t)((total + (1u << 23)) >> 24);
        }
    }
}
#endif

static void box_columns(const uint8_t *in, uint8_t *out, Py_ssize_t h, Py_ssize_t w, int r, uint32_t ww, uint32_t fw,
                        uint32_t *sum) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (avx2_here()) {
        box_columns_avx2(in, out, h, w, r, ww, fw, sum);
        return;
    }
#endif
    box_columns_plain(in, out, h, w, r, ww, fw, sum);
}

/* PIL's ImageFilter.GaussianBlur(sigma) of a contiguous h x w 8-bit image, in place (three
 * extended-box passes along the rows, then three along the columns). The row passes run down the
 * columns of the transposed image (see box_columns). 0, or -1 if out of memory. */
#if defined(__SSE2__)
/* Sixteen columns of eight rows, from column x of the rows r[0..7], each column's eight bytes
 * side by side: d[k] holds columns x + 2k and x + 2k + 1 (SSE2 unpacks, a transpose of 8 x 16
 * blocks). */
static inline __attribute__((always_inline)) void columns_of_eight(const uint8_t *const r[8], Py_ssize_t x,
                                                                   __m128i d[8]) {
    __m128i a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm_loadu_si128((const __m128i *)(r[j] + x));
    __m128i b0 = _mm_unpacklo_epi8(a[0], a[1]), b1 = _mm_unpackhi_epi8(a[0], a[1]);
    __m128i b2 = _mm_unpacklo_epi8(a[2], a[3]), b3 = _mm_unpackhi_epi8(a[2], a[3]);
    __m128i b4 = _mm_unpacklo_epi8(a[4], a[5]), b5 = _mm_unpackhi_epi8(a[4], a[5]);
    __m128i b6 = _mm_unpacklo_epi8(a[6], a[7]), b7 = _mm_unpackhi_epi8(a[6], a[7]);
    __m128i c0 = _mm_unpacklo_epi16(b0, b2), c1 = _mm_unpackhi_epi16(b0, b2);
    __m128i c2 = _mm_unpacklo_epi16(b1, b3), c3 = _mm_unpackhi_epi16(b1, b3);
    __m128i c4 = _mm_unpacklo_epi16(b4, b6), c5 = _mm_unpackhi_epi16(b4, b6);
    __m128i c6 = _mm_unpacklo_epi16(b5, b7), c7 = _mm_unpackhi_epi16(b5, b7);
    d[0] = _mm_unpacklo_epi32(c0, c4);
    d[1] = _mm_unpackhi_epi32(c0, c4);
    d[2] = _mm_unpacklo_epi32(c1, c5);
    d[3] = _mm_unpackhi_epi32(c1, c5);
    d[4] = _mm_unpacklo_epi32(c2, c6);
    d[5] = _mm_unpackhi_epi32(c2, c6);
    d[6] = _mm_unpacklo_epi32(c3, c7);
    d[7] = _mm_unpackhi_epi32(c3, c7);
}
#endif

/* dst (w x h, rows `dst_step` bytes apart) = the transpose of the h x w src (rows `step` bytes
 * apart): blocks of eight rows by sixteen columns interleaved with SSE2 unpacks (sixteen columns
 * of eight bytes each), each column's eight bytes stored at once; the edges a byte at a time. */
static void transpose_bytes(const uint8_t *src, Py_ssize_t step, Py_ssize_t h, Py_ssize_t w, uint8_t *dst,
                            Py_ssize_t dst_step) {
    Py_ssize_t r = 0;
#if defined(__SSE2__)
    for (; r + 8 <= h; r += 8) {
        Py_ssize_t c = 0;
        const uint8_t *rows[8];
        for (int j = 0; j < 8; j++) rows[j] = src + (r + j) * step;
        for (; c + 16 <= w; c += 16) {
            __m128i d[8];
            columns_of_eight(rows, c, d);
            /* d[k]: columns c + 2k and c + 2k + 1, eight rows each */
            for (int k = 0; k < 8; k++) {
                _mm_storel_epi64((__m128i *)(dst + (c + 2 * k) * dst_step + r), d[k]);
                _mm_storel_epi64((__m128i *)(dst + (c + 2 * k + 1) * dst_step + r), _mm_unpackhi_epi64(d[k], d[k]));
            }
        }
        for (; c < w; c++)
            for (int j = 0; j < 8; j++) dst[c * dst_step + r + j] = src[(r + j) * step + c];
    }
#endif
    for (; r < h; r++)
        for (Py_ssize_t c = 0; c < w; c++) dst[c * dst_step + r] = src[r * step + c];
}

/* PIL's GaussianBlur of a contiguous h x w image, in place; 0, or -1 with MemoryError set. */
static int blur_pixels(uint8_t *image, Py_ssize_t h, Py_ssize_t w, double sigma) {
    if (!(sigma > 0) || h < 1 || w < 1) return 0;
    uint8_t *a = malloc((size_t)(h * w)), *b = malloc((size_t)(h * w));
    uint32_t *sum = malloc(sizeof(uint32_t) * (size_t)(h > w ? h : w));
    if (!a || !b || !sum) {
        free(a);
        free(b);
        free(sum);
        PyErr_NoMemory();
        return -1;
    }
    float radius = box_radius((float)sigma, 3);
    int whole = (int)radius;
    uint32_t ww = (uint32_t)((float)(1 << 24) / (radius * 2 + 1));
    uint32_t fw = ((1u << 24) - (uint32_t)(whole * 2 + 1) * ww) / 2;
    transpose_bytes(image, w, h, w, a, h); /* transposed: w rows of h */
    box_columns(a, b, w, h, whole, ww, fw, sum);
    box_columns(b, a, w, h, whole, ww, fw, sum);
    box_columns(a, b, w, h, whole, ww, fw, sum);
    transpose_bytes(b, h, w, h, a, w); /* back upright */
    box_columns(a, b, h, w, whole, ww, fw, sum);
    box_columns(b, a, h, w, whole, ww, fw, sum);
    box_columns(a, image, h, w, whole, ww, fw, sum);
    free(a);
    free(b);
    free(sum);
    return 0;
}

/* gaussian_blur(image, radius, out): PIL's ImageFilter.GaussianBlur(radius) of an 8-bit image,
 * into `out` (blur_pixels). */
static PyObject *gaussian_blur(PyObject *self, PyObject *args) {
    PyObject *in_obj, *out_obj;
    double sigma;
    if (!PyArg_ParseTuple(args, "OdO", &in_obj, &sigma, &out_obj)) return NULL;
    grid in, out;
    if (in_and_out(in_obj, &in, out_obj, &out) < 0) return NULL;
    PyObject *result = NULL;
    uint8_t *pixels = NULL;
    if (out.h != in.h || out.w != in.w || !(sigma >= 0)) {
        PyErr_SetString(PyExc_ValueError, "out must have the image's shape; radius >= 0");
        goto done;
    }
    if (!(pixels = packed_copy(&in))) goto done;
    if (blur_pixels(pixels, in.h, in.w, sigma) < 0) goto done;
    unpack_into(pixels, &out);
    result = Py_NewRef(Py_None);
done:
    free(pixels);
    PyBuffer_Release(&in.view);
    PyBuffer_Release(&out.view);
    return result;
}

/* frame(image) -> (sum, light, count) of an 8-bit image's border frame, as normalize._border
 * concatenates it (the bh top and bottom rows, then the bw left and right columns, corners in
 * both): the sum of its pixels, how many are above 127, and how many there are. */
/* The sum of n contiguous bytes and how many are above 127 (their top bit set): sixteen bytes an
 * instruction (SSE2's sum of absolute differences from zero, and the bytes' top bits). */
static void sum_and_light(const unsigned char *p, Py_ssize_t n, long long *sum, long long *light) {
    Py_ssize_t c = 0;
#if defined(__SSE2__)
    __m128i sums = _mm_setzero_si128(), highs = _mm_setzero_si128();
    const __m128i one = _mm_set1_epi8(1);
    for (; c + 16 <= n; c += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(p + c));
        sums = _mm_add_epi64(sums, _mm_sad_epu8(v, _mm_setzero_si128()));
        highs = _mm_add_epi64(highs, _mm_sad_epu8(_mm_and_si128(_mm_srli_epi16(v, 7), one), _mm_setzero_si128()));
    }
    *sum += _mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
    *light += _mm_cvtsi128_si64(highs) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(highs, highs));
#endif
    for (; c < n; c++) {
        *sum += p[c];
        *light += p[c] > 127;
    }
}

static PyObject *frame(PyObject *self, PyObject *args) {
    grid g;
    if (only_grid(args, &g) < 0) return NULL;
    Py_ssize_t h = g.h, w = g.w, bh = h / 20 > 1 ? h / 20 : 1, bw = w / 20 > 1 ? w / 20 : 1;
    long long sum = 0, light = 0, count = 0;
    if (h > 0 && w > 0 && g.s1 == 1) { /* rows contiguous (a decoded page): runs of bytes */
        for (Py_ssize_t i = 0; i < bh; i++) {
            Py_ssize_t rows[2] = {i < h ? i : h - 1, h - bh + i >= 0 ? h - bh + i : 0};
            for (int k = 0; k < 2; k++) sum_and_light((const unsigned char *)g.data + rows[k] * g.s0, w, &sum, &light);
            count += 2 * w;
        }
        /* The columns: the first and last bw of every row (bw <= w: w / 20, or 1). Up to 16 of
         * them, each end is one 16-byte load, the bytes past bw masked off. */
        Py_ssize_t r = 0;
#if defined(__SSE2__)
        if (w >= 16 && bw <= 16) {
            unsigned char keep[32] = {0};
            memset(keep, 0xFF, (size_t)bw);           /* the row's first bw bytes */
            memset(keep + 32 - bw, 0xFF, (size_t)bw); /* the last bw of its last 16 */
            const __m128i first = _mm_loadu_si128((const __m128i *)keep);
            const __m128i last = _mm_loadu_si128((const __m128i *)(keep + 16));
            __m128i sums = _mm_setzero_si128(), highs = _mm_setzero_si128();
            const __m128i one = _mm_set1_epi8(1);
            for (; r < h; r++) {
                const unsigned char *row = (const unsigned char *)g.data + r * g.s0;
                __m128i a = _mm_and_si128(_mm_loadu_si128((const __m128i *)row), first);
                __m128i b = _mm_and_si128(_mm_loadu_si128((const __m128i *)(row + w - 16)), last);
                sums = _mm_add_epi64(sums, _mm_add_epi64(_mm_sad_epu8(a, _mm_setzero_si128()),
                                                         _mm_sad_epu8(b, _mm_setzero_si128())));
                __m128i top_bits = _mm_add_epi8(_mm_and_si128(_mm_srli_epi16(a, 7), one),
                                                _mm_and_si128(_mm_srli_epi16(b, 7), one));
                highs = _mm_add_epi64(highs, _mm_sad_epu8(top_bits, _mm_setzero_si128()));
            }
            sum += _mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
            light += _mm_cvtsi128_si64(highs) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(highs, highs));
        }
#endif
        for (; r < h; r++) {
            const unsigned char *row = (const unsigned char *)g.data + r * g.s0;
            sum_and_light(row, bw, &sum, &light);
            sum_and_light(row + w - bw, bw, &sum, &light);
        }
        count += 2 * bw * h;
    } else if (h > 0 && w > 0) {
        for (Py_ssize_t i = 0; i < bh; i++) {
            Py_ssize_t rows[2] = {i < h ? i : h - 1, h - bh + i >= 0 ? h - bh + i : 0};
            for (int k = 0; k < 2; k++) {
                for (Py_ssize_t c = 0; c < w; c++) {
                    unsigned v = (unsigned char)AT(&g, rows[k], c);
                    sum += v;
                    light += v > 127;
                }
                count += w;
            }
        }
        for (Py_ssize_t j = 0; j < bw; j++) {
            Py_ssize_t cols[2] = {j < w ? j : w - 1, w - bw + j >= 0 ? w - bw + j : 0};
            for (int k = 0; k < 2; k++) {
                for (Py_ssize_t r = 0; r < h; r++) {
                    unsigned v = (unsigned char)AT(&g, r, cols[k]);
                    sum += v;
                    light += v > 127;
                }
                count += h;
            }
        }
    }
    PyBuffer_Release(&g.view);
    return Py_BuildValue("LLL", sum, light, count);
}

/* Resampling as PIL's Image.resize does it for an 8-bit image: separable passes with filter
 * weights computed in double, normalised, then rounded to 22-bit fixed point; each pass rounds
 * to 8 bits. */
enum { FILTER_LANCZOS = 1, FILTER_BICUBIC = 3, FILTER_BOX = 4 };
#define WEIGHT_BITS 22

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double filter_weight(int filter, double x) {
    if (filter == FILTER_BOX) return x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
    if (filter == FILTER_BICUBIC) { /* Keys' cubic, a = -0.5 */
        const double a = -0.5;
        if (x < 0.0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }
    return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0; /* Lanczos, 3 lobes */
}

static double filter_support(int filter) {
    return filter == FILTER_BOX ? 0.5 : filter == FILTER_BICUBIC ? 2.0 : 3.0;
}

/* Weights of each output position along one axis: first input (`first`), how many (`count`),
 * and `ksize` fixed-point weights per position in `weights`. Returns ksize, 0 if out of memory. */
static int compute_weights(Py_ssize_t in_size, Py_ssize_t out_size, int filter, int **first, int **count,
                           int32_t **weights) {
    double scale = (double)(float)in_size / (double)out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = filter_support(filter) * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    *first = malloc(sizeof(int) * (size_t)out_size);
    *count = malloc(sizeof(int) * (size_t)out_size);
    *weights = malloc(sizeof(int32_t) * (size_t)(out_size * ksize));
    double *k = malloc(sizeof(double) * (size_t)ksize);
    if (!*first || !*count || !*weights || !k) {
        free(*first);
        free(*count);
        free(*weights);
        free(k);
        return 0;
    }
    for (Py_ssize_t xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, total = 0.0, ss = 1.0 / filterscale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = (int)in_size;
        int n = hi - lo;
        for (int x = 0; x < n; x++) {
            k[x] = filter_weight(filter, (x + lo - center + 0.5) * ss);
            total += k[x];
        }
        int32_t *out = *weights + xx * ksize;
        for (int x = 0; x < ksize; x++) {
            double v = x < n ? (total != 0.0 ? k[x] / total : k[x]) : 0.0;
            out[x] = (int32_t)(v < 0 ? -0.5 + v * (1 << WEIGHT_BITS) : 0.5 + v * (1 << WEIGHT_BITS));
        }
        (*first)[xx] = lo;
        (*count)[xx] = n;
    }
    free(k);
    return ksize;
}

/* The weights of the last sizes asked for, by (input size, output size, filter): a scan's digit
 * is resized to 80 and then 20 pixels, so the same sizes come back again and again, and a
 * Lanczos weight costs two sines. Direct-mapped, one table per axis (a resize's two lookups never
 * evict each other's weights); the module runs under the GIL, one call at a time. The digits'
 * shorter sides make thousands of (size, size) pairs over a run, so the tables are large: the
 * weights a scan resizes with are a few kilobytes, and a worker holds those of the pairs it met
 * (a few megabytes). */
#define CACHE_BITS 12
#define CACHE_SLOTS (1 << CACHE_BITS)
/* The most bytes of weights one axis's table holds: past it (huge images, whose weights span
 * many pixels each), the table is emptied before the next entry goes in. */
#define CACHE_MAX_BYTES (8 * 1024 * 1024)
enum { ALONG_ROWS, DOWN_COLUMNS };
typedef struct {
    Py_ssize_t in_size, out_size;
    int filter, ksize;
    int *first, *count;
    int32_t *weights;
} weights_slot;
static weights_slot caches[2][CACHE_SLOTS];
static size_t cached_bytes[2];

static size_t slot_bytes(Py_ssize_t out_size, int ksize) {
    return (size_t)out_size * (2 * sizeof(int) + (size_t)ksize * sizeof(int32_t));
}

static int axis_weights(int axis, Py_ssize_t in_size, Py_ssize_t out_size, int filter, const int **first,
                        const int **count, const int32_t **weights) {
    uint64_t key = (uint64_t)in_size * 0x9E3779B97F4A7C15ull ^ (uint64_t)out_size * 0xC2B2AE3D27D4EB4Full ^ (uint64_t)filter;
    size_t slot = (size_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - CACHE_BITS));
    weights_slot *cache = caches[axis];
    if (!(cache[slot].ksize && cache[slot].in_size == in_size && cache[slot].out_size == out_size &&
          cache[slot].filter == filter)) {
        int *f, *c;
        int32_t *k;
        int ksize = compute_weights(in_size, out_size, filter, &f, &c, &k);
        if (!ksize) return 0;
        if (cached_bytes[axis] + slot_bytes(out_size, ksize) > CACHE_MAX_BYTES) {
            /* Only this axis's table: a resize holds the other axis's weights meanwhile. */
            for (size_t i = 0; i < CACHE_SLOTS; i++) {
                free(cache[i].first);
                free(cache[i].count);
                free(cache[i].weights);
                cache[i] = (weights_slot){0};
            }
            cached_bytes[axis] = 0;
        }
        if (cache[slot].ksize) cached_bytes[axis] -= slot_bytes(cache[slot].out_size, cache[slot].ksize);
        cached_bytes[axis] += slot_bytes(out_size, ksize);
        free(cache[slot].first);
        free(cache[slot].count);
        free(cache[slot].weights);
        cache[slot].in_size = in_size;
        cache[slot].out_size = out_size;
        cache[slot].filter = filter;
        cache[slot].ksize = ksize;
        cache[slot].first = f;
        cache[slot].count = c;
        cache[slot].weights = k;
    }
    *first = cache[slot].first;
    *count = cache[slot].count;
    *weights = cache[slot].weights;
    return cache[slot].ksize;
}

static inline uint8_t clip_weighted(int32_t sum) {
    int32_t v = sum >> WEIGHT_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* The pass down the columns: row by row into one sum per column, so the inner loop runs along a
 * row, vectorised (with AVX2, eight 32-bit products an instruction, where SSE2 has no 32-bit
 * multiply). */
static inline __attribute__((always_inline)) void down_columns_body(const uint8_t *in, Py_ssize_t stride,
                                                                    Py_ssize_t w, uint8_t *out, Py_ssize_t out_size,
                                                                    int ksize, const int *first, const int *count,
                                                                    const int32_t *weights, int32_t *sum) {
    for (Py_ssize_t yy = 0; yy < out_size; yy++) {
        const int32_t *k = weights + yy * ksize;
        const uint8_t *base = in + (Py_ssize_t)first[yy] * stride;
        for (Py_ssize_t c = 0; c < w; c++) sum[c] = 1 << (WEIGHT_BITS - 1);
        for (int y = 0; y < count[yy]; y++) {
            const uint8_t *row = base + y * stride;
            int32_t ky = k[y];
            for (Py_ssize_t c = 0; c < w; c++) sum[c] += row[c] * ky;
        }
        uint8_t *o = out + yy * w;
        for (Py_ssize_t c = 0; c < w; c++) o[c] = clip_weighted(sum[c]);
    }
}

static void down_columns_plain(const uint8_t *in, Py_ssize_t stride, Py_ssize_t w, uint8_t *out, Py_ssize_t out_size,
                               int ksize, const int *first, const int *count, const int32_t *weights, int32_t *sum) {
    down_columns_body(in, stride, w, out, out_size, ksize, first, count, weights, sum);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Eight sums of an output row, rounded, shifted out of the weights' bits and saturated to bytes
 * (clip_weighted), into out[0..7]. */
__attribute__((target("avx2"))) static inline void store_eight(__m256i acc, uint8_t *out) {
    acc = _mm256_srai_epi32(acc, WEIGHT_BITS);
    __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    _mm_storel_epi64((__m128i *)out, _mm_packus_epi16(words, words));
}

/* The pass down the columns with AVX2: each output row's sums kept in registers, 32 columns at
 * a time (four sets of eight, independent), then eight, then one (the same integer sums as
 * down_columns_body, so the same pixels), instead of a row of sums stored and loaded again for
 * every tap. */
__attribute__((target("avx2"))) static void down_columns_avx2(const uint8_t *in, Py_ssize_t stride, Py_ssize_t w,
                                                                uint8_t *out, Py_ssize_t out_size, int ksize,
                                                                const int *first, const int *count,
                                                                const int32_t *weights, int32_t *sum) {
    const __m256i half = _mm256_set1_epi32(1 << (WEIGHT_BITS - 1));
    for (Py_ssize_t yy = 0; yy < out_size; yy++) {
        const int32_t *k = weights + yy * ksize;
        const uint8_t *base = in + (Py_ssize_t)first[yy] * stride;
        uint8_t *o = out + yy * w;
        const int taps = count[yy];
        Py_ssize_t c = 0;
        for (; c + 32 <= w; c += 32) {
            __m256i a0 = half, a1 = half, a2 = half, a3 = half;
            for (int y = 0; y < taps; y++) {
                const uint8_t *row = base + y * stride + c;
                __m256i ky = _mm256_set1_epi32(k[y]);
                a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)row)), ky));
                a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + 8))), ky));
                a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + 16))), ky));
                a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + 24))), ky));
            }
            store_eight(a0, o + c);
            store_eight(a1, o + c + 8);
            store_eight(a2, o + c + 16);
            store_eight(a3, o + c + 24);
        }
        for (; c + 8 <= w; c += 8) {
            __m256i a = half;
            for (int y = 0; y < taps; y++)
                a = _mm256_add_epi32(a, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(base + y * stride + c))),
                                                           _mm256_set1_epi32(k[y])));
            store_eight(a, o + c);
        }
        for (; c < w; c++) {
            int32_t total = 1 << (WEIGHT_BITS - 1);
            for (int y = 0; y < taps; y++) total += base[y * stride + c] * k[y];
            o[c] = clip_weighted(total);
        }
    }
    (void)sum;
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
/* The pass along the rows for eight rows at a time with AVX2: the eight rows are interleaved
 * (each column's eight pixels side by side, a transpose of 8 x 16 blocks), so one weight
 * multiplies a column of eight in one instruction; the same integer sums as the scalar loop,
 * so the same pixels. `columns`: scratch for 8 * w bytes, `packed` for 8 * out_size. Returns the
 * rows done (a multiple of eight); the caller finishes the rest. */
__attribute__((target("avx2"))) static Py_ssize_t rows_by_eight_avx2(const uint8_t *in, Py_ssize_t stride,
                                                                       Py_ssize_t h, Py_ssize_t w, uint8_t *out,
                                                                       Py_ssize_t out_size, int ksize, const int *first,
                                                                       const int *count, const int32_t *weights,
                                                                       uint8_t *columns, uint8_t *packed) {
    const __m256i half = _mm256_set1_epi32(1 << (WEIGHT_BITS - 1));
    /* Where every output's nonzero weights are one run of equal ones (PIL's box filter weighs
     * each pixel 0 or 1 before normalising), a window is summed in 16 bits and multiplied once:
     * the same integer as weighing each pixel. `runs`: each output's first such tap, their
     * number and their weight; NULL where some output's are not so (any other filter). */
    int32_t *runs = malloc(sizeof(int32_t) * 3 * (size_t)(out_size > 0 ? out_size : 1));
    for (Py_ssize_t xx = 0; runs && xx < out_size; xx++) {
        const int32_t *k = weights + xx * ksize;
        int from = 0, to = count[xx];
        while (from < to && k[from] == 0) from++;
        while (to > from && k[to - 1] == 0) to--;
        for (int t = from; t < to && runs; t++)
            if (k[t] != k[from]) {
                free(runs);
                runs = NULL;
            }
        if (!runs) break;
        if (to - from > 257 || (from < to && k[from] < 0)) { /* a 16-bit sum of 257 bytes at most */
            free(runs);
            runs = NULL;
            break;
        }
        runs[3 * xx] = from;
        runs[3 * xx + 1] = to - from;
        runs[3 * xx + 2] = from < to ? k[from] : 0;
    }
    Py_ssize_t y = 0;
    for (; y + 8 <= h; y += 8) {
        const uint8_t *r[8];
        for (int j = 0; j < 8; j++) r[j] = in + (y + j) * stride;
        Py_ssize_t x = 0;
        for (; x + 16 <= w; x += 16) {
            __m128i d[8];
            columns_of_eight(r, x, d);
            for (int k = 0; k < 8; k++) /* columns x + 2k, x + 2k + 1 */
                _mm_storeu_si128((__m128i *)(columns + x * 8) + k, d[k]);
        }
        for (; x < w; x++)
            for (int j = 0; j < 8; j++) columns[x * 8 + j] = r[j][x];
        for (Py_ssize_t xx = 0; xx < out_size; xx++) {
            const int32_t *k = weights + xx * ksize;
            const uint8_t *col = columns + (Py_ssize_t)first[xx] * 8;
            __m256i acc = half;
            if (runs) {
                const uint8_t *from = col + (Py_ssize_t)runs[3 * xx] * 8;
                __m128i total = _mm_setzero_si128();
                for (int t = 0; t < runs[3 * xx + 1]; t++)
                    total = _mm_add_epi16(total, _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(from + t * 8))));
                acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu16_epi32(total),
                                                               _mm256_set1_epi32(runs[3 * xx + 2])));
            } else {
                for (int t = 0; t < count[xx]; t++) {
                    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(col + t * 8)));
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(v, _mm256_set1_epi32(k[t])));
                }
            }
            acc = _mm256_srai_epi32(acc, WEIGHT_BITS);
            __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            _mm_storel_epi64((__m128i *)(packed + 8 * xx), _mm_packus_epi16(words, words));
        }
        /* `packed` holds each output column's eight rows side by side: back to rows, sixteen
         * columns at a time (the transpose above, undone), the rest a byte at a time. */
        Py_ssize_t xx = 0;
        for (; xx + 16 <= out_size; xx += 16) {
            __m128i b[8];
            for (int j = 0; j < 8; j++)
                b[j] = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(packed + 8 * (xx + 2 * j))),
                                         _mm_loadl_epi64((const __m128i *)(packed + 8 * (xx + 2 * j + 1))));
            __m128i c[8];
            for (int j = 0; j < 4; j++) {
                c[2 * j] = _mm_unpacklo_epi16(b[2 * j], b[2 * j + 1]);
                c[2 * j + 1] = _mm_unpackhi_epi16(b[2 * j], b[2 * j + 1]);
            }
            /* c[2j] holds rows 0-3 of columns 4j .. 4j + 3, c[2j + 1] rows 4-7 */
            __m128i d[8];
            for (int half = 0; half < 2; half++) {
                d[4 * half + 0] = _mm_unpacklo_epi32(c[half], c[2 + half]);
                d[4 * half + 1] = _mm_unpackhi_epi32(c[half], c[2 + half]);
                d[4 * half + 2] = _mm_unpacklo_epi32(c[4 + half], c[6 + half]);
                d[4 * half + 3] = _mm_unpackhi_epi32(c[4 + half], c[6 + half]);
            }
            /* d[4h + 0]: rows 4h, 4h + 1 of columns 0-7; d[4h + 1]: rows 4h + 2, 4h + 3 of 0-7;
             * d[4h + 2], d[4h + 3]: the same rows of columns 8-15 */
            for (int half = 0; half < 2; half++)
                for (int k = 0; k < 2; k++) {
                    Py_ssize_t row = y + 4 * half + 2 * k;
                    __m128i lo = d[4 * half + k], hi = d[4 * half + 2 + k];
                    _mm_storeu_si128((__m128i *)(out + row * out_size + xx), _mm_unpacklo_epi64(lo, hi));
                    _mm_storeu_si128((__m128i *)(out + (row + 1) * out_size + xx), _mm_unpackhi_epi64(lo, hi));
                }
        }
        for (; xx < out_size; xx++)
            for (int j = 0; j < 8; j++) out[(y + j) * out_size + xx] = packed[8 * xx + j];
    }
    free(runs);
    return y;
}
#endif

/* One pass along the rows (`along_rows`) or down the columns of an h x w image whose rows are
 * `stride` bytes apart (pixels contiguous within a row) into a contiguous image whose size along
 * that axis is the output's; `sum`: scratch for w int32. */
static void resample_pass(const uint8_t *in, Py_ssize_t stride, Py_ssize_t h, Py_ssize_t w, uint8_t *out,
                          Py_ssize_t out_size, int along_rows, int ksize, const int *first, const int *count,
                          const int32_t *weights, int32_t *sum) {
    if (along_rows) {
        /* Eight rows at a time with AVX2, then four: independent sums share each weight. */
        Py_ssize_t y = 0;
#if defined(__x86_64__) && defined(__GNUC__)
        if (h >= 8 && avx2_here()) {
            uint8_t *columns = malloc((size_t)(8 * w + 16)), *packed = malloc((size_t)(8 * out_size + 16));
            if (columns && packed)
                y = rows_by_eight_avx2(in, stride, h, w, out, out_size, ksize, first, count, weights, columns, packed);
            free(columns);
            free(packed);
        }
#endif
        for (; y + 4 <= h; y += 4) {
            const uint8_t *r0 = in + y * stride, *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;
            for (Py_ssize_t xx = 0; xx < out_size; xx++) {
                const int32_t *k = weights + xx * ksize;
                int32_t s0 = 1 << (WEIGHT_BITS - 1), s1 = s0, s2 = s0, s3 = s0;
                for (int x = 0, f = first[xx]; x < count[xx]; x++) {
                    int32_t kx = k[x];
                    s0 += r0[f + x] * kx;
                    s1 += r1[f + x] * kx;
                    s2 += r2[f + x] * kx;
                    s3 += r3[f + x] * kx;
                }
                out[y * out_size + xx] = clip_weighted(s0);
                out[(y + 1) * out_size + xx] = clip_weighted(s1);
                out[(y + 2) * out_size + xx] = clip_weighted(s2);
                out[(y + 3) * out_size + xx] = clip_weighted(s3);
            }
        }
        for (; y < h; y++) {
            const uint8_t *row = in + y * stride;
            for (Py_ssize_t xx = 0; xx < out_size; xx++) {
                const int32_t *k = weights + xx * ksize;
                const uint8_t *p = row + first[xx];
                int32_t s = 1 << (WEIGHT_BITS - 1);
                for (int x = 0; x < count[xx]; x++) s += p[x] * k[x];
                out[y * out_size + xx] = clip_weighted(s);
            }
        }
    } else {
#if defined(__x86_64__) && defined(__GNUC__)
        if (avx2_here()) {
            down_columns_avx2(in, stride, w, out, out_size, ksize, first, count, weights, sum);
            return;
        }
#endif
        down_columns_plain(in, stride, w, out, out_size, ksize, first, count, weights, sum);
    }
}

/* resize(image, width, height, filter, out): PIL's Image.resize((width, height), filter) of an
 * 8-bit image into `out` (height x width). Both passes are needed when both sizes change; PIL
 * (13) runs the vertical one first when the height shrinks by more than twice what the width
 * shrinks by, and the rounding between passes makes the order matter. */
/* PIL's resize of an h x w image whose rows are `stride` bytes apart (pixels contiguous) into
 * the contiguous height x width `dst`; 0, or -1 with MemoryError set. Both passes are needed when
 * both sizes change; PIL (13) runs the vertical one first when the height shrinks by more than
 * twice what the width shrinks by, and the rounding between passes makes the order matter. */
static int resize_pixels(const uint8_t *image, Py_ssize_t stride, Py_ssize_t h, Py_ssize_t w, Py_ssize_t width,
                         Py_ssize_t height, int filter, uint8_t *dst) {
    int need_h = width != w, need_v = height != h;
    if (!need_h && !need_v) {
        for (Py_ssize_t r = 0; r < h; r++) memcpy(dst + r * w, image + r * stride, (size_t)w);
        return 0;
    }
    int vertical_first = need_h && need_v && h - height > 0 && h - height > 2 * (w - width);
    Py_ssize_t mid_h = vertical_first ? height : h, mid_w = vertical_first ? w : width;
    uint8_t *mid = need_h && need_v ? malloc((size_t)(mid_h * mid_w)) : NULL;
    int32_t *sum = malloc(sizeof(int32_t) * (size_t)(w > width ? w : width));
    const int *hf = NULL, *hc = NULL, *vf = NULL, *vc = NULL;
    const int32_t *hk = NULL, *vk = NULL;
    int hks = need_h ? axis_weights(ALONG_ROWS, w, width, filter, &hf, &hc, &hk) : 1;
    int vks = need_v ? axis_weights(DOWN_COLUMNS, h, height, filter, &vf, &vc, &vk) : 1;
    if ((need_h && need_v && !mid) || !sum || !hks || !vks) {
        free(mid);
        free(sum);
        PyErr_NoMemory();
        return -1;
    }
    if (vertical_first) {
        resample_pass(image, stride, h, w, mid, height, 0, vks, vf, vc, vk, sum);
        resample_pass(mid, w, height, w, dst, width, 1, hks, hf, hc, hk, sum);
    } else if (need_h && need_v) {
        resample_pass(image, stride, h, w, mid, width, 1, hks, hf, hc, hk, sum);
        resample_pass(mid, width, h, width, dst, height, 0, vks, vf, vc, vk, sum);
    } else if (need_h) {
        resample_pass(image, stride, h, w, dst, width, 1, hks, hf, hc, hk, sum);
    } else {
        resample_pass(image, stride, h, w, dst, height, 0, vks, vf, vc, vk, sum);
    }
    free(mid);
    free(sum);
    return 0;
}

/* resize(image, width, height, filter, out): PIL's Image.resize((width, height), filter) of an
 * 8-bit image into `out` (height x width). */
static PyObject *resize(PyObject *self, PyObject *args) {
    PyObject *in_obj, *out_obj;
    Py_ssize_t width, height;
    int filter;
    if (!PyArg_ParseTuple(args, "OnniO", &in_obj, &width, &height, &filter, &out_obj)) return NULL;
    if (filter != FILTER_BOX && filter != FILTER_BICUBIC && filter != FILTER_LANCZOS) {
        PyErr_SetString(PyExc_ValueError, "filter must be PIL's BOX, BICUBIC or LANCZOS");
        return NULL;
    }
    grid in, out;
    if (in_and_out(in_obj, &in, out_obj, &out) < 0) return NULL;
    Py_ssize_t h = in.h, w = in.w;
    if (out.h != height || out.w != width || width < 1 || height < 1 || h < 1 || w < 1) {
        PyBuffer_Release(&in.view);
        PyBuffer_Release(&out.view);
        PyErr_SetString(PyExc_ValueError, "out must be height x width, both at least 1, of a non-empty image");
        return NULL;
    }
    /* The image is read where it is when its pixels are contiguous within rows (a scan's are);
     * any other layout is copied first. */
    const uint8_t *image;
    Py_ssize_t stride;
    uint8_t *src = NULL, *dst = malloc((size_t)(height * width));
    PyObject *done = NULL;
    if (!dst) {
        PyErr_NoMemory();
        goto release;
    }
    if (contiguous_rows(&in, &image, &stride, &src) < 0) goto release;
    if (resize_pixels(image, stride, h, w, width, height, filter, dst) < 0) goto release;
    for (Py_ssize_t r = 0; r < height; r++) {
        const uint8_t *from = dst + r * width;
        char *to = out.data + r * out.s0;
        if (out.s1 == 1) {
            memcpy(to, from, (size_t)width);
        } else {
            const Py_ssize_t step = out.s1;
            for (Py_ssize_t c = 0; c < width; c++) to[c * step] = (char)from[c];
        }
    }
    done = Py_NewRef(Py_None);
release:
    free(src);
    free(dst);
    PyBuffer_Release(&in.view);
    PyBuffer_Release(&out.view);
    return done;
}

/* PIL's MaxFilter(k) (`maximum` 1) or MinFilter(k) (0) of a contiguous h x w image in place (k
 * odd; edges repeated, as OpenCV's dilation or erosion with a k x k square and BORDER_REPLICATE):
 * along the rows, then down the columns (a square's extreme is separable). Each row is first
 * copied with its edge pixels repeated k / 2 times on either side, so every output is the extreme
 * of k neighbours, sixteen outputs an instruction (SSE2's byte max and min). `tmp`: h x w bytes. */
static void rank_filter_square(uint8_t *img, Py_ssize_t h, Py_ssize_t w, int k, int maximum, uint8_t *tmp) {
    Py_ssize_t r2 = k / 2;
    uint8_t *padded = malloc((size_t)(w + 2 * r2 + 16));
    if (!padded) { /* no room for the padded row: one pixel at a time */
        for (Py_ssize_t r = 0; r < h; r++) {
            const uint8_t *row = img + r * w;
            for (Py_ssize_t c = 0; c < w; c++) {
                Py_ssize_t lo = c - r2 < 0 ? 0 : c - r2, hi = c + r2 >= w ? w - 1 : c + r2;
                uint8_t m = row[lo];
                for (Py_ssize_t x = lo + 1; x <= hi; x++)
                    m = maximum ? (row[x] > m ? row[x] : m) : (row[x] < m ? row[x] : m);
                tmp[r * w + c] = m;
            }
        }
    } else {
        for (Py_ssize_t r = 0; r < h; r++) {
            const uint8_t *row = img + r * w;
            uint8_t *out = tmp + r * w;
            memset(padded, row[0], (size_t)r2);
            memcpy(padded + r2, row, (size_t)w);
            memset(padded + r2 + w, row[w - 1], (size_t)(r2 + 16));
            Py_ssize_t c = 0;
#if defined(__SSE2__)
            for (; c + 16 <= w; c += 16) {
                __m128i m = _mm_loadu_si128((const __m128i *)(padded + c));
                for (Py_ssize_t x = 1; x < k; x++) {
                    __m128i v = _mm_loadu_si128((const __m128i *)(padded + c + x));
                    m = maximum ? _mm_max_epu8(m, v) : _mm_min_epu8(m, v);
                }
                _mm_storeu_si128((__m128i *)(out + c), m);
            }
#endif
            for (; c < w; c++) {
                uint8_t m = padded[c];
                for (Py_ssize_t x = 1; x < k; x++)
                    m = maximum ? (padded[c + x] > m ? padded[c + x] : m) : (padded[c + x] < m ? padded[c + x] : m);
                out[c] = m;
            }
        }
        free(padded);
    }
    for (Py_ssize_t r = 0; r < h; r++) {
        Py_ssize_t lo = r - r2 < 0 ? 0 : r - r2, hi = r + r2 >= h ? h - 1 : r + r2;
        uint8_t *out = img + r * w;
        memcpy(out, tmp + lo * w, (size_t)w);
        for (Py_ssize_t y = lo + 1; y <= hi; y++) {
            const uint8_t *row = tmp + y * w;
            if (maximum)
                for (Py_ssize_t c = 0; c < w; c++) out[c] = row[c] > out[c] ? row[c] : out[c];
            else
                for (Py_ssize_t c = 0; c < w; c++) out[c] = row[c] < out[c] ? row[c] : out[c];
        }
    }
}

/* fit_and_centre(digit, box, field, side, min_stroke, target_stroke, out) -> whether the digit
 * kept any ink (normalize._fit_and_centre; `out` is the field x field result). */
static PyObject *fit_and_centre(PyObject *self, PyObject *args) {
    PyObject *dobj, *oobj;
    int box, field, side;
    double min_stroke, target_stroke;
    if (!PyArg_ParseTuple(args, "OiiiddO", &dobj, &box, &field, &side, &min_stroke, &target_stroke, &oobj))
        return NULL;
    grid d, o;
    if (in_and_out(dobj, &d, oobj, &o) < 0) return NULL;
    PyObject *result = NULL;
    uint8_t *src = NULL, *mid = NULL, *tmp = NULL, *small = NULL, *placed = NULL;
    const Py_ssize_t h = d.h, w = d.w, longer = h > w ? h : w;
    if (h < 1 || w < 1 || o.h != field || o.w != field || box < 1 || box > field || side < 1) {
        PyErr_SetString(PyExc_ValueError, "expected a non-empty digit and a field x field output");
        goto done;
    }
    /* The sizes as Python computes them: true division, round() to even. */
    double factor = (double)box / (double)longer, scale = (double)side / (double)longer;
    Py_ssize_t nh = (Py_ssize_t)nearbyint((double)h * factor), nw = (Py_ssize_t)nearbyint((double)w * factor);
    Py_ssize_t mh = (Py_ssize_t)nearbyint((double)h * scale), mw = (Py_ssize_t)nearbyint((double)w * scale);
    nh = nh < 1 ? 1 : nh;
    nw = nw < 1 ? 1 : nw;
    mh = mh < 1 ? 1 : mh;
    mw = mw < 1 ? 1 : mw;
    const uint8_t *image;
    Py_ssize_t stride;
    if (contiguous_rows(&d, &image, &stride, &src) < 0) goto done;
    /* The stroke check at the intermediate scale (normalize._normalize_stroke). */
    mid = malloc((size_t)(mh * mw));
    tmp = malloc((size_t)(mh * mw));
    small = malloc((size_t)(nh * nw));
    placed = calloc((size_t)(field * field), 1);
    if (!mid || !tmp || !small || !placed) {
        PyErr_NoMemory();
        goto done;
    }
    if (resize_pixels(image, stride, h, w, mw, mh, scale < 1 ? FILTER_LANCZOS : FILTER_BICUBIC, mid) < 0) goto done;
    int strongest = 0;
    for (Py_ssize_t i = 0; i < mh * mw; i++) strongest = mid[i] > strongest ? mid[i] : strongest;
    long long area, eroded;
    Py_ssize_t unused[4];
    if (erosion_counts((const char *)mid, mh, mw, mw, 1, (strongest > 1 ? strongest : 1) / 2, &area, &eroded, unused) < 0)
        goto done;
    double width = 0.0;
    if (area) {
        long long boundary = area - eroded;
        width = 2.0 * (double)area / (double)(boundary > 1 ? boundary : 1);
    }
    if (0 < width && width < min_stroke) {
        int grow = 2 * (int)nearbyint((target_stroke - width) / 2) + 1; /* MaxFilter(k) widens by k - 1 */
        rank_filter_square(mid, mh, mw, grow > 3 ? grow : 3, 1, tmp);
    }
    /* Into the box, placed in the field, then moved so its centre of mass is the field's. */
    if (resize_pixels(mid, mw, mh, mw, nw, nh, FILTER_LANCZOS, small) < 0) goto done;
    Py_ssize_t top = (field - nh) / 2, left = (field - nw) / 2;
    for (Py_ssize_t r = 0; r < nh; r++) memcpy(placed + (top + r) * field + left, small + r * nw, (size_t)nw);
    int64_t m00 = 0, m01 = 0, m10 = 0;
    for (Py_ssize_t y = 0; y < field; y++)
        for (Py_ssize_t x = 0; x < field; x++) {
            int64_t v = placed[y * field + x];
            m00 += v;
            m01 += y * v;
            m10 += x * v;
        }
    if (m00 <= 0) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    double mass = (double)m00, cy = (double)m01 / mass, cx = (double)m10 / mass;
    Py_ssize_t dy = (Py_ssize_t)nearbyint((double)field / 2 - cy), dx = (Py_ssize_t)nearbyint((double)field / 2 - cx);
    for (Py_ssize_t y = 0; y < field; y++)
        for (Py_ssize_t x = 0; x < field; x++) {
            Py_ssize_t sy = y - dy, sx = x - dx;
            AT(&o, y, x) = (char)(sy >= 0 && sy < field && sx >= 0 && sx < field ? placed[sy * field + sx] : 0);
        }
    result = Py_NewRef(Py_True);
done:
    free(src);
    free(mid);
    free(tmp);
    free(small);
    free(placed);
    PyBuffer_Release(&d.view);
    PyBuffer_Release(&o.view);
    return result;
}

/* paper_level(gray, rank, maximum, radius, out): the paper's level at `out`'s small size: PIL's
 * box reduction of the page to it, its MaxFilter(rank) (`maximum`; MinFilter for light ink on
 * dark paper), then its GaussianBlur(radius) (normalize._local_level). */
static PyObject *paper_level(PyObject *self, PyObject *args) {
    PyObject *in_obj, *out_obj;
    int rank, maximum;
    double radius;
    if (!PyArg_ParseTuple(args, "OipdO", &in_obj, &rank, &maximum, &radius, &out_obj)) return NULL;
    grid in, out;
    if (in_and_out(in_obj, &in, out_obj, &out) < 0) return NULL;
    PyObject *result = NULL;
    uint8_t *src = NULL, *small = NULL, *tmp = NULL;
    const Py_ssize_t sh = out.h, sw = out.w;
    if (in.h < 1 || in.w < 1 || sh < 1 || sw < 1 || rank < 1 || rank % 2 == 0 || !(radius >= 0)) {
        PyErr_SetString(PyExc_ValueError, "expected a non-empty page and level, an odd rank and radius >= 0");
        goto done;
    }
    const uint8_t *image;
    Py_ssize_t stride;
    if (contiguous_rows(&in, &image, &stride, &src) < 0) goto done;
    small = malloc((size_t)(sh * sw));
    tmp = malloc((size_t)(sh * sw));
    if (!small || !tmp) {
        PyErr_NoMemory();
        goto done;
    }
    if (resize_pixels(image, stride, in.h, in.w, sw, sh, FILTER_BOX, small) < 0) goto done;
    rank_filter_square(small, sh, sw, rank, maximum, tmp);
    if (blur_pixels(small, sh, sw, radius) < 0) goto done;
    unpack_into(small, &out);
    result = Py_NewRef(Py_None);
done:
    free(src);
    free(small);
    free(tmp);
    PyBuffer_Release(&in.view);
    PyBuffer_Release(&out.view);
    return result;
}

/* jpeg_frame(data) -> (width, height, exif) or None (kernels.jpeg_frame says its rules). */
static PyObject *jpeg_frame(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view)) return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    Py_ssize_t at = 2, size = view.len;
    long width = -1, height = -1;
    int exif = 0, done = 0;
    PyObject *result = NULL;
    while (!done && at + 4 <= size) {
        if (d[at] != 0xFF) break;
        unsigned marker = d[at + 1];
        if (marker == 0xFF) { /* fill byte before a marker */
            at += 1;
            continue;
        }
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { /* TEM, restarts: no length */
            at += 2;
            continue;
        }
        if (marker == 0xD8 || marker == 0xD9) break;
        Py_ssize_t length = ((Py_ssize_t)d[at + 2] << 8) | d[at + 3];
        if (length < 2 || at + 2 + length > size) break;
        if (marker == 0xDA) { /* start of scan: the header is over */
            if (width >= 0) result = Py_BuildValue("llO", width, height, exif ? Py_True : Py_False);
            done = 1;
            break;
        }
        if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
            if (marker > 0xC2 || width >= 0 || length < 8) break;
            unsigned precision = d[at + 4], components = d[at + 9];
            long h = ((long)d[at + 5] << 8) | d[at + 6], w = ((long)d[at + 7] << 8) | d[at + 8];
            if (precision != 8 || (components != 1 && components != 3) || !w || !h) break;
            width = w;
            height = h;
        } else if (marker == 0xE1 && at + 10 <= size && memcmp(d + at + 4, "Exif\0\0", 6) == 0) {
            exif = 1;
        }
        at += 2 + length;
    }
    PyBuffer_Release(&view);
    if (result) return result;
    Py_RETURN_NONE;
}

static inline unsigned long be32(const unsigned char *p) {
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8) | p[3];
}

/* A chunk that changes what PIL makes of an 8-bit gray PNG: transparency, a palette, EXIF. */
static inline int alters_gray(const unsigned char *kind) {
    return !memcmp(kind, "tRNS", 4) || !memcmp(kind, "PLTE", 4) || !memcmp(kind, "eXIf", 4);
}

/* png_plain_gray(data) -> (width, height) or None (kernels; decode._png_gray's rules). */
static PyObject *png_plain_gray(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view)) return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len;
    PyObject *result = NULL;
    if (size >= 33 && memcmp(d + 12, "IHDR", 4) == 0 && d[24] == 8 && d[25] == 0) {
        unsigned long width = be32(d + 16), height = be32(d + 20);
        /* Every chunk's header, to IEND: a file cut short has none (None: PIL's way). */
        Py_ssize_t at = 8;
        while (at + 8 <= size) {
            const unsigned char *kind = d + at + 4;
            if (alters_gray(kind)) break;
            if (!memcmp(kind, "IEND", 4)) {
                result = Py_BuildValue("kk", width, height);
                break;
            }
            at += 12 + (Py_ssize_t)be32(d + at);
        }
    }
    PyBuffer_Release(&view);
    if (result) return result;
    Py_RETURN_NONE;
}

/* CRC-32 (ISO-HDLC, as PNG's chunks and zlib use), a byte at a time from a table made once. */
static uint32_t crc_table[256];
static int crc_ready = 0;

static uint32_t crc32_bytes(const unsigned char *p, Py_ssize_t n) {
    if (!crc_ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
        crc_ready = 1;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* png_idat(data) -> the IDAT chunks' bytes joined, or None (kernels.png_idat says its rules). */
static PyObject *png_idat(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view)) return NULL;
    const unsigned char *d = (const unsigned char *)view.buf;
    const Py_ssize_t size = view.len;
    PyObject *result = NULL;
    Py_ssize_t total = 0, at = 8, ends = 0;
    int idat_done = 0, ok = size >= 45 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0 && be32(d + 8) == 13 &&
                            memcmp(d + 12, "IHDR", 4) == 0 && d[24] == 8 && d[25] == 0 && d[26] == 0 &&
                            d[27] == 0 && d[28] == 0;
    /* First walk: every chunk whole, critical ones with their CRC, the IDATs one run of chunks,
     * nothing after IEND; the IDATs' length summed. */
    while (ok) {
        if (at + 12 > size) {
            ok = 0;
            break;
        }
        unsigned long length = be32(d + at);
        const unsigned char *kind = d + at + 4;
        if (length > (unsigned long)(size - at - 12)) {
            ok = 0;
            break;
        }
        int critical = !(kind[0] & 0x20);
        if (critical && crc32_bytes(kind, 4 + (Py_ssize_t)length) != be32(d + at + 8 + length)) ok = 0;
        if (alters_gray(kind)) ok = 0;
        if (!memcmp(kind, "IDAT", 4)) {
            if (idat_done) ok = 0;
            total += (Py_ssize_t)length;
        } else if (total) {
            idat_done = 1;
        }
        if (critical && memcmp(kind, "IDAT", 4) && memcmp(kind, "IEND", 4) && (memcmp(kind, "IHDR", 4) || at != 8))
            ok = 0; /* an unknown critical chunk, or a second IHDR */
        at += 12 + (Py_ssize_t)length;
        if (!memcmp(kind, "IEND", 4)) {
            ends = at;
            break;
        }
    }
    if (ok && ends == size && total > 0) {
        result = PyBytes_FromStringAndSize(NULL, total);
        if (result) {
            char *out = PyBytes_AS_STRING(result);
            for (at = 8; at < ends;) {
                unsigned long length = be32(d + at);
                if (!memcmp(d + at + 4, "IDAT", 4)) {
                    memcpy(out, d + at + 8, length);
                    out += length;
                }
                at += 12 + (Py_ssize_t)length;
            }
        }
    } else {
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&view);
    return result;
}

static inline unsigned char paeth(int a, int b, int c) {
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return (unsigned char)(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
}

/* png_unfilter(raw, out) -> whether every row's filter was one of PNG's five (kernels.png_unfilter). */
static PyObject *png_unfilter(PyObject *self, PyObject *args) {
    Py_buffer raw;
    PyObject *oobj;
    if (!PyArg_ParseTuple(args, "y*O", &raw, &oobj)) return NULL;
    grid o;
    if (get_grid(oobj, &o, 1) < 0) {
        PyBuffer_Release(&raw);
        return NULL;
    }
    PyObject *result = NULL;
    const Py_ssize_t h = o.h, w = o.w;
    if (o.s1 != 1 || o.s0 != w || raw.len != h * (w + 1)) {
        PyErr_SetString(PyExc_ValueError, "expected a contiguous height x width output and height x (width + 1) bytes");
        goto done;
    }
    const unsigned char *in = (const unsigned char *)raw.buf;
    unsigned char *out = (unsigned char *)o.data;
    int good = 1;
    for (Py_ssize_t r = 0; r < h && good; r++) {
        const unsigned char *src = in + r * (w + 1) + 1;
        unsigned char *row = out + r * w;
        const unsigned char *up = r ? row - w : NULL;
        switch (in[r * (w + 1)]) {
        case 0:
            memcpy(row, src, (size_t)w);
            break;
        case 1:
            for (Py_ssize_t c = 0; c < w; c++) row[c] = (unsigned char)(src[c] + (c ? row[c - 1] : 0));
            break;
        case 2:
            for (Py_ssize_t c = 0; c < w; c++) row[c] = (unsigned char)(src[c] + (up ? up[c] : 0));
            break;
        case 3:
            for (Py_ssize_t c = 0; c < w; c++)
                row[c] = (unsigned char)(src[c] + (((c ? row[c - 1] : 0) + (up ? up[c] : 0)) >> 1));
            break;
        case 4:
            for (Py_ssize_t c = 0; c < w; c++)
                row[c] = (unsigned char)(src[c] + paeth(c ? row[c - 1] : 0, up ? up[c] : 0, c && up ? up[c - 1] : 0));
            break;
        default:
            good = 0;
        }
    }
    result = PyBool_FromLong(good);
done:
    PyBuffer_Release(&raw);
    PyBuffer_Release(&o.view);
    return result;
}

/* A run of ink along a row, and, for the run that is a component's root, the component's ink
 * and columns (digit_evidence). */
typedef struct {
    Py_ssize_t lo, hi;            /* the run's first and last column */
    Py_ssize_t area, left, right; /* its component's, where it is the root */
    int32_t parent;
} ink_run;

/* Union-find over runs: the root of run `x`, halving the path on the way. */
static int32_t run_root(ink_run *runs, int32_t x) {
    while (runs[x].parent != x) {
        runs[x].parent = runs[runs[x].parent].parent;
        x = runs[x].parent;
    }
    return x;
}

/* digit_evidence(digits, height, ink, share, overlap, counts, several): for each of a stack of
 * height x w digits (a grid of n * height rows), the ink's counts (pixels over `ink`: how many,
 * the changes between neighbours along rows and down columns, the box's width and height, the sum
 * of the ink's values; kernels.EVIDENCE_COUNTS) into the int64 n x 5 `counts`, and into the
 * one-byte `several` whether two of its 8-connected ink components, each holding `share` of the
 * ink at least, lie side by side: their columns overlap by at most `overlap` of the narrower's
 * width (review.side_by_side_batch's rule; the comparisons in float64, as numpy made them).
 *
 * The counts are branch-free loops over the mask (vectorised); the components are found from
 * the runs of ink along each row, a run joined to every run of the row above that it touches
 * (8-connected: their columns overlap or meet at a corner). */
static PyObject *digit_evidence(PyObject *self, PyObject *args) {
    PyObject *dobj, *cobj, *sobj;
    Py_ssize_t hh;
    int ink;
    double share, overlap;
    if (!PyArg_ParseTuple(args, "OniddOO", &dobj, &hh, &ink, &share, &overlap, &cobj, &sobj)) return NULL;
    grid d;
    if (get_grid(dobj, &d, 0) < 0) return NULL;
    Py_buffer counts = {0}, several = {0};
    PyObject *result = NULL;
    uint8_t *mask = NULL, *cols = NULL;
    ink_run *runs = NULL;
    Py_ssize_t *big = NULL, capacity = 0;
    const Py_ssize_t w = d.w, n = hh > 0 ? d.h / hh : 0, size = hh * w;
    if (PyObject_GetBuffer(cobj, &counts, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    if (PyObject_GetBuffer(sobj, &several, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    if (hh < 1 || w < 1 || d.h % hh || counts.itemsize != 8 || counts.len != n * 5 * 8 || several.itemsize != 1 ||
        several.len != n) {
        PyErr_SetString(PyExc_ValueError, "expected n * height rows, int64 n x 5 counts and n flags");
        goto done;
    }
    mask = malloc((size_t)size);
    cols = malloc((size_t)w);
    if (!mask || !cols) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *out = (int64_t *)counts.buf;
    uint8_t *flags = (uint8_t *)several.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t pixels = 0, changes = 0, sum = 0;
        Py_ssize_t top = -1, bottom = -1, left = -1, right = -1, starts = 0;
        memset(cols, 0, (size_t)w);
        for (Py_ssize_t r = 0; r < hh; r++) {
            const uint8_t *row = (const uint8_t *)d.data + (i * hh + r) * d.s0;
            uint8_t *m = mask + r * w;
            int64_t in_row = 0;
            for (Py_ssize_t c = 0; c < w; c++) {
                uint8_t v = row[c * d.s1], on = v > ink;
                m[c] = on;
                cols[c] |= on;
                in_row += on;
                sum += on ? v : 0;
            }
            starts += m[0];
            for (Py_ssize_t c = 1; c < w; c++) {
                changes += m[c] != m[c - 1];
                starts += m[c] > m[c - 1];
            }
            if (r)
                for (Py_ssize_t c = 0; c < w; c++) changes += m[c] != m[c - w];
            if (in_row) {
                top = top < 0 ? r : top;
                bottom = r;
            }
            pixels += in_row;
        }
        for (Py_ssize_t c = 0; c < w; c++)
            if (cols[c]) {
                left = left < 0 ? c : left;
                right = c;
            }
        out[i * 5 + 0] = pixels;
        out[i * 5 + 1] = changes;
        out[i * 5 + 2] = pixels ? right - left + 1 : 0;
        out[i * 5 + 3] = pixels ? bottom - top + 1 : 0;
        out[i * 5 + 4] = sum;
        if (starts > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "too many runs of ink in one image");
            goto done;
        }
        if (starts > capacity) { /* as many as this image has: digits have a few dozen */
            ink_run *more = realloc(runs, sizeof(ink_run) * (size_t)starts);
            Py_ssize_t *more_big = realloc(big, sizeof(Py_ssize_t) * (size_t)starts);
            if (more) runs = more;
            if (more_big) big = more_big;
            if (!more || !more_big) {
                PyErr_NoMemory();
                goto done;
            }
            capacity = starts;
        }
        /* Components from the runs of each row: a run joins every run of the row above whose
         * columns reach within one of its own. */
        Py_ssize_t found = 0, above = 0, above_end = 0;
        for (Py_ssize_t r = 0; r < hh; r++) {
            const uint8_t *m = mask + r * w;
            Py_ssize_t first = found;
            for (Py_ssize_t c = 0; c < w;) {
                if (!m[c]) {
                    c++;
                    continue;
                }
                Py_ssize_t s0 = c;
                while (c < w && m[c]) c++;
                ink_run *run = &runs[found];
                run->lo = s0;
                run->hi = c - 1;
                run->parent = (int32_t)found;
                int32_t root = (int32_t)found;
                for (Py_ssize_t k = above; k < above_end; k++) {
                    if (runs[k].hi < s0 - 1 || runs[k].lo > c) continue;
                    int32_t other = run_root(runs, (int32_t)k);
                    if (other == root) continue;
                    if (other < root) {
                        int32_t t = root;
                        root = other;
                        other = t;
                    }
                    runs[other].parent = root;
                }
                found++;
            }
            above = first;
            above_end = found;
        }
        for (Py_ssize_t k = 0; k < found; k++) {
            runs[k].area = 0;
            runs[k].left = w;
            runs[k].right = -1;
        }
        for (Py_ssize_t k = 0; k < found; k++) {
            ink_run *root = &runs[run_root(runs, (int32_t)k)];
            root->area += runs[k].hi - runs[k].lo + 1;
            root->left = runs[k].lo < root->left ? runs[k].lo : root->left;
            root->right = runs[k].hi > root->right ? runs[k].hi : root->right;
        }
        Py_ssize_t nbig = 0;
        for (Py_ssize_t k = 0; k < found; k++)
            if (runs[k].area && (double)runs[k].area >= share * (double)pixels) big[nbig++] = k;
        int side_by_side = 0;
        for (Py_ssize_t a = 0; a < nbig && !side_by_side; a++)
            for (Py_ssize_t b = a + 1; b < nbig && !side_by_side; b++) {
                const ink_run *ra_ = &runs[big[a]], *rb_ = &runs[big[b]];
                Py_ssize_t la = ra_->left, ra = ra_->right + 1, lb = rb_->left, rb = rb_->right + 1;
                Py_ssize_t common = (ra < rb ? ra : rb) - (la > lb ? la : lb);
                Py_ssize_t narrower = ra - la < rb - lb ? ra - la : rb - lb;
                side_by_side = (double)common <= overlap * (double)narrower;
            }
        flags[i] = (uint8_t)side_by_side;
    }
    result = Py_NewRef(Py_None);
done:
    free(mask);
    free(cols);
    free(runs);
    free(big);
    if (counts.obj) PyBuffer_Release(&counts);
    if (several.obj) PyBuffer_Release(&several);
    PyBuffer_Release(&d.view);
    return result;
}

static PyMethodDef methods[] = {
    {"use_widest", use_widest, METH_VARARGS, "Allow the AVX2 loops (the default) or not (for tests)."},
    {"long_bands", long_bands, METH_VARARGS, "Bands of long runs, fitted (see kernels.long_bands)."},
    {"strip", strip, METH_VARARGS, "A line's rows in each of its columns (see kernels.strip)."},
    {"line_pixels", line_pixels, METH_VARARGS, "A line's strip and ticks (see kernels.line_pixels)."},
    {"fit_and_centre", fit_and_centre, METH_VARARGS, "A digit into the box, centred by mass (see kernels.fit_and_centre)."},
    {"png_plain_gray", png_plain_gray, METH_VARARGS, "An 8-bit gray PNG's size, if nothing alters it (see kernels.png_plain_gray)."},
    {"png_idat", png_idat, METH_VARARGS, "A plain 8-bit gray PNG's IDAT bytes (see kernels.png_idat)."},
    {"png_unfilter", png_unfilter, METH_VARARGS, "PNG rows unfiltered, 8-bit gray (see kernels.png_unfilter)."},
    {"jpeg_frame", jpeg_frame, METH_VARARGS, "A JPEG's size and EXIF presence from its markers (see kernels.jpeg_frame)."},
    {"bbox", bbox, METH_VARARGS, "The box of a mask's nonzero pixels (see kernels.bbox)."},
    {"locate", locate, METH_VARARGS, "The ink mask and its box (see kernels.locate)."},
    {"opened_box", opened_box, METH_VARARGS, "The ink's box after a 3x3 opening, grown back (see kernels.opened_box)."},
    {"erosion", erosion, METH_VARARGS, "Ink, what a 3x3 erosion leaves of it, and where (see kernels.erosion)."},
    {"ink_extents", ink_extents, METH_VARARGS, "Bounds on the ink's extent (see kernels.ink_extents)."},
    {"profile", profile, METH_VARARGS, "The ink above each row, and where it lies (see kernels.profile)."},
    {"absorbed_ink", absorbed_ink, METH_VARARGS, "Ink absorbed from the paper, stretched (see kernels.absorbed_ink)."},
    {"stretch_levels", stretch_levels, METH_VARARGS, "Strongest level and scale (see kernels.stretch_levels)."},
    {"resize", resize, METH_VARARGS, "PIL's Image.resize of an 8-bit image (see kernels.resize)."},
    {"frame", frame, METH_VARARGS, "Sum, light pixels and count of the border frame (see kernels.frame)."},
    {"paper_level", paper_level, METH_VARARGS, "The paper's level at a small size (see kernels.paper_level)."},
    {"enlarge", enlarge, METH_VARARGS, "A small level enlarged bilinearly (see kernels.enlarge)."},
    {"gaussian_blur", gaussian_blur, METH_VARARGS, "PIL's GaussianBlur of an 8-bit image (see kernels.gaussian_blur)."},
    {"digit_evidence", digit_evidence, METH_VARARGS, "Ink counts and side-by-side components of digits (see kernels.digit_evidence)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_loops", "The scan path's pixel loops.", -1, methods};

PyMODINIT_FUNC PyInit__loops(void) { return PyModule_Create(&module); }
