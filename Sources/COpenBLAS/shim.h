#ifndef BOTTLENECK_COPENBLAS_SHIM_H
#define BOTTLENECK_COPENBLAS_SHIM_H
/* Debian's OpenBLAS header also declares openblas_get_corename(),
   openblas_get_config() and the thread-count functions used for `doctor`. */
#include <cblas.h>
#endif
