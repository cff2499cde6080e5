/* micro.int8-io.tflite for TensorFlow Lite Micro, written by `pipeline export --micro`. */
#ifndef MICRO_INT8_IO_MODEL_H_
#define MICRO_INT8_IO_MODEL_H_

#ifdef __cplusplus
extern "C" {
#endif

/* The model: 59704 bytes of flash, 4516320 multiply-accumulates per image. */
extern const unsigned char micro_int8_io_model[];
extern const unsigned int micro_int8_io_model_len;

/* The smallest tensor arena the TFLM interpreter ran it in (bytes); align it to 16. */
#define MICRO_INT8_IO_MODEL_ARENA_BYTES 22880

/* int8 input: q = round(pixel / 255 / scale) + zero_point, pixel 0..255 white ink on black. */
#define MICRO_INT8_IO_MODEL_INPUT_SCALE 0.003921568859368563f
#define MICRO_INT8_IO_MODEL_INPUT_ZERO_POINT (-128)
/* int8 output: probability = (q - zero_point) * scale, one per digit 0..9. */
#define MICRO_INT8_IO_MODEL_OUTPUT_SCALE 0.00390625f
#define MICRO_INT8_IO_MODEL_OUTPUT_ZERO_POINT (-128)

/* Operators to register: tflite::MicroMutableOpResolver<4> resolver; then
 *   resolver.AddConv2D();
 *   resolver.AddMean();
 *   resolver.AddFullyConnected();
 *   resolver.AddSoftmax();
 */
#define MICRO_INT8_IO_MODEL_OPERATOR_COUNT 4
#define MICRO_INT8_IO_MODEL_REGISTER_OPERATORS(resolver) \
  (resolver).AddConv2D(); \
  (resolver).AddMean(); \
  (resolver).AddFullyConnected(); \
  (resolver).AddSoftmax()

#ifdef __cplusplus
}
#endif

#endif /* MICRO_INT8_IO_MODEL_H_ */
